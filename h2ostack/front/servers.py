"""Server strings in the forms h2oGPT users know, parsed into where and how to connect.

`http(s)://host:port` (TGI or an h2oGPT Gradio server: a probe tells which), `vllm:host:port`
(completions, prompt built by the client), `vllm_chat:host:port` (chat, the server's template),
`openai_chat` / `openai` (OPENAI_API_KEY), and `URL    USER    TOKEN` (four spaces) for a server
behind auth (header `authorization: USER TOKEN`). Anything else is a ValueError saying so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORMS = ("http://host:port", "vllm:host:port", "vllm_chat:host:port", "openai_chat", "URL    USER    TOKEN")
_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


@dataclass(frozen=True)
class Server:
    form: str  # http | vllm | vllm_chat | openai_chat | openai
    url: str  # the server root (for openai: the API base)
    user: str | None = None
    token: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"{self.user} {self.token}"} if self.user and self.token else {}


def _port(text: str, whole: str) -> str:
    m = _HOSTPORT.match(text)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"{whole!r}: expected host:port after the prefix, e.g. vllm:127.0.0.1:5000")
    return f"http://{m.group(1)}:{m.group(2)}"


def parse_server(text: str) -> Server:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty server string; one of: {', '.join(FORMS)}")
    raw = text.strip()
    if raw in ("openai_chat", "openai"):
        return Server(raw, "https://api.openai.com/v1")
    for prefix in ("vllm_chat:", "vllm:"):
        if raw.startswith(prefix):
            return Server(prefix[:-1], _port(raw[len(prefix):], raw))
    parts = re.split(r" {4,}|\t+", raw)
    if parts[0].startswith(("http://", "https://")):
        url = parts[0].rstrip("/")
        if not re.match(r"^https?://[^/\s:]+(:\d{1,5})?(/\S*)?$", url):
            raise ValueError(f"{raw!r}: not a valid URL")
        if len(parts) == 1:
            return Server("http", url)
        if len(parts) == 3 and all(p.strip() for p in parts[1:]):
            return Server("http", url, parts[1].strip(), parts[2].strip())
        raise ValueError(f"{raw!r}: with auth, write URL    USER    TOKEN (separated by four spaces)")
    raise ValueError(f"{raw!r} is not a server string; one of: {', '.join(FORMS)}")
