"""The OpenAI-compatible gateway: one `/v1` for every model of a front, whatever serves it.

OpenAI-compatible backends (vLLM, transformers serve, OpenAI itself) are streamed through as
raw bytes, never re-parsed; TGI's native API is translated (messages to a prompt by the prompt
type, `/generate_stream` events to `chat.completion.chunk`, finish reasons mapped); h2oGPT Gradio
servers go through gradio_client. Errors are ones a client can act on: unknown model 404 with
the list, backend down 503, backend timeout 504, a backend's own 4xx passed through, never a
traceback. With `api_keys` every request needs `Authorization: Bearer KEY`.

Everything is async with one connection pool per backend (aiohttp's client: a fraction of
httpx's per-request cost, which matters for a hop meant to be invisible), so a slow client holds
only its own stream. Each response carries `x-h2ostack-overhead-ms`: the gateway's own time before the
first byte (routing, rewriting, connecting excluded the backend's own work).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

OVERHEAD_HEADER = "x-h2ostack-overhead-ms"
JSON_HEADERS = {"content-type": "application/json"}
FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}
# messages -> (prompt, stop sequences), by prompt type; the front supplies h2oGPT's prompt types
PromptFn = Callable[[Sequence[Mapping[str, Any]], "Route_"], tuple[str, list[str]]]


@dataclass
class Route_:
    """One model the gateway serves: where it lives and how to talk to it."""

    name: str
    kind: str  # tgi | vllm | transformers | openai | h2ogpt
    api: str  # openai | tgi | h2ogpt
    base: str  # server root; for kind openai the API base
    served_model: str
    headers: dict[str, str] = field(default_factory=dict)
    prompt_type: str | None = None
    prompt_dict: dict[str, str] | None = None
    health: str = "unknown"

    @property
    def openai_base(self) -> str:
        base = self.base.rstrip("/")
        return base if self.kind == "openai" or base.endswith("/v1") else base + "/v1"


def _error(status: int, message: str, kind: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status, **extra}}, status_code=status)


def _stream_error(route: Route_, exc: BaseException) -> bytes:
    """The event that ends a stream whose backend failed mid-answer (OpenAI clients raise it)."""
    timeout = isinstance(exc, TimeoutError)
    err = {"message": f"backend {route.name} {'timed out' if timeout else 'failed'} mid-answer "
                      f"({type(exc).__name__})", "type": "backend_timeout" if timeout else "backend_unavailable",
           "code": 504 if timeout else 503}
    return b"data: " + json.dumps({"error": err}).encode() + b"\n\n"


def _ms(t0: float) -> str:
    return f"{(time.perf_counter() - t0) * 1000:.3f}"


class Gateway:
    def __init__(self, routes: Sequence[Route_], api_keys: Sequence[str] = (), to_prompt: PromptFn | None = None,
                 connect_timeout: float = 10.0, read_timeout: float = 600.0):
        self.routes = {r.name: r for r in routes}
        # clients may also name a model as its server knows it
        for r in routes:
            self.routes.setdefault(r.served_model, r)
        self.listed = list(routes)
        self.api_keys = [k.encode() for k in api_keys]
        self.to_prompt = to_prompt
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self.clients: dict[str, aiohttp.ClientSession] = {}

    def client(self, route: Route_) -> aiohttp.ClientSession:
        """One pool per backend, made on first use inside the server's event loop."""
        c = self.clients.get(route.name)
        if c is None or c.closed:
            c = self.clients[route.name] = aiohttp.ClientSession(
                headers=route.headers, timeout=self.timeout, connector=aiohttp.TCPConnector(limit=0),
                auto_decompress=False, skip_auto_headers=("User-Agent",))
        return c

    async def aclose(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()))

    # -- the app ------------------------------------------------------------------------
    def routes_v1(self) -> list[Route]:
        return [Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"])]

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            yield
            await self.aclose()

        return Starlette(routes=self.routes_v1(), lifespan=lifespan)

    def authorized(self, request: Request) -> bool:
        if not self.api_keys:
            return True
        got = request.headers.get("authorization", "")
        token = got[7:].encode() if got.lower().startswith("bearer ") else b""
        return any(hmac.compare_digest(token, k) for k in self.api_keys)

    async def models(self, request: Request) -> Response:
        if not self.authorized(request):
            return _error(401, "missing or wrong API key", "authentication_error")
        data = [{"id": r.name, "object": "model", "created": 0, "owned_by": "h2ostack", "backend": r.kind,
                 "served_model": r.served_model, "health": r.health} for r in self.listed]
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Response:
        return await self.handle(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self.handle(request, chat=False)

    async def handle(self, request: Request, chat: bool) -> Response:
        t0 = time.perf_counter()
        if not self.authorized(request):
            return _error(401, "missing or wrong API key", "authentication_error")
        raw = await request.body()
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
        try:
            if route.api == "openai":
                return await self.passthrough(route, body, chat, t0)
            if route.api == "tgi":
                return await self.tgi(route, body, chat, t0)
            return await self.h2ogpt(route, body, chat, t0)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            return _error(504, f"backend {route.name} timed out ({type(exc).__name__})", "backend_timeout")
        except (aiohttp.ClientError, OSError) as exc:
            return _error(503, f"backend {route.name} is not reachable ({type(exc).__name__})", "backend_unavailable")

    # -- OpenAI-compatible: bytes through ---------------------------------------------------
    async def passthrough(self, route: Route_, body: dict[str, Any], chat: bool, t0: float) -> Response:
        body["model"] = route.served_model
        url = route.openai_base + ("/chat/completions" if chat else "/completions")
        data = json.dumps(body).encode()
        before = time.perf_counter() - t0
        resp = await self.client(route).post(url, data=data, headers=JSON_HEADERS)
        t_head = time.perf_counter()
        ctype = resp.headers.get("content-type", "application/json")
        if not body.get("stream") or resp.status >= 400:
            data = await resp.read()
            resp.release()
            headers = {OVERHEAD_HEADER: f"{(before + time.perf_counter() - t_head) * 1000:.3f}"}
            return Response(data, status_code=resp.status, media_type=ctype, headers=headers)

        async def relay() -> AsyncIterator[bytes]:
            tail = b"\n\n"
            try:
                async for chunk in resp.content.iter_any():
                    tail = chunk[-2:]
                    yield chunk
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:  # the backend died mid-answer
                yield (b"" if tail == b"\n\n" else b"\n\n") + _stream_error(route, exc)
            finally:
                resp.release()

        headers = {OVERHEAD_HEADER: f"{(before + time.perf_counter() - t_head) * 1000:.3f}"}
        return StreamingResponse(relay(), status_code=resp.status, media_type=ctype, headers=headers)

    # -- TGI native: translated ---------------------------------------------------------
    def tgi_request(self, route: Route_, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        if chat:
            messages = body.get("messages") or []
            if self.to_prompt is not None:
                prompt, stops = self.to_prompt(messages, route)
            else:
                prompt, stops = "\n".join(str(m.get("content", "")) for m in messages), []
        else:
            prompt, stops = str(body.get("prompt", "")), []
        user_stop = body.get("stop")
        stops = stops + ([user_stop] if isinstance(user_stop, str) else list(user_stop or []))
        params: dict[str, Any] = {"max_new_tokens": body.get("max_tokens") or body.get("max_completion_tokens")
                                  or 256, "details": True}
        temperature = body.get("temperature")
        if temperature:
            params.update(temperature=temperature, do_sample=True)
        for key in ("top_p", "seed"):
            if body.get(key) is not None:
                params[key] = body[key]
        if stops:
            params["stop"] = stops
        return {"inputs": prompt, "parameters": params}

    async def tgi(self, route: Route_, body: dict[str, Any], chat: bool, t0: float) -> Response:
        payload = self.tgi_request(route, body, chat)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        stream = bool(body.get("stream"))
        url = route.base.rstrip("/") + ("/generate_stream" if stream else "/generate")
        before = time.perf_counter() - t0
        resp = await self.client(route).post(url, data=json.dumps(payload).encode(), headers=JSON_HEADERS)
        t_head = time.perf_counter()
        if resp.status >= 400:
            raw = await resp.read()
            resp.release()
            try:
                message = json.loads(raw).get("error", raw.decode(errors="replace"))
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace")
            return _error(resp.status, f"backend {route.name}: {message}", "backend_error")
        if not stream:
            data = json.loads(await resp.read())
            resp.release()
            text = data.get("generated_text", "") if isinstance(data, dict) else ""
            details = (data.get("details") or {}) if isinstance(data, dict) else {}
            finish = FINISH.get(details.get("finish_reason", ""), "stop")
            usage = {"prompt_tokens": 0, "completion_tokens": details.get("generated_tokens", 0)}
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
                out = {"id": rid, "object": "chat.completion", "created": created, "model": route.name,
                       "choices": [choice], "usage": usage}
            else:
                choice["text"] = text
                out = {"id": rid, "object": "text_completion", "created": created, "model": route.name,
                       "choices": [choice], "usage": usage}
            headers = {OVERHEAD_HEADER: f"{(before + time.perf_counter() - t_head) * 1000:.3f}"}
            return JSONResponse(out, headers=headers)

        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None, first: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
                if text is not None:
                    delta["content"] = text
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish}
            return b"data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": route.name,
                                           "choices": [choice]}).encode() + b"\n\n"

        async def translate() -> AsyncIterator[bytes]:
            try:
                if chat:
                    yield chunk(None, None, first=True)
                finished = False
                async for raw in resp.content:
                    if not raw.startswith(b"data:"):
                        continue
                    event = json.loads(raw[5:])
                    if "error" in event:
                        err = {"error": {"message": str(event["error"]), "type": event.get("error_type", "backend")}}
                        yield b"data: " + json.dumps(err).encode() + b"\n\n"
                        return
                    token = event.get("token") or {}
                    if not token.get("special"):
                        yield chunk(token.get("text", ""), None)
                    details = event.get("details")
                    if event.get("generated_text") is not None:
                        finished = True
                        reason = FINISH.get((details or {}).get("finish_reason", ""), "stop")
                        yield chunk(None if chat else "", reason)
                if not finished:  # the socket closed cleanly, but before TGI's last event
                    yield _stream_error(route, ConnectionResetError("stream ended before its last token"))
                    return
                yield b"data: [DONE]\n\n"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:  # the backend died mid-answer
                yield _stream_error(route, exc)
            finally:
                resp.release()

        headers = {OVERHEAD_HEADER: f"{(before + time.perf_counter() - t_head) * 1000:.3f}"}
        return StreamingResponse(translate(), media_type="text/event-stream", headers=headers)

    # -- h2oGPT Gradio servers ----------------------------------------------------------
    async def h2ogpt(self, route: Route_, body: dict[str, Any], chat: bool, t0: float) -> Response:
        if chat:
            messages = body.get("messages") or []
            instruction = str(messages[-1].get("content", "")) if messages else ""
        else:
            instruction = str(body.get("prompt", ""))
        kwargs = {"instruction": instruction, "max_new_tokens": body.get("max_tokens") or 256,
                  "temperature": body.get("temperature") or 0.0}
        before = time.perf_counter() - t0

        def call() -> str:
            from gradio_client import Client

            client = Client(route.base, verbose=False)
            try:
                out = client.predict(str(kwargs), api_name="/submit_nochat_api")
            finally:
                client.close()
            import ast

            parsed = ast.literal_eval(out) if isinstance(out, str) else out
            return str(parsed.get("response", "")) if isinstance(parsed, dict) else str(parsed)

        try:
            text = await asyncio.to_thread(call)
        except Exception as exc:  # gradio_client raises its own types for a down server
            return _error(503, f"backend {route.name} failed: {type(exc).__name__}: {exc}", "backend_unavailable")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        headers = {OVERHEAD_HEADER: f"{before * 1000:.3f}"}
        if chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}
            out = {"id": rid, "object": "chat.completion", "created": created, "model": route.name,
                   "choices": [choice]}
        else:
            out = {"id": rid, "object": "text_completion", "created": created, "model": route.name,
                   "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}
        if not body.get("stream"):
            return JSONResponse(out, headers=headers)

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

        return StreamingResponse(once(), media_type="text/event-stream", headers=headers)


def routes_from_plan(plan: Any, stack: Any, models: Sequence[str]) -> list[Route_]:
    """The gateway's routes for a front's models, secrets (auth headers) included."""
    from h2ostack.api import auth_headers

    out = []
    for name in models:
        sp = plan.services[name]
        svc = stack.services[name]
        out.append(Route_(name, sp.kind, sp.api, sp.url or "", sp.served_model or name, auth_headers(sp, stack),
                          sp.prompt_type, svc.prompt_dict))
    return out


def build(stack_file: str, front: str) -> Gateway:
    """The gateway of one front of a stack file."""
    from h2ostack.api import load_plan
    from h2ostack.spec import reveal

    stack, _, plan = load_plan(stack_file, check_ports=False)
    spec = stack.fronts[front]
    to_prompt = None
    try:
        from h2ostack.front.prompts import gateway_prompt as to_prompt  # type: ignore[no-redef]
    except ImportError:
        to_prompt = None
    keys = [reveal(k) or "" for k in spec.api_keys]
    return Gateway(routes_from_plan(plan, stack, spec.models), keys, to_prompt)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m h2ostack.gateway STACK_FILE --front NAME --port P`: the gateway alone, without the UI."""
    import argparse

    import uvicorn

    ap = argparse.ArgumentParser(prog="python -m h2ostack.gateway")
    ap.add_argument("stack_file")
    ap.add_argument("--front", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    args = ap.parse_args(argv)
    app = build(args.stack_file, args.front).app()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
