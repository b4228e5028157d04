"""External OpenAI(-compatible) APIs: nothing is started; reachable means `/models` answers."""

from __future__ import annotations

from typing import Any, Literal

from h2ostack.backends.base import Backend, Context, ExternalSpec, Mode, Probe, StartSpec
from h2ostack.fields import Secret, ServiceBase

API = "openai"
DEFAULT_URL = "https://api.openai.com/v1"
DEFAULT_HEALTH_TIMEOUT = 30.0


def probes() -> list[Probe]:
    return [Probe("models", "GET", "/models", timeout=10.0)]


class OpenAIService(ServiceBase):
    kind: Literal["openai"]
    api_key: Secret | None = None

    @property
    def external(self) -> bool:
        return True

    def load_rules(self) -> list[tuple[str | tuple[str, ...], str]]:
        return [] if self.model else [("model", "this field is required")]


class OpenAI(Backend):
    kind = "openai"
    spec_model = OpenAIService
    protocol = API
    default_health_timeout = DEFAULT_HEALTH_TIMEOUT
    external_health_timeout = DEFAULT_HEALTH_TIMEOUT
    url_is_api_base = True

    def mode(self, svc: Any) -> Mode:
        return "external"

    def start_spec(self, svc: Any, ctx: Context) -> StartSpec:
        return ExternalSpec(svc.url or DEFAULT_URL)

    def probes(self, svc: Any, ctx: Context | None) -> list[Probe]:
        return probes()


backend = OpenAI()
