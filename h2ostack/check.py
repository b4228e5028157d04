"""`h2ostack check`: a test prompt to every endpoint, non-streaming then streaming.

OpenAI-compatible servers through the `openai` client, TGI through huggingface_hub's
InferenceClient. Reports time to first token and tokens per second of the streamed answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from h2ostack import backends
from h2ostack.plan import ServicePlan

PROMPT = "Say hello in one short sentence."


@dataclass(frozen=True)
class CheckResult:
    service: str
    ok: bool
    text: str = ""
    ttft_s: float | None = None
    tokens: int = 0
    tokens_per_s: float | None = None
    error: str = ""


def _openai_client(sp: ServicePlan, headers: dict[str, str], timeout: float) -> Any:
    from openai import OpenAI

    base = sp.url or ""
    api_base = (backend := backends.find(sp.kind)) is not None and backend.url_is_api_base
    if not api_base and not base.rstrip("/").endswith("/v1"):
        base = base.rstrip("/") + "/v1"
    key = headers.get("authorization", "Bearer none").split(" ", 1)[-1]
    return OpenAI(base_url=base, api_key=key, timeout=timeout, max_retries=0)


def _timed_stream(chunks: Any, text_of: Any) -> tuple[str, float | None, int, float]:
    start = time.perf_counter()
    first = None
    parts: list[str] = []
    n = 0
    for chunk in chunks:
        piece = text_of(chunk)
        if piece:
            if first is None:
                first = time.perf_counter() - start
            parts.append(piece)
            n += 1
    return "".join(parts), first, n, time.perf_counter() - start


def check_openai(sp: ServicePlan, headers: dict[str, str], max_tokens: int, timeout: float,
                 prompt: str = PROMPT) -> CheckResult:
    client = _openai_client(sp, headers, timeout)
    model = sp.served_model or sp.name
    messages = [{"role": "user", "content": prompt}]
    # greedy, so that `--expect` tests the model's one answer rather than a sample of it
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
    text = reply.choices[0].message.content or ""
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                            stream=True)

    def piece(chunk: Any) -> str:
        return (chunk.choices[0].delta.content or "") if chunk.choices else ""

    streamed, ttft, n, total = _timed_stream(stream, piece)
    return _result(sp.name, text or streamed, ttft, n, total)


def check_tgi(sp: ServicePlan, headers: dict[str, str], max_tokens: int, timeout: float,
              prompt: str = PROMPT) -> CheckResult:
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=sp.url, headers=headers or None, timeout=timeout)
    text = client.text_generation(prompt, max_new_tokens=max_tokens)
    stream = client.text_generation(prompt, max_new_tokens=max_tokens, stream=True, details=True)

    def piece(chunk: Any) -> str:
        return "" if chunk.token.special else chunk.token.text

    streamed, ttft, n, total = _timed_stream(stream, piece)
    return _result(sp.name, str(text) or streamed, ttft, n, total)


def _result(name: str, text: str, ttft: float | None, n: int, total: float) -> CheckResult:
    gen_time = total - (ttft or 0.0)
    rate = (n - 1) / gen_time if n > 1 and gen_time > 0 else None
    if n == 0:
        return CheckResult(name, False, text, None, 0, None, "the streamed answer had no tokens")
    return CheckResult(name, True, text, ttft, n, rate)


def check_service(sp: ServicePlan, headers: dict[str, str], max_tokens: int = 16,
                  timeout: float = 120.0, prompt: str = PROMPT) -> CheckResult:
    try:
        if sp.api == "openai":
            return check_openai(sp, headers, max_tokens, timeout, prompt)
        if sp.api == "tgi":
            return check_tgi(sp, headers, max_tokens, timeout, prompt)
        return CheckResult(sp.name, False, error=f"no check for {sp.api} endpoints yet")
    except Exception as exc:  # every client error becomes a failed row, never a traceback
        return CheckResult(sp.name, False, error=f"{type(exc).__name__}: {exc}")
