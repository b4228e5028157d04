"""What every backend module provides, and the helpers they share to turn `args:` into flags."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from h2ostack.spec import ArgValue


@dataclass(frozen=True)
class Probe:
    """One readiness step: an HTTP request that must answer 2xx (and name the model, when set)."""

    name: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    expect_model: str | None = None
    timeout: float = 5.0


@dataclass(frozen=True)
class Context:
    """What the planner decided for one service, handed to its backend to build argv and probes."""

    name: str
    gpus: tuple[int, ...]
    port: int | None
    host: str
    python: str
    model: str  # the model as the server is given it: a resolved local path or a hub id
    served_model: str  # the name requests use
    args: Mapping[str, ArgValue] = field(default_factory=dict)
    revision: str | None = None


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def args_to_flags(args: Mapping[str, ArgValue], value_flags: Iterable[str] = (), skip: Iterable[str] = (),
                  equals: bool = False) -> list[str]:
    """`max_input_length: 2048` -> `--max-input-length 2048`; true -> bare flag; false -> omitted,
    except flags in `value_flags`, which always take a value (`sharded: false` -> `--sharded false`)."""
    value_flags, skip = set(value_flags), set(skip)
    out: list[str] = []
    for key, value in args.items():
        if key in skip:
            continue
        flag = flag_name(key)
        if key in value_flags:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            out += [f"{flag}={text}"] if equals else [flag, text]
        elif value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            out += [flag, *(str(v) for v in value)]
        else:
            out += [f"{flag}={value}"] if equals else [flag, str(value)]
    return out
