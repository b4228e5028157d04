"""An Ollama server: an external endpoint (nothing is started), OpenAI-compatible under `url` + `/v1`.

`url:` is Ollama's own address (default http://127.0.0.1:11434, where Ollama listens), not its /v1:
readiness asks Ollama's own model listing, `GET /api/tags`, for the model, so a model that is not pulled
yet is "not ready" with a reason rather than an error on the first question. A model named without a
tag is Ollama's `NAME:latest`, as Ollama itself reads it.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field

from h2ostack.backends.base import Backend, Context, ExternalSpec, Mode, Probe, StartSpec
from h2ostack.fields import Secret, ServiceBase

API = "openai"
DEFAULT_URL = "http://127.0.0.1:11434"
DEFAULT_HEALTH_TIMEOUT = 60.0


def tagged(model: str) -> str:
    """Ollama's full name of a model: `llama3` is `llama3:latest`."""
    return model if ":" in model.rsplit("/", 1)[-1] else model + ":latest"


def probes(model: str) -> list[Probe]:
    return [Probe("model pulled (/api/tags)", "GET", "/api/tags", expect_model=tagged(model), timeout=10.0)]


class OllamaService(ServiceBase):
    kind: Literal["ollama"]
    url: str | None = Field(default=DEFAULT_URL, description="Ollama's own address (not its /v1)")
    api_key: Secret | None = Field(default=None, description="sent as `Bearer KEY` (Ollama behind a proxy that "
                                   "asks for one, or ollama.com)")

    @property
    def external(self) -> bool:
        return True

    def load_rules(self) -> list[tuple[str | tuple[str, ...], str]]:
        out: list[tuple[str | tuple[str, ...], str]] = []
        if not self.model:
            out.append(("model", "this field is required (a model Ollama has pulled, like llama3.2:1b)"))
        parts = urlsplit(self.url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            out.append(("url", "Ollama's address is an http:// or https:// URL, like http://127.0.0.1:11434"))
        elif parts.path.rstrip("/").endswith("/v1"):
            out.append(("url", "give Ollama's own address without /v1 (like http://127.0.0.1:11434): h2ostack "
                               "asks its /api/tags for the model and speaks OpenAI under /v1"))
        elif parts.query or parts.fragment:
            out.append(("url", "Ollama's address takes no query or fragment"))
        if self.args:
            out.append(("args", "an Ollama service is not started by h2ostack: it takes no `args:`"))
        if self.env:
            out.append(("env", "an Ollama service is not started by h2ostack: it takes no `env:`"))
        return out


class Ollama(Backend):
    kind = "ollama"
    spec_model = OllamaService
    protocol = API
    default_health_timeout = DEFAULT_HEALTH_TIMEOUT
    external_health_timeout = DEFAULT_HEALTH_TIMEOUT

    def mode(self, svc: Any) -> Mode:
        return "external"

    def start_spec(self, svc: Any, ctx: Context) -> StartSpec:
        return ExternalSpec((svc.url or DEFAULT_URL).rstrip("/"))

    def probes(self, svc: Any, ctx: Context | None) -> list[Probe]:
        return probes(svc.model or "")


backend = Ollama()
