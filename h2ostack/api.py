"""up / down / kill / status / logs / plan as plain functions, usable as a library.

The CLI renders the events these functions emit and maps their errors to exit codes; nothing
here prints. Runtimes are chosen per service mode (processes here, containers through the
Docker SDK) and imported only when a stack has such services.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from h2ostack import executor, health
from h2ostack.errors import EngineUnavailable, NotFound, UpError
from h2ostack.runtimes.base import Observed, runtime_key
from h2ostack.state import StackState, check_stack_name, known_stacks, state_root

if TYPE_CHECKING:  # the models (pydantic) load only for commands that read a stack file
    from h2ostack.facts import Facts
    from h2ostack.plan import Plan, ServicePlan
    from h2ostack.runtimes.base import Runtime
    from h2ostack.spec import Stack

LOG_TAIL_LINES = 20
MALFORMED = "malformed pidfile"  # how the process runtime reports a pidfile it skipped


@dataclass(frozen=True)
class Event:
    service: str
    kind: str  # plan | keep | stop | start | wait | step | phase | ready | fail | skip | warn
    detail: str = ""
    elapsed: float | None = None


Emit = Callable[[Event], None]


def _noop(_: Event) -> None:
    pass


@dataclass
class Ctx:
    """One command's view of a stack: its plan (when the file is at hand), state and runtimes."""

    name: str
    state: StackState
    plan: Plan | None = None
    runtimes: dict[str, Runtime] = field(default_factory=dict)
    errors: dict[str, Exception] = field(default_factory=dict)  # runtimes that could not be asked (by mode)

    def runtime(self, mode: str) -> Runtime:
        """The runtime for a key: `process`, `container` (the default engine) or `container@HOST`."""
        if mode not in self.runtimes:
            if mode.startswith("container"):
                from h2ostack.runtimes.docker import DockerRuntime

                host = mode.partition("@")[2]
                self.runtimes[mode] = DockerRuntime(self.name, base_url=self.docker_urls().get(host) if host
                                                    else None, key=mode)
            else:
                from h2ostack.runtimes.process import ProcessRuntime

                self.runtimes[mode] = ProcessRuntime(self.state)
        return self.runtimes[mode]

    def entries(self) -> list[dict[str, Any]]:
        """The services as planned: this command's plan and the one saved by the last `up`."""
        saved = (self.state.load_plan() or {}).get("plan", {})
        out = [*saved.get("services", []), *saved.get("fronts", [])]
        if self.plan is not None:
            out += [{"name": s.name, "mode": s.mode, "host": s.host, "docker": s.docker_url}
                    for s in self.plan.all().values()]
        return out

    def docker_urls(self) -> dict[str, str]:
        return {e["host"]: e["docker"] for e in self.entries() if e.get("host") and e.get("docker")}

    def modes(self) -> list[str]:
        """Runtimes worth asking about this stack: the plan's, or, without one, any that may hold it."""
        modes = {"process"}
        entries = self.entries()
        keys = {runtime_key(e.get("mode"), e.get("host")) for e in entries}
        modes |= {k for k in keys if k.startswith("container")}
        if not entries and self.state.load_plan() is None and docker_configured():
            modes.add("container")
        return sorted(modes, key=lambda m: m != "process")

    def observe(self) -> dict[str, Observed]:
        out: dict[str, Observed] = {}
        for mode in self.modes():
            try:
                out.update(self.runtime(mode).observe())
            except Exception as exc:  # an engine that is down must not hide the processes
                self.errors[mode] = exc
                out[f"<{mode}>"] = Observed(f"<{mode}>", mode, False, detail=str(exc))
        return out


def docker_configured() -> bool:
    host = os.environ.get("DOCKER_HOST", "")
    return bool(host) or Path("/var/run/docker.sock").exists()


def docker_engine(base_url: str) -> Any:
    """A client of the Docker engine at `base_url`: what the facts ask a host's GPUs with."""
    from h2ostack.runtimes.docker import engine

    return engine(base_url)


def load_plan(path: str | Path, gpus: str | None = None, gpu_memory: float | None = None,
              environ: Mapping[str, str] | None = None, check_ports: bool = True,
              keep_ports: Iterable[int] = ()) -> tuple[Stack, Facts, Plan]:
    from h2ostack.facts import gather
    from h2ostack.loader import load
    from h2ostack.plan import make_plan

    stack = load(path, environ)
    facts = gather(stack, gpus, gpu_memory, check_ports=check_ports, engine=docker_engine)
    return stack, facts, make_plan(stack, facts, frozenset(keep_ports))


def ctx_for(target: str | Path) -> Ctx:
    """A stack file path, or the name of a stack known to the state dir."""
    from h2ostack.loader import is_regular_file

    p = Path(target)
    if is_regular_file(p):
        from h2ostack.loader import stack_name

        name = stack_name(p)
        return Ctx(name, StackState(name))
    name = check_stack_name(str(target))  # a name, never a path: it resolves only under the state dir
    if name not in known_stacks() and not docker_configured() and name not in _marked_stacks():
        raise NotFound(f"no stack file or known stack named {name!r} (state dir: {state_root()})")
    return Ctx(name, StackState(name))


def auth_headers(plan: ServicePlan, stack: Stack | None) -> dict[str, str]:
    """The header a client of this service sends (external auth, api keys); never logged."""
    from h2ostack.spec import reveal

    if stack is None or plan.is_front or plan.name not in stack.services:
        return {}
    svc = stack.services[plan.name]
    auth = getattr(svc, "auth", None)
    if auth is not None:
        return {"authorization": f"{auth.user} {reveal(auth.token)}"}
    key = getattr(svc, "api_key", None)
    if key is not None:
        return {"authorization": f"Bearer {reveal(key)}"}
    return {}


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def exposure_warnings(stack: Stack) -> list[tuple[str, str]]:
    """Servers reachable from other machines without any auth in front of them."""
    bind = stack.defaults.bind
    if bind in LOOPBACK or bind.startswith("127."):
        return []
    out = []
    for name, svc in stack.services.items():
        if svc.starts_something and getattr(svc, "api_key", None) is None:
            out.append((name, f"listens on {bind} without an api key: anyone who reaches this host can use it"))
    for name, front in stack.fronts.items():
        if front.auth is not None:
            continue  # the page, and the built-in front's /v1 (the password is a bearer key there too)
        if front.kind == "gradio" and not front.api_keys:
            out.append((name, f"front listens on {bind} without `auth:` or `api_keys`: anyone who reaches this "
                              "host can use its page and its /v1 gateway, and with them the models' own keys"))
        elif front.kind == "gradio":
            out.append((name, f"front listens on {bind} without `auth:`: anyone who reaches this host can use "
                              "its page (its /v1 gateway needs one of the `api_keys`), and with it the models' keys"))
        else:
            out.append((name, f"front listens on {bind} without `auth:`: anyone who reaches this host can use it"))
    return out


def _ports_outside(stack: Stack, only: Iterable[str]) -> frozenset[int]:
    deps = {n: list(s.depends_on) for n, s in stack.services.items()}
    deps.update({n: [*f.models, *f.depends_on] for n, f in stack.fronts.items()})
    keep: set[str] = set()
    todo = [n for n in only if n in deps]
    while todo:
        n = todo.pop()
        if n not in keep:
            keep.add(n)
            todo += deps.get(n, [])
    ports = {s.port for n, s in stack.services.items() if n not in keep and s.port}
    ports |= {f.port for n, f in stack.fronts.items() if n not in keep and f.port}
    return frozenset(p for p in ports if p is not None)


def targets(plan: Plan, only: Iterable[str]) -> list[str]:
    return _with_deps(plan, only)


def _with_deps(plan: Plan, only: Iterable[str]) -> list[str]:
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


def up(path: str | Path, only: Iterable[str] = (), gpus: str | None = None, gpu_memory: float | None = None,
       emit: Emit = _noop, timeout_scale: float = 1.0, stop_timeout: float = 30.0) -> Plan:
    from h2ostack.facts import gather
    from h2ostack.loader import load
    from h2ostack.plan import make_plan

    # the HTTP client's import costs ~0.1 s: take it while the servers are being spawned
    requester: list[health.Requester] = []
    warm = threading.Thread(target=lambda: requester.append(health.httpx_requester()), daemon=True)
    warm.start()
    stack = load(path)
    state = StackState(stack.name)
    with state.lock():
        ctx = Ctx(stack.name, state)
        observed = ctx.observe()
        alive = {n: o for n, o in observed.items() if o.alive}
        facts = gather(stack, gpus, gpu_memory, engine=docker_engine)
        if only:  # ports of services this `up` leaves alone are no conflict
            facts = dataclasses.replace(facts, busy_ports=facts.busy_ports - _ports_outside(stack, only))
        plan = make_plan(stack, facts, frozenset(o.port for o in alive.values() if o.port))
        ctx.plan = plan
        everything = plan.all()
        targets = _with_deps(plan, only) if only else list(everything)
        state.save_plan(plan.to_json(), str(path))
        for warning in exposure_warnings(stack):
            emit(Event(warning[0], "warn", warning[1]))

        changed = [n for n in targets if n in alive and alive[n].config_hash != everything[n].config_hash]
        keep = {n for n in targets if n in alive and n not in changed}
        # what runs but is no longer in the file, or changed, stops first (reverse order)
        gone = [n for n in alive if n not in everything and not n.startswith("<")] if not only else []
        for name in [*reversed(changed), *gone]:
            emit(Event(name, "stop", "config changed" if name in changed else "no longer in the stack file"))
            ctx.runtime(alive[name].mode).stop(name, stop_timeout)
        if gone:
            for name in gone:
                state.forget(name)

        started: list[str] = []
        lock = threading.Lock()
        cancel = threading.Event()
        failures: dict[str, str] = {}

        def request(*args: Any) -> health.Answer:
            warm.join()
            return requester[0](*args)


        def bring_up(name: str) -> float:
            sp = everything[name]
            headers = auth_headers(sp, stack)
            if name in keep:
                emit(Event(name, "keep", "running with the same config"))
                return 0.0
            if not sp.started:
                emit(Event(name, "wait", f"checking {sp.url}"))
                try:
                    took = health.wait_ready(sp.url or "", sp.probes, min(sp.health_timeout, 5.0),
                                             sp.health_interval, lambda: None, request, headers, cancel=cancel)
                    emit(Event(name, "ready", sp.url or "", took))
                except health.NotReady as exc:
                    emit(Event(name, "warn", f"external endpoint {sp.url} is not reachable: {exc}"))
                return 0.0
            if sp.on_demand:
                emit(Event(name, "skip", "on demand: the stack's gateway starts it on its first request"))
                return 0.0
            took = _start_wait(ctx, sp, emit, request, headers, cancel, timeout_scale,
                               lambda: _note(lock, started, name))
            return took

        deps = {n: [d for d in everything[n].depends_on if d in targets] for n in targets}
        outcomes = executor.run_graph(deps, bring_up, fail_fast=True, cancel=cancel)
        for name, out in outcomes.items():
            if out.state == "failed" and not isinstance(out.error, health.Cancelled):
                failures[name] = str(out.error)
                emit(Event(name, "fail", str(out.error)))
            elif out.state == "skipped":
                emit(Event(name, "skip", str(out.value)))
        if failures:
            # a failed start stops what it started, in reverse dependency order
            mine = set(started)
            stop_deps = {n: [d for d in deps[n] if d in mine] for n in deps if n in mine}
            executor.run_graph(executor.reverse(stop_deps),
                               lambda n: ctx.runtime(everything[n].runtime_key).stop(n, stop_timeout))
            for name in mine:
                if everything[name].mode == "process":
                    state.forget(name)
            raise UpError(failures)
        return plan


class StartFailed(Exception):
    pass


def phase_path(state: StackState, service: str) -> Path:
    """Where the phase last recorded for a service is kept (beside its pidfile; not a `.json`,
    which the pidfile reader would take for one)."""
    return state.run_dir / f"{service}.phase"


def record_phase(state: StackState, service: str, phase: str, detail: str = "") -> None:
    """The phase a service is in, for `status` (`up` records each change; so may the gateway)."""
    from h2ostack.state import write_json

    state.ensure("run")
    write_json(phase_path(state, service), {"phase": phase, "detail": detail, "at": time.time()})


def recorded_phase(state: StackState, service: str) -> str | None:
    from h2ostack.state import read_record_file

    try:
        data = read_record_file(phase_path(state, service))
    except (ValueError, OSError):
        return None
    phase = data.get("phase") if isinstance(data, dict) else None
    return phase if phase in health.PHASES else None


def phase_recorder(state: StackState, service: str, emit: Emit) -> Callable[[str, str], None]:
    """`wait_ready`'s `on_phase`: each phase recorded for `status` and told to `up`'s progress."""
    def on_phase(phase: str, detail: str) -> None:
        with contextlib.suppress(OSError):  # status then tells the phase from what it observes alone
            record_phase(state, service, phase, detail)
        emit(Event(service, "phase", f"{phase} ({detail})" if detail else phase))
    return on_phase


def download_watch(sp: ServicePlan, runtime: Runtime) -> Callable[[], health.Download | None]:
    """What a starting server is downloading: its model's blobs in the hub cache (processes), or
    the last line of its log (TGI's download lines, the progress bars of vLLM and transformers)."""
    argv = list(sp.command or ()) + list((sp.container or {}).get("command") or ())
    ids = health.repo_ids(argv)
    hub = health.hub_dir(sp.env)
    name = sp.name

    def log() -> str:
        try:
            return runtime.log_tail(name, 2)
        except Exception:  # a log that cannot be read shows no download
            return ""

    return lambda: health.detect_download(hub, ids if sp.mode == "process" else (), log)


def _note(lock: threading.Lock, started: list[str], name: str) -> None:
    with lock:
        started.append(name)


def _start_wait(ctx: Ctx, sp: ServicePlan, emit: Emit, request: health.Requester, headers: dict[str, str],
                cancel: threading.Event | None, timeout_scale: float = 1.0,
                spawned: Callable[[], None] = lambda: None, lock: Any = None) -> float:
    """Start one service and wait until it answers (`up`'s and the on-demand manager's one way to
    start a server); `lock`, where given, is held around the spawn only."""
    name = sp.name
    runtime = ctx.runtime(sp.runtime_key)
    emit(Event(name, "start", " ".join(sp.command or ()) if sp.mode == "process" else sp.image or ""))
    if lock is not None:
        with lock:
            handle = runtime.start(sp)
    else:
        handle = runtime.start(sp)
    spawned()
    emit(Event(name, "wait", sp.probes[0].name if sp.probes else ""))
    try:
        took = health.wait_ready(sp.url or "", sp.probes, sp.health_timeout * timeout_scale,
                                 sp.health_interval, handle.exit_code, request, headers, cancel=cancel,
                                 on_step=lambda step: emit(Event(name, "step", step)),
                                 on_phase=phase_recorder(ctx.state, name, emit),
                                 download=download_watch(sp, runtime),
                                 download_limit=health.download_timeout())
    except health.Exited as exc:
        raise StartFailed(f"exited while starting (code {exc.code})\n"
                          + runtime.log_tail(name, LOG_TAIL_LINES)) from None
    except health.NotReady as exc:
        raise StartFailed(f"{exc}\n" + runtime.log_tail(name, LOG_TAIL_LINES)) from None
    emit(Event(name, "ready", sp.url or "", took))
    return took


def start_service(sp: ServicePlan, stack: Stack, emit: Emit = _noop, cancel: threading.Event | None = None,
                  request: health.Requester | None = None, stop_timeout: float = 30.0) -> float:
    """Start one service of a stack whose `up` has run (an on-demand one, for the gateway): the same
    runtimes, records and markers as `up`, so status, down and kill see it. The stack's lock is held
    while the process is spawned, not while it loads. A start that fails stops what it started and
    raises StartFailed; returns the seconds to ready."""
    state = StackState(stack.name)
    ctx = Ctx(stack.name, state)
    try:
        return _start_wait(ctx, sp, emit, request or health.httpx_requester(), auth_headers(sp, stack), cancel,
                           lock=state.lock())
    except BaseException:
        with state.lock():
            ctx.runtime(sp.runtime_key).stop(sp.name, stop_timeout)
            if sp.mode == "process":
                state.forget(sp.name)
        raise


def service_pids(stack: str, name: str) -> set[int]:
    """The pids of a process service's group as they are now (what NVML lists while it holds GPUs)."""
    from h2ostack.runtimes.process import marked

    return {p.pid for p in marked(stack, state_root(), name)}


def stop_service(sp: ServicePlan, stack: str, timeout: float = 30.0) -> set[int]:
    """Stop one service of a stack (an on-demand one put away) under the stack's lock; the pids it had."""
    state = StackState(stack)
    ctx = Ctx(stack, state)
    pids = service_pids(stack, sp.name) if sp.mode == "process" else set()
    with state.lock():
        ctx.runtime(sp.runtime_key).stop(sp.name, timeout)
        if sp.mode == "process":
            state.forget(sp.name)
    return pids


def down(target: str | Path, timeout: float = 30.0, force: bool = False, emit: Emit = _noop) -> list[str]:
    """Stop everything of the stack in reverse dependency order; returns what was stopped."""
    ctx = ctx_for(target)
    with ctx.state.lock():
        return _stop_all(ctx, timeout, force, emit)


def _stop_all(ctx: Ctx, timeout: float, force: bool, emit: Emit) -> list[str]:
    observed = {n: o for n, o in ctx.observe().items() if not n.startswith("<")}
    for name, obs in observed.items():  # skipped, never a reason to leave the others running
        if obs.detail.startswith(MALFORMED):
            emit(Event(name, "warn", obs.detail))
    saved = ctx.state.load_plan() or {}
    entries = [*saved.get("plan", {}).get("services", []), *saved.get("plan", {}).get("fronts", [])]
    deps = {e["name"]: [d for d in e.get("depends_on", []) if d in observed] for e in entries
            if e.get("name") in observed}
    for name in observed:
        deps.setdefault(name, [])
    stopped: list[str] = []

    def stop_one(name: str) -> None:
        emit(Event(name, "stop", "SIGKILL" if force else f"SIGTERM, SIGKILL after {timeout:g} s"))
        if ctx.runtime(observed[name].mode).stop(name, timeout, force):
            stopped.append(name)
        if observed[name].mode == "process":
            ctx.state.forget(name)
        with contextlib.suppress(OSError):
            phase_path(ctx.state, name).unlink(missing_ok=True)
        emit(Event(name, "stopped"))

    outcomes = executor.run_graph(executor.reverse(deps), stop_one)
    errors = {n: o.error for n, o in outcomes.items() if o.state == "failed"}
    if errors:
        raise RuntimeError("; ".join(f"{n}: {e}" for n, e in errors.items()))
    for mode, exc in ctx.errors.items():  # what could not even be listed may still run: never report "nothing"
        raise exc if isinstance(exc, EngineUnavailable) else EngineUnavailable(
            f"could not list the {mode} services of stack {ctx.name!r}: {exc}") from None
    return stopped


def kill(target: str | Path | None, all_stacks: bool = False, emit: Emit = _noop) -> list[str]:
    """SIGKILL now, everything of the stack (or of every stack under the state dir, or whose
    processes carry its markers)."""
    names = sorted({*known_stacks(), *_marked_stacks()}) if all_stacks else []
    ctxs = [Ctx(n, StackState(n)) for n in names] if all_stacks else [ctx_for(target or "")]
    killed = []
    unreachable: list[EngineUnavailable] = []
    for ctx in ctxs:
        try:
            killed += [f"{ctx.name}/{n}" for n in _stop_all(ctx, 0, True, emit)]
        except EngineUnavailable as exc:  # the other stacks are still killed
            unreachable.append(exc)
    if unreachable:
        raise unreachable[0]
    return killed


@dataclass(frozen=True)
class Row:
    stack: str
    service: str
    kind: str
    mode: str
    state: str  # running | exited | stopped | external | not started
    health: str  # healthy | unhealthy | starting | unknown | -
    gpus: list[int]
    url: str | None
    ident: str
    uptime: float | None
    exit_code: int | None = None
    detail: str = ""
    restarts: int = 0
    last_exit: int | None = None
    last_probe_failure: str | None = None
    gateway: str | None = None  # a gradio front's OpenAI-compatible base URL
    phase: str = "-"  # downloading (progress) | loading | warming | ready | asleep | stopped (on demand) | stopped

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# what an on-demand service put away (or on its way up) shows: not a failure
ON_DEMAND_STATES = ("stopped (on demand)", "asleep", "starting", "waking", "putting away")


def derive_state(obs: Observed | None, started: bool, on_demand: dict[str, Any] | None = None) -> str:
    """The state column, a pure function of what was observed (`on_demand`: the gateway's view of
    an on-demand service, None for others)."""
    if not started:
        return "external"
    if on_demand is not None and not (obs and obs.alive):
        return "stopped (on demand)"
    if obs is None:
        return "not started"
    if obs.alive:
        phase = (on_demand or {}).get("phase")
        return phase if phase in ("asleep", "starting", "waking", "putting away") else "running"
    return "exited" if obs.exit_code is not None else "stopped"


def _marked_stacks() -> list[str]:
    from h2ostack.runtimes.process import marked_stacks

    return marked_stacks(state_root())


def running_stacks() -> list[str]:
    """Stacks found by what runs, as `down` finds them: processes by their markers, containers of
    the default engine by their labels (an engine that does not answer adds none)."""
    names = set(_marked_stacks())
    if docker_configured():
        try:
            import docker

            from h2ostack.runtimes.docker import LABEL

            client = docker.from_env(timeout=5)
            try:
                for c in client.containers.list(all=True, filters={"label": [LABEL + "stack"]}):
                    names.add((c.labels or {}).get(LABEL + "stack", ""))
            finally:
                client.close()
        except Exception:  # noqa: S110 - `status NAME` says what is wrong with the engine
            pass
    return sorted(n for n in names if n)


def _status_ctx(target: str | Path) -> tuple[Ctx, dict[str, dict[str, Any]]]:
    """The stack to report on, and with a stack file at hand the entries its plan would have (what
    fills kind, URL and health when the state dir has no saved plan)."""
    try:
        ctx = ctx_for(target)
    except NotFound:
        name = str(target)
        if name not in _marked_stacks():
            raise
        ctx = Ctx(name, StackState(name))
    planned: dict[str, dict[str, Any]] = {}
    if Path(target).is_file():
        try:
            _, _, plan = load_plan(target, check_ports=False)
            if plan.stack == ctx.name:
                ctx.plan = plan
                planned = {e["name"]: e for e in [*plan.to_json()["services"], *plan.to_json()["fronts"]]}
        except Exception:  # noqa: S110 - status works without the variables only `up` needs
            pass
    return ctx, planned


def _at_port(entry: dict[str, Any], port: int | None) -> dict[str, Any]:
    """A planned entry at the port its server actually runs on."""
    from urllib.parse import urlsplit

    url = entry.get("url")
    if not url or not port or entry.get("port") == port:
        return entry
    u = urlsplit(url)
    host = f"[{u.hostname}]" if u.hostname and ":" in u.hostname else u.hostname
    return {**entry, "port": port, "url": u._replace(netloc=f"{host}:{port}").geturl()}


def status(target: str | Path | None = None, probe: bool = True) -> list[Row]:
    pairs = ([_status_ctx(target)] if target else
             [(Ctx(n, StackState(n)), {}) for n in sorted({*known_stacks(), *running_stacks()})])
    ctxs = [c for c, _ in pairs]
    rows: list[Row] = []
    request = health.httpx_requester() if probe and ctxs else None
    for ctx, planned in pairs:
        observed = ctx.observe()
        saved = (ctx.state.load_plan() or {}).get("plan", {})
        entries = {e["name"]: e for e in [*saved.get("services", []), *saved.get("fronts", [])]}
        for name, entry in planned.items():  # the stack file fills in what no saved plan says
            if name not in entries:
                obs = observed.get(name)
                entries[name] = _at_port(entry, obs.port if obs else None)
        names = list(entries) + [n for n in observed if n not in entries]
        checks: dict[str, str] = {}
        phases: dict[str, str] = {}
        od_view: dict[str, dict[str, Any]] = {}
        if any(e.get("on_demand") for e in entries.values()):
            od_view = ctx.state.ondemand_view()

        def probe_health(name: str, ctx: Ctx = ctx, entries: dict = entries, observed: dict = observed,
                         checks: dict = checks, phases: dict = phases) -> None:
            entry = entries.get(name, {})
            obs = observed.get(name)
            url = entry.get("url")
            started = entry.get("mode", "process") != "external"
            alive = bool(obs and obs.alive)
            recorded = recorded_phase(ctx.state, name) if started and not name.startswith("<") else None
            phases[name] = health.derive_phase(started, alive, None, recorded, bool(entry.get("on_demand")))
            if not url or request is None or (started and not (obs and obs.alive)):
                checks[name] = "-"
                return
            path = (entry.get("health", {}).get("probes") or ["/health"])[0]
            why = health.probe_once(url, health_probe(path), request, {})
            download = None
            if why is not None and started and (recorded != "ready" or (obs and obs.restarts)):
                argv = [*(entry.get("command") or ()), *((entry.get("container") or {}).get("command") or ())]
                ids = health.repo_ids(argv) if entry.get("mode", "process") == "process" else []
                mode = runtime_key(entry.get("mode"), entry.get("host"))
                download = health.detect_download(health.hub_dir(entry.get("env") or {}), ids,
                                                  lambda: _log_tail(ctx, mode, name))
            phases[name] = health.derive_phase(started, alive, why is None, recorded, bool(entry.get("on_demand")),
                                               download, bool(obs and obs.restarts))
            checks[name] = "healthy" if why is None else ("unhealthy" if started and obs and obs.started_at
                                                           and time.time() - obs.started_at > 5 else "starting")
            if why is not None and not started:
                checks[name] = "unreachable"

        executor.run_graph({n: [] for n in names}, probe_health)
        for name in names:
            entry_mode = runtime_key(entries.get(name, {}).get("mode"), entries.get(name, {}).get("host"))
            if name not in observed and entry_mode in ctx.errors:  # its runtime could not be asked
                entry = entries[name]
                rows.append(Row(ctx.name, name, entry.get("kind", "?"), entry_mode, "unknown", "-",
                                entry.get("gpus", []), entry.get("url"), "", None, None,
                                str(ctx.errors[entry_mode])))
                continue
            if name.startswith("<"):
                obs = observed[name]
                rows.append(Row(ctx.name, name, "-", obs.mode, "unknown", "-", [], None, "", None, None, obs.detail))
                continue
            entry = entries.get(name, {})
            obs = observed.get(name)
            started = entry.get("mode", "process") != "external"
            od = od_view.get(name, {}) if entry.get("on_demand") else None
            detail = obs.detail if obs else ""
            if od:
                detail = "; ".join(x for x in (str(od.get("note") or ""), detail) if x)
            rows.append(Row(ctx.name, name, entry.get("kind", "?"), entry.get("mode", obs.mode if obs else "?"),
                            derive_state(obs, started, od), checks.get(name, "-"), entry.get("gpus", []),
                            entry.get("url"), obs.ident if obs else "",
                            time.time() - obs.started_at if obs and obs.alive and obs.started_at else None,
                            obs.exit_code if obs else None, detail,
                            obs.restarts if obs else 0, obs.last_exit if obs else None,
                            obs.last_probe_failure if obs else None, gateway_url(entry),
                            phases.get(name, "-")))
    return rows


def _log_tail(ctx: Ctx, mode: str, name: str) -> str:
    try:
        return ctx.runtime(mode).log_tail(name, 2)
    except Exception:  # a log that cannot be read shows no download
        return ""


def gateway_url(entry: dict[str, Any]) -> str | None:
    """Where a built-in front serves its gateway (under /v1 on the front's own port)."""
    url = entry.get("url")
    return f"{url.rstrip('/')}/v1" if url and "models" in entry and entry.get("kind") == "gradio" else None


def health_probe(path: str) -> Any:
    from h2ostack.backends.base import Probe

    return Probe("health", "GET", path, timeout=2.0)


def log_sources(target: str | Path, service: str | None = None) -> list[tuple[str, Runtime]]:
    ctx = ctx_for(target)
    observed = ctx.observe()
    saved = (ctx.state.load_plan() or {}).get("plan", {})
    names = [e["name"] for e in [*saved.get("services", []), *saved.get("fronts", [])] if e.get("mode") != "external"]
    names += [n for n in observed if n not in names and not n.startswith("<")]
    if ctx.errors and (not names or (service is not None and service not in names)):
        _, exc = next(iter(ctx.errors.items()))  # what could not be listed may be what was asked for
        raise exc if isinstance(exc, EngineUnavailable) else EngineUnavailable(str(exc))
    if service is not None:
        if service not in names:
            raise NotFound(f"no started service named {service!r} in stack {ctx.name!r}")
        names = [service]
    modes = {e["name"]: runtime_key(e.get("mode", "process"), e.get("host"))
             for e in [*saved.get("services", []), *saved.get("fronts", [])]}
    return [(n, ctx.runtime(modes.get(n, observed[n].mode if n in observed else "process"))) for n in names]


# -- lock files ---------------------------------------------------------------------------
def lock(stack_file: str | Path, gpus: str | None = None, gpu_memory: float | None = None) -> tuple[Path, dict]:
    """Write STACK.lock: what the stack resolves to now (see h2ostack/lock.py)."""
    from h2ostack import lock as lk

    stack, _, plan = load_plan(stack_file, gpus, gpu_memory, check_ports=False)
    data = lk.compute(stack, plan)
    path = lk.lock_path(stack_file)
    lk.write(path, data)
    return path, data


def lock_differences(stack_file: str | Path, gpus: str | None = None, gpu_memory: float | None = None) -> list[str]:
    """How the stack now differs from its lock file (empty: the same)."""
    from h2ostack import lock as lk

    path = lk.lock_path(stack_file)
    if not path.exists():
        raise NotFound(f"{path} does not exist: write it with `h2ostack lock {stack_file}`")
    try:
        locked = lk.read(path)
    except (ValueError, OSError) as exc:
        raise NotFound(str(exc)) from None
    stack, _, plan = load_plan(stack_file, gpus, gpu_memory, check_ports=False)
    return lk.diff(locked, lk.compute(stack, plan))
