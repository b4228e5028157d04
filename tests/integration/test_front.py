"""The front against real servers: each client, the Gradio APIs, the gateway on the front's port,
and one front used as the h2oGPT-style server of another."""

from __future__ import annotations

import ast
import json
import socket
import time
from dataclasses import replace

import openai
import pytest
from gradio_client import Client

from h2ostack.front.clients import Pane, backend_for, stream_answer
from tests.conftest import FrontStack

pytestmark = pytest.mark.integration


def backends(fs: FrontStack) -> dict[str, Pane]:
    from h2ostack.api import load_plan
    from h2ostack.front.app import backends_from_plan

    stack, _, plan = load_plan(fs.path, check_ports=False)
    return {b.name: b for b in backends_from_plan(plan, stack, ["tiny", "tgi", "vllm", "down"])}


def test_each_client_streams_from_a_real_server(front_stack: FrontStack) -> None:
    bs = backends(front_stack)
    for name in ("tiny", "vllm"):  # OpenAI-compatible chat, the server's template
        pieces = list(stream_answer(bs[name], [("hi", "hello")], "how are you?", 8, 0.0))
        assert len(pieces) >= 2 and "".join(pieces), name
    tgi = list(stream_answer(bs["tgi"], [], "Hello?", 6, 0.0))  # TGI native, human_bot prompt (inferred)
    assert "".join(tgi) == "Hello from the stand-in of"
    assert bs["tgi"].effective_prompt_type == "human_bot"
    completions = backend_for("tinyc", f"vllm:127.0.0.1:{front_stack.ports['vllm']}", "human_bot")
    completions = Pane(replace(completions.endpoint, model="tiny-vllm"))
    assert not completions.endpoint.chat and "".join(stream_answer(completions, [], "hi", 6, 0.0)) is not None
    with pytest.raises(openai.APIConnectionError):
        list(stream_answer(bs["down"], [], "hi", 4, 0.0))
    remote = backend_for("remote", front_stack.front_url)  # a front, probed: not TGI, so h2oGPT
    assert remote.endpoint.protocol == "h2ogpt"
    assert list(stream_answer(remote, [], "hi", 4, 0.0))[0]


def test_gradio_apis(front_stack: FrontStack) -> None:
    client = Client(front_stack.front_url, verbose=False)
    assert json.loads(client.predict("wrong", api_name="/system_info_dict")) == {}
    info = json.loads(client.predict("adm1n-pass", api_name="/system_info_dict"))
    assert [m["name"] for m in info["models"]] == ["tiny", "tgi", "vllm", "down"]
    assert info["h2ostack_version"] and "cpu" in info and "gpus" in info
    assert "adm1n-pass" not in json.dumps(info) and "sk-front-key" not in json.dumps(info)
    out = ast.literal_eval(client.predict(str({"instruction": "hi", "max_new_tokens": 4}),
                                          api_name="/submit_nochat_api"))
    assert out["model"] == "tiny" and isinstance(out["response"], str) and "error" not in out


def test_gateway_on_the_front_port(front_stack: FrontStack) -> None:
    base = front_stack.front_url + "/v1"
    # status names the gateway's base URL, in its table and in --json
    assert front_stack.h2o.status(str(front_stack.path))["chat"]["gateway"] == base
    shown = front_stack.h2o("status", str(front_stack.path)).stdout
    assert f"gateway frontstack/chat: {base} (OpenAI-compatible)" in shown
    client = openai.OpenAI(base_url=base, api_key="sk-front-key", max_retries=0)
    models = client.models.list().data
    assert [(m.id, m.model_extra["backend"]) for m in models] == [
        ("tiny", "transformers"), ("tgi", "tgi"), ("vllm", "vllm"), ("down", "vllm")]

    chunks = list(client.chat.completions.create(model="vllm", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=5, stream=True))
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    done = client.completions.create(model="vllm", prompt="Hello", max_tokens=4)
    assert done.choices[0].text is not None and done.choices[0].finish_reason in ("length", "stop")

    # TGI's native API, translated both ways
    reply = client.chat.completions.create(model="tgi", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.choices[0].message.content == "Hello from the" and reply.choices[0].finish_reason == "length"
    stream = list(client.chat.completions.create(model="tgi", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=4, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "Hello from the stand"
    assert stream[-1].choices[0].finish_reason == "length"
    text = client.completions.create(model="tgi", prompt="x", max_tokens=2).choices[0].text
    assert text == "Hello from"

    with pytest.raises(openai.BadRequestError):  # vLLM's own validation error, passed through
        client.completions.create(model="vllm", prompt="x", max_tokens=-1)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.InternalServerError) as down:
        client.chat.completions.create(model="down", messages=[{"role": "user", "content": "x"}])
    assert down.value.status_code == 503
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="nope", max_retries=0).models.list()


def test_the_stacks_vllm_keeps_an_idle_connection_past_its_own_default(front_stack: FrontStack) -> None:
    """vLLM drops a connection idle for 5 s unless told otherwise; the stack tells it 75 s, so the
    gateway's pool stays warm between bursts."""
    def health(sock: socket.socket) -> bytes:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got and (piece := sock.recv(4096)):
            got += piece
        return got

    with socket.create_connection(("127.0.0.1", front_stack.ports["vllm"]), timeout=10) as sock:
        assert health(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6.5)
        assert health(sock).startswith(b"HTTP/1.1 200")  # the same connection, still open


def test_a_front_as_the_h2ogpt_server_of_another(front_stack: FrontStack) -> None:
    outer = f"http://127.0.0.1:{front_stack.ports['outer']}"
    out = ast.literal_eval(Client(outer, verbose=False).predict(str({"instruction": "hi", "max_new_tokens": 4}),
                                                                api_name="/submit_nochat_api"))
    assert out["model"] == "remote" and "error" not in out
    reply = openai.OpenAI(base_url=outer + "/v1", api_key="x", max_retries=0).chat.completions.create(
        model="remote", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.choices[0].message.content is not None
    rows = front_stack.h2o.status(str(front_stack.outer))
    assert rows["remote"]["state"] == "external" and rows["remote"]["health"] == "healthy"
    assert rows["outer"]["state"] == "running"
