"""TGI's native API: the prompt built by the endpoint's prompt type, its stop sequences, trailing
partial stops trimmed. The panes and `check` stream through huggingface_hub's InferenceClient; the
gateway translates OpenAI requests to `/generate(_stream)` and TGI's answers and events back
(`request`, `Translation`), relaying the bytes through its own pool."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from h2ostack.protocols.endpoint import Client, Endpoint, StreamCut, trimmed

FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}
# messages -> (prompt, stop sequences), by the endpoint's prompt type
PromptFn = Callable[[Sequence[Mapping[str, Any]], Endpoint], tuple[str, list[str]]]


class TGIClient(Client):
    RELAY = "tgi"

    def up_target(self) -> tuple[str, str]:
        return self.endpoint.root, "/info"

    def revision(self, body: Any) -> str | None:
        return ((body.get("model_sha") or "")[:12] or None) if isinstance(body, dict) else None

    def warm(self) -> None:
        import huggingface_hub  # noqa: F401

    def _ask(self, history: Sequence[tuple[str, str]], message: str, max_new_tokens: int, temperature: float,
             read_timeout: float | None, stream: bool) -> tuple[Any, list[str], Any]:
        from huggingface_hub import InferenceClient

        from h2ostack.prompts import build_prompt

        ep = self.endpoint
        prompt, stops = build_prompt(history, message, ep.effective_prompt_type, ep.prompt_dict)
        client = InferenceClient(base_url=ep.root, headers=dict(ep.headers) or None,
                                 timeout=ep.read_timeout if read_timeout is None else read_timeout)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "stream": stream, "details": stream,
                                  "stop": stops or None}
        if temperature > 0:
            kwargs.update(temperature=temperature, do_sample=True)
        # (the client too: its session closes with it, and a stream read after that ends at once)
        return client.text_generation(prompt, **kwargs), stops, client

    def stream(self, history: Sequence[tuple[str, str]], message: str, max_new_tokens: int,
               temperature: float, read_timeout: float | None = None) -> Iterator[str]:
        events, stops, _client = self._ask(history, message, max_new_tokens, temperature, read_timeout, True)
        yield from trimmed(tokens(events), stops)

    def answer(self, history: Sequence[tuple[str, str]], message: str, max_new_tokens: int,
               temperature: float, read_timeout: float | None = None) -> str:
        from h2ostack.prompts import trim_partial_stop

        text, stops, _ = self._ask(history, message, max_new_tokens, temperature, read_timeout, False)
        return trim_partial_stop(str(text), stops)


def tokens(events: Any) -> Iterator[str]:
    """TGI's stream events to token texts; its last event carries `details` (asked for), so a
    stream that ends without them was cut, even where the socket closed cleanly."""
    finished = False
    for ev in events:
        if not ev.token.special:
            yield ev.token.text
        finished = ev.details is not None or ev.generated_text is not None
    if not finished:
        raise StreamCut("the server closed the stream before its last token")


# -- the gateway's side: OpenAI requests translated -------------------------------------------
def request(endpoint: Endpoint, body: Mapping[str, Any], chat: bool, to_prompt: PromptFn | None) -> dict[str, Any]:
    """An OpenAI chat or completion request as TGI's `/generate` payload."""
    if chat:
        messages = body.get("messages") or []
        if to_prompt is not None:
            prompt, stops = to_prompt(messages, endpoint)
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


def path(stream: bool) -> str:
    return "/generate_stream" if stream else "/generate"


def error_message(raw: bytes) -> str:
    """What a TGI error answer says."""
    try:
        return str(json.loads(raw).get("error", raw.decode(errors="replace")))
    except (ValueError, AttributeError):
        return raw.decode(errors="replace")


class Translation:
    """One TGI answer as OpenAI's: the whole answer, or its stream's events as SSE chunks."""

    def __init__(self, model: str, payload: Mapping[str, Any], chat: bool, rid: str, created: int):
        from h2ostack.prompts import StopTrimmer

        self.model, self.chat, self.rid, self.created = model, chat, rid, created
        self.stops: list[str] = payload["parameters"].get("stop") or []
        self.obj = "chat.completion.chunk" if chat else "text_completion"
        self.trim = StopTrimmer(self.stops if chat else [])
        self.finished = False

    def whole(self, data: Any) -> dict[str, Any]:
        """`/generate`'s answer as a chat completion or a completion."""
        text = data.get("generated_text", "") if isinstance(data, dict) else ""
        if self.chat and self.stops:  # the stop string TGI leaves at the end, cut as the panes cut it
            from h2ostack.prompts import trim_partial_stop

            text = trim_partial_stop(text, self.stops)
        details = (data.get("details") or {}) if isinstance(data, dict) else {}
        finish = FINISH.get(details.get("finish_reason", ""), "stop")
        usage = {"prompt_tokens": 0, "completion_tokens": details.get("generated_tokens", 0)}
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
            return {"id": self.rid, "object": "chat.completion", "created": self.created, "model": self.model,
                    "choices": [choice], "usage": usage}
        choice["text"] = text
        return {"id": self.rid, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [choice], "usage": usage}

    def chunk(self, text: str | None, finish: str | None, first: bool = False) -> bytes:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish}
        return b"data: " + json.dumps({"id": self.rid, "object": self.obj, "created": self.created,
                                       "model": self.model, "choices": [choice]}).encode() + b"\n\n"

    def start(self) -> Iterator[bytes]:
        if self.chat:
            yield self.chunk(None, None, first=True)

    def event(self, raw: bytes) -> tuple[list[bytes], bool]:
        """One line of `/generate_stream`: the chunks it makes, and whether the stream is over (an error)."""
        if not raw.startswith(b"data:"):
            return [], False
        event = json.loads(raw[5:])
        if "error" in event:
            err = {"error": {"message": str(event["error"]), "type": event.get("error_type", "backend")}}
            return [b"data: " + json.dumps(err).encode() + b"\n\n"], True
        out: list[bytes] = []
        trim = self.trim
        token = event.get("token") or {}
        if not token.get("special") and not trim.done:
            text = trim.push(token.get("text", "")) if trim.stops else token.get("text", "")
            if text or not trim.stops:
                out.append(self.chunk(text, None))
        if event.get("generated_text") is not None:
            self.finished = True
            rest = trim.end()
            if rest:
                out.append(self.chunk(rest, None))
            reason = FINISH.get((event.get("details") or {}).get("finish_reason", ""), "stop")
            out.append(self.chunk(None if self.chat else "", reason))
        return out, False
