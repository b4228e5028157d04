"""The gateway's upstream pool and its ASGI stream handling, against small HTTP servers on local
sockets that misbehave the ways real ones do: closing kept-alive connections, chunked bodies cut
short, stalling, and a client leaving mid-stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from h2ostack import upstream
from h2ostack.gateway import Gateway
from h2ostack.protocols.endpoint import Endpoint
from h2ostack.upstream import Pool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's body, or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


async def serving(handler: Handler) -> tuple[asyncio.Server, str, list[int]]:
    """A server on a free port; the list counts its connections."""
    conns: list[int] = []

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", conns


def test_keep_alive_reuses_one_connection_and_sends_headers() -> None:
    seen: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (body := await read_request(reader)) is not None:
            seen.append(body)
            writer.write(ok(body))

    async def main() -> None:
        server, url, conns = await serving(echo)
        pool = Pool(url + "/v1", {"authorization": "Bearer k"})
        for i in range(5):
            r = await pool.post("/completions", b'{"n": %d}' % i)
            assert r.status == 200 and json.loads(await r.read()) == {"n": i}
            r.release()
        assert len(conns) == 1 and len(seen) == 5
        await pool.close()
        server.close()

    asyncio.run(main())


def test_an_idle_connection_is_kept_for_the_pools_keep_idle_and_no_longer() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (body := await read_request(reader)) is not None:
            writer.write(ok(body))

    async def main() -> None:
        server, url, conns = await serving(echo)
        pool = Pool(url, keep_idle=0.3)
        for pause in (0.0, 0.1, 0.5, 0.1):
            await asyncio.sleep(pause)
            r = await pool.post("/x", b"{}")
            assert await r.read() == b"{}"
            r.release()
        # reused after 0.1 s idle, a new connection after 0.5 s, that one reused again
        assert len(conns) == 2
        await pool.close()
        server.close()

    asyncio.run(main())


def test_the_gateway_keeps_connections_as_long_as_the_stack_told_the_server_to() -> None:
    gw = Gateway([Endpoint("v", "openai", "http://127.0.0.1:1", "v", "vllm", keep_alive=75.0),
                  Endpoint("o", "openai", "http://127.0.0.1:2", "o", "vllm"),
                  Endpoint("s", "openai", "http://127.0.0.1:3", "s", "vllm", keep_alive=2.0)])
    assert gw.pool(gw.routes["v"]).keep_idle == 74.0
    assert gw.pool(gw.routes["s"]).keep_idle == 1.0  # a user's shorter keep-alive is kept to as well
    assert gw.pool(gw.routes["o"]).keep_idle == upstream.KEEP_IDLE  # a server of its own: about 5 s


def test_a_kept_alive_connection_the_server_closed_is_replaced_once() -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_request(reader)
        writer.write(ok(body or b""))
        await writer.drain()
        # the next request on this connection finds it closed, unanswered: the race with a
        # server whose keep-alive timer runs out
        await read_request(reader)

    async def main() -> None:
        server, url, conns = await serving(one_then_close)
        pool = Pool(url)
        for i in range(3):
            r = await pool.post("/x", b"%d" % i)
            assert await r.read() == b"%d" % i
            r.release()
        assert len(conns) == 3
        # never twice: a second close before any answer is the backend's error
        server.close()

    asyncio.run(main())


def test_chunked_body_pieces_arrive_as_sent_and_a_cut_raises() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(3):
            piece = b"data: %d\n\n" % i
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        # killed before the last chunk

    async def main() -> None:
        server, url, _ = await serving(chunked)
        r = await Pool(url).post("/s", b"{}")
        got = []
        with pytest.raises(ConnectionResetError):
            async for line in r.lines():
                got.append(line)
        assert b"".join(got) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        r.release()
        server.close()

    asyncio.run(main())


def test_a_stalled_backend_times_out_and_a_refused_one_raises() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async def main() -> None:
        server, url, _ = await serving(stall)
        with pytest.raises(TimeoutError):
            await Pool(url, read_timeout=0.3).post("/x", b"{}")
        server.close()
        await server.wait_closed()
        with pytest.raises(OSError):
            await Pool(url).post("/x", b"{}")

    asyncio.run(main())


def test_a_slow_reader_holds_back_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool stops reading past HIGH_WATER, so the server's writes block instead of the
    gateway buffering the whole answer."""
    monkeypatch.setattr(upstream, "HIGH_WATER", 64 * 1024)
    sent: list[int] = []
    total = 64 * 1024 * 1024

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        piece = b"x" * 65536
        for _ in range(total // len(piece)):
            writer.write(piece)
            await writer.drain()
            sent.append(len(piece))

    async def main() -> None:
        server, url, _ = await serving(flood)
        r = await Pool(url).post("/x", b"{}")
        await asyncio.sleep(1.0)  # a reader that does not read
        assert r.conn.buffered <= 64 * 1024 + 65536 * 2
        # the server could push only what the socket buffers hold, far from the whole answer
        assert sum(sent) < total // 4
        n = 0
        async for piece in r.chunks():
            n += len(piece)
        assert n == total
        r.release()
        server.close()

    asyncio.run(main())


def endless_stream(closed: asyncio.Event) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A backend that streams one event every 10 ms (its pace) until its client's connection is
    closed, then sets `closed`."""
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while True:
                piece = b'data: {"choices": []}\n\n'
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            closed.set()
    return endless


def test_a_client_leaving_mid_stream_closes_the_backend_connection() -> None:
    closed = asyncio.Event()
    endless = endless_stream(closed)

    async def main() -> None:
        server, url, _ = await serving(endless)
        gateway = Gateway([Endpoint("m", "openai", url, "m", "vllm")])
        body = json.dumps({"model": "m", "prompt": "x", "stream": True}).encode()
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        inbox.put_nowait({"type": "http.request", "body": body, "more_body": False})
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return await inbox.get()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if len(sent) == 5:
                inbox.put_nowait({"type": "http.disconnect"})

        scope = {"type": "http", "path": "/v1/completions", "method": "POST", "headers": []}
        await asyncio.wait_for(gateway(scope, receive, send), 10)
        assert sent[0]["status"] == 200
        await asyncio.wait_for(closed.wait(), 10)
        server.close()

    asyncio.run(main())


@pytest.mark.parametrize("when", ["while idle", "with the answer"])
def test_bytes_a_backend_sends_beyond_its_answer_are_never_read_as_the_next_answer(when: str) -> None:
    """A backend that writes a stray answer on a kept-alive connection (late, or right behind the
    real one) must not shift every later client's answer by one."""
    sent, released = asyncio.Event(), asyncio.Event()

    async def stray(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (body := await read_request(reader)) is not None:
            extra = ok(b'"stale"') if body == b'"first"' else b""
            if when == "with the answer":
                writer.write(ok(body) + extra)
            else:
                writer.write(ok(body))
                await writer.drain()
                await released.wait()  # the connection is back in the pool, idle
                writer.write(extra)
            await writer.drain()
            released.clear()
            sent.set()

    async def main() -> None:
        server, url, conns = await serving(stray)
        pool = Pool(url)
        answers = []
        for body in (b'"first"', b'"second"', b'"third"'):
            r = await pool.post("/x", body)
            answers.append(await r.read())
            r.release()
            released.set()
            await sent.wait()  # the stray bytes are on their way before the next request goes out
            sent.clear()
        assert answers == [b'"first"', b'"second"', b'"third"']
        assert len(conns) == 2  # the connection with the stray answer was dropped, the next one kept
        await pool.close()
        server.close()

    asyncio.run(main())


def test_bytes_not_yet_delivered_by_the_event_loop_are_seen_at_checkout() -> None:
    """The peek at checkout: stray bytes in the socket that no callback has seen yet."""
    go = asyncio.Event()

    async def stray(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (body := await read_request(reader)) is not None:
            writer.write(ok(body))
            await writer.drain()
            if body == b'"first"':
                await go.wait()
                writer.write(b"HTTP/1.1 200 OK\r\n")
                await writer.drain()

    async def main() -> None:
        server, url, conns = await serving(stray)
        pool = Pool(url)
        r = await pool.post("/x", b'"first"')
        assert await r.read() == b'"first"'
        r.release()
        conn = pool.idle[0]
        conn.transport.pause_reading()  # the loop delivers nothing more to the protocol
        assert conn.clean()
        go.set()
        sock = conn.transport.get_extra_info("socket")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while conn.clean():  # until the stray bytes are in the socket's buffer
            assert loop.time() < deadline, "the stray bytes never arrived"
            await asyncio.sleep(0.01)
        assert sock.fileno() >= 0 and not conn.got_bytes  # seen by the peek alone
        r = await pool.post("/x", b'"second"')
        assert await r.read() == b'"second"'
        r.release()
        assert len(conns) == 2
        await pool.close()
        server.close()

    asyncio.run(main())
