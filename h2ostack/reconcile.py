"""What `up` does, decided apart from doing it: a pure function of the plan and what runs now.

`reconcile(plan, observed, only)` says which running services stay, which stop (and why) and how
each target of this `up` is brought up; `api.up` carries the decisions out through the runtimes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from h2ostack.errors import NotFound
from h2ostack.plan_types import Plan
from h2ostack.runtimes.base import Observed


class Bring(StrEnum):
    """How `up` brings one of its targets up."""

    KEEP = "keep"  # running with the same config: left alone
    START = "start"  # started, then waited for
    CHECK = "check"  # an external endpoint: only checked
    ON_DEMAND = "on demand"  # left to the stack's gateway, which starts it on its first request


class StopReason(StrEnum):
    CHANGED = "config changed"
    GONE = "no longer in the stack file"


@dataclass(frozen=True)
class Stop:
    name: str
    runtime: str  # the runtime key that holds it (`process`, `container`, `container@HOST`)
    reason: StopReason


@dataclass(frozen=True)
class Actions:
    """`up`'s decisions: the stops first (in this order), then the targets, dependencies first."""

    targets: tuple[str, ...] = ()
    bring: Mapping[str, Bring] = field(default_factory=dict)
    stop: tuple[Stop, ...] = ()
    deps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # among the targets

    def _with(self, how: Bring) -> tuple[str, ...]:
        return tuple(n for n in self.targets if self.bring[n] is how)

    @property
    def keep(self) -> tuple[str, ...]:
        return self._with(Bring.KEEP)

    @property
    def start(self) -> tuple[str, ...]:
        return self._with(Bring.START)

    @property
    def check(self) -> tuple[str, ...]:
        return self._with(Bring.CHECK)

    @property
    def on_demand(self) -> tuple[str, ...]:
        return self._with(Bring.ON_DEMAND)


def with_deps(plan: Plan, only: Iterable[str]) -> list[str]:
    """The services named and everything they depend on, dependencies first; NotFound for a name
    the plan lacks."""
    deps = plan.deps()
    unknown = [n for n in only if n not in deps]
    if unknown:
        from h2ostack.loader import did_you_mean

        raise NotFound("; ".join(f"no service named {n!r} in stack {plan.stack!r}"
                                 f"{did_you_mean(n, list(deps))}" for n in unknown))
    seen: list[str] = []

    def add(n: str) -> None:
        if n in seen:
            return
        for d in deps[n]:
            add(d)
        seen.append(n)

    for n in only:
        add(n)
    return seen


def reconcile(plan: Plan, observed: Mapping[str, Observed], only: Iterable[str] = ()) -> Actions:
    """What `up` does to bring `plan` (or, with `only`, those services and their dependencies) up
    when `observed` runs: a service running with its planned config hash is kept; one with another
    hash stops and starts again; one no longer planned stops (only when the whole stack comes up);
    a dead one starts. External endpoints are checked, on-demand services are left to the gateway."""
    only = list(only)
    everything = plan.all()
    targets = with_deps(plan, only) if only else list(everything)
    alive = {n: o for n, o in observed.items() if o.alive and not n.startswith("<")}
    changed = [n for n in targets if n in alive and alive[n].config_hash != everything[n].config_hash]
    gone = [n for n in alive if n not in everything] if not only else []
    stops = [Stop(n, alive[n].mode, StopReason.CHANGED) for n in reversed(changed)]
    stops += [Stop(n, alive[n].mode, StopReason.GONE) for n in gone]
    bring: dict[str, Bring] = {}
    for name in targets:
        sp = everything[name]
        if name in alive and name not in changed:
            bring[name] = Bring.KEEP
        elif not sp.started:
            bring[name] = Bring.CHECK
        elif sp.on_demand:
            bring[name] = Bring.ON_DEMAND
        else:
            bring[name] = Bring.START
    deps = {n: tuple(d for d in everything[n].depends_on if d in targets) for n in targets}
    return Actions(tuple(targets), bring, tuple(stops), deps)
