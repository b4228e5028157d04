"""How a value is written into a rendered script or comment: quoted, control characters escaped, an
environment variable's name checked, a secret by name only. Below the renderers (`render`,
`render_deploy`, `runtimes.docker_render`), which all write with it."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def comment_value(value: object) -> str:
    """A value as a `#` comment shows it: quoted, with control characters escaped (a newline would end
    the comment and start a command)."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", str(value))
    return shlex.quote(text)


def env_name(key: str) -> str:
    """An environment variable's name, written unquoted (`NAME=...`, `${NAME:?}`): an identifier or refused."""
    from h2ostack.loader import SHELL_RESERVED

    if not _IDENTIFIER.fullmatch(key) or key in SHELL_RESERVED:
        raise ValueError(f"not an environment variable name a script can set: {comment_value(key)}")
    return key


def secret_ref(key: str, value: SecretStr) -> str:
    """`${KEY:?...}`: the script stops when a secret is unset; an optional one (empty when planned, as
    `${HF_TOKEN:-}` makes it) is `${KEY:-}` instead, so that the script runs without it."""
    return f"${{{key}:-}}" if not value.get_secret_value() else f"${{{key}:?set {key} in the environment}}"


def token_aliases(env: Mapping[str, Any]) -> dict[str, str]:
    """Secrets planned as another one's copy (TGI's HUGGING_FACE_HUB_TOKEN from HF_TOKEN): alias -> origin."""
    out: dict[str, str] = {}
    for key, value in env.items():
        if isinstance(value, SecretStr) and key not in out:
            for other, same in env.items():
                if other != key and same is value and other not in out and key not in out.values():
                    out[other] = key
    return out


def required_checks(env: Mapping[str, Any]) -> list[str]:
    """The script stops at once when a required secret is unset; a copy is taken from its origin."""
    aliases = token_aliases(env)
    lines = [f': "{secret_ref(env_name(k), v)}"' for k, v in env.items()
             if isinstance(v, SecretStr) and v.get_secret_value() and k not in aliases]
    return lines + [f'export {env_name(a)}="${{{a}:-${{{env_name(o)}:-}}}}"' for a, o in aliases.items()]
