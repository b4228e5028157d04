"""The planner, pure: (stack, machine facts, what is running) -> Plan.

GPU and port assignment, start order, argv/env/container spec per service, the readiness
probes, and a config hash that decides whether `up` again keeps or restarts a service.
Nothing here starts, reads or probes anything: `h2ostack plan` shows exactly what `up` does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from pydantic import SecretStr

from h2ostack import __version__, backends
from h2ostack.backends import h2ogpt, vllm
from h2ostack.backends.base import ContainerSpec, Context, Probe, ProcessSpec, resolve_path
from h2ostack.errors import Problem, StackError
from h2ostack.facts import Facts, local_model_path
from h2ostack.graph import order_levels
from h2ostack.plan_types import Plan, ServicePlan, fits  # noqa: F401 - re-exported
from h2ostack.spec import EnvValue, Front, Service, Stack, reveal

# weights x 1.2: activations, CUDA context and allocator slack, the usual rule of thumb
WEIGHT_MARGIN = 1.2
VLLM_DEFAULT_UTILIZATION = vllm.DEFAULT_UTILIZATION
FRONT_DEFAULT_PORT = 7860


class PlanError(StackError):
    pass


def connect_host(bind: str) -> str:
    return "127.0.0.1" if bind in ("0.0.0.0", "", "*") else ("::1" if bind == "::" else bind)


def url_for(bind: str, port: int) -> str:
    host = connect_host(bind)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def config_hash(payload: Mapping[str, Any]) -> str:
    """Stable over runs; secret values enter only as their own digest."""

    def norm(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): norm(x) for k, x in sorted(v.items())}
        if isinstance(v, list | tuple):
            return [norm(x) for x in v]
        if hasattr(v, "get_secret_value"):
            return "sha256:" + hashlib.sha256(reveal(v).encode()).hexdigest()
        if isinstance(v, Probe):
            return norm(asdict(v))
        return v

    text = json.dumps(norm(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_path = resolve_path


class _Planner:
    def __init__(self, stack: Stack, facts: Facts, keep_ports: frozenset[int]):
        self.stack = stack
        self.facts = facts
        self.problems: list[Problem] = []
        self.busy = set(facts.busy_ports) - set(keep_ports)
        self.taken_ports: set[int] = set()
        self.claims: dict[str, dict[int, float | None]] = {}  # on-demand services: GiB per GPU
        self.budget: dict[int, float] = {}

    def problem(self, loc: tuple, msg: str) -> None:
        line, col = self.stack.position(loc)
        self.problems.append(Problem(loc, msg, line, col))

    # -- GPUs ---------------------------------------------------------------------------
    def assign_gpus(self) -> dict[str, tuple[int, ...]]:
        """GPU ids per started service, machine by machine: this one's (NVML or stated), and each
        host's as stated in `hosts.NAME.gpus` (without them, explicit ids are taken as given)."""
        by_host: dict[str | None, dict[str, Service]] = {}
        for n, s in self.stack.services.items():
            if s.starts_something:
                by_host.setdefault(s.host if s.host in self.stack.hosts else None, {})[n] = s
        out: dict[str, tuple[int, ...]] = {}
        for host, started in by_host.items():
            if host is None:
                ids: list[int] | None = [g.index for g in self.facts.gpus]
                where = {"stated": "stated with --gpus / H2OSTACK_GPUS", "nvml": "found by NVML",
                         "none": "found (no NVML; state them with --gpus)"}[self.facts.gpu_source]
            elif self.stack.hosts[host].gpus is not None:
                ids = self.stack.hosts[host].gpus
                where = f"of host {host} (hosts.{host}.gpus)"
            else:
                found = self.facts.host_gpus.get(host)
                ids = [g.index for g in found] if found is not None else None
                where = f"of host {host} (" + ("as its engine lists them)" if found is not None
                                               else f"hosts.{host}.gpus)")
            out.update(self.assign_on(started, ids, where))
        return out

    def assign_on(self, started: dict[str, Service], ids: list[int] | None, where: str
                  ) -> dict[str, tuple[int, ...]]:
        """Always-on services get devices of their own (unless `share_gpus`); on-demand services
        may share devices with each other, never with an always-on one."""
        owners: dict[int, list[str]] = {}
        od_load: dict[int, int] = {}  # on-demand services per device, to spread counts over them
        out: dict[str, tuple[int, ...]] = {}
        ordered = sorted(started.items(), key=lambda item: item[1].on_demand)
        for name, svc in ordered:
            explicit = svc.gpu_ids
            if explicit is None:
                continue
            if len(set(explicit)) != len(explicit):
                self.problem(("services", name, "gpus"), f"GPU ids {explicit} name a device twice")
            for gid in explicit:
                if ids is not None and gid not in ids:
                    self.problem(("services", name, "gpus"),
                                 f"GPU {gid} does not exist: the GPUs {where} are {ids or 'none'}")
                if svc.on_demand:
                    od_load[gid] = od_load.get(gid, 0) + 1
                else:
                    owners.setdefault(gid, []).append(name)
            out[name] = tuple(explicit)
        for name, svc in ordered:
            if svc.gpu_ids is not None or not svc.gpu_count:
                out.setdefault(name, ())
                continue
            if ids is None:
                self.problem(("services", name, "gpus"), f"a GPU count needs the GPUs {where}: state them, "
                                                         "or give this service GPU ids")
                out[name] = ()
                continue
            free = [g for g in ids if g not in owners]
            if svc.share_gpus and len(free) < svc.gpu_count:
                free += [g for g in ids if g in owners and all(self.stack.services[o].share_gpus for o in owners[g])
                         and g not in free]
            if len(free) < svc.gpu_count:
                self.problem(("services", name, "gpus"),
                             f"needs {svc.gpu_count} GPU(s) but only {len(free)} of the GPUs {where} "
                             f"({ids or 'none'}) are free" + (" beside the always-on services" if svc.on_demand
                                                               else ""))
                out[name] = ()
                continue
            if svc.on_demand:
                free.sort(key=lambda g: od_load.get(g, 0))  # stable: the least shared devices first, by id
            chosen = tuple(sorted(free[: svc.gpu_count]))
            for gid in chosen:
                if svc.on_demand:
                    od_load[gid] = od_load.get(gid, 0) + 1
                else:
                    owners.setdefault(gid, []).append(name)
            out[name] = chosen
        for gid, names in owners.items():
            if len(names) > 1 and not all(self.stack.services[n].share_gpus for n in names):
                self.problem(("services", names[1], "gpus"),
                             f"GPU {gid} is already used by service '{names[0]}' "
                             "(set `share_gpus: true` on both to share it)")
        for name, ids_of in out.items():
            svc = started[name]
            if not svc.on_demand:
                continue
            for gid in ids_of:
                holders = owners.get(gid, [])
                if holders and not (svc.share_gpus and all(self.stack.services[o].share_gpus for o in holders)):
                    self.problem(("services", name, "gpus"),
                                 f"GPU {gid} is used by always-on service '{holders[0]}': on-demand services "
                                 "share GPUs with each other only (or set `share_gpus: true` on both)")
                    break
        return out

    def check_memory(self, gpus: dict[str, tuple[int, ...]]) -> None:
        need: dict[int, list[tuple[str, float]]] = {}
        for name, ids in gpus.items():
            svc = self.stack.services[name]
            if not ids or svc.host in self.stack.hosts:  # another machine's memory is not known here
                continue
            per_gpu = None
            how = ""
            if svc.vram_gb:
                per_gpu, how = svc.vram_gb, f"vram_gb: {svc.vram_gb:g}"
            else:
                path = local_model_path(svc.model, self.stack.base_dir)
                size = self.facts.model_gib.get(str(path)) if path else None
                if size:
                    per_gpu = size / len(ids) * WEIGHT_MARGIN
                    how = f"weights {size:.1f} GiB over {len(ids)} GPU(s) x {WEIGHT_MARGIN}"
            if per_gpu is None:
                continue
            backend = backends.get(svc.kind)
            if backend.reserves_gpu_share:
                util = backend.gpu_share(svc)
                if util is None:
                    self.problem(("services", name, "args", "gpu_memory_utilization"),
                                 "gpu_memory_utilization is the share of each GPU vLLM may use: a number "
                                 "above 0 and at most 1, like 0.9")
                    continue
                for gid in ids:
                    g = self.facts.gpu(gid)
                    if g and g.total_gib:
                        budget = util * g.total_gib
                        if per_gpu > budget:
                            self.problem(("services", name, "gpus"),
                                         f"the model needs {per_gpu:.1f} GiB per GPU ({how}) but vLLM may use "
                                         f"{budget:.1f} GiB of GPU {gid} (gpu_memory_utilization {util:g} of "
                                         f"{g.total_gib:.1f} GiB): add GPUs or raise gpu_memory_utilization")
                        # vLLM reserves its whole share up front: weights plus KV cache
                        per_gpu_claim = budget
                        need.setdefault(gid, []).append((name, per_gpu_claim))
                continue
            for gid in ids:
                need.setdefault(gid, []).append((name, per_gpu))
        self.check_fit(need, gpus)

    def check_fit(self, need: dict[int, list[tuple[str, float]]], gpus: dict[str, tuple[int, ...]]) -> None:
        """The always-on services together within each GPU's memory; each on-demand service alone
        beside them. What is left of each GPU is the on-demand services' budget."""
        services = self.stack.services
        for name, ids in gpus.items():
            if services[name].on_demand and ids and services[name].host not in self.stack.hosts:
                known = {gid: c for gid, lst in need.items() for n, c in lst if n == name}
                self.claims[name] = {gid: known.get(gid) for gid in ids}
        for gid, every in need.items():
            claims = [c for c in every if not services[c[0]].on_demand]
            g = self.facts.gpu(gid)
            avail = g.free_gib if g and g.free_gib is not None else (g.total_gib if g else None)
            if avail is None:
                continue
            always = sum(c for _, c in claims)
            # the GPU's whole memory: what on-demand models of this stack hold now comes back when
            # they are put away (the release wait makes sure of it before each start)
            cap = g.total_gib if g and g.total_gib else avail
            self.budget[gid] = max(0.0, cap - always)
            for od_name, od_need in (c for c in every if services[c[0]].on_demand):
                if always + od_need > cap + 1e-9:
                    beside = f" beside the always-on services' {always:.1f} GiB" if claims else ""
                    self.problem(("services", od_name, "gpus"),
                                 f"does not fit on GPU {gid} even alone: it needs {od_need:.1f} GiB{beside} but "
                                 f"GPU {gid} has {cap:.1f} GiB")
        for gid, claims in ((g, [c for c in lst if not services[c[0]].on_demand]) for g, lst in need.items()):
            g = self.facts.gpu(gid)
            avail = g.free_gib if g and g.free_gib is not None else (g.total_gib if g else None)
            if avail is None:
                continue
            total = sum(c for _, c in claims)
            if total > avail + 1e-9:
                who = ", ".join(f"{n} {c:.1f} GiB" for n, c in claims)
                self.problem(("services", claims[-1][0], "gpus"),
                             f"does not fit on GPU {gid}: {total:.1f} GiB needed ({who}) but {avail:.1f} GiB "
                             "is free there")

    # -- ports --------------------------------------------------------------------------
    def port(self, loc: tuple, wanted: int | None, default: int) -> int:
        if wanted is not None:
            if wanted in self.busy:
                self.problem((*loc, "port"), f"port {wanted} is already in use on this machine "
                                             "(stop what holds it, or pick another port)")
            self.taken_ports.add(wanted)
            return wanted
        port = default
        while port in self.busy or port in self.taken_ports or port in self.explicit_ports:
            port += 1
        self.taken_ports.add(port)
        return port

    # -- services -----------------------------------------------------------------------
    def service(self, name: str, svc: Service, gpus: tuple[int, ...]) -> ServicePlan:
        stack = self.stack
        loc = ("services", name)
        timeout = svc.health.timeout
        common = dict(name=name, kind=svc.kind, depends_on=tuple(svc.depends_on), prompt_type=svc.prompt_type,
                      health_interval=svc.health.interval)
        backend = backends.get(svc.kind)
        if getattr(svc, "nodes", None):
            return self.multinode(name, svc, common)
        if svc.external:
            url = backend.start_spec(svc, self.context(name, svc, (), None, "")).url  # type: ignore[union-attr]
            probes = backend.probes(svc, None)
            return ServicePlan(**common, mode="external", api=backend.protocol, url=(url or "").rstrip("/"),
                               served_model=svc.model, probes=tuple(probes),
                               health_timeout=timeout or backend.external_health_timeout,
                               config_hash=config_hash({"url": url, "model": svc.model}))

        python = _path(stack.base_dir, getattr(svc, "python", None) or self.facts.python)
        bind = stack.defaults.bind
        if "api_key" in svc.args:
            self.problem((*loc, "args", "api_key"), "a flag's value shows in `ps` and `docker inspect`: set "
                                                     "`api_key:` on the service, which reaches the server through "
                                                     "its environment")
        env: dict[str, EnvValue] = {}
        if stack.defaults.hf_home:
            env["HF_HOME"] = _path(stack.base_dir, stack.defaults.hf_home)
        if gpus:
            # NVML's indices are PCI bus order; CUDA's own default order is "fastest first"
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        elif self.facts.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""  # keep a CPU service off the machine's GPUs
        port = self.port(loc, svc.port, backend.default_port or 8000)
        ctx = self.context(name, svc, gpus, port, bind, python)
        start = backend.start_spec(svc, ctx)
        env.update(start.env)  # type: ignore[union-attr]
        image = container = command = None
        workdir = stack.base_dir
        if isinstance(start, ContainerSpec):
            image = start.image
            container = self.container_spec(name, svc, start, ctx, env)
        elif isinstance(start, ProcessSpec):
            command = start.command
            workdir = start.workdir or stack.base_dir
        else:  # pragma: no cover - an external service is planned above
            raise AssertionError(svc.kind)
        probes = backend.probes(svc, ctx)
        env.update(svc.env)
        backend.finish_env(env)
        mode = "container" if image else "process"
        liveness = backend.liveness(svc, probes)
        host = self.stack.hosts.get(svc.host) if svc.host else None
        url = f"http://{host.reach}:{port}" if host is not None else url_for(bind, port)
        if host is not None:
            common.update(host=svc.host, docker_url=host.docker)
        plan = ServicePlan(**common, mode=mode, api=backend.protocol, gpus=gpus, port=port, url=url,
                           served_model=ctx.served_model, env=env, command=tuple(command) if command else None,
                           workdir=workdir if command else None, image=image, container=container,
                           probes=tuple(probes), health_timeout=timeout or backend.default_health_timeout,
                           restart=svc.restart, max_restarts=svc.max_restarts,
                           unhealthy_after=svc.health.unhealthy_after, liveness=liveness)
        return replace(plan, config_hash=self.hash_of(plan))

    def context(self, name: str, svc: Service, gpus: tuple[int, ...], port: int | None, bind: str,
                python: str = "") -> Context:
        """What the kind's backend is told of a service: the model as its server is given it (a local
        model as its absolute path, where the backend takes one), the name requests use, and the rest."""
        backend = backends.get(svc.kind)
        local = local_model_path(svc.model, self.stack.base_dir) if backend.resolves_local_model else None
        model = str(local) if local else (svc.model or "")
        hf_home = _path(self.stack.base_dir, self.stack.defaults.hf_home) if self.stack.defaults.hf_home else None
        return Context(name, gpus, port, bind, python, model, backend.served_model(svc, model), svc.args,
                       svc.revision, self.stack.base_dir, hf_home)

    def container_spec(self, name: str, svc: Any, start: ContainerSpec, ctx: Context,
                       env: dict[str, EnvValue]) -> dict[str, Any]:
        """Docker create parameters (the runtime adds labels); the image's arguments come from the backend."""
        spec: dict[str, Any] = {
            "name": f"{self.stack.name}-{name}",
            "command": list(start.command),
            "ports": {f"{start.port}/tcp": [self.stack.hosts[svc.host].publish_on if svc.host in
                                            self.stack.hosts else self.stack.defaults.bind, ctx.port]},
            "volumes": [self.volume(v) for v in getattr(svc, "volumes", [])],
        }
        if getattr(svc, "shm_size", None):
            spec["shm_size"] = svc.shm_size
        if ctx.gpus:
            spec["device_requests"] = [{"Driver": "nvidia", "DeviceIDs": [str(g) for g in ctx.gpus],
                                        "Capabilities": [["gpu"]]}]
        if svc.restart != "no":  # containers restart by Docker's own policy
            spec["restart_policy"] = {"Name": svc.restart, "MaximumRetryCount": svc.max_restarts or 0}
            if svc.restart == "always":
                spec["restart_policy"] = {"Name": "always"}
        env.pop("CUDA_VISIBLE_DEVICES", None)  # the device request decides what the container sees
        env.pop("CUDA_DEVICE_ORDER", None)
        hf_home = env.pop("HF_HOME", None)  # a host path: the container sees the cache at the image's path
        if hf_home and start.cache_volume and not any(v.split(":")[1:2] == [start.cache_at]
                                                      for v in spec["volumes"]):
            spec["volumes"].append(start.cache_volume)
        return spec

    def multinode(self, name: str, svc: Any, common: dict[str, Any]) -> ServicePlan:
        """vLLM across hosts with Ray: tensor parallel over each node's GPUs, pipeline parallel across
        the nodes. Not started by `up`: `render` writes its recipe; then it is wired like an endpoint."""
        loc = ("services", name)
        hosts = self.stack.hosts
        unknown = [n for n in svc.nodes if n not in hosts]
        if unknown:
            self.problem((*loc, "nodes"), f"unknown host(s) {', '.join(unknown)}: `hosts:` names "
                                          f"{', '.join(hosts) or 'none'}")
            return ServicePlan(**common, mode="external", api=backends.get(svc.kind).protocol)
        if len(set(svc.nodes)) != len(svc.nodes):
            self.problem((*loc, "nodes"), "a host is named twice")
        gpus = tuple(svc.gpu_ids if svc.gpu_ids is not None else range(svc.gpu_count))
        if not gpus:
            self.problem((*loc, "gpus"), "a multi-node service needs `gpus:` (the GPUs it uses on each node)")
        port = svc.port or vllm.DEFAULT_PORT
        head = hosts[svc.nodes[0]]
        python = os.path.expanduser(svc.python or "python3")
        served = vllm.served_model(svc.model or "", svc.args)
        ctx = Context(name, (), port, "0.0.0.0", python, svc.model or "", served, svc.args, svc.revision)
        command = vllm.command(ctx)
        if "tensor_parallel_size" not in svc.args:
            command += ["--tensor-parallel-size", str(len(gpus))]
        if "pipeline_parallel_size" not in svc.args:
            command += ["--pipeline-parallel-size", str(len(svc.nodes))]
        if "distributed_executor_backend" not in svc.args:
            command += ["--distributed-executor-backend", "ray"]
        env: dict[str, EnvValue] = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                                    "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
                                    vllm.KEEP_ALIVE_ENV: str(vllm.KEEP_ALIVE_S)}
        if svc.api_key is not None:
            env["VLLM_API_KEY"] = svc.api_key
        env.update(svc.env)
        nodes = tuple((n, hosts[n].ssh_target, hosts[n].reach) for n in svc.nodes)
        plan = ServicePlan(**common, mode="external", api=backends.get(svc.kind).protocol, gpus=gpus, port=port,
                           url=f"http://{head.reach}:{port}", served_model=served, env=env, command=tuple(command),
                           probes=tuple(vllm.probes(ctx)), health_timeout=svc.health.timeout or
                           vllm.DEFAULT_HEALTH_TIMEOUT, nodes=nodes)
        return replace(plan, config_hash=self.hash_of(plan))

    def volume(self, text: str) -> str:
        host, sep, rest = text.partition(":")
        if sep and (host.startswith(("~", ".", "/"))):
            host = _path(self.stack.base_dir, host if host.startswith(("~", "/")) else "./" + host)
        return host + sep + rest

    def front(self, name: str, front: Front, services: Mapping[str, ServicePlan]) -> ServicePlan:
        port = self.port(("fronts", name), front.port, FRONT_DEFAULT_PORT)
        bind = self.stack.defaults.bind
        deps = tuple(dict.fromkeys([*(m for m in front.models if services[m].started and not services[m].on_demand),
                                    *front.depends_on]))
        env: dict[str, EnvValue] = {"PYTHONUNBUFFERED": "1", **front.env}
        python = _path(self.stack.base_dir, front.python or self.facts.python)
        if front.kind == "h2ogpt":
            specs = self.stack.services
            lock, lock_env = h2ogpt.model_lock_args(front, services, specs)
            given = {k.replace("-", "_") for k in front.args}
            for key in sorted(given & set(h2ogpt.FRONT_FIELDS)):
                self.problem(("fronts", name, "args", key), f"`{key}` is set by the front's "
                                                            f"`{h2ogpt.FRONT_FIELDS[key]}:`, not by `args:`")
            self.check_openai_models(name, front)
            redact = h2ogpt.secret_values(front, specs)
            command = [*h2ogpt.launcher(python, front.workdir, bool(redact)), *lock,
                       *h2ogpt.front_flags(front, bind),
                       *h2ogpt.flags({k: v for k, v in h2ogpt.DEFAULT_FLAGS.items() if k not in given}),
                       *h2ogpt.flags(front.args)]
            env.update({"GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": bind, **lock_env,
                        **h2ogpt.front_env(front, specs)})
            env.update(front.env)
            if redact:
                env[h2ogpt.REDACT_ENV] = SecretStr(json.dumps(redact))
            workdir = _path(self.stack.base_dir, front.workdir) if front.workdir else self.stack.base_dir
            probes = h2ogpt.probes(login=front.auth is not None)
            wiring = tuple(h2ogpt.wiring(front, services, specs))
        else:
            # the front reads the stack file itself: secrets reach it through the file, never argv
            stack_file = os.path.join(self.stack.base_dir, os.path.basename(self.stack.source))
            command = [python, "-m", "h2ostack.front", stack_file, "--front", name,
                       "--host", bind, "--port", str(port)]
            workdir = self.stack.base_dir
            probes = [Probe("front", "GET", "/healthz", timeout=5.0)]
            wiring = ()
        plan = ServicePlan(name=name, kind=front.kind, mode="process", api="gradio", port=port,
                           url=url_for(bind, port), depends_on=deps, env=env, command=tuple(command),
                           workdir=workdir, probes=tuple(probes), health_timeout=front.health.timeout or 120.0,
                           health_interval=front.health.interval, is_front=True, models=tuple(front.models),
                           wiring=wiring)
        return replace(plan, config_hash=self.hash_of(plan))

    def check_openai_models(self, name: str, front: Front) -> None:
        """h2oGPT reads one OpenAI base URL and key (its environment): its OpenAI models must share them."""
        seen = h2ogpt.openai_endpoints(front, self.stack.services)
        if len(seen) > 1:
            self.problem(("fronts", name, "models"), "an h2oGPT front reads one OpenAI URL and api_key from its "
                                                     f"environment, but {', '.join(seen.values())} differ: wire "
                                                     "other OpenAI-compatible servers as `kind: vllm` with `url:`")

    @staticmethod
    def hash_of(plan: ServicePlan) -> str:
        return config_hash({"kind": plan.kind, "mode": plan.mode, "command": plan.command, "env": plan.env,
                            "workdir": plan.workdir, "image": plan.image, "container": plan.container,
                            "gpus": plan.gpus, "port": plan.port, "probes": plan.probes, "version": __version__,
                            "restart": [plan.restart, plan.max_restarts, plan.unhealthy_after, plan.liveness]})

    def run(self) -> Plan:
        stack = self.stack
        self.explicit_ports = {s.port for s in stack.services.values() if s.port and not s.external}
        self.explicit_ports |= {f.port for f in stack.fronts.values() if f.port}
        gpus = self.assign_gpus()
        self.check_memory(gpus)
        services = {n: self.service(n, s, gpus.get(n, ())) for n, s in stack.services.items()}
        services.update(self.on_demand(services))
        fronts = {n: self.front(n, f, services) for n, f in stack.fronts.items()}
        if self.problems:
            raise PlanError(stack.source, self.problems)
        deps = {n: list(p.depends_on) for n, p in {**services, **fronts}.items() if not p.on_demand}
        return Plan(stack.name, stack.source, stack.base_dir, stack.defaults.bind, order_levels(deps), services,
                    fronts, self.facts.gpu_source, dict(self.budget))

    def on_demand(self, services: Mapping[str, ServicePlan]) -> dict[str, ServicePlan]:
        """On-demand plans with their memory per GPU and the on-demand services they cannot be up beside."""
        od = {n: self.stack.services[n] for n, p in services.items() if self.stack.services[n].on_demand}
        out = {}
        for name, svc in od.items():
            excludes = tuple(o for o in od if o != name and not fits(name, [o], self.claims, self.budget))
            out[name] = replace(services[name], on_demand=True, idle_timeout=svc.idle_timeout,
                                sleep=svc.sleep, claims=tuple(self.claims.get(name, {}).items()), excludes=excludes)
        return out


def make_plan(stack: Stack, facts: Facts, keep_ports: frozenset[int] = frozenset()) -> Plan:
    """`keep_ports`: ports held by this stack's own running services, which are not conflicts."""
    return _Planner(stack, facts, keep_ports).run()
