"""A plan's types: what the planner makes and the runtimes, the renderers and `api` read. Below the
planner, so that the runtimes it names need not import it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from h2ostack.backends.base import Probe
from h2ostack.spec import NAME_RE, EnvValue, mask


def runtime_key(mode: str | None, host: str | None) -> str:
    """Which runtime holds a service: `process`, `container` (the default engine) or `container@HOST`."""
    return f"{mode}@{host}" if host and mode == "container" else (mode or "process")


# -- the plan of one service: a tagged union ---------------------------------------------------
# Each variant holds only its own fields; `mode` is its fixed tag. What another variant has is readable
# on every plan as an empty value (`sp.command` of a container is None), so that a reader need not
# switch first; code that means a variant asks `isinstance` (or `match`).


# the fields only some variants hold, and what they read as on the others
_ABSENT: dict[str, Any] = {
    "command": None, "workdir": None, "image": None, "container": None, "host": None, "docker_url": None,
    "models": (), "wiring": (), "nodes": (), "restart": "no", "max_restarts": None, "unhealthy_after": None,
    "liveness": None, "on_demand": False, "idle_timeout": 600.0, "sleep": None, "claims": (), "excludes": (),
}


@dataclass(frozen=True, kw_only=True)
class _PlanBase:
    mode: ClassVar[str]
    name: str
    kind: str
    api: str  # openai | tgi | h2ogpt | gradio
    gpus: tuple[int, ...] = ()
    port: int | None = None
    url: str | None = None  # where clients reach it (the server root; for kind openai, the API base)
    served_model: str | None = None
    depends_on: tuple[str, ...] = ()
    env: Mapping[str, EnvValue] = field(default_factory=dict)
    probes: tuple[Probe, ...] = ()
    health_timeout: float = 300.0
    health_interval: float = 0.1
    prompt_type: str | None = None
    config_hash: str = ""

    def __getattr__(self, name: str) -> Any:
        """What another variant holds reads as its empty value here (a container's `command` is None)."""
        if name in _ABSENT:
            return _ABSENT[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def runtime_key(self) -> str:
        """Which runtime holds it: `process`, `container` (the default engine) or `container@HOST`."""
        return runtime_key(self.mode, self.host)

    @property
    def started(self) -> bool:
        """Whether h2ostack starts it (everything but an external endpoint)."""
        return not isinstance(self, ExternalPlan)

    @property
    def is_front(self) -> bool:
        return isinstance(self, FrontPlan)

    def to_json(self) -> dict[str, Any]:
        """The contract's `plan --json` shape, every secret as ***."""
        out: dict[str, Any] = {
            "name": self.name, "kind": self.kind, "mode": self.mode, "gpus": list(self.gpus), "port": self.port,
            "url": self.url, "depends_on": list(self.depends_on), "env": mask(dict(self.env)),
        }
        if self.served_model:
            out["model"] = self.served_model
        if self.command is not None:
            out["command"] = list(self.command)
            out["workdir"] = self.workdir
        if isinstance(self, ContainerPlan):
            out["image"] = self.image
            out["container"] = mask(dict(self.container))
        if isinstance(self, FrontPlan):
            out["models"] = list(self.models)
            if self.wiring:
                out["wiring"] = dict(self.wiring)
        if isinstance(self, ContainerPlan) and self.host:
            out["host"], out["docker"] = self.host, self.docker_url
        if isinstance(self, MultiNodePlan):
            out["nodes"] = [{"host": n, "ssh": ssh, "address": addr} for n, ssh, addr in self.nodes]
        out["health"] = {"timeout": self.health_timeout, "probes": [p.path for p in self.probes]}
        if isinstance(self, _Started):
            out["restart"] = {"policy": self.restart, "max_restarts": self.max_restarts,
                              "unhealthy_after": self.unhealthy_after,
                              "liveness": self.liveness.path if self.liveness else None}
        if not isinstance(self, FrontPlan):
            out["on_demand"] = self.on_demand
        if isinstance(self, _Server) and self.on_demand:
            out["idle_timeout"], out["sleep"] = self.idle_timeout, self.sleep
            out["memory_gib"] = {str(g): c for g, c in self.claims}
            out["excludes"] = list(self.excludes)
        out["config_hash"] = self.config_hash
        return out


@dataclass(frozen=True, kw_only=True)
class _Started(_PlanBase):
    """What h2ostack starts and supervises."""

    restart: str = "no"
    max_restarts: int | None = None
    unhealthy_after: float | None = None
    liveness: Probe | None = None  # what the supervisor probes to tell a hung server


@dataclass(frozen=True, kw_only=True)
class _Server(_Started):
    """A model server h2ostack starts: it may be on demand (h2ostack.ondemand starts it, not `up`)."""

    on_demand: bool = False
    idle_timeout: float = 600.0
    sleep: int | None = None  # vLLM sleep level it is put away with, where the engine can sleep
    # on demand: GiB it takes on each of its GPUs (None: not known, so it never shares a GPU with another)
    claims: tuple[tuple[int, float | None], ...] = ()
    excludes: tuple[str, ...] = ()  # on-demand services it cannot be up beside


@dataclass(frozen=True, kw_only=True)
class ProcessPlan(_Server):
    """A server run as a process group of this machine."""

    mode: ClassVar[str] = "process"
    command: tuple[str, ...] = ()
    workdir: str | None = None


@dataclass(frozen=True, kw_only=True)
class ContainerPlan(_Server):
    """A server run as a Docker container, on this machine's engine or a `hosts:` entry's."""

    mode: ClassVar[str] = "container"
    image: str = ""
    container: Mapping[str, Any] = field(default_factory=dict)
    host: str | None = None  # the `hosts:` entry a container runs on (None: this machine's engine)
    docker_url: str | None = None  # that host's Docker endpoint


@dataclass(frozen=True, kw_only=True)
class ExternalPlan(_PlanBase):
    """An endpoint h2ostack does not start: it only waits for it and wires it."""

    mode: ClassVar[str] = "external"


@dataclass(frozen=True, kw_only=True)
class MultiNodePlan(ExternalPlan):
    """vLLM across hosts with Ray: `render` writes its recipe; `up` wires it like an endpoint."""

    command: tuple[str, ...] = ()
    workdir: str | None = None
    nodes: tuple[tuple[str, str, str], ...] = ()  # (host name, ssh target, address), head first


@dataclass(frozen=True, kw_only=True)
class FrontPlan(_Started):
    """A chat front, run as a process: the built-in grid (kind gradio) or h2oGPT's own UI."""

    mode: ClassVar[str] = "process"
    command: tuple[str, ...] = ()
    workdir: str | None = None
    models: tuple[str, ...] = ()  # the services of the grid
    wiring: tuple[tuple[str, str], ...] = ()  # h2oGPT fronts: (model, how h2oGPT reaches it), secrets as ***


ServicePlan = ProcessPlan | ContainerPlan | ExternalPlan | FrontPlan
SERVICE_PLANS = (ProcessPlan, ContainerPlan, ExternalPlan, FrontPlan)


@dataclass(frozen=True)
class Plan:
    stack: str
    source: str
    base_dir: str
    bind: str
    order: tuple[tuple[str, ...], ...]
    services: Mapping[str, ServicePlan]
    fronts: Mapping[str, ServicePlan]
    gpu_source: str = "none"
    # per GPU: GiB left to on-demand services beside the always-on ones (GPUs whose memory is known)
    gpu_budget: Mapping[int, float] = field(default_factory=dict)

    def all(self) -> dict[str, ServicePlan]:
        return {**self.services, **self.fronts}

    def deps(self) -> dict[str, list[str]]:
        return {n: list(s.depends_on) for n, s in self.all().items()}

    def on_demand(self) -> dict[str, ServicePlan]:
        return {n: s for n, s in self.services.items() if s.on_demand}

    @classmethod
    def from_json(cls, data: Any, source: str = "") -> Plan:
        """The inverse of `to_json`, validated: BadPlan saying what is wrong with anything else. What
        `to_json` does not keep is left at its default (the probes' requests beyond their paths, the
        API a server speaks, the bind address); secrets stay ***."""
        if not isinstance(data, dict):
            raise BadPlan("the plan is not an object")
        try:
            saved = _PlanJson.model_validate(data)
        except ValidationError as exc:
            raise BadPlan(_problems(exc)) from None
        services = {e.name: e.to_plan(front=False) for e in saved.services}
        fronts = {e.name: e.to_plan(front=True) for e in saved.fronts}
        return cls(saved.stack, source, os.path.dirname(source), "", tuple(tuple(level) for level in saved.order),
                   services, fronts, gpu_budget={int(g): b for g, b in saved.on_demand_budget_gib.items()})

    @classmethod
    def from_saved(cls, data: Any) -> Plan:
        """The plan a state dir keeps (`{"plan": ..., "source": ..., "saved_at": ...}`, StackState.save_plan)."""
        if not isinstance(data, dict) or not isinstance(data.get("source", ""), str):
            raise BadPlan("not an object with the saved `plan` and its `source` file")
        return cls.from_json(data.get("plan"), data.get("source", ""))

    def to_json(self) -> dict[str, Any]:
        out = {"stack": self.stack, "order": [list(level) for level in self.order],
               "services": [s.to_json() for s in self.services.values()],
               "fronts": [f.to_json() for f in self.fronts.values()]}
        if self.gpu_budget and any(s.on_demand for s in self.services.values()):
            out["on_demand_budget_gib"] = {str(g): round(b, 3) for g, b in self.gpu_budget.items()}
        return out


def fits(name: str, up: Iterable[str], claims: Mapping[str, Mapping[int, float | None]],
         budget: Mapping[int, float]) -> bool:
    """Whether on-demand service `name` fits beside the on-demand services `up`, GPU by GPU: the
    memory they claim within the GPU's budget; one whose memory is not known shares no GPU."""
    mine = claims.get(name, {})
    for gid, need in mine.items():
        others = [claims[o][gid] for o in up if o != name and gid in claims.get(o, {})]
        if not others:
            continue
        if need is None or any(c is None for c in others):
            return False
        cap = budget.get(gid)
        if cap is not None and need + sum(c for c in others if c is not None) > cap + 1e-9:
            return False
    return True


# -- a saved plan read back -----------------------------------------------------------------------
class BadPlan(ValueError):
    """A saved plan that is not one `Plan.to_json` wrote; str() says what is wrong."""


_Name = Annotated[str, StringConstraints(pattern=NAME_RE.pattern)]  # a file name under the state dir too
_Port = Annotated[int, Field(ge=1, le=65535)]
_GpuId = Annotated[int, Field(ge=0)]


class _Json(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _HealthJson(_Json):
    timeout: float = 300.0
    probes: list[str] = []


class _RestartJson(_Json):
    policy: str = "no"
    max_restarts: int | None = None
    unhealthy_after: float | None = None
    liveness: str | None = None


class _NodeJson(_Json):
    host: str
    ssh: str
    address: str


class _EntryJson(_Json):
    name: _Name
    kind: str
    mode: Literal["process", "container", "external"]
    gpus: list[_GpuId] = []
    port: _Port | None = None
    url: str | None = None
    depends_on: list[_Name] = []
    env: dict[str, str] = {}
    model: str | None = None
    command: list[str] | None = None
    workdir: str | None = None
    image: str | None = None
    container: dict[str, Any] | None = None
    models: list[_Name] | None = None
    wiring: dict[str, str] = {}
    host: str | None = None
    docker: str | None = None
    nodes: list[_NodeJson] = []
    health: _HealthJson = _HealthJson()
    restart: _RestartJson | None = None
    on_demand: bool = False
    idle_timeout: float = 600.0
    sleep: int | None = None
    memory_gib: dict[_GpuId, float | None] = {}
    excludes: list[_Name] = []
    config_hash: str = ""

    def to_plan(self, front: bool) -> ServicePlan:
        common: dict[str, Any] = dict(
            name=self.name, kind=self.kind, api="", gpus=tuple(self.gpus), port=self.port, url=self.url,
            served_model=self.model, depends_on=tuple(self.depends_on), env=dict(self.env),
            probes=tuple(Probe("health", "GET", p) for p in self.health.probes),
            health_timeout=self.health.timeout, config_hash=self.config_hash)
        restart = self.restart or _RestartJson()
        started = dict(restart=restart.policy, max_restarts=restart.max_restarts,
                       unhealthy_after=restart.unhealthy_after,
                       liveness=Probe("liveness", "GET", restart.liveness) if restart.liveness else None)
        server = dict(on_demand=self.on_demand, idle_timeout=self.idle_timeout, sleep=self.sleep,
                      claims=tuple(self.memory_gib.items()), excludes=tuple(self.excludes))
        if front:
            if self.mode != "process":
                raise BadPlan(f"front {self.name!r}: mode {self.mode!r} (a front runs as a process)")
            return FrontPlan(**common, **started, command=tuple(self.command or ()), workdir=self.workdir,
                             models=tuple(self.models or ()), wiring=tuple(self.wiring.items()))
        if self.mode == "container":
            return ContainerPlan(**common, **started, **server, image=self.image or "",
                                 container=self.container or {}, host=self.host, docker_url=self.docker)
        if self.mode == "external" and self.nodes:
            return MultiNodePlan(**common, command=tuple(self.command or ()), workdir=self.workdir,
                                 nodes=tuple((n.host, n.ssh, n.address) for n in self.nodes))
        if self.mode == "external":
            return ExternalPlan(**common)
        return ProcessPlan(**common, **started, **server, command=tuple(self.command or ()), workdir=self.workdir)


class _PlanJson(_Json):
    stack: _Name
    order: list[list[_Name]] = []
    services: list[_EntryJson] = []
    fronts: list[_EntryJson] = []
    on_demand_budget_gib: dict[_GpuId, float] = {}


def _problems(exc: ValidationError, most: int = 3) -> str:
    """A validation error as one line: where in the plan, and what is wrong (never the value)."""
    errors = exc.errors(include_url=False, include_input=False)
    said = [f"{'.'.join(str(x) for x in e['loc']) or 'the plan'}: {e['msg']}" for e in errors[:most]]
    more = f" (and {len(errors) - most} more)" if len(errors) > most else ""
    return "; ".join(said) + more
