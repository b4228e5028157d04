"""The gateway's bounds against hostile clients, on real sockets against a real running gateway
(`python -m h2ostack.gateway`), loopback only, each case bounded in time and count."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from h2ostack.gateway import Limits
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.integration
KEY = "sk-limits-key"
LIMITS = {"H2OSTACK_GATEWAY_MAX_BODY": "200000", "H2OSTACK_GATEWAY_MAX_HEADER": "16384",
          "H2OSTACK_GATEWAY_HEADER_TIMEOUT": "1", "H2OSTACK_GATEWAY_BODY_TIMEOUT": "1",
          "H2OSTACK_GATEWAY_MAX_CONNECTIONS": "40"}


@pytest.fixture
def gateway(tmp_path: Path, write_stack, stack_name: str) -> Iterator[tuple[str, int]]:
    port, gone = free_port(), free_port()
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  m: {{kind: vllm, url: "http://127.0.0.1:{gone}", model: m}}
fronts:
  chat: {{port: {port}, models: [m], api_keys: ["{KEY}"]}}
""")
    env = {**__import__("os").environ, "H2OSTACK_STATE_DIR": str(tmp_path / "state"), **LIMITS}
    proc = subprocess.Popen([sys.executable, "-m", "h2ostack.gateway", str(path), "--front", "chat", "--port",
                             str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(lambda: _answers(f"http://127.0.0.1:{port}/v1/models"), 30, "the gateway")
    yield "127.0.0.1", port
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    assert b"Traceback" not in out, out.decode(errors="replace")[-3000:]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 401
    except httpx.HTTPError:
        return False


def _connect(addr: tuple[str, int]) -> socket.socket:
    s = socket.create_connection(addr, timeout=10)
    return s


def _answer(s: socket.socket) -> tuple[int, dict, bytes]:
    """Status, the OpenAI error object and the rest; the server must close the connection after it."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"], head


def _head(path: str = "/v1/chat/completions", extra: str = "", length: int | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: x", f"authorization: Bearer {KEY}", "content-type: application/json"]
    if length is not None:
        lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def test_a_body_over_the_limit_is_a_413_before_it_is_read(gateway: tuple[str, int]) -> None:
    with _connect(gateway) as s:  # announced: 100 MB, refused at once
        s.sendall(_head(length=100_000_000) + b"{")
        status, err, head = _answer(s)
    assert status == 413 and err["code"] == 413 and err["type"] == "request_too_large"
    assert b"connection: close" in head.lower()
    with _connect(gateway) as s:  # not announced (chunked): refused once the limit is crossed
        piece = b"x" * 50_000
        s.sendall(_head(extra="transfer-encoding: chunked\r\n") + b"%x\r\n%s\r\n" % (len(piece), piece) * 4)
        s.sendall(b"a\r\n0123456789\r\n")  # 200,010 bytes: one piece over
        status, err, _ = _answer(s)
    assert status == 413
    # under the limit, the body is taken: the (absent) backend's answer, not a refusal
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "y" * 150_000}]})
    r = httpx.post(f"http://{gateway[0]}:{gateway[1]}/v1/chat/completions", content=body,
                   headers={"authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["type"] == "backend_unavailable"


def test_headers_over_the_limit_are_a_431_whole_or_still_coming(gateway: tuple[str, int]) -> None:
    with _connect(gateway) as s:  # complete, but too large
        s.sendall(_head(extra=f"x-big: {'a' * 20_000}\r\n", length=2) + b"{}")
        status, err, _ = _answer(s)
    assert status == 431 and err["type"] == "request_header_fields_too_large"
    with _connect(gateway) as s:  # a header that never ends: refused once past the limit, not buffered
        s.sendall(_head()[:-2] + b"x-endless: ")
        sent = 0
        try:
            while sent < 10_000_000:
                s.sendall(b"a" * 4096)
                sent += 4096
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, err, _ = _answer(s)
    assert status == 431 and sent < 10_000_000


def test_slow_headers_and_slow_bodies_are_a_408(gateway: tuple[str, int]) -> None:
    t0 = time.monotonic()
    with _connect(gateway) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")  # and nothing more
        status, err, _ = _answer(s)
    assert status == 408 and err["type"] == "request_timeout" and "headers" in err["message"]
    with _connect(gateway) as s:  # a connection that never says anything
        status, _, _ = _answer(s)
    assert status == 408
    with _connect(gateway) as s:
        s.sendall(_head(length=100) + b'{"model":')  # 9 of 100 bytes
        status, err, _ = _answer(s)
    assert status == 408 and "body" in err["message"]
    assert time.monotonic() - t0 < 8  # three 1 s bounds, not the client's patience


def test_connections_beyond_the_limit_are_a_503_and_half_sent_ones_do_not_stay(gateway: tuple[str, int]) -> None:
    held = []
    try:
        for _ in range(40):  # the limit, each a half-sent request
            s = _connect(gateway)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
            held.append(s)
        with _connect(gateway) as extra:
            status, err, _ = _answer(extra)
        assert status == 503 and err["type"] == "server_busy" and err["code"] == 503
        # each held one is answered 408 and closed by the header bound
        answers = [_answer(s)[0] for s in held]
        assert answers == [408] * 40
    finally:
        for s in held:
            s.close()
    # and the gateway serves again
    r = httpx.get(f"http://{gateway[0]}:{gateway[1]}/v1/models", headers={"authorization": f"Bearer {KEY}"},
                  timeout=10)
    assert r.status_code == 200


def test_limits_come_from_the_environment_and_nonsense_falls_back_to_the_defaults() -> None:
    d = Limits()
    assert d.max_body == 8 * 1024 * 1024 and d.max_header == 64 * 1024
    got = Limits.from_env({"H2OSTACK_GATEWAY_MAX_BODY": "1000", "H2OSTACK_GATEWAY_HEADER_TIMEOUT": "2.5"})
    assert got.max_body == 1000 and got.header_timeout == 2.5 and got.max_connections == d.max_connections
    for bad in ("abc", "nan", "inf", "-1", "0", ""):
        assert Limits.from_env({"H2OSTACK_GATEWAY_MAX_BODY": bad, "H2OSTACK_GATEWAY_BODY_TIMEOUT": bad}) == d


def _v1_models(base: str, key: str | None) -> int:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.get(base + "/v1/models", headers=headers, timeout=10).status_code


def test_a_front_with_auth_closes_its_gateway_too(tmp_path: Path, write_stack, stack_name: str) -> None:
    """`auth:` without `api_keys`: the page's password is the only way into /v1, on the gateway
    alone and on the built-in front's own app."""
    port = free_port()
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  m: {{kind: vllm, url: "http://127.0.0.1:{free_port()}", model: m}}
fronts:
  chat: {{port: {port}, models: [m], auth: {{user: admin, password: "${{FRONT_PW}}"}}}}
""")
    env = {**__import__("os").environ, "H2OSTACK_STATE_DIR": str(tmp_path / "state"), "FRONT_PW": "pw-front-1"}
    proc = subprocess.Popen([sys.executable, "-m", "h2ostack.gateway", str(path), "--front", "chat", "--port",
                             str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(base + "/v1/models"), 30, "the gateway")
        assert [_v1_models(base, k) for k in (None, "wrong", "admin", "admin:pw-front-1", "pw-front-1")] == [401] * 4 + [200]
    finally:
        proc.terminate()
        proc.wait(10)

    from starlette.testclient import TestClient

    from h2ostack.front.app import build_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FRONT_PW", "pw-front-1")
        mp.setenv("H2OSTACK_STATE_DIR", str(tmp_path / "state"))
        client = TestClient(build_app(str(path), "chat"))
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"authorization": "Bearer pw-front-1"}).status_code == 200


def test_an_empty_key_opens_nothing(tmp_path: Path, write_stack, stack_name: str) -> None:
    """A key that came out empty (an unset variable) leaves /v1 closed, never open to every request."""
    from starlette.testclient import TestClient

    from h2ostack.gateway import Gateway
    from h2ostack.protocols.endpoint import Endpoint

    gw = Gateway([Endpoint("m", "openai", "http://127.0.0.1:1", "m", "vllm")], [""])
    client = TestClient(gw)
    assert [client.get("/v1/models", headers=h).status_code
            for h in ({}, {"authorization": "Bearer "}, {"authorization": "Bearer  "})] == [401] * 3
