"""h2oGPT's Gradio API: the client the front's panes and the gateway both reach an h2oGPT server with."""

from __future__ import annotations

from typing import Any


def h2ogpt_client(url: str, headers: dict[str, str] | None = None) -> Any:
    """A gradio_client for an h2oGPT server. h2oGPT 0.2.x runs Gradio 4.2x, whose config marks its
    hidden events `api_name: false`; this gradio_client joins those names into a message on every
    call ("can only concatenate str (not "bool") to str"), so they are made strings first."""
    from gradio_client import Client

    client = Client(url, verbose=False, headers=headers or None)
    for dep in (getattr(client, "config", None) or {}).get("dependencies", []):
        if isinstance(dep, dict) and not isinstance(dep.get("api_name"), str):
            dep["api_name"] = str(dep.get("api_name"))
    return client

