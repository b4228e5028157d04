"""A plan's types: what the planner makes and the runtimes, the renderers and `api` read. Below the
planner, so that the runtimes it names need not import it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from h2ostack.backends.base import Probe
from h2ostack.spec import EnvValue, mask


def runtime_key(mode: str | None, host: str | None) -> str:
    """Which runtime holds a service: `process`, `container` (the default engine) or `container@HOST`."""
    return f"{mode}@{host}" if host and mode == "container" else (mode or "process")


@dataclass(frozen=True)
class ServicePlan:
    name: str
    kind: str
    mode: str  # process | container | external
    api: str  # openai | tgi | h2ogpt | gradio
    gpus: tuple[int, ...] = ()
    port: int | None = None
    url: str | None = None  # where clients reach it (the server root; for kind openai, the API base)
    served_model: str | None = None
    depends_on: tuple[str, ...] = ()
    env: Mapping[str, EnvValue] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    workdir: str | None = None
    image: str | None = None
    container: Mapping[str, Any] | None = None
    probes: tuple[Probe, ...] = ()
    health_timeout: float = 300.0
    health_interval: float = 0.1
    prompt_type: str | None = None
    config_hash: str = ""
    is_front: bool = False
    models: tuple[str, ...] = ()  # fronts: the services of the grid
    restart: str = "no"
    max_restarts: int | None = None
    unhealthy_after: float | None = None
    liveness: Probe | None = None  # what the supervisor probes to tell a hung server
    nodes: tuple[tuple[str, str, str], ...] = ()  # multi-node: (host name, ssh target, address), head first
    host: str | None = None  # the `hosts:` entry a container runs on (None: this machine's engine)
    docker_url: str | None = None  # that host's Docker endpoint
    wiring: tuple[tuple[str, str], ...] = ()  # h2oGPT fronts: (model, how h2oGPT reaches it), secrets as ***
    on_demand: bool = False  # not started by `up`: the front's gateway starts it (h2ostack.ondemand)
    idle_timeout: float = 600.0
    sleep: int | None = None  # vLLM sleep level it is put away with, where the engine can sleep
    # on demand: GiB it takes on each of its GPUs (None: not known, so it never shares a GPU with another)
    claims: tuple[tuple[int, float | None], ...] = ()
    excludes: tuple[str, ...] = ()  # on-demand services it cannot be up beside

    @property
    def runtime_key(self) -> str:
        """Which runtime holds it: `process`, `container` (the default engine) or `container@HOST`."""
        return runtime_key(self.mode, self.host)

    @property
    def started(self) -> bool:
        return self.mode != "external"

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
        if self.image is not None:
            out["image"] = self.image
            out["container"] = mask(dict(self.container or {}))
        if self.is_front:
            out["models"] = list(self.models)
        if self.wiring:
            out["wiring"] = dict(self.wiring)
        if self.host:
            out["host"], out["docker"] = self.host, self.docker_url
        if self.nodes:
            out["nodes"] = [{"host": n, "ssh": ssh, "address": addr} for n, ssh, addr in self.nodes]
        out["health"] = {"timeout": self.health_timeout, "probes": [p.path for p in self.probes]}
        if self.started:
            out["restart"] = {"policy": self.restart, "max_restarts": self.max_restarts,
                              "unhealthy_after": self.unhealthy_after,
                              "liveness": self.liveness.path if self.liveness else None}
        if not self.is_front:
            out["on_demand"] = self.on_demand
        if self.on_demand:
            out["idle_timeout"], out["sleep"] = self.idle_timeout, self.sleep
            out["memory_gib"] = {str(g): c for g, c in self.claims}
            out["excludes"] = list(self.excludes)
        out["config_hash"] = self.config_hash
        return out


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
