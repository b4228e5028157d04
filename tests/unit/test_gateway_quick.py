"""The gateway's quick path (`Gateway.quick`, `Wire.quick_done`): a whole answer from a server
passed through, asked on a kept-alive connection and relayed by callbacks. The same answers as
the usual path, and the same bounds: a stalled backend (504), a kept-alive connection the server
had closed (asked again), an answer cut short (503), a client that leaves (its backend told)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from h2ostack.gateway import Gateway, listen
from h2ostack.protocols.endpoint import Endpoint
from tests.unit.test_gateway_wire import KEY, answer, post
from tests.unit.test_upstream import ok, read_request, serving

Backend = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Run:
    """A gateway served alone in front of `backend`, whose `quick` calls are recorded (taken or not)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, read_timeout: float = 600.0) -> None:
        self.taken: list[bool] = []
        self.waiting: list[tuple[int, asyncio.Future[None]]] = []
        self.read_timeout = read_timeout
        real = Gateway.quick

        def spy(gw: Gateway, *args: Any, **kwargs: Any) -> Any:
            got = real(gw, *args, **kwargs)
            self.taken.append(got is not None)
            for n, fut in self.waiting:
                if len(self.taken) >= n and not fut.done():
                    fut.set_result(None)
            return got

        monkeypatch.setattr(Gateway, "quick", spy)

    async def asked(self, n: int) -> None:
        """Until the gateway has routed its `n`th request (and sent it, where it went the quick way)."""
        if len(self.taken) < n:
            fut = asyncio.get_running_loop().create_future()
            self.waiting.append((n, fut))
            await fut

    def __call__(self, backend: Backend, client: Callable[..., Awaitable[Any]]) -> Any:
        async def main() -> Any:
            up, url, conns = await serving(backend)
            gateway = Gateway([Endpoint("m", "openai", url, "served", "vllm")], [KEY], read_timeout=self.read_timeout)
            server, _ = await listen(gateway, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            self.conns = conns
            try:
                return await asyncio.wait_for(client(reader, writer, port), 10)
            finally:
                writer.close()
                server.close()
                up.close()
                await gateway.aclose()

        return asyncio.run(main())


async def metrics(port: int) -> dict[tuple[str, tuple], float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\r\n".encode())
        _, _, text = await answer(reader)
    finally:
        writer.close()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Each request answered with its own body and the tokens a server reports."""
    while (body := await read_request(reader)) is not None:
        got = json.loads(body)
        writer.write(ok(json.dumps({**got, "usage": {"completion_tokens": 3}}).encode()))


def test_quick_answers_are_the_usual_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first request finds no kept-alive connection and goes the usual way; the next ones go
    the quick way: the same status, headers and body (the model rewritten to the server's own
    name), on completions and chat, counted in /metrics the same."""
    run = Run(monkeypatch)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> Any:
        seen = []
        for i, path in enumerate(["/v1/completions", "/v1/completions", "/v1/chat/completions",
                                  "/v1/completions"]):
            writer.write(post({"model": "m", "n": i}, path=path))
            status, headers, body = await answer(reader)
            seen.append((status, sorted(headers), json.loads(body)))
            assert float(headers["x-h2ostack-overhead-ms"]) >= 0
        return seen, await metrics(port)

    seen, got = run(echo, client)
    assert run.taken == [False, True, True, True]
    assert run.conns == [1]  # one kept-alive connection to the backend throughout
    for i, (status, names, body) in enumerate(seen):
        assert status == 200
        assert names == ["content-length", "content-type", "x-h2ostack-overhead-ms"]
        assert body == {"model": "served", "n": i, "usage": {"completion_tokens": 3}}
    assert got[("h2ostack_requests_total", (("model", "m"), ("status", "200")))] == 4
    assert got[("h2ostack_tokens_out_total", (("model", "m"),))] == 12
    assert got[("h2ostack_request_duration_seconds_count", (("model", "m"),))] == 4
    assert got[("h2ostack_requests_in_flight", (("model", "m"),))] == 0


def test_streams_and_a_closing_client_go_the_usual_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """A streamed request is not asked the quick way; a client asking to close gets its answer
    the quick way, with `connection: close`, and the connection is closed after it."""
    run = Run(monkeypatch)

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (body := await read_request(reader)) is not None:
            if json.loads(body).get("stream"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 14\r\n\r\n"
                             b"data: [DONE]\n\n")
            else:
                writer.write(ok(body))

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> Any:
        writer.write(post({"model": "m"}))
        await answer(reader)
        writer.write(post({"model": "m", "stream": True}))
        _, headers, body = await answer(reader)
        assert headers["transfer-encoding"] == "chunked" and body == b"data: [DONE]\n\n"
        writer.write(post({"model": "m"}, extra="connection: close\r\n"))
        status, headers, body = await answer(reader)
        assert status == 200 and headers["connection"] == "close" and json.loads(body) == {"model": "served"}
        assert await reader.read() == b""  # closed by the gateway

    run(backend, client)
    assert run.taken == [False, False, True]


def test_a_stalled_backend_on_the_quick_path_is_a_504_and_its_connection_closed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch, read_timeout=0.5)
    stalled_closed = asyncio.Event()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while (body := await read_request(reader)) is not None:
            if json.loads(body).get("stall"):
                await reader.read()  # until the gateway gives up: EOF
                stalled_closed.set()
                return
            served += 1
            writer.write(ok(body))

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> Any:
        writer.write(post({"model": "m"}))
        assert (await answer(reader))[0] == 200
        loop = asyncio.get_running_loop()
        t = loop.time()
        writer.write(post({"model": "m", "stall": True}))
        status, _, body = await answer(reader)
        waited = loop.time() - t
        assert status == 504 and json.loads(body)["error"]["message"] == "backend m timed out (TimeoutError)"
        assert 0.5 <= waited < 2.0
        await asyncio.wait_for(stalled_closed.wait(), 5)
        writer.write(post({"model": "m", "after": 1}))  # the client's connection still serves
        status, _, body = await answer(reader)
        assert status == 200 and json.loads(body) == {"model": "served", "after": 1}
        return await metrics(port)

    got = run(backend, client)
    assert run.taken == [False, True, False]  # (the stalled connection is gone: the next one is new)
    assert got[("h2ostack_requests_total", (("model", "m"), ("status", "504")))] == 1
    assert got[("h2ostack_requests_in_flight", (("model", "m"),))] == 0


def test_a_kept_alive_connection_the_server_closed_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server takes the second request on a kept-alive connection and closes it without a
    byte: the gateway asks once more on a new connection, and the client sees one answer."""
    run = Run(monkeypatch)

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while (body := await read_request(reader)) is not None:
            n += 1
            if n == 2:  # the kept-alive request: dropped, as a server that timed the connection out
                return
            writer.write(ok(body))

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> Any:
        for i in range(2):
            writer.write(post({"model": "m", "n": i}))
            status, _, body = await answer(reader)
            assert status == 200 and json.loads(body) == {"model": "served", "n": i}
        return await metrics(port)

    got = run(backend, client)
    assert run.taken == [False, True]
    assert run.conns == [1, 1]
    assert got[("h2ostack_requests_total", (("model", "m"), ("status", "200")))] == 2
    assert got[("h2ostack_requests_in_flight", (("model", "m"),))] == 0


def test_an_answer_cut_short_on_the_quick_path_is_a_503(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch)

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (body := await read_request(reader)) is not None:
            if json.loads(body).get("cut"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\"")
                await writer.drain()
                return
            writer.write(ok(body))

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> Any:
        writer.write(post({"model": "m"}))
        assert (await answer(reader))[0] == 200
        writer.write(post({"model": "m", "cut": True}))
        status, _, body = await answer(reader)
        assert status == 503 and json.loads(body)["error"]["type"] == "backend_unavailable"
        writer.write(post({"model": "m", "n": 2}))  # answered on a new backend connection
        status, _, body = await answer(reader)
        assert status == 200 and json.loads(body) == {"model": "served", "n": 2}

    run(backend, client)
    assert run.taken == [False, True, False]
    assert run.conns == [1, 1]


def test_a_client_leaving_during_a_quick_request_closes_its_backend_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch)
    closed = asyncio.Event()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (body := await read_request(reader)) is not None:
            if json.loads(body).get("slow"):
                await reader.read()  # never answered; EOF when the gateway lets go
                closed.set()
                return
            writer.write(ok(body))

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> Any:
        writer.write(post({"model": "m"}))
        assert (await answer(reader))[0] == 200
        writer.write(post({"model": "m", "slow": True}))
        await writer.drain()
        await run.asked(2)
        writer.close()
        await asyncio.wait_for(closed.wait(), 5)
        return await metrics(port)

    got = run(backend, client)
    assert run.taken == [False, True]
    assert got[("h2ostack_requests_total", (("model", "m"), ("status", "499")))] == 1
    assert got[("h2ostack_requests_in_flight", (("model", "m"),))] == 0
