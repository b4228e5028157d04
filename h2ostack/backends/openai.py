"""External OpenAI(-compatible) APIs: nothing is started; reachable means `/models` answers."""

from __future__ import annotations

from h2ostack.backends.base import Probe

API = "openai"
DEFAULT_URL = "https://api.openai.com/v1"
DEFAULT_HEALTH_TIMEOUT = 30.0


def probes() -> list[Probe]:
    return [Probe("models", "GET", "/models", timeout=10.0)]
