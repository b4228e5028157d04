"""The OpenAI-compatible API (vLLM, `transformers serve`, OpenAI itself): chat through the `openai`
client (the server's chat template), or completions with a prompt built by the endpoint's prompt
type (the guide's `vllm:` form); and for the gateway, which relays these requests as bytes, the
paths and the one rewrite it makes."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from h2ostack.protocols.endpoint import Client, Endpoint, trimmed


@functools.lru_cache(maxsize=256)
def _client(base: str, key: str, read_timeout: float, connect_timeout: float) -> Any:
    """One client (and connection pool) per server, shared by the panes' threads (the client is
    thread-safe): making one costs tens of milliseconds of CPU (its TLS context), which a turn
    would otherwise spend on every pane just as the first tokens arrive."""
    import httpx
    from openai import OpenAI

    return OpenAI(base_url=base, api_key=key, max_retries=0, timeout=httpx.Timeout(read_timeout, connect=connect_timeout))


class OpenAIClient(Client):
    @property
    def RELAY(self) -> str:  # type: ignore[override]  # noqa: N802
        # chat relayed as it is; chat asked as completions with the prompt type where it is not
        return "passthrough" if self.endpoint.chat else "openai"

    @property
    def relay_base(self) -> str:
        return self.endpoint.api_base

    def up_target(self) -> tuple[str, str]:
        # a server h2ostack knows: /health (transformers serve's /v1/models lists the hub cache);
        # an API reached at its base: its model list
        ep = self.endpoint
        return (ep.root, "/health") if ep.api_prefix else (ep.api_base, "/models")

    def sdk(self, read_timeout: float | None = None) -> Any:
        ep = self.endpoint
        return _client(ep.api_base, ep.bearer, ep.read_timeout if read_timeout is None else read_timeout, ep.connect)

    def warm(self) -> None:
        """Make the client a turn will use, and stream a canned answer through a throwaway one (no
        network): the openai package imports its resources and builds its response models on first
        use (about 2 s of CPU for the import and TLS context, 50 ms more per process)."""
        self.sdk()
        _warm_openai()

    def stream(self, history: Sequence[tuple[str, str]], message: str, max_new_tokens: int,
               temperature: float, read_timeout: float | None = None) -> Iterator[str]:
        ep = self.endpoint
        if ep.chat:
            stream = self.sdk(read_timeout).chat.completions.create(
                model=ep.model, messages=chat_messages(history, message), max_tokens=max_new_tokens,
                temperature=temperature, stream=True)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
            return
        from h2ostack.prompts import build_prompt

        prompt, stops = build_prompt(history, message, ep.effective_prompt_type, ep.prompt_dict)
        stream = self.sdk(read_timeout).completions.create(
            model=ep.model, prompt=prompt, max_tokens=max_new_tokens, temperature=temperature,
            stop=stops[:4] or None, stream=True)
        yield from trimmed((c.choices[0].text for c in stream if c.choices), stops)

    def answer(self, history: Sequence[tuple[str, str]], message: str, max_new_tokens: int,
               temperature: float, read_timeout: float | None = None) -> str:
        ep = self.endpoint
        if ep.chat:
            reply = self.sdk(read_timeout).chat.completions.create(
                model=ep.model, messages=chat_messages(history, message), max_tokens=max_new_tokens,
                temperature=temperature)
            return reply.choices[0].message.content or ""
        from h2ostack.prompts import build_prompt, trim_partial_stop

        prompt, stops = build_prompt(history, message, ep.effective_prompt_type, ep.prompt_dict)
        reply = self.sdk(read_timeout).completions.create(
            model=ep.model, prompt=prompt, max_tokens=max_new_tokens, temperature=temperature, stop=stops[:4] or None)
        return trim_partial_stop(reply.choices[0].text or "", stops) if reply.choices else ""


def chat_messages(history: Sequence[tuple[str, str]], message: str) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for user, bot in history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": bot}]
    messages.append({"role": "user", "content": message})
    return messages


# -- the gateway's side: requests relayed as bytes ---------------------------------------------
def relay_path(chat: bool) -> str:
    """Where a /v1 request goes under the endpoint's API base."""
    return "/chat/completions" if chat else "/completions"


_DROPPED = ("messages", "stop", "n", "response_format", "tools", "tool_choice", "stream_options")


def prompted_request(endpoint: Endpoint, body: Mapping[str, Any], prompt: str,
                     stops: list[str]) -> tuple[dict[str, Any], list[str]]:
    """A chat request asked as a completion with the endpoint's prompt (as the panes ask it): the
    completion request and the stop strings to cut its answer at."""
    user_stop = body.get("stop")
    user_stops = [user_stop] if isinstance(user_stop, str) else list(user_stop or [])
    sent, stops = stops[:4] + user_stops, stops + user_stops  # (OpenAI's limit of 4, as the panes send)
    ask = {k: v for k, v in body.items() if k not in _DROPPED}
    ask.update(model=endpoint.model, prompt=prompt, stop=sent or None)
    if "max_completion_tokens" in ask:
        ask.setdefault("max_tokens", ask.pop("max_completion_tokens"))
    return ask, stops


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
