"""Shared fixtures: the CLI as a subprocess, a private state dir, the tiny model, the vLLM and llama.cpp envs.

Integration tests use real servers. A component that cannot be had makes the test fail
loudly; nothing here skips.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("H2OSTACK_CACHE") or Path.home() / ".cache" / "h2ostack")
IMAGE = "h2ostack/tgi-standin:test"  # the TGI stand-in as a container image (built by `docker_host`)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A tiny random Llama built with the real tokenizers and transformers libraries (no download).
    H2OSTACK_TEST_TINY_MODEL names one already built."""
    given = os.environ.get("H2OSTACK_TEST_TINY_MODEL")
    if given:
        return Path(given)
    from h2ostack.tinymodel import build_tiny_model

    return build_tiny_model(CACHE / "tiny-model")


@pytest.fixture(scope="session")
def small_model() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder (h2ostack/smallmodel.py): a real model that
    answers in language, for tests that check meaning. H2OSTACK_TEST_SMALL_MODEL names one built."""
    given = os.environ.get("H2OSTACK_TEST_SMALL_MODEL")
    if given:
        return Path(given)
    os.environ.setdefault("H2OSTACK_CACHE", str(CACHE))
    from h2ostack.smallmodel import build_small_model

    return build_small_model()


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The interpreter of the CPU vLLM environment, made (or found cached) by scripts/vllm-env.sh."""
    given = os.environ.get("H2OSTACK_VLLM_PYTHON")
    if given:
        return given
    out = subprocess.run(["bash", str(ROOT / "scripts" / "vllm-env.sh")], capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, f"scripts/vllm-env.sh failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout.strip().splitlines()[-1]


def _required_env(name: str, made_by: str) -> str:
    value = os.environ.get(name, "")
    assert value, f"${name} is not set: {made_by} sets it (run the tests through scripts/test.sh)"
    return value


@pytest.fixture(scope="session")
def llamacpp_python() -> str:
    """The interpreter of the llama.cpp server's environment (scripts/llamacpp-env.sh, a source build
    that scripts/test.sh makes once and exports as H2OSTACK_LLAMACPP_PYTHON)."""
    python = _required_env("H2OSTACK_LLAMACPP_PYTHON", "scripts/test.sh (from scripts/llamacpp-env.sh)")
    assert Path(python).is_file(), f"H2OSTACK_LLAMACPP_PYTHON names no file: {python}"
    return python


@pytest.fixture(scope="session")
def test_gguf() -> Path:
    """SmolLM2-135M-Instruct as its Q4_1 GGUF file (`python -m h2ostack.smallmodel --gguf`), exported
    by scripts/test.sh as H2OSTACK_TEST_GGUF."""
    path = Path(_required_env("H2OSTACK_TEST_GGUF", "scripts/test.sh (python -m h2ostack.smallmodel --gguf)"))
    assert path.is_file() and path.stat().st_size > 0, f"H2OSTACK_TEST_GGUF names no GGUF file: {path}"
    return path


class H2OGPTEnv:
    """h2oGPT 0.2.1 in its own environment (scripts/h2ogpt-env.sh): its interpreter, the tiny model its
    transformers reads, and the tiktoken cache it needs offline."""

    def __init__(self, python: str):
        self.python = python
        self.root = Path(python).parent.parent
        self.model = self.root / "tiny-model"
        self.tiktoken_cache = self.root / "tiktoken_cache"
        for need in (Path(python), self.model / "config.json", self.tiktoken_cache):
            assert need.exists(), f"the h2oGPT environment lacks {need}: rerun scripts/h2ogpt-env.sh"

    @property
    def env(self) -> str:
        """The `env:` a stack gives h2oGPT's processes here, as a flow mapping."""
        return f"{{TIKTOKEN_CACHE_DIR: {self.tiktoken_cache}, HF_HUB_OFFLINE: '1'}}"


@pytest.fixture(scope="session")
def h2ogpt_env() -> H2OGPTEnv:
    """H2OSTACK_TEST_H2OGPT_PYTHON (scripts/test.sh sets it), or the environment made here."""
    given = os.environ.get("H2OSTACK_TEST_H2OGPT_PYTHON")
    if not given:
        out = subprocess.run(["bash", str(ROOT / "scripts" / "h2ogpt-env.sh")], capture_output=True, text=True,
                             timeout=1800)
        assert out.returncode == 0, f"scripts/h2ogpt-env.sh failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        given = out.stdout.strip().splitlines()[-1]
    return H2OGPTEnv(given)


class H2O:
    """Runs `h2ostack` in a subprocess against a private state dir."""

    def __init__(self, state_dir: Path, workdir: Path):
        self.state_dir = state_dir
        self.workdir = workdir
        self.env = {**os.environ, "H2OSTACK_STATE_DIR": str(state_dir), "COLUMNS": "200", "NO_COLOR": "1"}
        self.env.pop("H2OSTACK_GPUS", None)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "h2ostack.cli", *args]

    def __call__(self, *args: str, timeout: float = 600, check: bool | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout, cwd=self.workdir,
                             env={**self.env, **(env or {})})
        if check:
            assert out.returncode == 0, f"h2ostack {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
        return out

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=self.workdir, env=self.env)

    def status(self, stack: str) -> dict[str, dict]:
        out = self("status", stack, "--json")
        return {row["service"]: row for row in json.loads(out.stdout)}


@pytest.fixture
def h2o(tmp_path: Path) -> Iterator[H2O]:
    runner = H2O(tmp_path / "state", tmp_path)
    yield runner
    # whatever a test leaves behind is killed by the tool itself, then checked
    runner("kill", "--all", timeout=120)
    left = marked_processes(runner.state_dir)
    assert not left, f"processes left running after the test: {left}"


@pytest.fixture
def stack_name() -> str:
    return "t" + uuid.uuid4().hex[:8]


@pytest.fixture
def write_stack(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(text: str, name: str = "stack.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def marked_processes(state_dir: Path, stack: str | None = None) -> list[tuple[int, str]]:
    """Live processes carrying a test state dir's markers (what h2ostack started)."""
    out = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            env = proc.environ()
            if env.get("H2OSTACK_STATE_DIR") != str(state_dir) or "H2OSTACK_SERVICE" not in env:
                continue  # (the CLI itself has H2OSTACK_STATE_DIR set, but no service marker)
            if stack and env.get("H2OSTACK_STACK") != stack:
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            out.append((proc.pid, " ".join(proc.cmdline())[:120]))
        except (psutil.Error, OSError):
            continue
    return out


def wait_for(pred: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def cpu_vllm(python: str, model: Path, port: int, restart: str = "no") -> str:
    """A CPU vLLM service of the tiny model, as a stack file's flow mapping: about 0.1 of the
    memory and a 1 GiB KV cache is what fits beside everything else on a 24 GB box."""
    return (f"{{kind: vllm, python: {python}, model: {model}, port: {port}, restart: {restart}, "
            "args: {served_model_name: tiny-vllm, dtype: float32, max_model_len: 256, gpu_memory_utilization: 0.1}, "
            "env: {VLLM_CPU_KVCACHE_SPACE: '1'}}")


def tgi_standin(port: int, token_delay: str | None = None, extra: str = "") -> str:
    """A TGI service of the stand-in launcher (tests/tgi-launcher), as a stack file's flow mapping;
    `token_delay` paces its stream, `extra` adds fields (", name: value")."""
    env = f', env: {{STANDIN_TOKEN_DELAY: "{token_delay}"}}' if token_delay else ""
    return (f"{{kind: tgi, launcher: {ROOT / 'tests' / 'tgi-launcher'}, model: h2oai/h2ogpt-oasst1-512-12b, "
            f"port: {port}{env}{extra}}}")


class FrontStack:
    """A stack with one server of each kind behind a front, and a second front that uses the
    first as its h2oGPT-style server: started once for the front, gateway and browser tests."""

    def __init__(self, runner: H2O, path: Path, outer: Path, ports: dict[str, int]):
        self.h2o, self.path, self.outer, self.ports = runner, path, outer, ports

    @property
    def front_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['chat']}"


@pytest.fixture(scope="session")
def front_stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, vllm_python: str
                ) -> Iterator[FrontStack]:
    base = tmp_path_factory.mktemp("front")
    runner = H2O(base / "state", base)
    ports = {k: free_port() for k in ("tiny", "tgi", "vllm", "down", "chat", "outer")}
    path = base / "front.yaml"
    path.write_text(f"""\
version: 1
name: frontstack
services:
  tiny: {{kind: transformers, model: {tiny_model}, port: {ports['tiny']}}}
  tgi: {tgi_standin(ports['tgi'], "0.05")}
  vllm: {cpu_vllm(vllm_python, tiny_model, ports['vllm'])}
  down: {{kind: vllm, url: "http://127.0.0.1:{ports['down']}", model: m}}
fronts:
  chat:
    port: {ports['chat']}
    models: [tiny, tgi, vllm, down]
    columns: 2
    admin_pass: "${{FRONT_ADMIN:-adm1n-pass}}"
    api_keys: ["${{FRONT_KEY:-sk-front-key}}"]
""")
    outer = base / "outer.yaml"
    outer.write_text(f"""\
version: 1
name: outerstack
services:
  remote: {{kind: h2ogpt, url: "http://127.0.0.1:{ports['chat']}", model: frontstack-chat}}
fronts:
  outer: {{port: {ports['outer']}, models: [remote]}}
""")
    up = runner("up", str(path), timeout=900)
    assert up.returncode == 0, up.stderr[-4000:]
    up = runner("up", str(outer), timeout=300)
    assert up.returncode == 0, up.stderr[-4000:]
    yield FrontStack(runner, path, outer, ports)
    runner("kill", "--all", timeout=120)
    assert marked_processes(runner.state_dir) == []


@pytest.fixture(scope="session")
def docker_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The engine the tests own: H2OSTACK_TEST_DOCKER_HOST (scripts/test.sh starts it), or one started here."""
    given = os.environ.get("H2OSTACK_TEST_DOCKER_HOST")
    started = None
    if not given:
        started = tmp_path_factory.mktemp("docker")
        out = subprocess.run(["bash", str(ROOT / "scripts" / "docker-engine.sh"), "start", str(started)],
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"could not start a Docker engine:\n{out.stderr[-3000:]}"
        given = out.stdout.strip().splitlines()[-1].split("=", 1)[1]
    import docker

    client = docker.DockerClient(base_url=given)
    client.ping()
    build_standin(client)
    yield given
    client.close()
    if started is not None:
        subprocess.run(["bash", str(ROOT / "scripts" / "docker-engine.sh"), "stop", str(started)], timeout=120)


@pytest.fixture
def dh2o(h2o: H2O, docker_host: str) -> H2O:
    h2o.env["DOCKER_HOST"] = docker_host
    return h2o


def ours(docker_host: str, stack: str) -> list:
    import docker

    client = docker.DockerClient(base_url=docker_host)
    return client.containers.list(all=True, filters={"label": f"io.h2ostack.stack={stack}"})


def build_standin(client: object) -> None:
    """Build the TGI stand-in image (IMAGE) on an engine, from the base image docker-engine.sh made."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = (b"FROM h2ostack/base:bookworm\nCOPY tgi_standin.py /tgi_standin.py\nENV PORT=80\n"
                      b'ENTRYPOINT ["python3", "-u", "/tgi_standin.py"]\n')
        for name, data in (("Dockerfile", dockerfile), ("tgi_standin.py", (ROOT / "tests" / "tgi_standin.py").read_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=IMAGE, rm=True)  # type: ignore[attr-defined]
