"""The OpenAI-compatible gateway: one `/v1` for every model of a front, whatever serves it.

OpenAI-compatible backends (vLLM, transformers serve, OpenAI itself) are streamed through as
raw bytes, never re-parsed; TGI's native API is translated (messages to a prompt by the prompt
type, `/generate_stream` events to `chat.completion.chunk`, finish reasons mapped); h2oGPT Gradio
servers go through gradio_client. Errors are ones a client can act on: unknown model 404 with
the list, backend down 503, backend timeout 504, a backend's own 4xx passed through, never a
traceback. With `api_keys`, or a front `auth:` (whose password is then a key too: the page's users
reach /v1 with what they already have, and nobody else does), every request needs
`Authorization: Bearer KEY`.

Everything is async with one keep-alive connection pool per backend (h2ostack.upstream: a
fraction of a general-purpose client's per-request cost, which matters for a hop meant to be
invisible) and no framework between uvicorn and the handlers, so a slow client holds only its own
stream. Served alone (`python -m h2ostack.gateway`), it has its own HTTP/1.1 protocol (`Wire`: httptools,
no ASGI cycle, each answer written in one piece), which halves what the hop adds. There, a whole
(non-streamed) answer from a server passed through, asked on a kept-alive connection, takes the
quick path (`Gateway.quick`): sent from the parser's last callback and written back from the
backend connection's, with no task, future or timer per request, which cuts what is left by about a
fifth (bench/RESULTS.md). Each response carries `x-h2ostack-overhead-ms`: the gateway's own time
before the first byte (routing, rewriting, connecting excluded the backend's own work).

Bounded against clients (`Limits`, each settable by an environment variable, e.g. in the front's
`env:`): a request body over `max_body` is answered 413, headers over `max_header` 431, headers not
complete within `header_timeout` or a body not complete within `body_timeout` 408, a connection
beyond `max_connections` 503, each in OpenAI's error shape and with the connection closed. The
header, time and connection bounds hold for the whole port (`serve`, `serve_gateway`), the body
bounds for `/v1`.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from h2ostack.metrics import CONTENT_TYPE as METRICS_TYPE
from h2ostack.metrics import UNKNOWN_MODEL, Metrics, Model, Tally, tokens_in
from h2ostack.protocols import openai as openai_api
from h2ostack.protocols import tgi as tgi_api
from h2ostack.protocols.endpoint import Endpoint, client_for
from h2ostack.upstream import KEEP_IDLE, Pool, _Conn

OVERHEAD_HEADER = "x-h2ostack-overhead-ms"
METRICS = "/metrics"
PATHS = {"/v1/models": "GET", "/v1/chat/completions": "POST", "/v1/completions": "POST", METRICS: "GET"}
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]
# messages -> (prompt, stop sequences), by prompt type; the front supplies h2oGPT's prompt types
PromptFn = tgi_api.PromptFn


# an ASGI reply: status, headers, and a body given whole or piece by piece
Body = bytes | AsyncIterator[bytes]


@dataclass
class Reply:
    status: int
    body: Body
    ctype: str = "application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # called once the reply is sent or given up (a stream's upstream connection)
    done: Callable[[], None] | None = None
    rec: Model | None = None  # the model's metrics, for an answer to a completion request


@dataclass(slots=True)
class Parsed:
    """A completion request's model and body (`Gateway.parse`)."""

    route: Endpoint
    body: dict[str, Any]
    raw: bytes


@dataclass(slots=True)
class Quick:
    """A request asked on the quick path (`Gateway.quick`), until its connection calls back."""

    parsed: Parsed
    chat: bool
    t0: float  # the request's perf_counter
    rec: Model
    pool: Pool
    conn: _Conn
    before: float  # the gateway's own seconds before the request went out
    keep_alive: bool = True  # the client's connection is kept after the answer (set by `Wire`)


def _served(route: Endpoint, body: dict[str, Any], raw: bytes) -> bytes:
    """The request as the server knows its model: `raw`, or the body again with the model renamed."""
    if body["model"] == route.model:
        return raw
    body["model"] = route.model
    return json.dumps(body).encode()


def _json(data: Any, status: int = 200, overhead: str | None = None) -> Reply:
    return Reply(status, json.dumps(data).encode(), headers=_overhead(overhead))


def _overhead(value: str | None) -> list[tuple[bytes, bytes]]:
    return [(OVERHEAD_HEADER.encode(), value.encode())] if value is not None else []


def _error(status: int, message: str, kind: str, **extra: Any) -> Reply:
    return _json({"error": {"message": message, "type": kind, "code": status, **extra}}, status)


def _stream_error(route: Endpoint, exc: BaseException) -> bytes:
    """The event that ends a stream whose backend failed mid-answer (OpenAI clients raise it)."""
    timeout = isinstance(exc, TimeoutError)
    err = {"message": f"backend {route.name} {'timed out' if timeout else 'failed'} mid-answer "
                      f"({type(exc).__name__})", "type": "backend_timeout" if timeout else "backend_unavailable",
           "code": 504 if timeout else 503}
    return b"data: " + json.dumps({"error": err}).encode() + b"\n\n"


def _ms(before: float, t_head: float) -> str:
    """The gateway's own milliseconds: before sending, and after the backend's headers came."""
    return f"{(before + time.perf_counter() - t_head) * 1000:.3f}"


def _env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _env_positive(environ: Mapping[str, str], name: str, default: float) -> float:
    """A positive finite number from the environment; the default for anything else."""
    try:
        value = float(environ.get(name, default))
    except ValueError:
        return default
    return value if math.isfinite(value) and value > 0 else default


@dataclass(frozen=True)
class Limits:
    """What one client may make the gateway hold. The body bound leaves room for long chat contexts:
    a 128k-token conversation is well under 1 MB of JSON, a few base64 images a few MB more."""

    max_body: int = 8 * 1024 * 1024  # bytes: 413
    max_header: int = 64 * 1024  # bytes, request line and headers together: 431
    header_timeout: float = 30.0  # seconds from a request's first byte (or the connection) to its last header: 408
    body_timeout: float = 60.0  # seconds to receive a whole request body: 408
    max_connections: int = 1000  # open connections, idle or not: 503

    ENV = {"max_body": "H2OSTACK_GATEWAY_MAX_BODY", "max_header": "H2OSTACK_GATEWAY_MAX_HEADER",
           "header_timeout": "H2OSTACK_GATEWAY_HEADER_TIMEOUT", "body_timeout": "H2OSTACK_GATEWAY_BODY_TIMEOUT",
           "max_connections": "H2OSTACK_GATEWAY_MAX_CONNECTIONS"}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        env = os.environ if environ is None else environ
        d = cls()
        return cls(int(_env_positive(env, cls.ENV["max_body"], d.max_body)),
                   int(_env_positive(env, cls.ENV["max_header"], d.max_header)),
                   _env_positive(env, cls.ENV["header_timeout"], d.header_timeout),
                   _env_positive(env, cls.ENV["body_timeout"], d.body_timeout),
                   int(_env_positive(env, cls.ENV["max_connections"], d.max_connections)))


CLOSE = [(b"connection", b"close")]


def _refusal(status: int, message: str, kind: str) -> bytes:
    """A whole HTTP response in OpenAI's error shape, written by the protocol itself."""
    from http import HTTPStatus

    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


def bounded_protocol(limits: Limits) -> type:
    """uvicorn's httptools protocol with the bounds uvicorn lacks: header bytes and time, open
    connections (uvicorn's own `limit_concurrency` counts only requests whose headers are in, and
    answers in plain text)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Bounded(HttpToolsProtocol):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.head_bytes = 0  # bytes received towards the current request's headers
            self.head_size = 0  # their parsed size (request line and headers)
            self.awaiting_head = True
            self.head_timer: asyncio.TimerHandle | None = None

        def refuse(self, status: int, message: str, kind: str) -> None:
            self.disarm()
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # never inside another answer
                self.transport.write(_refusal(status, message, kind))
            self.transport.close()

        def arm(self) -> None:
            if self.head_timer is None:
                self.head_timer = self.loop.call_later(limits.header_timeout, self.head_expired)

        def disarm(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def head_expired(self) -> None:
            self.head_timer = None
            if self.awaiting_head:
                self.refuse(408, f"request headers not complete within {limits.header_timeout:g} s",
                            "request_timeout")

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                self.refuse(503, f"the server is at its limit of {limits.max_connections} connections; "
                            "try again later", "server_busy")
                return
            self.arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.awaiting_head:
                self.head_bytes += len(data)
                self.arm()
            super().data_received(data)
            if self.awaiting_head and self.head_bytes > limits.max_header:
                self.refuse(431, f"request headers larger than {limits.max_header} bytes",
                            "request_header_fields_too_large")

        def on_message_begin(self) -> None:
            self.head_size = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self.head_size += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self.head_size += len(name) + len(value) + 4
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self.awaiting_head = False
            self.head_bytes = 0
            self.disarm()
            if self.head_size > limits.max_header:
                self.refuse(431, f"request headers larger than {limits.max_header} bytes",
                            "request_header_fields_too_large")
                return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self.transport.is_closing():  # nothing more for a refused request
                super().on_body(body)

        def on_message_complete(self) -> None:
            self.awaiting_head = True  # whatever comes next is the next request's head
            if self.transport.is_closing():
                return
            super().on_message_complete()

    return Bounded


def serve(app: Any, host: str, port: int, limits: Limits | None = None, **kwargs: Any) -> None:
    """Run `app` under uvicorn with the gateway's bounds on the whole port."""
    import uvicorn

    limits = limits or Limits.from_env()
    uvicorn.run(app, host=host, port=port, http=bounded_protocol(limits), log_level="warning", access_log=False,
                **kwargs)


class Gateway:
    """A raw ASGI app for `/v1` (no framework in the hop: routing is three paths), mounted in front
    of the front's own app by `mount`, or served alone by `python -m h2ostack.gateway`.

    Connecting to a backend is bounded by REQUEST_TIMEOUT_FAST (as the front's panes are), each
    wait for a backend's next bytes by H2OSTACK_GATEWAY_READ_TIMEOUT (default 600 s)."""

    def __init__(self, routes: Sequence[Endpoint], api_keys: Sequence[str] = (), to_prompt: PromptFn | None = None,
                 connect_timeout: float | None = None, read_timeout: float | None = None,
                 limits: Limits | None = None, metrics: Metrics | None = None):
        self.routes = {r.name: r for r in routes}
        # clients may also name a model as its server knows it
        for r in routes:
            self.routes.setdefault(r.model, r)
        # each model's handler and upstream base, by its protocol's client (`protocols.client_for`)
        self.relays: dict[str, Callable[..., Awaitable[Reply]]] = {}
        self.bases: dict[str, str] = {}
        for r in routes:
            client = client_for(r)
            self.relays[r.name] = getattr(self, client.RELAY)
            self.bases[r.name] = client.relay_base
        # the models whose requests go through as they are: the quick path's (`quick`)
        self.passed = {name for name, relay in self.relays.items() if relay in (self.passthrough, self.openai)}
        self.listed = list(routes)
        # keys given (even if all of them came out empty) means closed: an empty key opens nothing
        self.closed = bool(api_keys)
        self.api_keys = [k.encode() for k in api_keys if k]
        self.to_prompt = to_prompt
        self.connect_timeout = (connect_timeout if connect_timeout is not None
                                else _env_seconds("REQUEST_TIMEOUT_FAST", 10.0))
        self.read_timeout = (read_timeout if read_timeout is not None
                             else _env_seconds("H2OSTACK_GATEWAY_READ_TIMEOUT", 600.0))
        self.pools: dict[str, Pool] = {}
        self.limits = limits or Limits.from_env()
        # /metrics: a registry of this gateway's own; each model's recorder bound once
        self.metrics = metrics or Metrics()
        self.recs = {r.name: self.metrics.model(r.name) for r in routes}
        self.unknown = self.metrics.model(UNKNOWN_MODEL)
        self.ondemand: Any = None  # h2ostack.ondemand.Manager where the front has on-demand models

    def pool(self, route: Endpoint) -> Pool:
        """One pool per backend, made on first use inside the server's event loop."""
        p = self.pools.get(route.name)
        if p is None:
            base = self.bases[route.name]
            # a second short of the server's own limit, so that the server is not the one to close
            keep = KEEP_IDLE if route.keep_alive is None else max(0.0, route.keep_alive - 1.0)
            p = self.pools[route.name] = Pool(base, route.headers, self.connect_timeout, self.read_timeout, keep)
        return p

    async def aclose(self) -> None:
        await asyncio.gather(*(p.close() for p in self.pools.values()))

    # -- ASGI ---------------------------------------------------------------------------
    def mount(self, app: ASGIApp) -> ASGIApp:
        """`app` with this gateway answering everything under /v1, and /metrics."""
        async def both(scope: dict[str, Any], receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and (scope["path"].startswith("/v1/") or scope["path"] == METRICS):
                await self(scope, receive, send)
            else:
                await app(scope, receive, send)
        return both

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        t0 = time.perf_counter()
        path, method = scope["path"], scope["method"]
        reply = self.precheck(path, method, scope["headers"])
        if reply is None:
            raw = await self.body(scope, receive)
            if raw is None:
                return
            reply = raw if isinstance(raw, Reply) else await self.handle(raw, path == "/v1/chat/completions", t0)
        self.count_unrouted(reply, path, method)
        await self.send(reply, receive, send, t0)

    def count_unrouted(self, reply: Reply, path: str, method: str) -> None:
        """A completion request refused before its model was known, counted under the unknown model."""
        if reply.rec is None and method == "POST" and path in PATHS:
            reply.rec = self.unknown
            self.unknown.begin()

    def precheck(self, path: str, method: str, headers: Sequence[tuple[bytes, bytes]]) -> Reply | None:
        """The answer to a request that needs no body (unknown path or method, no key, the model
        list); None for one to be routed by its body."""
        if path not in PATHS:
            return _error(404, f"no such endpoint: {path}", "not_found")
        if method != PATHS[path]:
            return _error(405, f"{path} takes {PATHS[path]}", "method_not_allowed")
        if not self.authorized(headers):
            return _error(401, "missing or wrong API key", "authentication_error")
        if method == "GET":
            return self.models() if path != METRICS else Reply(200, self.metrics.text(), METRICS_TYPE)
        return None

    async def body(self, scope: dict[str, Any], receive: Receive) -> bytes | Reply | None:
        """The request body within `max_body` bytes and `body_timeout` seconds, else the error to
        answer (the connection then closes: the rest of the body is never read); None when the
        client left."""
        limit = self.limits.max_body
        too_big = _error(413, f"request body larger than {limit} bytes (H2OSTACK_GATEWAY_MAX_BODY)",
                         "request_too_large")
        too_big.headers += CLOSE
        for name, value in scope["headers"]:
            if name == b"content-length" and value.strip().isdigit() and int(value) > limit:
                return too_big
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    piece = message.get("body", b"")
                    size += len(piece)
                    if size > limit:
                        return too_big
                    chunks.append(piece)
                    if not message.get("more_body"):
                        return b"".join(chunks)
        except TimeoutError:
            slow = _error(408, f"request body not complete within {self.limits.body_timeout:g} s", "request_timeout")
            slow.headers += CLOSE
            return slow

    async def send(self, reply: Reply, receive: Receive, send: Send, t0: float = 0.0) -> None:
        headers = [(b"content-type", reply.ctype.encode()), *reply.headers]
        tally = Tally(reply.rec, t0) if reply.rec is not None else None
        try:
            if isinstance(reply.body, bytes):
                headers.append((b"content-length", str(len(reply.body)).encode()))
                await send({"type": "http.response.start", "status": reply.status, "headers": headers})
                await send({"type": "http.response.body", "body": reply.body})
                if tally is not None:
                    tally.whole(reply.status, reply.body)
                return
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            # a client that leaves mid-stream: stop reading its backend (closing the connection
            # tells the backend to stop generating)
            gone = asyncio.ensure_future(receive())
            try:
                async for piece in reply.body:
                    if gone.done():
                        break
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                    if tally is not None:
                        tally.piece(piece)
                await send({"type": "http.response.body", "body": b""})
            finally:
                gone.cancel()
                await _aclose(reply.body)
        finally:
            _ended(reply, tally)

    def authorized(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        if not self.closed:
            return True
        got = b""
        for name, value in headers:
            if name == b"authorization":
                got = value
                break
        token = got[7:].strip() if got[:7].lower() == b"bearer " else b""
        return bool(token) and any(hmac.compare_digest(token, k) for k in self.api_keys)

    def models(self) -> Reply:
        data = [{"id": r.name, "object": "model", "created": 0, "owned_by": "h2ostack", "backend": r.kind,
                 "served_model": r.model, "health": "unknown", "phase": self.metrics.phase(r.name)}
                for r in self.listed]
        return _json({"object": "list", "data": data})

    def parse(self, raw: bytes) -> Parsed | Reply:
        """A completion request's model and body, or the error to answer."""
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return _error(400, "the request body must be a JSON object", "invalid_request_error")
        name = body.get("model")
        route = self.routes.get(name) if isinstance(name, str) else None
        if route is None:
            names = [r.name for r in self.listed]
            return _error(404, f"unknown model {name!r}; this gateway serves: {', '.join(names)}",
                          "model_not_found", models=names)
        return Parsed(route, body, raw)

    async def handle(self, raw: bytes, chat: bool, t0: float, parsed: Parsed | None = None) -> Reply:
        got = parsed or self.parse(raw)
        if isinstance(got, Reply):
            return got
        route, body, raw = got.route, got.body, got.raw
        rec = self.recs[route.name]
        rec.begin()
        try:
            reply = await self.route(route, body, raw, chat, t0)
        except BaseException as exc:  # cancelled (the client left: 499), or a fault of the gateway's own
            rec.end(499 if isinstance(exc, asyncio.CancelledError) else 500, t0, None)
            raise
        reply.rec = rec
        return reply

    # -- the quick path: a whole answer relayed by callbacks ----------------------------
    def quick(self, parsed: Parsed, chat: bool, t0: float, then: Callable[[_Conn], None]) -> Quick | None:
        """A whole (non-streamed) answer from an OpenAI-compatible server passed through, asked on a
        kept-alive connection with no task, future or timer of its own: `then(conn)` is called
        when the answer is in or the connection failed. None, with nothing sent, for every other
        request (streamed, translated, on demand, or no connection ready), which `handle` answers.
        The same answer as `passthrough` gives, for about a fifth less of the gateway's time on
        the hop (bench/RESULTS.md)."""
        route, body, raw = parsed.route, parsed.body, parsed.raw
        if (route.name not in self.passed or body.get("stream")
                or (self.ondemand is not None and route.name in self.ondemand)
                or (chat and not route.chat and self.to_prompt is not None)):
            return None
        raw = parsed.raw = _served(route, body, raw)
        rec = self.recs[route.name]
        before = time.perf_counter() - t0
        pool = self.pool(route)
        conn = pool.send_whole(pool.request(openai_api.relay_path(chat), raw), then)
        if conn is None:
            return None
        rec.begin()
        return Quick(parsed, chat, t0, rec, pool, conn, before)

    def quick_failed(self, q: Quick) -> Reply | None:
        """The answer to a quick request whose connection failed, as `dispatch` says it; None where
        it is to be asked again the usual way (a kept-alive connection the server had closed, seen
        before any answer: `Pool.post` asks once more)."""
        conn = q.conn
        q.pool.drop(conn)
        if not conn.got_bytes:
            return None
        exc = conn.error or ConnectionResetError()
        reply = _error(503, f"backend {q.parsed.route.name} is not reachable ({type(exc).__name__})",
                       "backend_unavailable")
        reply.rec = q.rec
        return reply

    async def route(self, route: Endpoint, body: dict[str, Any], raw: bytes, chat: bool, t0: float) -> Reply:
        if self.ondemand is not None and route.name in self.ondemand:
            return await self.on_demand(route, body, raw, chat, t0)
        return await self.dispatch(route, body, raw, chat, t0)

    async def on_demand(self, route: Endpoint, body: dict[str, Any], raw: bytes, chat: bool, t0: float) -> Reply:
        """An on-demand model: started (or woken) first, held up until its answer is sent."""
        up = self.ondemand.phase(route.name) == "ready"
        lease = await self.ondemand.acquire(route.name)
        if lease.error is not None:
            reply = _error(503, lease.error, "model_unavailable")
            reply.headers.append((b"retry-after", str(lease.retry_after).encode()))
            return reply
        try:
            # the overhead header counts the manager's own time, not a start the request waited for
            reply = await self.dispatch(route, body, raw, chat, t0 if up else time.perf_counter())
        except BaseException:
            lease.release()
            raise
        before = reply.done

        def done() -> None:
            lease.release()
            if before is not None:
                before()

        reply.done = done
        return reply

    async def dispatch(self, route: Endpoint, body: dict[str, Any], raw: bytes, chat: bool, t0: float) -> Reply:
        try:
            return await self.relays[route.name](route, body, raw, chat, t0)
        except TimeoutError as exc:
            return _error(504, f"backend {route.name} timed out ({type(exc).__name__})", "backend_timeout")
        except (OSError, ValueError) as exc:
            return _error(503, f"backend {route.name} is not reachable ({type(exc).__name__})", "backend_unavailable")

    # -- OpenAI-compatible: bytes through ---------------------------------------------------
    async def openai(self, route: Endpoint, body: dict[str, Any], raw: bytes, chat: bool, t0: float) -> Reply:
        if chat and not route.chat and self.to_prompt is not None:
            return await self.prompted(route, body, t0)
        return await self.passthrough(route, body, raw, chat, t0)

    async def passthrough(self, route: Endpoint, body: dict[str, Any], raw: bytes, chat: bool, t0: float) -> Reply:
        raw = _served(route, body, raw)
        before = time.perf_counter() - t0
        stream = bool(body.get("stream"))
        resp = await self.pool(route).post(openai_api.relay_path(chat), raw, whole=not stream)
        t_head = time.perf_counter()
        ctype = resp.headers.get("content-type", "application/json")
        if not stream or resp.status >= 400:
            try:
                data = await resp.read()
            except BaseException:
                resp.release()
                raise
            # (the connection goes back to the pool once the answer is on its way to the client)
            return Reply(resp.status, data, ctype, _overhead(_ms(before, t_head)), resp.release)

        async def relay() -> AsyncIterator[bytes]:
            tail = b"\n\n"
            try:
                async for chunk in resp.chunks():
                    tail = chunk[-2:]
                    yield chunk
            except (OSError, TimeoutError) as exc:  # the backend died mid-answer
                yield (b"" if tail == b"\n\n" else b"\n\n") + _stream_error(route, exc)

        return Reply(resp.status, relay(), ctype, _overhead(_ms(before, t_head)), resp.release)

    # -- vLLM with a prompt type: chat as completions, as the front's panes ask it -----------
    async def prompted(self, route: Endpoint, body: dict[str, Any], t0: float) -> Reply:
        from h2ostack.prompts import StopTrimmer, trim_partial_stop

        assert self.to_prompt is not None
        prompt, stops = self.to_prompt(body.get("messages") or [], route)
        ask, stops = openai_api.prompted_request(route, body, prompt, stops)
        stream = bool(body.get("stream"))
        rid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        before = time.perf_counter() - t0
        resp = await self.pool(route).post(openai_api.relay_path(False), json.dumps(ask).encode())
        t_head = time.perf_counter()
        if not stream or resp.status >= 400:
            try:
                raw = await resp.read()
            finally:
                resp.release()
            if resp.status >= 400:
                return Reply(resp.status, raw, resp.headers.get("content-type", "application/json"),
                             _overhead(_ms(before, t_head)))
            data = json.loads(raw)
            choice = (data.get("choices") or [{}])[0]
            text = trim_partial_stop(str(choice.get("text") or ""), stops)
            out = {"id": rid, "object": "chat.completion", "created": created, "model": route.name,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                "finish_reason": choice.get("finish_reason") or "stop"}],
                   "usage": data.get("usage") or {}}
            return _json(out, overhead=_ms(before, t_head))

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            return b"data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                           "model": route.name, "choices": [{"index": 0, "delta": delta,
                                                                             "finish_reason": finish}]}).encode() + b"\n\n"

        async def translate() -> AsyncIterator[bytes]:
            trim, finish = StopTrimmer(stops), None
            try:
                yield chunk({"role": "assistant", "content": ""}, None)
                async for line in resp.lines():
                    if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                        continue
                    event = json.loads(line[5:])
                    if "error" in event:
                        yield b"data: " + json.dumps({"error": event["error"]}).encode() + b"\n\n"
                        return
                    for c in event.get("choices") or []:
                        text = trim.push(str(c.get("text") or ""))
                        if text:
                            yield chunk({"content": text}, None)
                        finish = c.get("finish_reason") or finish
                rest = trim.end()
                if rest:
                    yield chunk({"content": rest}, None)
                yield chunk({}, finish or "stop")
                yield b"data: [DONE]\n\n"
            except (OSError, TimeoutError) as exc:  # the backend died mid-answer
                yield _stream_error(route, exc)

        return Reply(200, translate(), "text/event-stream", _overhead(_ms(before, t_head)), resp.release)

    # -- TGI native: translated (h2ostack.protocols.tgi) ---------------------------------
    async def tgi(self, route: Endpoint, body: dict[str, Any], raw: bytes, chat: bool, t0: float) -> Reply:
        payload = tgi_api.request(route, body, chat, self.to_prompt)
        stream = bool(body.get("stream"))
        tr = tgi_api.Translation(route.name, payload, chat, ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
                                 int(time.time()))
        before = time.perf_counter() - t0
        resp = await self.pool(route).post(tgi_api.path(stream), json.dumps(payload).encode())
        t_head = time.perf_counter()
        if resp.status >= 400:
            try:
                err = await resp.read()
            finally:
                resp.release()
            return _error(resp.status, f"backend {route.name}: {tgi_api.error_message(err)}", "backend_error")
        if not stream:
            try:
                data = json.loads(await resp.read())
            finally:
                resp.release()
            return _json(tr.whole(data), overhead=_ms(before, t_head))

        async def translate() -> AsyncIterator[bytes]:
            try:
                for first in tr.start():
                    yield first
                async for line in resp.lines():
                    pieces, over = tr.event(line)
                    for piece in pieces:
                        yield piece
                    if over:
                        return
                if not tr.finished:  # the socket closed cleanly, but before TGI's last event
                    yield _stream_error(route, ConnectionResetError("stream ended before its last token"))
                    return
                yield b"data: [DONE]\n\n"
            except (OSError, TimeoutError) as exc:  # the backend died mid-answer
                yield _stream_error(route, exc)

        return Reply(200, translate(), "text/event-stream", _overhead(_ms(before, t_head)), resp.release)

    # -- h2oGPT Gradio servers ----------------------------------------------------------
    async def h2ogpt(self, route: Endpoint, body: dict[str, Any], raw: bytes, chat: bool, t0: float) -> Reply:
        if chat:
            messages = body.get("messages") or []
            instruction = str(messages[-1].get("content", "")) if messages else ""
        else:
            instruction = str(body.get("prompt", ""))
        before = time.perf_counter() - t0
        from h2ostack.protocols.h2ogpt import ask

        try:
            text = await asyncio.to_thread(ask, route.root, route.headers, instruction, body.get("max_tokens") or 256,
                                           body.get("temperature") or 0.0)
        except Exception as exc:  # gradio_client raises its own types for a down server
            return _error(503, f"backend {route.name} failed: {type(exc).__name__}: {exc}", "backend_unavailable")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        overhead = _overhead(f"{before * 1000:.3f}")
        if chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}
            out = {"id": rid, "object": "chat.completion", "created": created, "model": route.name,
                   "choices": [choice]}
        else:
            out = {"id": rid, "object": "text_completion", "created": created, "model": route.name,
                   "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}
        if not body.get("stream"):
            return Reply(200, json.dumps(out).encode(), headers=overhead)

        async def once() -> AsyncIterator[bytes]:
            if chat:
                delta = {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}
                yield b"data: " + json.dumps({**out, "object": "chat.completion.chunk", "choices": [delta]}).encode()
                yield b"\n\n"
                end = {"index": 0, "delta": {}, "finish_reason": "stop"}
                yield b"data: " + json.dumps({**out, "object": "chat.completion.chunk", "choices": [end]}).encode()
                yield b"\n\n"
            else:
                yield b"data: " + json.dumps(out).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return Reply(200, once(), "text/event-stream", overhead)


# -- the gateway alone: its own HTTP/1.1 server -------------------------------------------
IDLE_KEEP = 5.0  # seconds a kept-alive client connection may sit idle between requests (as uvicorn's default)
TICK = 0.25  # seconds between sweeps of the connections' deadlines (no timer made and cancelled per request)
_PHRASES: dict[int, bytes] = {}
_COMPLETIONS = ("/v1/completions", "/v1/chat/completions")
_QUICK_HEADS: dict[tuple[int, str], bytes] = {}
_KEEP_TAIL, _CLOSE_TAIL = b"\r\ncontent-length: ", b"\r\nconnection: close\r\ncontent-length: "


def _status_line(status: int) -> bytes:
    line = _PHRASES.get(status)
    if line is None:
        from http import HTTPStatus

        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        line = _PHRASES[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode()
    return line


def _safe(value: bytes) -> bool:
    return b"\r" not in value and b"\n" not in value and b"\0" not in value


class Wire(asyncio.Protocol):
    """One client connection of the gateway served alone: HTTP/1.1 parsed by httptools, each
    request's answer written whole (head and body in one write) or streamed in chunks, with the
    same bounds as `bounded_protocol`: header bytes and time (431, 408), body bytes and time
    (413, 408), open connections (503). No ASGI cycle in between: on a hop meant to be invisible
    it was half of the gateway's time."""

    def __init__(self, gateway: Gateway, limits: Limits, conns: set[Wire]) -> None:
        import httptools

        self.gw, self.limits, self.conns = gateway, limits, conns
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.parse_url = httptools.parse_url
        self.parse_error, self.upgrade = httptools.HttpParserError, httptools.HttpParserUpgrade
        self.transport: asyncio.Transport | None = None
        self.deadline = 0.0  # (the loop's clock) when `expire` is called, unless disarmed first
        self.expire: Callable[[], None] | None = None
        self.awaiting_head = True  # between requests, or inside a request's head
        self.head_bytes = 0
        self.closing = False  # refused or gone: nothing more is read or answered
        self.last = False  # the client asked to switch protocols: answer what it asked, then close
        self.busy = False  # an answer is being made or written
        self.queue: list[tuple[float, str, str, bytes | Reply | Parsed | None, bool]] = []  # pipelined requests
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.quick: Quick | None = None  # a request on the quick path, until its backend calls back
        self.begin()

    def begin(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.pieces: list[bytes] = []
        self.size = 0
        self.early: Reply | None = None  # answered from the head alone; the body is not kept
        self.path = self.method = ""
        self.t0 = 0.0

    # -- timers ------------------------------------------------------------------------
    def arm(self, seconds: float, then: Callable[[], None]) -> None:
        self.deadline, self.expire = self.loop.time() + seconds, then

    def disarm(self) -> None:
        self.expire = None

    def sweep(self, now: float) -> None:
        """Called every TICK by the server: the bound that has passed, if any."""
        then = self.expire
        if then is not None and now >= self.deadline:
            self.expire = None
            then()
        q = self.quick
        if q is not None and now - q.conn.last_bytes >= self.gw.read_timeout:
            self.quick_expired(q)

    def head_expired(self) -> None:
        self.refuse(408, f"request headers not complete within {self.limits.header_timeout:g} s", "request_timeout")

    def body_expired(self) -> None:
        self.refuse(408, f"request body not complete within {self.limits.body_timeout:g} s", "request_timeout")

    def idle_expired(self) -> None:
        if not self.busy and self.head_bytes == 0 and self.transport is not None:
            self.closing = True
            self.transport.close()

    def refuse(self, status: int, message: str, kind: str) -> None:
        """Answer in OpenAI's error shape and close, unless another answer is being written."""
        self.disarm()
        if self.closing or self.transport is None:
            return
        self.closing = True
        if not self.busy:
            self.transport.write(_refusal(status, message, kind))
        self.transport.close()

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conns.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(self.conns) > self.limits.max_connections:
            self.refuse(503, f"the server is at its limit of {self.limits.max_connections} connections; "
                        "try again later", "server_busy")
            return
        self.arm(self.limits.header_timeout, self.head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.discard(self)
        self.closing = True
        self.disarm()
        self.queue.clear()
        q = self.quick
        if q is not None:  # the client left while its backend answers: the backend is told so
            self.quick = None
            q.pool.drop(q.conn)
            q.rec.end(499, q.t0, None)
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.closing or self.last:
            return
        if self.awaiting_head:
            if self.head_bytes == 0 and not self.busy:  # the first byte of a head: its time starts
                self.arm(self.limits.header_timeout, self.head_expired)
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except self.upgrade:  # (an h2c or websocket offer): plain HTTP/1.1, this request the last
            self.last = True
            if not self.busy:
                self.refuse(400, "this server speaks HTTP/1.1 only", "invalid_request_error")
            return
        except self.parse_error:
            self.refuse(400, "malformed HTTP request", "invalid_request_error")
            return
        if self.awaiting_head and self.head_bytes > self.limits.max_header:
            self.refuse(431, f"request headers larger than {self.limits.max_header} bytes",
                        "request_header_fields_too_large")

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.begin()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.awaiting_head = False
        self.head_bytes = 0
        self.disarm()
        if self.closing:
            return
        limits = self.limits
        if self.head_size > limits.max_header:
            self.refuse(431, f"request headers larger than {limits.max_header} bytes", "request_header_fields_too_large")
            return
        self.t0 = time.perf_counter()
        raw_path = self.parse_url(self.url).path or b"/"
        path = raw_path.decode("latin-1")
        if "%" in path:
            from urllib.parse import unquote

            path = unquote(path)
        self.path = path
        self.method = self.parser.get_method().decode("latin-1")
        self.early = self.gw.precheck(path, self.method, self.headers)
        for name, value in self.headers:
            if name == b"content-length" and value.strip().isdigit() and int(value) > limits.max_body:
                self.refuse(413, f"request body larger than {limits.max_body} bytes (H2OSTACK_GATEWAY_MAX_BODY)",
                            "request_too_large")
                return
            if (name == b"expect" and value.strip().lower() == b"100-continue" and self.early is None
                    and self.transport is not None):
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.arm(limits.body_timeout, self.body_expired)

    def on_body(self, body: bytes) -> None:
        if self.closing:
            return
        self.size += len(body)
        if self.size > self.limits.max_body:
            self.refuse(413, f"request body larger than {self.limits.max_body} bytes (H2OSTACK_GATEWAY_MAX_BODY)",
                        "request_too_large")
            return
        if self.early is None:  # (a request answered from its head alone: its body is read, not kept)
            self.pieces.append(body)

    def on_message_complete(self) -> None:
        self.awaiting_head = True
        self.disarm()
        if self.closing:
            return
        body: bytes | Reply | None = self.early
        if body is None:
            body = self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)
        # (an answer to HEAD would carry a body the client does not expect: the connection closes after it)
        request = (self.t0, self.path, self.method, body, self.parser.should_keep_alive() and self.method != "HEAD")
        if self.busy:  # pipelined: answered in order, and nothing more read until then
            self.queue.append(request)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self.busy = True
        if type(body) is bytes and self.method == "POST" and self.path in _COMPLETIONS:
            got = self.gw.parse(body)
            if isinstance(got, Parsed):
                try:
                    self.quick = self.gw.quick(got, self.path == "/v1/chat/completions", self.t0, self.quick_done)
                except Exception:  # (never a traceback to the client: answered the usual way)
                    self.quick = None
                if self.quick is not None:
                    self.quick.keep_alive = request[4]
                    return
            request = (*request[:3], got, request[4])
        self.task = self.loop.create_task(self.answer(*request))  # (held: the loop keeps only a weak one)

    def quick_done(self, conn: _Conn) -> None:
        """The backend of the quick request answered, or its connection failed: the answer
        written from here (or, for a kept-alive connection the server had closed, asked again
        the usual way)."""
        q = self.quick
        if q is None or q.conn is not conn:  # (given up already)
            return
        self.quick = None
        t0, keep_alive = q.t0, q.keep_alive and not self.last
        try:
            if conn.answered:  # (the usual case) written at once, the way `write_whole` writes it; counted after
                t_in = time.perf_counter()
                data, status = conn.take(), conn.status
                head, close = self.quick_head(status, conn.headers.get("content-type", "application/json"), keep_alive)
                if not self.closing and self.transport is not None:
                    self.transport.write(b"%b%b%b%d\r\n\r\n%b" % (head, _ms(q.before, t_in).encode(), close,
                                                                      len(data), data))
                if close is _CLOSE_TAIL:
                    self.closing = True
                    keep_alive = False
                q.pool.give_back(conn)
                q.rec.end(status, t0, tokens_in(data) if status < 400 else None)
                self.after(keep_alive)
                return
            reply = self.gw.quick_failed(q)
        except Exception as exc:  # never a traceback to the client
            q.pool.drop(conn)
            q.rec.end(500, t0, None)
            reply = _error(500, f"the gateway failed ({type(exc).__name__})", "internal_error")
        if reply is None:  # asked again, the usual way: counted there from the start
            q.rec.retract()
            path = "/v1/chat/completions" if q.chat else "/v1/completions"
            self.task = self.loop.create_task(self.answer(t0, path, "POST", q.parsed, keep_alive))
            return
        self.finish(reply, keep_alive, t0)

    def quick_head(self, status: int, ctype: str, keep_alive: bool) -> tuple[bytes, bytes]:
        """A quick answer's head up to its overhead's value, and what follows that value up to the
        body's length: as `head` writes them, made once per status and content type."""
        head = _QUICK_HEADS.get((status, ctype))
        if head is None:
            lines, _ = self.head(Reply(status, b"", ctype), True)
            head = b"".join(lines) + OVERHEAD_HEADER.encode() + b": "
            if len(_QUICK_HEADS) < 64:  # (a backend's own content types: a few)
                _QUICK_HEADS[(status, ctype)] = head
        return head, (_KEEP_TAIL if keep_alive else _CLOSE_TAIL)

    def quick_expired(self, q: Quick) -> None:
        """No byte from the quick request's backend within the read timeout: 504, as `dispatch` says it."""
        self.quick = None
        q.pool.drop(q.conn)
        reply = _error(504, f"backend {q.parsed.route.name} timed out (TimeoutError)", "backend_timeout")
        reply.rec = q.rec
        self.finish(reply, q.keep_alive and not self.last, q.t0)

    def finish(self, reply: Reply, keep_alive: bool, t0: float) -> None:
        """A whole answer written from a callback, then what `answer` does after each answer."""
        try:
            self.write_whole(reply, keep_alive, t0)
        except Exception:
            keep_alive = False
            if self.transport is not None:
                self.transport.close()
        self.after(keep_alive)

    # -- answering ---------------------------------------------------------------------
    async def answer(self, t0: float, path: str, method: str, body: bytes | Reply | Parsed | None,
                     keep_alive: bool) -> None:
        while True:
            try:
                if isinstance(body, Reply):
                    reply = body
                else:
                    chat = path == "/v1/chat/completions"
                    reply = await (self.gw.handle(body.raw, chat, t0, body) if isinstance(body, Parsed)
                                   else self.gw.handle(body or b"", chat, t0))
            except Exception as exc:  # never a traceback to the client
                reply = _error(500, f"the gateway failed ({type(exc).__name__})", "internal_error")
            self.gw.count_unrouted(reply, path, method)
            keep_alive = keep_alive and not self.last
            try:
                await self.write(reply, keep_alive, t0)
            except Exception:
                keep_alive = False
                if self.transport is not None:
                    self.transport.close()
            if not self.after(keep_alive, in_task=True):
                return
            t0, path, method, body, keep_alive = self.queue.pop(0)
            if not self.queue and self.transport is not None:
                self.transport.resume_reading()

    def after(self, keep_alive: bool, in_task: bool = False) -> bool:
        """After an answer: the connection closed, or kept for the next request (its timer armed),
        or True where a pipelined request waits, which `answer` then takes (from a callback a task
        is started for it)."""
        if not keep_alive or self.closing or self.transport is None:
            self.busy = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()
            return False
        if not self.queue:
            self.busy = False
            if self.head_bytes == 0:  # idle: kept for IDLE_KEEP seconds
                self.arm(min(IDLE_KEEP, self.limits.header_timeout), self.idle_expired)
            else:
                self.arm(self.limits.header_timeout, self.head_expired)
            return False
        if not in_task:
            request = self.queue.pop(0)
            if not self.queue:
                self.transport.resume_reading()
            self.task = self.loop.create_task(self.answer(*request))
        return True

    def head(self, reply: Reply, keep_alive: bool) -> tuple[list[bytes], bool]:
        """The answer's status line and headers (no blank line yet), and whether the connection closes after it."""
        head = [_status_line(reply.status)]
        ctype = reply.ctype.encode("latin-1", "replace")
        if _safe(ctype):
            head += [b"content-type: ", ctype, b"\r\n"]
        close = not keep_alive
        for name, value in reply.headers:
            if name == b"connection" and value == b"close":
                close = True
            elif _safe(name) and _safe(value):
                head += [name, b": ", value, b"\r\n"]
        if close:
            head.append(b"connection: close\r\n")
        return head, close

    def write_whole(self, reply: Reply, keep_alive: bool, t0: float = 0.0) -> None:
        """An answer given whole, head and body in one write, counted for its model."""
        tally = Tally(reply.rec, t0) if reply.rec is not None else None  # as `Gateway.send` counts
        try:
            assert isinstance(reply.body, bytes)
            head, close = self.head(reply, keep_alive)
            head += [b"content-length: ", str(len(reply.body)).encode(), b"\r\n\r\n", reply.body]
            if not self.closing and self.transport is not None:
                self.transport.write(b"".join(head))
            if close:
                self.closing = True
            if tally is not None:
                tally.whole(reply.status, reply.body)
        finally:
            _ended(reply, tally)

    async def write(self, reply: Reply, keep_alive: bool, t0: float = 0.0) -> None:
        if isinstance(reply.body, bytes):
            self.write_whole(reply, keep_alive, t0)
            return
        transport = self.transport
        assert transport is not None
        tally = Tally(reply.rec, t0) if reply.rec is not None else None  # as `Gateway.send` counts
        try:
            head, close = self.head(reply, keep_alive)
            chunked = self.parser.get_http_version() == "1.1"
            if chunked:
                head.append(b"transfer-encoding: chunked\r\n")
            else:
                close = True  # a body that ends with the connection
            head.append(b"\r\n")
            if close:
                self.closing = True  # (reads nothing more from this client)
            transport.write(b"".join(head))
            stream = reply.body
            try:
                async for piece in stream:
                    if transport.is_closing():  # the client left: stop reading its backend
                        break
                    if piece:
                        transport.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
                        if tally is not None:
                            tally.piece(piece)
                    if self.write_paused:
                        self.drained = self.loop.create_future()
                        await self.drained
                if chunked and not transport.is_closing():
                    transport.write(b"0\r\n\r\n")
            finally:
                await _aclose(stream)
        finally:
            _ended(reply, tally)


async def _aclose(body: Any) -> None:
    """A streamed answer's generator closed (its upstream connection let go)."""
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()


def _ended(reply: Reply, tally: Tally | None) -> None:
    """An answer sent or given up: counted for its model, and its `done` called."""
    if tally is not None:
        tally.end(reply.status)
    if reply.done is not None:
        reply.done()


async def listen(gateway: Gateway, host: str, port: int) -> tuple[asyncio.Server, set[Wire]]:
    """A server answering `gateway` on (host, port) in the running loop, and its open connections."""
    conns: set[Wire] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Wire(gateway, gateway.limits, conns), host, port, backlog=2048)

    def tick() -> None:
        now = loop.time()
        for conn in list(conns):
            conn.sweep(now)
        if server.is_serving() or conns:
            loop.call_later(TICK, tick)

    loop.call_later(TICK, tick)
    return server, conns


def serve_gateway(gateway: Gateway, host: str, port: int) -> None:
    """Serve `gateway` alone on its own HTTP/1.1 server (`Wire`), until SIGINT or SIGTERM."""
    import signal

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server, conns = await listen(gateway, host, port)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            server.close()
            for conn in list(conns):
                if conn.transport is not None:
                    conn.transport.close()
            await gateway.aclose()

    # what start-up made (the stack's plan, pydantic's models) is never garbage: out of the collector's
    # sight, so that a full collection does not walk it in the middle of someone's request
    gc.collect()
    gc.freeze()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def routes_from_plan(plan: Any, stack: Any, models: Sequence[str]) -> list[Endpoint]:
    """The gateway's routes for a front's models, secrets (auth headers) included."""
    from h2ostack.api import auth_headers

    return [Endpoint.from_plan(plan.services[name], auth_headers(plan.services[name], stack),
                               stack.services[name].prompt_dict) for name in models]


def front_keys(spec: Any) -> list[str]:
    """The bearer keys of a front's /v1: its `api_keys`, and with `auth:` its users' password, so
    that a front whose page is protected never leaves its gateway (and the models' keys) open."""
    from h2ostack.spec import reveal

    keys = [reveal(k) or "" for k in spec.api_keys]
    if spec.auth is not None:
        keys.append(reveal(spec.auth.password) or "")
    return keys


def build(stack_file: str, front: str) -> Gateway:
    """The gateway of one front of a stack file."""
    from h2ostack.api import load_plan

    stack, _, plan = load_plan(stack_file, check_ports=False)
    spec = stack.fronts[front]
    to_prompt = None
    try:
        from h2ostack.prompts import gateway_prompt as to_prompt  # type: ignore[no-redef]
    except ImportError:
        to_prompt = None
    gateway = Gateway(routes_from_plan(plan, stack, spec.models), front_keys(spec), to_prompt)
    attach_on_demand(gateway, plan, stack, spec.models)
    return gateway


def attach_on_demand(gateway: Gateway, plan: Any, stack: Any, models: Sequence[str]) -> None:
    """Give the gateway the manager of its on-demand models (none: nothing changes per request)."""
    if any(plan.services[m].on_demand for m in models):
        from h2ostack.ondemand import manager_for

        gateway.ondemand = manager = manager_for(plan, stack, models)
        if manager is not None:
            manager.listeners.append(metrics_listener(gateway.metrics, manager))
            for name in manager.models:  # /metrics and /v1/models tell each one's phase from the start
                gateway.metrics.set_phase(name, ON_DEMAND_PHASE[manager.phase(name)])


# the on-demand manager's phases as the readiness phases /metrics and /v1/models tell
ON_DEMAND_PHASE = {"stopped": "stopped (on demand)", "starting": "loading", "ready": "ready",
                   "putting away": "ready", "asleep": "asleep", "waking": "loading"}


def metrics_listener(metrics: Metrics, manager: Any) -> Callable[[Any], None]:
    """The on-demand manager's events into the gateway's metrics: each model's phase and waiting
    requests, and its starts, wakes and put-aways with their durations."""
    def on_event(event: Any) -> None:
        name = event.service
        metrics.set_phase(name, ON_DEMAND_PHASE.get(manager.phase(name), "ready"))
        metrics.set_waiting(name, manager.models[name].waiters)
        if event.seconds is not None:
            if event.kind == "ready":
                metrics.on_start(name, event.seconds)
            elif event.kind == "woken":
                metrics.on_wake(name, event.seconds)
            elif event.kind == "put away":
                metrics.on_put_away(name, event.seconds)
    return on_event


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m h2ostack.gateway STACK_FILE --front NAME --port P`: the gateway alone, without the UI."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m h2ostack.gateway")
    ap.add_argument("stack_file")
    ap.add_argument("--front", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    args = ap.parse_args(argv)
    gateway = build(args.stack_file, args.front)
    serve_gateway(gateway, args.host, args.port)


if __name__ == "__main__":
    main()
