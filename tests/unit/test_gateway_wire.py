"""The gateway served alone (`Wire`, its own HTTP/1.1 protocol), on local sockets against a small
backend: answers whole in one piece and kept alive, pipelined requests in order, streams chunked,
interim and early answers, and the clients that break the protocol."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from h2ostack.gateway import Gateway, Limits, listen
from h2ostack.protocols.endpoint import Endpoint
from tests.unit.test_upstream import endless_stream, ok, read_request, serving

KEY = "sk-wire"
Client = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A backend answering each request with its own body."""
    while (body := await read_request(reader)) is not None:
        writer.write(ok(body))


async def streaming(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A backend answering each request with three events, chunked."""
    while await read_request(reader) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")


def post(body: dict, key: str = KEY, extra: str = "", path: str = "/v1/completions") -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\n{extra}\r\n").encode() + data


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One whole answer: status, headers, body (content-length or chunked undone)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) != 0:
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    await reader.readexactly(2)
    return status, headers, body


def run(backend: Callable[..., Awaitable[None]], client: Client, limits: Limits | None = None) -> None:
    async def main() -> None:
        up, url, _ = await serving(backend)
        gateway = Gateway([Endpoint("m", "openai", url, "m", "vllm")], [KEY], limits=limits)
        server, conns = await listen(gateway, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await asyncio.wait_for(client(reader, writer), 10)
        finally:
            writer.close()
            server.close()
            up.close()
            await gateway.aclose()

    asyncio.run(main())


def test_answers_are_kept_alive_and_pipelined_ones_come_in_order() -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(3):  # one after another on one connection
            writer.write(post({"model": "m", "n": i}))
            status, headers, body = await answer(reader)
            assert status == 200 and json.loads(body) == {"model": "m", "n": i}
            assert "x-h2ostack-overhead-ms" in headers and "connection" not in headers
        writer.write(b"".join(post({"model": "m", "n": i}) for i in range(3, 6)))  # sent at once
        assert [json.loads((await answer(reader))[2])["n"] for _ in range(3)] == [3, 4, 5]

    run(echo, client)


def test_a_stream_is_chunked_and_the_connection_serves_the_next_request() -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            writer.write(post({"model": "m", "stream": True}))
            status, headers, body = await answer(reader)
            assert status == 200 and headers["transfer-encoding"] == "chunked"
            assert body == b'data: {"n": 1}\n\ndata: {"n": 2}\n\ndata: [DONE]\n\n'

    run(streaming, client)


def test_early_answers_interim_answers_and_head() -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(post({"model": "m"}, key="wrong"))  # its body read and dropped; the connection stays
        status, _, body = await answer(reader)
        assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
        writer.write(post({"model": "nope"}))
        status, _, body = await answer(reader)
        assert status == 404 and json.loads(body)["error"]["models"] == ["m"]
        writer.write(f"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\r\n".encode())
        status, _, body = await answer(reader)
        assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["m"]
        data = json.dumps({"model": "m", "x": 1}).encode()
        head = post({"model": "m", "x": 1}, extra="expect: 100-continue\r\n")[:-len(data)]
        writer.write(head)  # the body only once the server asks for it
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(data)
        status, _, body = await answer(reader)
        assert status == 200 and json.loads(body) == {"model": "m", "x": 1}
        writer.write(f"HEAD /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\r\n".encode())
        status, headers, _ = await answer(reader)
        assert status == 405 and headers["connection"] == "close"
        assert await reader.read() == b""  # and closed: a body after HEAD's answer would confuse the client

    run(echo, client)


def test_a_malformed_request_or_a_protocol_switch_is_answered_and_closed() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"POST /v1/completions HTTP/1.1\r\ncontent-length: nope\r\n\r\n")
        status, headers, body = await answer(reader)
        assert status == 400 and headers["connection"] == "close" and b"Traceback" not in body
        assert await reader.read() == b""

    async def upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\nconnection: Upgrade, "
                     "HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".encode())
        status, headers, _ = await answer(reader)  # answered in HTTP/1.1, then closed
        assert status == 200 and headers["connection"] == "close"
        assert await reader.read() == b""

    run(echo, garbage)
    run(echo, upgrade)


def test_a_body_over_the_limit_is_refused_whole_or_in_pieces() -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(post({"model": "m", "pad": "x" * 2000}))
        status, headers, body = await answer(reader)
        assert status == 413 and headers["connection"] == "close"
        assert json.loads(body)["error"]["type"] == "request_too_large"

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n"
                     "transfer-encoding: chunked\r\n\r\n".encode())
        for _ in range(3):
            writer.write(b"200\r\n" + b"x" * 512 + b"\r\n")
        status, _, _ = await answer(reader)
        assert status == 413

    run(echo, client, Limits(max_body=1000))
    run(echo, chunked, Limits(max_body=1000))


def test_a_client_leaving_mid_stream_closes_the_backend_connection() -> None:
    closed = asyncio.Event()
    endless = endless_stream(closed)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(post({"model": "m", "stream": True}))
        await reader.readuntil(b"data:")
        writer.close()
        await closed.wait()

    run(endless, client)


def test_the_gateway_served_alone_counts_its_requests_in_metrics() -> None:
    """/metrics of the gateway served alone: answers whole and streamed, with their tokens, and a
    request for an unknown model under `-`, as the gateway in a front counts them."""
    from prometheus_client.parser import text_string_to_metric_families

    async def chat(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (body := await read_request(reader)) is not None:
            if json.loads(body).get("stream"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                for piece in (b'data: {"choices": [{"text": "a"}]}\n\n', b'data: {"choices": [{"text": "b"}]}\n\n',
                              b"data: [DONE]\n\n"):
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(ok(b'{"choices": [{"text": "x"}], "usage": {"completion_tokens": 5}}'))

    async def main() -> dict:
        up, url, _ = await serving(chat)
        gateway = Gateway([Endpoint("m", "openai", url, "m", "vllm")], [KEY])
        server, _ = await listen(gateway, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for body in ({"model": "m"}, {"model": "m", "stream": True}, {"model": "nope"}):
                writer.write(post(body))
                await asyncio.wait_for(answer(reader), 10)
            writer.write(f"GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\r\n".encode())
            status, headers, text = await asyncio.wait_for(answer(reader), 10)
            assert status == 200 and headers["content-type"].startswith("text/plain")
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}
        finally:
            writer.close()
            server.close()
            up.close()
            await gateway.aclose()

    got = asyncio.run(main())
    assert got[("h2ostack_requests_total", (("model", "m"), ("status", "200")))] == 2
    assert got[("h2ostack_requests_total", (("model", "-"), ("status", "404")))] == 1
    assert got[("h2ostack_tokens_out_total", (("model", "m"),))] == 7  # 5 reported, 2 streamed pieces
    assert got[("h2ostack_time_to_first_token_seconds_count", (("model", "m"),))] == 1
    assert got[("h2ostack_requests_in_flight", (("model", "m"),))] == 0
