"""The front's panes: each one an endpoint (`h2ostack.protocols`) with what the page shows of it
(its health and model revision), streamed through its protocol's client. Connection and first
byte are bounded by REQUEST_TIMEOUT_FAST (default 10 s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

from h2ostack.prompts import prompt_dict_for, stops_for
from h2ostack.protocols.endpoint import (
    READ_TIMEOUT,
    Endpoint,
    StreamCut,
    client_for,
    fast_timeout,
    from_server,
)
from h2ostack.protocols.h2ogpt import h2ogpt_client  # noqa: F401 - re-exported

_ENDPOINT_FIELDS = {f.name for f in fields(Endpoint)}


@dataclass
class Pane:
    """A model in the page: where it is, and what the page last learnt of it."""

    endpoint: Endpoint
    health: str = "unknown"
    revision: str | None = None

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def kind(self) -> str:
        return self.endpoint.kind

    @property
    def model(self) -> str:
        return self.endpoint.model

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def effective_prompt_type(self) -> str:
        return self.endpoint.effective_prompt_type

    def slot(self) -> dict[str, Any]:
        """As a session keeps it: a flat dict (`name`, `kind`, ... `health`, `revision`)."""
        out = {f: getattr(self.endpoint, f) for f in _ENDPOINT_FIELDS}
        out.update(headers=dict(self.endpoint.headers), health=self.health, revision=self.revision)
        return out

    @classmethod
    def from_slot(cls, slot: dict[str, Any]) -> Pane:
        ep = Endpoint(**{k: v for k, v in slot.items() if k in _ENDPOINT_FIELDS})
        return cls(ep, slot.get("health", "unknown"), slot.get("revision"))


def warm(p: Pane) -> None:
    """Import the pane's client library and make the client a turn will use, so the first question
    after start does not wait for them."""
    client_for(p.endpoint).warm()


def stream_answer(p: Pane, history: Sequence[tuple[str, str]], message: str, max_new_tokens: int,
                  temperature: float, read_timeout: float = READ_TIMEOUT) -> Iterator[str]:
    """Yield the answer's pieces as they arrive."""
    yield from client_for(p.endpoint).stream(history, message, max_new_tokens, temperature, read_timeout)


def probe(p: Pane, timeout: float) -> tuple[bool, str]:
    """Is the endpoint there? (its model revision noted, where the server tells it)"""
    status = client_for(p.endpoint).up(timeout)
    if status.ok:
        p.revision = status.revision
    return status.ok, status.detail


def backend_for(name: str, text: str, prompt_type: str | None = None, api_key: str | None = None,
                timeout: float = 10.0) -> Pane:
    """A pane added from a server string: which protocol it speaks, decided by its form and a probe."""
    from h2ostack.front.servers import parse_server

    srv = parse_server(text)
    key = api_key or os.environ.get("OPENAI_API_KEY", "")
    candidates = from_server(name, srv.form, srv.url, srv.headers, prompt_type, key)
    for ep in candidates[:-1]:  # more than one: the server's answer tells which
        if client_for(ep).up(timeout).ok:
            return Pane(ep)
    return Pane(candidates[-1])


def timed(pieces: Iterator[str]) -> Iterator[tuple[str, float]]:
    t0 = time.perf_counter()
    for p in pieces:
        yield p, time.perf_counter() - t0


__all__ = ["Pane", "StreamCut", "backend_for", "fast_timeout", "probe", "prompt_dict_for", "stops_for",
           "stream_answer", "timed"]
