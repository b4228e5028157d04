"""`h2ostack check`: a test prompt to every endpoint, non-streaming then streaming, through the
same protocol client the front's panes use (`h2ostack.protocols`). Reports time to first token
and tokens per second of the streamed answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from h2ostack.plan import ServicePlan
from h2ostack.protocols.endpoint import Endpoint, client_for

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


def _timed_stream(pieces: Iterable[str]) -> tuple[str, float | None, int, float]:
    start = time.perf_counter()
    first = None
    parts: list[str] = []
    n = 0
    for piece in pieces:
        if piece:
            if first is None:
                first = time.perf_counter() - start
            parts.append(piece)
            n += 1
    return "".join(parts), first, n, time.perf_counter() - start


def _result(name: str, text: str, ttft: float | None, n: int, total: float) -> CheckResult:
    gen_time = total - (ttft or 0.0)
    rate = (n - 1) / gen_time if n > 1 and gen_time > 0 else None
    if n == 0:
        return CheckResult(name, False, text, None, 0, None, "the streamed answer had no tokens")
    return CheckResult(name, True, text, ttft, n, rate)


def check_endpoint(ep: Endpoint, max_tokens: int = 16, timeout: float = 120.0, prompt: str = PROMPT) -> CheckResult:
    """The prompt asked whole, then streamed (greedy, as the panes ask it by default)."""
    try:
        client = client_for(ep)
        text = client.answer([], prompt, max_tokens, 0.0, timeout)
        streamed, ttft, n, total = _timed_stream(client.stream([], prompt, max_tokens, 0.0, timeout))
        return _result(ep.name, text or streamed, ttft, n, total)
    except Exception as exc:  # every client error becomes a failed row, never a traceback
        return CheckResult(ep.name, False, error=f"{type(exc).__name__}: {exc}")


def check_service(sp: ServicePlan, headers: dict[str, str], max_tokens: int = 16,
                  timeout: float = 120.0, prompt: str = PROMPT) -> CheckResult:
    try:
        ep = Endpoint.from_plan(sp, headers)
    except ValueError as exc:  # a service no protocol client speaks (a front)
        return CheckResult(sp.name, False, error=str(exc))
    return check_endpoint(ep, max_tokens, timeout, prompt)
