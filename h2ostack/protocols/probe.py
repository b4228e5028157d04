"""The one "is it up" check: one HTTP request that must answer 2xx (and name the model, where
asked). Readiness (`h2ostack.health`), `status`, the front's panes (through their protocol's
client) and the shim's liveness probe all ask through `probe`, each with the HTTP transport it can
afford (a `Requester`: httpx where it is loaded anyway, the standard library in the shim).

Standard library only, and importing nothing else of h2ostack: the shim, which runs with
`python -S` and the standard library alone, imports this module too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class Check(Protocol):
    """What is asked (`h2ostack.backends.base.Probe` is one)."""

    name: str
    method: str
    path: str
    body: Any
    expect_model: str | None
    timeout: float


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # parsed JSON, or None


# (method, url, json body, timeout, headers) -> Answer; raises on connection errors
Requester = Callable[[str, str, Any, float, dict[str, str]], Answer]


def urllib_requester() -> Requester:
    """The standard library's HTTP (the shim's); an HTTP error status is an answer, not an exception;
    a body given as bytes is sent as it is."""
    import json
    import urllib.error
    import urllib.request

    def ask(method: str, url: str, body: Any, timeout: float, headers: dict[str, str]) -> Answer:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        hdrs = {"content-type": "application/json", **headers} if data is not None else dict(headers)
        req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Answer(resp.status, None)
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, None)
        except urllib.error.URLError as exc:  # refused, timed out: its reason is the error to tell
            reason = exc.reason
            raise (reason if isinstance(reason, BaseException) else exc) from None

    return ask


def names_model(body: Any, model: str) -> bool:
    """/v1/models lists it, TGI's /info names it, or a listing of `models` names it (Ollama's /api/tags)."""
    if not isinstance(body, dict):
        return False
    if isinstance(body.get("data"), list):
        return any(isinstance(m, dict) and m.get("id") == model for m in body["data"])
    if isinstance(body.get("models"), list):
        return any(isinstance(m, dict) and model in (m.get("name"), m.get("model")) for m in body["models"])
    return body.get("model_id") == model


def probe(base: str, check: Check, request: Requester, headers: Mapping[str, str],
          answer: list[Answer] | None = None, explain: bool = False) -> str | None:
    """None when the check passes, else why not (the answer, where one came, appended to `answer`;
    with `explain`, an error's own message after its type)."""
    try:
        ans = request(check.method, base.rstrip("/") + check.path, check.body, check.timeout, dict(headers))
    except Exception as exc:  # connection refused, reset, timeout: all mean "not yet"
        return f"{check.name}: {type(exc).__name__}" + (f": {exc}" if explain else "")
    if answer is not None:
        answer.append(ans)
    if not 200 <= ans.status < 300:
        return f"{check.name}: HTTP {ans.status}"
    if check.expect_model and not names_model(ans.body, check.expect_model):
        return f"{check.name}: model {check.expect_model!r} not listed yet"
    return None
