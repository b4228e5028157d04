"""One client per backend kind, on maintained libraries, each streaming an answer's pieces.

TGI native through huggingface_hub's InferenceClient (prompt from the prompt type, its stop
sequences, trailing partial stops trimmed); OpenAI-compatible chat through the `openai` client
(the server's chat template); vLLM completions with a prompt type (`vllm:` form); h2oGPT Gradio
servers through gradio_client (`/submit_nochat_api`). Connection and first byte are bounded by
REQUEST_TIMEOUT_FAST (default 10 s).
"""

from __future__ import annotations

import ast
import functools
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from h2ostack.prompts import (
    StopTrimmer,
    build_prompt,
    infer_prompt_type,
    prompt_dict_for,
    stops_for,
)
from h2ostack.protocols.h2ogpt import h2ogpt_client  # noqa: F401 - re-exported

READ_TIMEOUT = 600.0  # seconds: a turn's wait for the backend's next piece


def fast_timeout() -> float:
    return float(os.environ.get("REQUEST_TIMEOUT_FAST", "10"))


@dataclass
class Backend:
    name: str
    kind: str  # tgi | vllm | transformers | openai | h2ogpt
    api: str  # openai | tgi | h2ogpt
    url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    prompt_type: str | None = None
    prompt_dict: dict[str, Any] | None = None
    chat: bool = True  # openai api: chat (server template) or completions (prompt type)
    health: str = "unknown"
    revision: str | None = None

    @property
    def effective_prompt_type(self) -> str:
        return self.prompt_type or infer_prompt_type(self.model) or "plain"

    @property
    def openai_base(self) -> str:
        base = self.url.rstrip("/")
        return base if self.kind == "openai" or base.endswith("/v1") else base + "/v1"


def _openai(b: Backend, read_timeout: float) -> Any:
    key = b.headers.get("authorization", "Bearer none").split(" ", 1)[-1]
    return _openai_client(b.openai_base, key, read_timeout, fast_timeout())


@functools.lru_cache(maxsize=256)
def _openai_client(base: str, key: str, read_timeout: float, connect_timeout: float) -> Any:
    """One client (and connection pool) per server, shared by the panes' threads (the client is
    thread-safe): making one costs tens of milliseconds of CPU (its TLS context), which a turn
    would otherwise spend on every pane just as the first tokens arrive."""
    import httpx
    from openai import OpenAI

    return OpenAI(base_url=base, api_key=key, max_retries=0, timeout=httpx.Timeout(read_timeout, connect=connect_timeout))


def warm(b: Backend) -> None:
    """Import the backend's client library and make the client a turn will use, so the first
    question after start does not wait for them (importing openai and building its TLS context
    took about 2 s of CPU on the first turn). For OpenAI-compatible servers a canned answer is
    also streamed through a throwaway client (no network): the openai package imports its
    resources and builds its response models on first use, another 50 ms of CPU per process."""
    if b.api == "openai":
        _openai(b, READ_TIMEOUT)
        _warm_openai()
    elif b.api == "tgi":
        import huggingface_hub  # noqa: F401


_WARM_CHUNKS = {
    "/v1/chat/completions": {"id": "w", "object": "chat.completion.chunk", "created": 0, "model": "w",
                             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "w"},
                                          "finish_reason": None}]},
    "/v1/completions": {"id": "w", "object": "text_completion", "created": 0, "model": "w",
                        "choices": [{"index": 0, "text": "w", "finish_reason": None}]},
}


@functools.cache
def _warm_openai() -> None:
    import httpx
    from openai import OpenAI

    def answer(request: httpx.Request) -> httpx.Response:
        body = b"data: " + json.dumps(_WARM_CHUNKS[request.url.path]).encode() + b"\n\ndata: [DONE]\n\n"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with OpenAI(base_url="http://warm.invalid/v1", api_key="-",
                http_client=httpx.Client(transport=httpx.MockTransport(answer))) as client:
        for _ in client.chat.completions.create(model="w", messages=[{"role": "user", "content": "w"}], stream=True):
            pass
        for _ in client.completions.create(model="w", prompt="w", stream=True):
            pass


def stream_answer(b: Backend, history: Sequence[tuple[str, str]], message: str, max_new_tokens: int,
                  temperature: float, read_timeout: float = READ_TIMEOUT) -> Iterator[str]:
    """Yield the answer's pieces as they arrive."""
    if b.api == "openai" and b.chat:
        messages: list[dict[str, str]] = []
        for user, bot in history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": bot}]
        messages.append({"role": "user", "content": message})
        stream = _openai(b, read_timeout).chat.completions.create(
            model=b.model, messages=messages, max_tokens=max_new_tokens, temperature=temperature, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
        return
    if b.api == "openai":
        prompt, stops = build_prompt(history, message, b.effective_prompt_type, b.prompt_dict)
        stream = _openai(b, read_timeout).completions.create(
            model=b.model, prompt=prompt, max_tokens=max_new_tokens, temperature=temperature,
            stop=stops[:4] or None, stream=True)
        yield from _trimmed((c.choices[0].text for c in stream if c.choices), stops)
        return
    if b.api == "tgi":
        from huggingface_hub import InferenceClient

        prompt, stops = build_prompt(history, message, b.effective_prompt_type, b.prompt_dict)
        client = InferenceClient(base_url=b.url, headers=b.headers or None, timeout=read_timeout)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "stream": True, "details": True,
                                  "stop": stops or None}
        if temperature > 0:
            kwargs.update(temperature=temperature, do_sample=True)
        yield from _trimmed(_tgi_tokens(client.text_generation(prompt, **kwargs)), stops)
        return
    yield _h2ogpt_answer(b, message, max_new_tokens, temperature)


class StreamCut(ConnectionError):
    """The server closed a stream before its last event (it died or was killed mid-answer)."""


def _tgi_tokens(events: Any) -> Iterator[str]:
    """TGI's stream events to token texts; its last event carries `details` (asked for), so a
    stream that ends without them was cut, even where the socket closed cleanly."""
    finished = False
    for ev in events:
        if not ev.token.special:
            yield ev.token.text
        finished = ev.details is not None or ev.generated_text is not None
    if not finished:
        raise StreamCut("the server closed the stream before its last token")


def _trimmed(pieces: Iterator[str], stops: Sequence[str]) -> Iterator[str]:
    """Pass pieces through, holding back any tail that could be the start of a stop string (the
    gateway's /v1 cuts its streams with the same StopTrimmer)."""
    trim = StopTrimmer(stops)
    for piece in pieces:
        out = trim.push(piece)
        if out:
            yield out
        if trim.done:
            return
    rest = trim.end()
    if rest:
        yield rest


def _h2ogpt_answer(b: Backend, message: str, max_new_tokens: int, temperature: float) -> str:
    client = h2ogpt_client(b.url, b.headers)
    try:
        out = client.predict(str({"instruction": message, "max_new_tokens": max_new_tokens,
                                  "temperature": temperature}), api_name="/submit_nochat_api")
    finally:
        close = getattr(client, "close", None)
        if close:
            close()
    parsed = ast.literal_eval(out) if isinstance(out, str) else out
    return str(parsed.get("response", "")) if isinstance(parsed, dict) else str(parsed)


def probe(b: Backend, timeout: float) -> tuple[bool, str]:
    """Is the endpoint there? (and its model revision, where the server tells it)"""
    import httpx

    try:
        with httpx.Client(timeout=timeout, headers=b.headers, trust_env=False) as c:
            if b.api == "tgi":
                r = c.get(b.url.rstrip("/") + "/info")
                if r.status_code == 200:
                    b.revision = (r.json().get("model_sha") or "")[:12] or None
                    return True, "healthy"
                return False, f"HTTP {r.status_code}"
            if b.api == "openai" and b.kind != "openai":
                # a server h2ostack knows: /health (transformers serve's /v1/models lists the hub cache)
                r = c.get(b.url.rstrip("/") + "/health")
                return (r.status_code == 200, "healthy" if r.status_code == 200 else f"HTTP {r.status_code}")
            if b.api == "openai":
                r = c.get(b.openai_base + "/models")
                return (r.status_code == 200, "healthy" if r.status_code == 200 else f"HTTP {r.status_code}")
            r = c.get(b.url.rstrip("/") + "/config")
            return (r.status_code == 200, "healthy" if r.status_code == 200 else f"HTTP {r.status_code}")
    except httpx.HTTPError as exc:
        return False, f"unavailable ({type(exc).__name__})"


def backend_for(name: str, text: str, prompt_type: str | None = None, api_key: str | None = None,
                timeout: float = 10.0) -> Backend:
    """A pane added from a server string: which kind it is, decided by its form and a probe."""
    from h2ostack.front.servers import parse_server

    srv = parse_server(text)
    if srv.form in ("openai_chat", "openai"):
        key = api_key or os.environ.get("OPENAI_API_KEY", "")
        return Backend(name, "openai", "openai", srv.url, name, {"authorization": f"Bearer {key}"}, prompt_type)
    if srv.form in ("vllm", "vllm_chat"):
        return Backend(name, "vllm", "openai", srv.url, name, srv.headers, prompt_type, chat=srv.form == "vllm_chat")
    tgi = Backend(name, "tgi", "tgi", srv.url, name, srv.headers, prompt_type)
    ok, _ = probe(tgi, timeout)
    if ok:
        return tgi
    return Backend(name, "h2ogpt", "h2ogpt", srv.url, name, srv.headers, prompt_type)


def timed(pieces: Iterator[str]) -> Iterator[tuple[str, float]]:
    t0 = time.perf_counter()
    for p in pieces:
        yield p, time.perf_counter() - t0


__all__ = ["Backend", "backend_for", "probe", "prompt_dict_for", "stops_for", "stream_answer", "timed"]
