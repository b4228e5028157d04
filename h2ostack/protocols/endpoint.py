"""One endpoint type for everything that talks to a model server, and the one "is it up" check.

An `Endpoint` says where a model is served and how to talk to it: its wire protocol (`openai`,
`tgi`, `h2ogpt`), the URL the protocol's requests go to, the model name requests carry, its auth
headers (kept out of `repr`, so of logs and error messages), the prompt type a prompt is built
with, the timeouts and the server's keep-alive. It is made from a plan's service in one place,
`Endpoint.from_plan`. `client_for(endpoint)` gives the protocol's client; it is the one place
that tells the protocols apart.

`probe` (`protocols.probe`) is the one "is it up" request: readiness (`h2ostack.health`),
`status`, the front's panes and the shim's liveness probe all ask through it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from h2ostack.protocols.probe import Answer, Requester, probe
from h2ostack.protocols.probe import names_model as names_model  # re-exported
from h2ostack.protocols.probe import urllib_requester as urllib_requester

PROTOCOLS = ("openai", "tgi", "h2ogpt")
READ_TIMEOUT = 600.0  # seconds: a wait for the backend's next piece


def fast_timeout() -> float:
    """Connecting and the first byte (REQUEST_TIMEOUT_FAST, default 10 s)."""
    return float(os.environ.get("REQUEST_TIMEOUT_FAST", "10"))


@dataclass(frozen=True)
class Endpoint:
    """One model on one server, as every client reaches it."""

    name: str
    protocol: str  # openai | tgi | h2ogpt
    url: str  # the server root; for an OpenAI API reached at its base (no server h2ostack knows), that base
    model: str  # the model name requests carry
    kind: str = ""  # what serves it, shown to users (never branched on)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # auth: secret
    prompt_type: str | None = None
    prompt_dict: Mapping[str, Any] | None = None
    chat: bool = True  # OpenAI API: chat (the server's template), else completions with the prompt type
    api_prefix: str = "/v1"  # OpenAI API: its path under `url` ("" where `url` is the API base)
    connect_timeout: float | None = None  # None: REQUEST_TIMEOUT_FAST
    read_timeout: float = READ_TIMEOUT
    keep_alive: float | None = None  # how long the server keeps an idle connection, where the stack set it

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"{self.name}: unknown protocol {self.protocol!r} (one of {', '.join(PROTOCOLS)})")

    @property
    def root(self) -> str:
        return self.url.rstrip("/")

    @property
    def api_base(self) -> str:
        """Where the OpenAI API's paths (`/chat/completions`, `/models`) go."""
        return self.root + self.api_prefix

    @property
    def effective_prompt_type(self) -> str:
        from h2ostack.prompts import infer_prompt_type

        return self.prompt_type or infer_prompt_type(self.model) or "plain"

    @property
    def connect(self) -> float:
        return fast_timeout() if self.connect_timeout is None else self.connect_timeout

    @property
    def bearer(self) -> str:
        """The API key of an `authorization: Bearer KEY` header ("none" without one)."""
        return dict(self.headers).get("authorization", "Bearer none").split(" ", 1)[-1]

    @classmethod
    def from_plan(cls, sp: Any, headers: Mapping[str, str], prompt_dict: Mapping[str, Any] | None = None,
                  prompt_type: str | None = None) -> Endpoint:
        """A plan's service (`h2ostack.plan_types.ServicePlan`) as an endpoint, with its secrets
        (`api.auth_headers`) and the stack's `prompt_dict`; `prompt_type` overrides the plan's."""
        from h2ostack import backends

        backend = backends.find(sp.kind)
        url = sp.url or ""
        # an endpoint whose `url:` is the API's base (OpenAI's), or one given with its /v1
        whole_base = (backend is not None and backend.url_is_api_base) or url.rstrip("/").endswith("/v1")
        ptype = prompt_type if prompt_type is not None else sp.prompt_type
        # the idle keep-alive the stack gave a server it runs
        value = sp.env.get(backend.keep_alive_env) if backend is not None and backend.keep_alive_env else None
        try:
            keep = float(value) if isinstance(value, str) else None
        except ValueError:
            keep = None
        return cls(sp.name, sp.api, url, sp.served_model or sp.name, sp.kind, dict(headers), ptype,
                   dict(prompt_dict) if prompt_dict else None,
                   chat=backends.completion_prompt_type(sp.kind, ptype, sp.served_model) is None,
                   api_prefix="" if whole_base else "/v1", keep_alive=keep)


def from_server(name: str, form: str, url: str, headers: Mapping[str, str], prompt_type: str | None,
                api_key: str) -> list[Endpoint]:
    """What a server string (h2oGPT's forms, `h2ostack.front.servers`) may name: one endpoint, or
    several in the order to probe them (the first that answers, else the last)."""
    if form in ("openai_chat", "openai"):  # the API at its base, with OPENAI_API_KEY
        return [Endpoint(name, "openai", url, name, "openai", {"authorization": f"Bearer {api_key}"}, prompt_type,
                         api_prefix="")]
    if form in ("vllm", "vllm_chat"):  # completions with the prompt type, or chat with the server's template
        return [Endpoint(name, "openai", url, name, "vllm", dict(headers), prompt_type, chat=form == "vllm_chat")]
    return [Endpoint(name, "tgi", url, name, "tgi", dict(headers), prompt_type),
            Endpoint(name, "h2ogpt", url, name, "h2ogpt", dict(headers), prompt_type)]


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


def client_for(endpoint: Endpoint) -> Any:
    """The client of the endpoint's wire protocol (`protocols.openai`, `.tgi`, `.h2ogpt`)."""
    if endpoint.protocol == "openai":
        from h2ostack.protocols.openai import OpenAIClient

        return OpenAIClient(endpoint)
    if endpoint.protocol == "tgi":
        from h2ostack.protocols.tgi import TGIClient

        return TGIClient(endpoint)
    from h2ostack.protocols.h2ogpt import H2OGPTClient

    return H2OGPTClient(endpoint)


# -- what every protocol's client shares --------------------------------------------------------
@dataclass(frozen=True)
class Status:
    """What the "is it up" check found: up or not, why not, the model's revision where told."""

    ok: bool
    detail: str  # healthy | HTTP NNN | unavailable (ErrorType)
    revision: str | None = None


class Client:
    """A protocol's client of one endpoint (synchronous: the front's panes, `check`)."""

    RELAY = ""  # the gateway's handler of the protocol (h2ostack.gateway.Gateway's method of that name)

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint

    @property
    def relay_base(self) -> str:
        """The base of the gateway's upstream requests."""
        return self.endpoint.root

    def up_target(self) -> tuple[str, str]:
        """What the "is it up" check asks: a base URL and the path under it."""
        return self.endpoint.root, "/health"

    def revision(self, body: Any) -> str | None:
        return None

    def up(self, timeout: float, request: Requester | None = None) -> Status:
        """Is the endpoint there? (and its model revision, where the server tells it)"""
        from h2ostack.backends.base import Probe

        got: list[Answer] = []
        base, path = self.up_target()
        why = probe(base, Probe("up", "GET", path, timeout=timeout), request or httpx_requester(),
                    self.endpoint.headers, got)
        if why is None:
            return Status(True, "healthy", self.revision(got[0].body))
        if got:
            return Status(False, f"HTTP {got[0].status}")
        return Status(False, f"unavailable ({why.split(': ', 1)[-1]})")

    def warm(self) -> None:
        """Import the client's library (and make what a turn will use) before the first question."""

    def stream(self, history: Sequence[tuple[str, str]], message: str, max_new_tokens: int,
               temperature: float, read_timeout: float | None = None) -> Iterator[str]:
        """The answer's pieces as they arrive."""
        raise NotImplementedError

    def answer(self, history: Sequence[tuple[str, str]], message: str, max_new_tokens: int,
               temperature: float, read_timeout: float | None = None) -> str:
        """The whole answer, asked without streaming."""
        raise NotImplementedError


class StreamCut(ConnectionError):
    """The server closed a stream before its last event (it died or was killed mid-answer)."""


def trimmed(pieces: Iterable[str], stops: Sequence[str]) -> Iterator[str]:
    """Pass pieces through, holding back any tail that could be the start of a stop string (the
    gateway's /v1 cuts its streams with the same StopTrimmer)."""
    from h2ostack.prompts import StopTrimmer

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
