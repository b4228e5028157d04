"""The interface `api` uses for every runtime (processes, Docker), and what a runtime observes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from h2ostack.plan_types import runtime_key  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from h2ostack.plan_types import ServicePlan


@dataclass(frozen=True)
class Observed:
    """One started service as found on the machine now: the facts `status` derives its row from."""

    name: str
    mode: str  # process | container
    alive: bool
    config_hash: str = ""
    port: int | None = None
    ident: str = ""  # pid or container id
    started_at: float | None = None
    exit_code: int | None = None
    detail: str = ""
    restarts: int = 0
    last_exit: int | None = None  # the last exit of a server that was restarted
    last_probe_failure: str | None = None


class Handle(Protocol):
    def exit_code(self) -> int | None | bool:
        """None while running; the exit code (or True when unknown) once it stopped."""


class Runtime(Protocol):
    mode: str

    def observe(self) -> dict[str, Observed]: ...

    def start(self, plan: ServicePlan) -> Handle: ...

    def stop(self, name: str, timeout: float, force: bool = False) -> bool: ...

    def log_tail(self, name: str, lines: int) -> str: ...

    def log_path(self, name: str) -> str | None: ...
