"""A real llama.cpp server (llama-cpp-python's OpenAI-compatible server) on a real GGUF model, started,
asked and stopped by h2ostack behind the built-in front; and an Ollama endpoint (a stand-in) wired in."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.conftest import H2O, ROOT, free_port, marked_processes, wait_for

pytestmark = pytest.mark.integration
# (asked without "Answer in one word." the Q4_1 model rambles about Paris's landmarks under llama.cpp)
QUESTION = "What is the capital of France? Answer in one word."


def _chat(base: str, model: str, stream: bool = False) -> str:
    client = openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=300)
    messages = [{"role": "user", "content": QUESTION}]
    if not stream:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
        return reply.choices[0].message.content or ""
    chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0,
                                            stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_llamacpp_up_check_chat_status_down(h2o: H2O, write_stack, stack_name: str, llamacpp_python: str,
                                            test_gguf: Path, tmp_path: Path) -> None:
    # the model path is relative to the stack file
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "smol.gguf").symlink_to(test_gguf)
    ports = {"smol": free_port(), "chat": free_port()}
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  smol:
    kind: llamacpp
    python: {llamacpp_python}
    model: models/smol.gguf
    port: {ports['smol']}
    args: {{n_ctx: 512, n_threads: 2}}
fronts:
  chat: {{port: {ports['chat']}, models: [smol]}}
""")
    plan = json.loads(h2o("plan", str(path), "--json", check=True).stdout)
    argv = next(s for s in plan["services"] if s["name"] == "smol")["command"]
    assert str(test_gguf.parent) not in " ".join(argv) and str(tmp_path / "models" / "smol.gguf") in argv

    # doctor checks the environment and the file; lock records the package and the file's digest
    doctor = h2o("doctor", str(path), timeout=120).stdout
    assert re.search(r"ok +GGUF file of smol +" + re.escape(str(tmp_path / "models" / "smol.gguf")), doctor), doctor
    assert re.search(r"ok +python of smol +.* imports llama_cpp.server", doctor), doctor
    h2o("lock", str(path), timeout=120, check=True)
    locked = yaml.safe_load(Path(f"{path}.lock").read_text())["services"]["smol"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", locked["packages"]["llama-cpp-python"]), locked
    assert locked["model"] == {"gguf": "smol.gguf", "size": test_gguf.stat().st_size,
                               "sha256": hashlib.sha256(test_gguf.read_bytes()).hexdigest()}

    # the server reads these from its environment, over its flags: a shell's values must not reach it
    shell = {"PORT": "1", "HOST": "0.0.0.0", "API_KEY": "from-the-shell", "CONFIG_FILE": "/nowhere.yaml"}
    up = h2o("up", str(path), timeout=600, env=shell)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-4000:]
    assert "ready    smol" in up.stderr and "ready    chat" in up.stderr
    try:
        rows = h2o.status(str(path))
        assert (rows["smol"]["kind"], rows["smol"]["state"], rows["smol"]["health"]) == (
            "llamacpp", "running", "healthy")
        assert rows["smol"]["url"] == f"http://127.0.0.1:{ports['smol']}"

        # the server answers the real question the way the model does (greedy: Paris)
        direct = f"http://127.0.0.1:{ports['smol']}/v1"
        assert _chat(direct, "smol") == "The capital of France is Paris."

        check = h2o("check", str(path), "--prompt", QUESTION, "--expect", "Paris", timeout=300)
        assert check.returncode == 0, check.stdout + check.stderr
        assert " yes " in check.stdout

        # through the front's gateway, by the service's name, streaming and not
        gateway = f"http://127.0.0.1:{ports['chat']}/v1"
        models = httpx.get(gateway + "/models", timeout=30, trust_env=False).json()
        assert "smol" in [m["id"] for m in models["data"]]
        whole, streamed = _chat(gateway, "smol"), _chat(gateway, "smol", stream=True)
        assert whole == streamed == "The capital of France is Paris."
    finally:
        down = h2o("down", str(path), timeout=120)
    assert down.returncode == 0, down.stderr
    assert marked_processes(h2o.state_dir) == []
    assert {r["state"] for r in h2o.status(str(path)).values()} == {"not started"}


@pytest.fixture
def ollama() -> Iterator[int]:
    """The Ollama stand-in (tests/ollama_standin.py), whose model is listed only a second after it starts,
    as after an `ollama pull`."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "ollama_standin.py"), "--port", str(port),
                             "--model", "smollm:135m", "--listed-after", "1.5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/api/version"), 30, "the Ollama stand-in")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def test_ollama_ready_through_its_listing_chat_and_check(h2o: H2O, write_stack, stack_name: str,
                                                         ollama: int) -> None:
    chat = free_port()
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  local: {{kind: ollama, url: "http://127.0.0.1:{ollama}", model: "smollm:135m"}}
fronts:
  chat: {{port: {chat}, models: [local]}}
""")
    up = h2o("up", str(path), timeout=120)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-4000:]
    try:
        rows = h2o.status(str(path))
        assert (rows["local"]["kind"], rows["local"]["health"]) == ("ollama", "healthy")
        check = h2o("check", str(path), "--expect", "Paris", timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
        gateway = f"http://127.0.0.1:{chat}/v1"
        assert _chat(gateway, "local") == "Paris is the capital of France."
        assert _chat(gateway, "local", stream=True) == "Paris is the capital of France."
    finally:
        assert h2o("down", str(path), timeout=120).returncode == 0
    assert marked_processes(h2o.state_dir) == []


def test_ollama_without_the_model_pulled_is_not_ready_and_says_why(h2o: H2O, write_stack, stack_name: str,
                                                      ollama: int) -> None:
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  missing: {{kind: ollama, url: "http://127.0.0.1:{ollama}", model: llama3, health: {{timeout: 4}}}}
""")
    # an external endpoint that is not ready is a warning of `up` (nothing of it was started), with the reason
    up = h2o("up", str(path), timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "is not ready: " in up.stderr and "(/api/tags): model 'llama3:latest' not listed yet" in up.stderr
