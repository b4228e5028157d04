"""The protocol layer: one Endpoint made from a plan's service, its secrets kept out of sight, one
client per wire protocol, and the one "is it up" check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from h2ostack import shim
from h2ostack.backends.base import Probe
from h2ostack.check import check_endpoint
from h2ostack.plan_types import ContainerPlan, ExternalPlan, FrontPlan, ProcessPlan
from h2ostack.protocols import tgi
from h2ostack.protocols.endpoint import Answer, Endpoint, client_for, from_server, probe, urllib_requester
from h2ostack.protocols.h2ogpt import H2OGPTClient
from h2ostack.protocols.openai import OpenAIClient, prompted_request
from h2ostack.protocols.tgi import TGIClient

SECRET = "sk-very-secret-123"


def test_the_endpoints_secret_stays_out_of_its_repr_and_errors() -> None:
    ep = Endpoint("m", "openai", "http://127.0.0.1:9", "m", headers={"authorization": f"Bearer {SECRET}"})
    assert SECRET not in repr(ep) and SECRET not in str(ep) and ep.bearer == SECRET
    with pytest.raises(ValueError, match="unknown protocol 'grpc'") as exc:
        replace(ep, protocol="grpc")
    assert SECRET not in str(exc.value)


def test_from_plan_reads_what_a_service_plan_says() -> None:
    vllm = ProcessPlan(name="v", kind="vllm", api="openai", url="http://127.0.0.1:8000", served_model="org/m",
                       prompt_type="human_bot", env={"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "75"})
    ep = Endpoint.from_plan(vllm, {"authorization": "Bearer k"}, {"promptA": "x"})
    assert (ep.name, ep.protocol, ep.model, ep.kind, ep.api_base) == ("v", "openai", "org/m", "vllm",
                                                                     "http://127.0.0.1:8000/v1")
    assert not ep.chat and ep.keep_alive == 75.0 and ep.prompt_dict == {"promptA": "x"}
    # no prompt type given nor known for the model: chat, with the server's template
    assert Endpoint.from_plan(replace(vllm, prompt_type=None), {}).chat
    external = ExternalPlan(name="o", kind="openai", api="openai", url="https://api.example/openai", served_model="g")
    got = Endpoint.from_plan(external, {})
    assert got.api_base == "https://api.example/openai" and got.chat and got.keep_alive is None
    assert client_for(got).up_target() == ("https://api.example/openai", "/models")
    assert client_for(ep).up_target() == ("http://127.0.0.1:8000", "/health")
    t = Endpoint.from_plan(ContainerPlan(name="t", kind="tgi", api="tgi", url="http://h:3000"), {})
    assert t.model == "t" and client_for(t).up_target() == ("http://h:3000", "/info")
    with pytest.raises(ValueError, match="unknown protocol 'gradio'"):
        Endpoint.from_plan(FrontPlan(name="f", kind="front", api="gradio", url="http://h:1"), {})


def test_client_for_dispatches_on_the_protocol_and_names_the_gateways_relay() -> None:
    base = Endpoint("m", "openai", "http://h:1", "m")
    kinds = {p: type(client_for(replace(base, protocol=p))) for p in ("openai", "tgi", "h2ogpt")}
    assert kinds == {"openai": OpenAIClient, "tgi": TGIClient, "h2ogpt": H2OGPTClient}
    assert [client_for(replace(base, protocol=p)).RELAY for p in kinds] == ["passthrough", "tgi", "h2ogpt"]
    assert client_for(replace(base, chat=False)).RELAY == "openai"  # chat asked as completions, prompted
    assert client_for(base).relay_base == "http://h:1/v1"
    assert client_for(replace(base, protocol="tgi")).relay_base == "http://h:1"


def test_server_strings_name_endpoints() -> None:
    (o,) = from_server("o", "openai_chat", "https://api.openai.com/v1", {}, None, "k")
    assert o.api_base == "https://api.openai.com/v1" and o.bearer == "k" and o.chat
    (v,) = from_server("v", "vllm", "http://h:5000", {}, "human_bot", "")
    assert v.api_base == "http://h:5000/v1" and not v.chat and v.prompt_type == "human_bot"
    assert [e.protocol for e in from_server("x", "http", "http://h:1", {"authorization": "u t"}, None, "")] == [
        "tgi", "h2ogpt"]


def test_up_tells_healthy_with_its_revision_an_http_error_and_no_answer() -> None:
    asked: list[tuple[str, str, dict[str, str]]] = []

    def answering(status: int, body: Any) -> Any:
        def request(method: str, url: str, body_: Any, timeout: float, headers: dict[str, str]) -> Answer:
            asked.append((method, url, headers))
            return Answer(status, body)
        return request

    def refused(*_: Any) -> Answer:
        raise ConnectionRefusedError("no")

    ep = Endpoint("t", "tgi", "http://h:3000/", "m", headers={"authorization": "Bearer k"})
    up = client_for(ep).up(2.0, answering(200, {"model_sha": "0123456789abcdef"}))
    assert (up.ok, up.detail, up.revision) == (True, "healthy", "0123456789ab")
    assert asked == [("GET", "http://h:3000/info", {"authorization": "Bearer k"})]
    assert client_for(ep).up(2.0, answering(503, None)).detail == "HTTP 503"
    down = client_for(ep).up(2.0, refused)
    assert (down.ok, down.detail) == (False, "unavailable (ConnectionRefusedError)")


def test_probe_checks_status_and_the_model_listed() -> None:
    listed = Probe("listed", "GET", "/v1/models", expect_model="m")

    def req(body: Any) -> Any:
        return lambda *_: Answer(200, body)

    assert probe("http://h:1", listed, req({"data": [{"id": "m"}]}), {}) is None
    assert probe("http://h:1", listed, req({"data": [{"id": "x"}]}), {}) == "listed: model 'm' not listed yet"
    assert probe("http://h:1", listed, req({"model_id": "m"}), {}) is None  # TGI's /info


def test_tgi_translation_of_a_request_and_its_stream() -> None:
    ep = Endpoint("t", "tgi", "http://h:1", "m")
    payload = tgi.request(ep, {"messages": [{"role": "user", "content": "hi"}], "stop": "X", "temperature": 0.5,
                               "max_tokens": 7, "seed": 3}, True, lambda msgs, e: (f"<{e.model}>hi", ["<human>"]))
    assert payload == {"inputs": "<m>hi", "parameters": {"max_new_tokens": 7, "details": True, "temperature": 0.5,
                                                         "do_sample": True, "seed": 3, "stop": ["<human>", "X"]}}
    tr = tgi.Translation("t", payload, True, "chatcmpl-1", 0)
    out = list(tr.start())
    for tok, last in (("Hel", False), ("lo<hu", False), ("man>", True)):
        event = {"token": {"text": tok, "special": False}}
        if last:
            event |= {"generated_text": "Hello<human>", "details": {"finish_reason": "stop_sequence"}}
        pieces, over = tr.event(b"data:" + json.dumps(event).encode())
        assert not over
        out += pieces
    chunks = [json.loads(c[5:]) for c in out]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and tr.finished
    pieces, over = tgi.Translation("t", payload, True, "c", 0).event(b'data:{"error": "boom", "error_type": "x"}')
    assert over and json.loads(pieces[0][5:]) == {"error": {"message": "boom", "type": "x"}}
    whole = tr.whole({"generated_text": "Hi<human>", "details": {"finish_reason": "length", "generated_tokens": 2}})
    assert whole["choices"][0] == {"index": 0, "finish_reason": "length",
                                   "message": {"role": "assistant", "content": "Hi"}}
    assert tgi.error_message(b'{"error": "too long"}') == "too long" and tgi.error_message(b"oops") == "oops"


def test_prompted_request_keeps_openais_four_stops_and_the_users() -> None:
    ep = Endpoint("v", "openai", "http://h:1", "served", chat=False)
    ask, stops = prompted_request(ep, {"model": "v", "messages": [], "stop": "U", "max_completion_tokens": 5,
                                       "tools": []}, "P", ["a", "b", "c", "d", "e"])
    assert ask == {"model": "served", "prompt": "P", "stop": ["a", "b", "c", "d", "U"], "max_tokens": 5}
    assert stops == ["a", "b", "c", "d", "e", "U"]


class _Server(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, bytes, str]] = []

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        _Server.seen.append((self.command, self.path, body, self.headers.get("authorization") or ""))
        self.send_response(200 if self.path == "/ok" else 503)
        self.send_header("content-length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Server.seen.clear()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_shims_liveness_probe_goes_through_the_same_check(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H2OSTACK_CANARY", '{"prompt": "x"}')
    monkeypatch.setenv("LLAMACPP_API_KEY", SECRET)
    monkeypatch.delenv("H2OSTACK_LIVENESS_KEY_ENV", raising=False)
    assert shim.probe(server + "/ok", 2.0) is None  # no key named: none sent
    monkeypatch.setenv("H2OSTACK_LIVENESS_KEY_ENV", "LLAMACPP_API_KEY")  # the server's own variable, by name
    assert shim.probe(server + "/ok", 2.0) is None
    assert shim.probe(server + "/bad", 2.0) == "HTTP 503"
    assert _Server.seen[0] == ("POST", "/ok", b'{"prompt": "x"}', "")
    assert _Server.seen[1] == ("POST", "/ok", b'{"prompt": "x"}', f"Bearer {SECRET}")
    monkeypatch.delenv("H2OSTACK_CANARY")
    assert shim.probe(server + "/ok", 2.0) is None and _Server.seen[-1][:2] == ("GET", "/ok")
    free = urllib_requester()
    with pytest.raises(OSError):
        free("GET", "http://127.0.0.1:1/", None, 1.0, {})
    assert shim.probe("http://127.0.0.1:1/", 1.0).startswith("ConnectionRefusedError: ")  # type: ignore[union-attr]


def test_the_shim_run_alone_with_the_standard_library_probes_too(server: str, tmp_path: Path) -> None:
    """The shim runs as a script with `python -S`: its probe still finds the one check beside it."""
    code = ("import runpy, sys; probe = runpy.run_path(sys.argv[1])['probe']; "
            "print(probe(sys.argv[2] + '/ok', 2.0), probe(sys.argv[2] + '/bad', 2.0), sep='|')")
    out = subprocess.run([sys.executable, "-S", "-c", code, shim.__file__, server], capture_output=True, text=True,
                         timeout=30, env={"PATH": os.environ.get("PATH", "")}, cwd=tmp_path)
    assert out.stdout.strip() == "None|HTTP 503", out.stderr


def test_check_reports_a_client_error_as_a_row_without_the_secret(tmp_path: Path) -> None:
    ep = Endpoint("t", "tgi", "http://127.0.0.1:1", "m", headers={"authorization": f"Bearer {SECRET}"},
                  read_timeout=2.0)
    got = check_endpoint(ep, 4, 2.0)
    assert not got.ok and got.error and SECRET not in got.error


@pytest.mark.parametrize(("kind", "key_env"), [("vllm", "VLLM_API_KEY"), ("llamacpp", "LLAMACPP_API_KEY"),
                                               ("transformers", None)])
def test_the_shim_is_told_which_variable_holds_its_servers_key_never_the_key(
        kind: str, key_env: str | None, tmp_path: Path) -> None:
    from h2ostack.backends.base import Probe
    from h2ostack.plan_types import ProcessPlan
    from h2ostack.runtimes.process import process_env
    from h2ostack.state import StackState

    sp = ProcessPlan(name="m", kind=kind, api="openai", url="http://127.0.0.1:9", command=("x",),
                     env={key_env: SECRET} if key_env else {}, liveness=Probe("health", "GET", "/health"),
                     unhealthy_after=10.0)
    env = process_env(sp, StackState("s", root=tmp_path / "state"))
    assert env.get("H2OSTACK_LIVENESS_KEY_ENV") == key_env
    assert SECRET not in [v for k, v in env.items() if k.startswith("H2OSTACK_")]
