"""Readiness: each kind's probes in order (health, model listed, one short generation).

Time and HTTP are passed in, so the waiting logic is tested with fakes; `up` passes a real
httpx client. A service whose process exits while starting is reported at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from h2ostack.backends.base import Probe


class NotReady(Exception):
    pass


class Exited(Exception):
    def __init__(self, code: int | None):
        self.code = code
        super().__init__(f"exited with code {code}" if code is not None else "exited")


class Cancelled(Exception):
    pass


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # parsed JSON, or None


# (method, url, json body, timeout, headers) -> Answer; raises on connection errors
Requester = Callable[[str, str, Any, float, dict[str, str]], Answer]


def httpx_requester() -> Requester:
    import httpx

    client = httpx.Client(trust_env=False)

    def request(method: str, url: str, body: Any, timeout: float, headers: dict[str, str]) -> Answer:
        resp = client.request(method, url, json=body, timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
                              headers=headers)
        try:
            data = resp.json()
        except ValueError:
            data = None
        return Answer(resp.status_code, data)

    return request


def names_model(body: Any, model: str) -> bool:
    """/v1/models lists it, or TGI's /info names it."""
    if not isinstance(body, dict):
        return False
    if isinstance(body.get("data"), list):
        return any(isinstance(m, dict) and m.get("id") == model for m in body["data"])
    return body.get("model_id") == model


def probe_once(base: str, probe: Probe, request: Requester, headers: dict[str, str]) -> str | None:
    """None when the probe passes, else why not."""
    try:
        ans = request(probe.method, base.rstrip("/") + probe.path, probe.body, probe.timeout, headers)
    except Exception as exc:  # connection refused, reset, timeout: all mean "not yet"
        return f"{probe.name}: {type(exc).__name__}"
    if not 200 <= ans.status < 300:
        return f"{probe.name}: HTTP {ans.status}"
    if probe.expect_model and not names_model(ans.body, probe.expect_model):
        return f"{probe.name}: model {probe.expect_model!r} not listed yet"
    return None


def wait_ready(base: str, probes: tuple[Probe, ...] | list[Probe], timeout: float, interval: float,
               exit_code: Callable[[], int | None | bool], request: Requester,
               headers: dict[str, str] | None = None, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep, cancel: threading.Event | None = None,
               on_step: Callable[[str], None] | None = None) -> float:
    """Block until every probe has passed in order; return the seconds it took.

    `exit_code()` returns None while the server runs (False: unknown, keep waiting).
    """
    start = clock()
    step = 0
    last = "not probed yet"
    headers = headers or {}
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        code = exit_code()
        if code is not None and code is not False:
            raise Exited(code if isinstance(code, int) and not isinstance(code, bool) else None)
        while step < len(probes):
            why = probe_once(base, probes[step], request, headers)
            if why is not None:
                last = why
                break
            step += 1
            if on_step and step < len(probes):
                on_step(probes[step].name)
        if step == len(probes):
            return clock() - start
        if clock() - start > timeout:
            raise NotReady(f"not ready after {timeout:g} s ({last})")
        sleep(interval)
