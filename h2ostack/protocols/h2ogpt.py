"""h2oGPT's Gradio API: the client the front's panes, `check` and the gateway reach an h2oGPT server
with (`/submit_nochat_api`, one whole answer)."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from h2ostack.protocols.endpoint import Client


def h2ogpt_client(url: str, headers: Mapping[str, str] | None = None) -> Any:
    """A gradio_client for an h2oGPT server. h2oGPT 0.2.x runs Gradio 4.2x, whose config marks its
    hidden events `api_name: false`; this gradio_client joins those names into a message on every
    call ("can only concatenate str (not "bool") to str"), so they are made strings first."""
    from gradio_client import Client as GradioClient

    client = GradioClient(url, verbose=False, headers=dict(headers) if headers else None)
    for dep in (getattr(client, "config", None) or {}).get("dependencies", []):
        if isinstance(dep, dict) and not isinstance(dep.get("api_name"), str):
            dep["api_name"] = str(dep.get("api_name"))
    return client


def ask(url: str, headers: Mapping[str, str], instruction: str, max_new_tokens: int, temperature: float) -> str:
    """One question, its whole answer."""
    client = h2ogpt_client(url, headers)
    try:
        out = client.predict(str({"instruction": instruction, "max_new_tokens": max_new_tokens,
                                  "temperature": temperature}), api_name="/submit_nochat_api")
    finally:
        close = getattr(client, "close", None)
        if close:
            close()
    parsed = ast.literal_eval(out) if isinstance(out, str) else out
    return str(parsed.get("response", "")) if isinstance(parsed, dict) else str(parsed)


class H2OGPTClient(Client):
    RELAY = "h2ogpt"

    def up_target(self) -> tuple[str, str]:
        return self.endpoint.root, "/config"

    def answer(self, history: Sequence[tuple[str, str]], message: str, max_new_tokens: int,
               temperature: float, read_timeout: float | None = None) -> str:
        return ask(self.endpoint.root, self.endpoint.headers, message, max_new_tokens, temperature)

    def stream(self, history: Sequence[tuple[str, str]], message: str, max_new_tokens: int,
               temperature: float, read_timeout: float | None = None) -> Iterator[str]:
        yield self.answer(history, message, max_new_tokens, temperature, read_timeout)
