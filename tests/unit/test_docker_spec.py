"""The Docker runtime's pure parts: create parameters from a plan, labels, `docker run` lines,
container state parsing, the engine error; the TGI stand-in's flag parsing; doctor's token check.

No engine here: tests/integration/test_docker_tgi.py runs the same paths against a real one.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from h2ostack import __version__
from h2ostack.errors import EngineUnavailable, StackError
from h2ostack.facts import GPU, Facts
from h2ostack.loader import load_text
from h2ostack.plan import Plan, make_plan
from h2ostack.runtimes.docker import DockerRuntime, _ContainerHandle, _started_at, engine, labels_for
from h2ostack.runtimes.docker_render import docker_run_lines
from h2ostack.spec import Stack
from tests.tgi_standin import parse

SECRET = "hf_unitsecret_0123456789"


def stack(text: str, environ: dict[str, str] | None = None) -> Stack:
    return load_text(textwrap.dedent(text), "s.yaml", environ or {"HF_TOKEN": SECRET}, Path("/stacks"))


def plan_of(text: str, n_gpus: int = 4, environ: dict[str, str] | None = None) -> Plan:
    facts = Facts(tuple(GPU(i) for i in range(n_gpus)), "stated", frozenset(), "/py", {})
    return make_plan(stack(text, environ), facts)


FALCON40B = """\
name: lab
services:
  falcon40b:
    kind: tgi
    image: ghcr.io/huggingface/text-generation-inference:1.4.5
    model: h2oai/h2ogpt-oasst1-falcon-40b
    gpus: [0, 3]
    port: 6112
    shm_size: 1g
    env: {HF_TOKEN: "${HF_TOKEN}", NCCL_SHM_DISABLE: "1"}
    volumes: ["~/.cache/huggingface:/data", "./weights:/weights:ro"]
    args: {max_input_length: 2048, max_total_tokens: 4096, trust_remote_code: true, sharded: true}
"""


def test_create_kwargs_follow_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/u")
    p = plan_of(FALCON40B)
    sp = p.services["falcon40b"]
    kw = DockerRuntime("lab").create_kwargs(sp)  # no engine is asked for create parameters
    assert kw["image"] == "ghcr.io/huggingface/text-generation-inference:1.4.5"
    assert kw["name"] == "lab-falcon40b"
    assert kw["command"] == list(sp.command or sp.container["command"])  # type: ignore[index]
    assert kw["command"] == ["--model-id", "h2oai/h2ogpt-oasst1-falcon-40b", "--max-input-length", "2048",
                             "--max-total-tokens", "4096", "--trust-remote-code", "--sharded", "true",
                             "--num-shard", "2", "--hostname", "0.0.0.0"]
    assert kw["ports"] == {"80/tcp": ("127.0.0.1", 6112)}
    assert kw["shm_size"] == "1g"
    assert kw["volumes"] == ["/home/u/.cache/huggingface:/data", "/stacks/weights:/weights:ro"]
    [req] = kw["device_requests"]
    assert req["DeviceIDs"] == ["0", "3"] and req["Capabilities"] == [["gpu"]] and req["Driver"] == "nvidia"
    # the secret reaches the container's environment, and only there
    assert kw["environment"]["HF_TOKEN"] == SECRET and kw["environment"]["NCCL_SHM_DISABLE"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in kw["environment"]  # the device request decides
    assert SECRET not in json.dumps({k: v for k, v in kw.items() if k not in ("environment", "device_requests")})
    assert SECRET not in json.dumps(p.to_json())


def test_labels_name_stack_service_hash_and_version() -> None:
    sp = plan_of(FALCON40B).services["falcon40b"]
    labels = labels_for("lab", sp)
    assert labels["io.h2ostack.stack"] == "lab" and labels["io.h2ostack.service"] == "falcon40b"
    assert labels["io.h2ostack.config-hash"] == sp.config_hash and len(sp.config_hash) == 16
    assert labels["io.h2ostack.version"] == __version__ and labels["io.h2ostack.port"] == "6112"
    assert SECRET not in json.dumps(labels)


def test_a_changed_secret_changes_the_hash_but_not_the_labels_text() -> None:
    a = plan_of(FALCON40B).services["falcon40b"]
    b = plan_of(FALCON40B, environ={"HF_TOKEN": "hf_other"}).services["falcon40b"]
    assert a.config_hash != b.config_hash
    assert "hf_other" not in json.dumps(labels_for("lab", b))


def test_tgi_api_key_goes_to_env_never_argv() -> None:
    p = plan_of("""\
        name: k
        services:
          t: {kind: tgi, image: tgi:2.3, model: m/x, port: 8080, api_key: "${TGI_KEY}"}
        """, environ={"TGI_KEY": "sk-tgi-secret"})
    sp = p.services["t"]
    kw = DockerRuntime("k").create_kwargs(sp)
    assert kw["environment"]["API_KEY"] == "sk-tgi-secret"
    assert "sk-tgi-secret" not in " ".join(kw["command"]) + json.dumps(kw["labels"]) + json.dumps(p.to_json())
    text = "\n".join(docker_run_lines(sp, p))
    assert "-e API_KEY \\" in text and "sk-tgi-secret" not in text


def test_api_key_as_a_flag_is_refused() -> None:
    with pytest.raises(StackError) as info:
        plan_of("name: k\nservices:\n  t: {kind: tgi, image: tgi:2.3, model: m, port: 8080, args: {api_key: sk-x}}\n")
    assert "services.t.args.api_key" in str(info.value) and "set `api_key:` on the service" in str(info.value)


def test_docker_run_lines_quote_everything() -> None:
    p = plan_of("""\
        name: q
        services:
          odd:
            kind: tgi
            image: my/tgi:1
            model: "org/model with space"
            gpus: [0, 3]
            port: 6112
            env: {HF_TOKEN: "${HF_TOKEN}", NOTE: "it's $(rm -rf /) `x` \\"q\\""}
            volumes: ["/data dir/hf:/data"]
            restart: on-failure
            max_restarts: 3
        """)
    lines = docker_run_lines(p.services["odd"], p)
    text = "\n".join(lines)
    assert SECRET not in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    assert "--gpus '\"device=0,3\"'" in text
    run = next(line for line in lines if line.startswith("docker run"))
    words = shlex.split(run.replace("\\\n", " "))
    assert words[:3] == ["docker", "run", "-d"]
    # every -e, -p, -v, --gpus takes the next word as its value, never another option
    for flag, value in zip(words, words[1:], strict=False):
        if flag in ("-e", "-p", "-v", "--gpus", "--name", "--label", "--shm-size", "--restart"):
            assert not value.startswith("-"), (flag, value)
    assert "-e" in words and "HF_TOKEN" in words  # the secret by name: docker reads it from the environment
    assert "NOTE=it's $(rm -rf /) `x` \"q\"" in words
    assert "-p" in words and words[words.index("-p") + 1] == "127.0.0.1:6112:80"
    assert words[words.index("--gpus") + 1] == '"device=0,3"'
    assert words[words.index("-v") + 1] == "/data dir/hf:/data"
    assert words[words.index("--restart") + 1] == "on-failure:3"
    image_at = words.index("my/tgi:1")
    assert words[image_at + 1:] == ["--model-id", "org/model with space", "--hostname", "0.0.0.0"]
    assert re.search(r': "\$\{HF_TOKEN:\?', text)  # the script stops when the secret is not set


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-05-01T12:34:56.123456789Z", 1714566896.123456),
    ("2024-05-01T12:34:56Z", 1714566896.0),
    ("2024-05-01T12:34:56.5Z", 1714566896.5),
    ("0001-01-01T00:00:00Z", None),  # never started
    ("", None),
    ("garbage", None),
])
def test_started_at(text: str, expected: float | None) -> None:
    got = _started_at({"State": {"StartedAt": text}})
    assert got == pytest.approx(expected) if expected is not None else got is None


class FakeContainer:
    def __init__(self, state: dict[str, Any] | None):
        self.state = state

    def reload(self) -> None:
        if self.state is None:
            raise LookupError("removed")

    @property
    def attrs(self) -> dict[str, Any]:
        return {"State": self.state}


@pytest.mark.parametrize(("state", "code"), [
    ({"Status": "running", "Running": True}, None),
    ({"Status": "restarting", "Restarting": True, "ExitCode": 1}, None),
    ({"Status": "created"}, None),
    ({"Status": "exited", "ExitCode": 3}, 3),
    ({"Status": "dead", "ExitCode": 137}, 137),
    (None, True),  # removed under us
])
def test_handle_reports_an_exit_while_starting(state: dict[str, Any] | None, code: int | bool | None) -> None:
    assert _ContainerHandle(FakeContainer(state)).exit_code() == code


def test_no_engine_names_docker_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    with pytest.raises(EngineUnavailable) as info:
        engine()
    assert f"no Docker engine answers at unix://{tmp_path}/none.sock" in str(info.value)
    assert "point DOCKER_HOST at it" in str(info.value)


def test_standin_parses_launcher_flags() -> None:
    flags, raw = parse(["--model-id", "m/x", "--sharded", "false", "--trust-remote-code", "--port=81",
                        "--max-stop-sequences", "6", "--hostname", "0.0.0.0"])
    assert flags == {"model-id": "m/x", "sharded": "false", "trust-remote-code": True, "port": "81",
                     "max-stop-sequences": "6", "hostname": "0.0.0.0"}
    assert raw[0] == "--model-id"


def test_doctor_asks_for_a_token_for_gated_models(monkeypatch: pytest.MonkeyPatch) -> None:
    from h2ostack.doctor import check_tokens

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    text = """\
        name: g
        services:
          llama: {kind: tgi, image: tgi:1, model: meta-llama/Llama-2-70b-chat-hf, port: 6112}
          falcon: {kind: tgi, image: tgi:1, model: tiiuae/falcon-7b, port: 6113}
          given: {kind: tgi, image: tgi:1, model: meta-llama/Llama-2-7b-hf, port: 6114, env: {HF_TOKEN: x}}
        """
    checks = {c.name: c for c in check_tokens(stack(text, {}))}
    assert set(checks) == {"token for llama", "token for given"}
    assert not checks["token for llama"].ok and "set HF_TOKEN" in checks["token for llama"].fix
    assert checks["token for given"].ok
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert all(c.ok for c in check_tokens(stack(text, {})))
