"""The OpenAI-compatible gateway through the official `openai` client, against real servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import H2O, free_port, wait_for

pytestmark = pytest.mark.integration
STANDIN = Path(__file__).resolve().parents[1] / "standin-python"


@pytest.fixture
def gateway(h2o: H2O, write_stack, stack_name: str, tiny_model: Path) -> Iterator[tuple[str, dict[str, int], Path]]:
    ports = {"tiny": free_port(), "fake": free_port(), "front": free_port(), "down": free_port()}
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  tiny: {{kind: transformers, model: {tiny_model}, port: {ports['tiny']}}}
  fake: {{kind: vllm, python: {STANDIN}, model: fake-model, port: {ports['fake']}}}
  down: {{kind: vllm, url: "http://127.0.0.1:{ports['down']}", model: m}}
fronts:
  chat: {{port: {ports['front']}, models: [tiny, fake, down], api_keys: ["${{GW_KEY:-sk-test-key}}"]}}
""")
    h2o("up", str(path), "tiny", "fake", check=True, timeout=300)
    proc = subprocess.Popen([sys.executable, "-m", "h2ostack.gateway", str(path), "--front", "chat", "--port",
                             str(ports["front"])], env={**h2o.env, "H2OSTACK_GATEWAY_READ_TIMEOUT": "3"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{ports['front']}/v1"
    wait_for(lambda: _answers(base + "/models"), 30, "the gateway")
    yield base, ports, path
    proc.terminate()
    proc.wait(10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code in (200, 401)
    except httpx.HTTPError:
        return False


def test_models_chat_and_completions_streaming_and_not(gateway: tuple[str, dict[str, int], Path]) -> None:
    base = gateway[0]
    client = openai.OpenAI(base_url=base, api_key="sk-test-key", max_retries=0)
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny", "fake", "down"]

    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.choices[0].message.content and reply.choices[0].finish_reason == "length"
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                                           max_tokens=2)
    assert float(raw.headers["x-h2ostack-overhead-ms"]) >= 0

    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True) if c.choices]
    assert "".join(pieces)

    done = client.completions.create(model="fake", prompt="hello", max_tokens=3)
    assert done.choices[0].text == "hi"


def test_errors_a_client_can_act_on(gateway: tuple[str, dict[str, int], Path]) -> None:
    base = gateway[0]
    client = openai.OpenAI(base_url=base, api_key="sk-test-key", max_retries=0)
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "tiny, fake, down" in str(nf.value)
    with pytest.raises(openai.InternalServerError) as down:
        client.chat.completions.create(model="down", messages=[{"role": "user", "content": "x"}])
    assert down.value.status_code == 503 and "not reachable" in str(down.value)
    # the backend's own validation error comes through with its status
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="fake", prompt="x", max_tokens=-1)
    assert bad.value.status_code == 400 and "max_tokens must be at least 1" in str(bad.value)
    assert "Traceback" not in str(bad.value)


def test_bearer_keys(gateway: tuple[str, dict[str, int], Path]) -> None:
    base = gateway[0]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    assert httpx.get(base + "/models").status_code == 401
    t0 = time.monotonic()
    assert openai.OpenAI(base_url=base, api_key="sk-test-key", max_retries=0).models.list().data
    assert time.monotonic() - t0 < 5


def test_a_frozen_backend_is_a_504_and_the_pool_recovers(gateway: tuple[str, dict[str, int], Path],
                                                         h2o: H2O) -> None:
    """A backend that takes the request and never answers (SIGSTOP) is a 504 once the read
    timeout (3 s here) runs out; when it thaws, the next request is answered."""
    base, _, path = gateway
    client = openai.OpenAI(base_url=base, api_key="sk-test-key", max_retries=0, timeout=30)
    assert client.completions.create(model="fake", prompt="x", max_tokens=2).choices[0].text == "hi"
    pid = int(h2o.status(str(path))["fake"]["ident"])
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as frozen:
            client.completions.create(model="fake", prompt="x", max_tokens=2)
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert frozen.value.status_code == 504 and "timed out" in str(frozen.value)
    assert 2.5 < took < 10
    # thawed, it answers again
    assert client.completions.create(model="fake", prompt="x", max_tokens=2).choices[0].text == "hi"
