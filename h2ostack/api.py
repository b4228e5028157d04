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
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from h2ostack import executor, health
from h2ostack.errors import EngineUnavailable, NotFound, UpError
from h2ostack.plan_types import (
    ContainerPlan,
    FrontPlan,
    Plan,
    ProcessPlan,
    ServicePlan,
)
from h2ostack.reconcile import Bring, StopReason, reconcile, with_deps
from h2ostack.runtimes.base import Observed
from h2ostack.state import StackState, check_stack_name, known_stacks, state_root

if TYPE_CHECKING:  # the models of a stack file load only for commands that read one
    from h2ostack.facts import Facts
    from h2ostack.runtimes.base import Runtime
    from h2ostack.spec import Stack

LOG_TAIL_LINES = 20
MALFORMED = "malformed pidfile"  # how the process runtime reports a pidfile it skipped


class EventKind(StrEnum):
    """What an event tells (it compares equal to its value: `ev.kind == "ready"`)."""

    PLAN = "plan"
    KEEP = "keep"
    STOP = "stop"
    STOPPED = "stopped"
    START = "start"
    WAIT = "wait"
    STEP = "step"
    PHASE = "phase"
    READY = "ready"
    FAIL = "fail"
    SKIP = "skip"
    WARN = "warn"


@dataclass(frozen=True)
class Event:
    service: str
    kind: EventKind  # a plain string is taken for its EventKind (and refused when it names none)
    detail: str = ""
    elapsed: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", EventKind(self.kind))


Emit = Callable[[Event], None]


def _noop(_: Event) -> None:
    pass


RuntimeFactory = Callable[[str], "Runtime"]  # a runtime key (`process`, `container@HOST`) -> its runtime


@dataclass
class Ctx:
    """One command's view of a stack: its plan (when the file is at hand), state and runtimes.
    `runtime_factory` makes the runtime for a key (default: processes here, Docker engines)."""

    name: str
    state: StackState
    plan: Plan | None = None
    runtimes: dict[str, Runtime] = field(default_factory=dict)
    errors: dict[str, Exception] = field(default_factory=dict)  # runtimes that could not be asked (by mode)
    runtime_factory: RuntimeFactory | None = None
    saved_problem: str | None = None  # what is wrong with the saved plan, which is then ignored
    _saved: Plan | None = field(default=None, repr=False)
    _saved_read: bool = field(default=False, repr=False)

    def runtime(self, mode: str) -> Runtime:
        """The runtime for a key: `process`, `container` (the default engine) or `container@HOST`."""
        if mode not in self.runtimes:
            self.runtimes[mode] = (self.runtime_factory or self.default_runtime)(mode)
        return self.runtimes[mode]

    def default_runtime(self, mode: str) -> Runtime:
        if mode.startswith("container"):
            from h2ostack.runtimes.docker import DockerRuntime

            host = mode.partition("@")[2]
            return DockerRuntime(self.name, base_url=self.docker_urls().get(host) if host else None, key=mode)
        from h2ostack.runtimes.process import ProcessRuntime

        return ProcessRuntime(self.state)

    def saved(self) -> Plan | None:
        """The plan the last `up` saved: None when there is none, or when it is not one h2ostack
        wrote (a state file is not trusted): `saved_problem` then says what is wrong with it."""
        if not self._saved_read:
            self._saved_read = True
            try:
                data = self.state.read_plan()
                self._saved = Plan.from_saved(data) if data is not None else None
            except ValueError as exc:  # what is wrong with the file, or with the plan in it (BadPlan)
                self.saved_problem = f"{self.state.root / 'plan.json'} is ignored: {exc}"
        return self._saved

    def saved_services(self) -> dict[str, ServicePlan]:
        saved = self.saved()
        return saved.all() if saved is not None else {}

    def planned(self) -> list[ServicePlan]:
        """The services as planned: the ones saved by the last `up`, and this command's plan."""
        return [*self.saved_services().values(), *(self.plan.all().values() if self.plan is not None else ())]

    def docker_urls(self) -> dict[str, str]:
        return {sp.host: sp.docker_url for sp in self.planned()
                if isinstance(sp, ContainerPlan) and sp.host and sp.docker_url}

    def modes(self) -> list[str]:
        """Runtimes worth asking about this stack: the plan's, or, without one, any that may hold it."""
        modes = {"process"}
        planned = self.planned()
        modes |= {sp.runtime_key for sp in planned if isinstance(sp, ContainerPlan)}
        if not planned and self.saved() is None and docker_configured():
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


def ctx_for(target: str | Path, runtime_factory: RuntimeFactory | None = None) -> Ctx:
    """A stack file path, or the name of a stack known to the state dir."""
    from h2ostack.loader import is_regular_file

    p = Path(target)
    if is_regular_file(p):
        from h2ostack.loader import stack_name

        name = stack_name(p)
        return Ctx(name, StackState(name), runtime_factory=runtime_factory)
    name = check_stack_name(str(target))  # a name, never a path: it resolves only under the state dir
    if name not in known_stacks() and not docker_configured() and name not in _marked_stacks():
        raise NotFound(f"no stack file or known stack named {name!r} (state dir: {state_root()})")
    return Ctx(name, StackState(name), runtime_factory=runtime_factory)


def auth_headers(plan: ServicePlan, stack: Stack | None) -> dict[str, str]:
    """The header a client of this service sends (external auth, api keys); never logged."""
    from h2ostack.spec import reveal

    if stack is None or isinstance(plan, FrontPlan) or plan.name not in stack.services:
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
    return with_deps(plan, only)


def up(path: str | Path, only: Iterable[str] = (), gpus: str | None = None, gpu_memory: float | None = None,
       emit: Emit = _noop, timeout_scale: float = 1.0, stop_timeout: float = 30.0,
       runtime_factory: RuntimeFactory | None = None, requester: health.Requester | None = None) -> Plan:
    """Bring the stack (or the services `only` names, with what they depend on) up: what runs with
    the planned config stays, what changed or left the file stops, the rest starts (`reconcile`)."""
    from h2ostack.facts import gather
    from h2ostack.loader import load
    from h2ostack.plan import make_plan

    # the HTTP client's import costs ~0.1 s: take it while the servers are being spawned
    requesters: list[health.Requester] = [requester] if requester is not None else []
    warm = threading.Thread(target=lambda: requesters.append(health.httpx_requester()), daemon=True)
    if requester is None:
        warm.start()
    stack = load(path)
    state = StackState(stack.name)
    with state.lock():
        ctx = Ctx(stack.name, state, runtime_factory=runtime_factory)
        observed = ctx.observe()
        alive = {n: o for n, o in observed.items() if o.alive}
        facts = gather(stack, gpus, gpu_memory, engine=docker_engine)
        if only:  # ports of services this `up` leaves alone are no conflict
            facts = dataclasses.replace(facts, busy_ports=facts.busy_ports - _ports_outside(stack, only))
        plan = make_plan(stack, facts, frozenset(o.port for o in alive.values() if o.port))
        ctx.plan = plan
        everything = plan.all()
        actions = reconcile(plan, observed, only)
        state.save_plan(plan.to_json(), str(path))
        for warning in exposure_warnings(stack):
            emit(Event(warning[0], EventKind.WARN, warning[1]))

        # what runs but changed, or is no longer in the file, stops first (reverse order)
        for stop in actions.stop:
            emit(Event(stop.name, EventKind.STOP, stop.reason.value))
            ctx.runtime(stop.runtime).stop(stop.name, stop_timeout)
        for stop in actions.stop:
            if stop.reason is StopReason.GONE:
                state.forget(stop.name)

        started: list[str] = []
        lock = threading.Lock()
        cancel = threading.Event()
        failures: dict[str, str] = {}

        def request(*args: Any) -> health.Answer:
            if requester is None:
                warm.join()
            return requesters[0](*args)

        def bring_up(name: str) -> float:
            sp = everything[name]
            headers = auth_headers(sp, stack)
            match actions.bring[name]:
                case Bring.KEEP:
                    emit(Event(name, EventKind.KEEP, "running with the same config"))
                    return 0.0
                case Bring.CHECK:
                    emit(Event(name, EventKind.WAIT, f"checking {sp.url}"))
                    try:
                        took = health.wait_ready(sp.url or "", sp.probes, min(sp.health_timeout, 5.0),
                                                 sp.health_interval, lambda: None, request, headers, cancel=cancel)
                        emit(Event(name, EventKind.READY, sp.url or "", took))
                    except health.NotReady as exc:
                        emit(Event(name, EventKind.WARN, f"external endpoint {sp.url} is not ready: {exc}"))
                    return 0.0
                case Bring.ON_DEMAND:
                    emit(Event(name, EventKind.SKIP, "on demand: the stack's gateway starts it on its first request"))
                    return 0.0
                case Bring.START:
                    return _start_wait(ctx, sp, emit, request, headers, cancel, timeout_scale,
                                       lambda: _note(lock, started, name))

        deps = {n: list(d) for n, d in actions.deps.items()}
        outcomes = executor.run_graph(deps, bring_up, fail_fast=True, cancel=cancel)
        for name, out in outcomes.items():
            if out.state == "failed" and not isinstance(out.error, health.Cancelled):
                failures[name] = str(out.error)
                emit(Event(name, EventKind.FAIL, str(out.error)))
            elif out.state == "skipped":
                emit(Event(name, EventKind.SKIP, str(out.value)))
        if failures:
            # a failed start stops what it started, in reverse dependency order
            mine = set(started)
            stop_deps = {n: [d for d in deps[n] if d in mine] for n in deps if n in mine}
            executor.run_graph(executor.reverse(stop_deps),
                               lambda n: ctx.runtime(everything[n].runtime_key).stop(n, stop_timeout))
            for name in mine:
                if _in_process_runtime(everything[name]):
                    state.forget(name)
            raise UpError(failures)
        return plan


def _in_process_runtime(sp: ServicePlan) -> bool:
    """Whether the process runtime holds it (its pidfile then goes with it)."""
    return isinstance(sp, ProcessPlan | FrontPlan)


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
        emit(Event(service, EventKind.PHASE, f"{phase} ({detail})" if detail else phase))
    return on_phase


def download_watch(sp: ServicePlan, runtime: Runtime) -> Callable[[], health.Download | None]:
    """What a starting server is downloading: its model's blobs in the hub cache (processes), or
    the last line of its log (TGI's download lines, the progress bars of vLLM and transformers)."""
    ids = health.repo_ids(_argv(sp))
    hub = health.hub_dir(sp.env)
    name = sp.name
    processes = _in_process_runtime(sp)

    def log() -> str:
        try:
            return runtime.log_tail(name, 2)
        except Exception:  # a log that cannot be read shows no download
            return ""

    return lambda: health.detect_download(hub, ids if processes else (), log)


def _argv(sp: ServicePlan) -> list[str]:
    """The server's argv: a process's command, a container's launcher flags."""
    match sp:
        case ContainerPlan():
            return list(sp.container.get("command") or ())
        case _:
            return list(sp.command or ())


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
    emit(Event(name, EventKind.START, sp.image if isinstance(sp, ContainerPlan) else " ".join(sp.command or ())))
    if lock is not None:
        with lock:
            handle = runtime.start(sp)
    else:
        handle = runtime.start(sp)
    spawned()
    emit(Event(name, EventKind.WAIT, sp.probes[0].name if sp.probes else ""))
    try:
        took = health.wait_ready(sp.url or "", sp.probes, sp.health_timeout * timeout_scale,
                                 sp.health_interval, handle.exit_code, request, headers, cancel=cancel,
                                 on_step=lambda step: emit(Event(name, EventKind.STEP, step)),
                                 on_phase=phase_recorder(ctx.state, name, emit),
                                 download=download_watch(sp, runtime),
                                 download_limit=health.download_timeout())
    except health.Exited as exc:
        raise StartFailed(f"exited while starting (code {exc.code})\n"
                          + runtime.log_tail(name, LOG_TAIL_LINES)) from None
    except health.NotReady as exc:
        raise StartFailed(f"{exc}\n" + runtime.log_tail(name, LOG_TAIL_LINES)) from None
    emit(Event(name, EventKind.READY, sp.url or "", took))
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
            if _in_process_runtime(sp):
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
    processes = _in_process_runtime(sp)
    pids = service_pids(stack, sp.name) if processes else set()
    with state.lock():
        ctx.runtime(sp.runtime_key).stop(sp.name, timeout)
        if processes:
            state.forget(sp.name)
    return pids


def down(target: str | Path, timeout: float = 30.0, force: bool = False, emit: Emit = _noop,
         runtime_factory: RuntimeFactory | None = None) -> list[str]:
    """Stop everything of the stack in reverse dependency order; returns what was stopped."""
    ctx = ctx_for(target, runtime_factory)
    with ctx.state.lock():
        return _stop_all(ctx, timeout, force, emit)


def _stop_all(ctx: Ctx, timeout: float, force: bool, emit: Emit) -> list[str]:
    observed = {n: o for n, o in ctx.observe().items() if not n.startswith("<")}
    for name, obs in observed.items():  # skipped, never a reason to leave the others running
        if obs.detail.startswith(MALFORMED):
            emit(Event(name, EventKind.WARN, obs.detail))
    saved = ctx.saved_services()
    if ctx.saved_problem:  # stopped all at once then, never a reason to leave anything running
        emit(Event(ctx.name, EventKind.WARN, ctx.saved_problem))
    deps = {n: [d for d in sp.depends_on if d in observed] for n, sp in saved.items() if n in observed}
    for name in observed:
        deps.setdefault(name, [])
    stopped: list[str] = []

    def stop_one(name: str) -> None:
        emit(Event(name, EventKind.STOP, "SIGKILL" if force else f"SIGTERM, SIGKILL after {timeout:g} s"))
        if ctx.runtime(observed[name].mode).stop(name, timeout, force):
            stopped.append(name)
        if observed[name].mode == "process":
            ctx.state.forget(name)
        with contextlib.suppress(OSError):
            phase_path(ctx.state, name).unlink(missing_ok=True)
        emit(Event(name, EventKind.STOPPED))

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


def _status_ctx(target: str | Path, runtime_factory: RuntimeFactory | None = None
                ) -> tuple[Ctx, dict[str, ServicePlan]]:
    """The stack to report on, and with a stack file at hand the services its plan would have (what
    fills kind, URL and health when the state dir has no saved plan)."""
    try:
        ctx = ctx_for(target, runtime_factory)
    except NotFound:
        name = str(target)
        if name not in _marked_stacks():
            raise
        ctx = Ctx(name, StackState(name), runtime_factory=runtime_factory)
    planned: dict[str, ServicePlan] = {}
    if Path(target).is_file():
        try:
            _, _, plan = load_plan(target, check_ports=False)
            if plan.stack == ctx.name:
                ctx.plan = plan
                planned = plan.all()
        except Exception:  # noqa: S110 - status works without the variables only `up` needs
            pass
    return ctx, planned


def _at_port(sp: ServicePlan, port: int | None) -> ServicePlan:
    """A planned service at the port its server actually runs on."""
    from urllib.parse import urlsplit

    if not sp.url or not port or sp.port == port:
        return sp
    u = urlsplit(sp.url)
    host = f"[{u.hostname}]" if u.hostname and ":" in u.hostname else u.hostname
    return dataclasses.replace(sp, port=port, url=u._replace(netloc=f"{host}:{port}").geturl())


def status(target: str | Path | None = None, probe: bool = True, runtime_factory: RuntimeFactory | None = None,
           requester: health.Requester | None = None) -> list[Row]:
    pairs = ([_status_ctx(target, runtime_factory)] if target else
             [(Ctx(n, StackState(n), runtime_factory=runtime_factory), {})
              for n in sorted({*known_stacks(), *running_stacks()})])
    ctxs = [c for c, _ in pairs]
    rows: list[Row] = []
    request = (requester or health.httpx_requester()) if probe and ctxs else None
    for ctx, planned in pairs:
        observed = ctx.observe()
        entries = ctx.saved_services()
        for name, sp in planned.items():  # the stack file fills in what no saved plan says
            if name not in entries:
                obs = observed.get(name)
                entries[name] = _at_port(sp, obs.port if obs else None)
        names = list(entries) + [n for n in observed if n not in entries]
        checks: dict[str, str] = {}
        phases: dict[str, str] = {}
        od_view: dict[str, dict[str, Any]] = {}
        if any(sp.on_demand for sp in entries.values()):
            od_view = ctx.state.ondemand_view()

        def probe_health(name: str, ctx: Ctx = ctx, entries: dict = entries, observed: dict = observed,
                         checks: dict = checks, phases: dict = phases) -> None:
            sp: ServicePlan | None = entries.get(name)
            obs = observed.get(name)
            url = sp.url if sp else None
            started = sp is None or sp.started
            on_demand = bool(sp and sp.on_demand)
            alive = bool(obs and obs.alive)
            recorded = recorded_phase(ctx.state, name) if started and not name.startswith("<") else None
            phases[name] = health.derive_phase(started, alive, None, recorded, on_demand)
            if sp is None or not url or request is None or (started and not (obs and obs.alive)):
                checks[name] = "-"
                return
            path = sp.probes[0].path if sp.probes else "/health"
            why = health.probe_once(url, health_probe(path), request, {})
            download = None
            if why is not None and started and (recorded != "ready" or (obs and obs.restarts)):
                ids = health.repo_ids(_argv(sp)) if _in_process_runtime(sp) else []
                download = health.detect_download(health.hub_dir(sp.env), ids,
                                                  lambda: _log_tail(ctx, sp.runtime_key, name))
            phases[name] = health.derive_phase(started, alive, why is None, recorded, on_demand,
                                               download, bool(obs and obs.restarts))
            checks[name] = "healthy" if why is None else ("unhealthy" if started and obs and obs.started_at
                                                           and time.time() - obs.started_at > 5 else "starting")
            if why is not None and not started:
                checks[name] = "unreachable"

        executor.run_graph({n: [] for n in names}, probe_health)
        if ctx.saved_problem:
            rows.append(Row(ctx.name, "<plan>", "-", "-", "unknown", "-", [], None, "", None, None,
                            ctx.saved_problem))
        for name in names:
            sp = entries.get(name)
            if sp is not None and name not in observed and sp.runtime_key in ctx.errors:  # could not be asked
                rows.append(Row(ctx.name, name, sp.kind, sp.runtime_key, "unknown", "-", list(sp.gpus), sp.url,
                                "", None, None, str(ctx.errors[sp.runtime_key])))
                continue
            if name.startswith("<"):
                obs = observed[name]
                rows.append(Row(ctx.name, name, "-", obs.mode, "unknown", "-", [], None, "", None, None, obs.detail))
                continue
            obs = observed.get(name)
            started = sp is None or sp.started
            od = od_view.get(name, {}) if sp is not None and sp.on_demand else None
            detail = obs.detail if obs else ""
            if od:
                detail = "; ".join(x for x in (str(od.get("note") or ""), detail) if x)
            mode = sp.mode if sp is not None else (obs.mode if obs else "?")
            rows.append(Row(ctx.name, name, sp.kind if sp else "?", mode,
                            derive_state(obs, started, od), checks.get(name, "-"), list(sp.gpus) if sp else [],
                            sp.url if sp else None, obs.ident if obs else "",
                            time.time() - obs.started_at if obs and obs.alive and obs.started_at else None,
                            obs.exit_code if obs else None, detail,
                            obs.restarts if obs else 0, obs.last_exit if obs else None,
                            obs.last_probe_failure if obs else None, gateway_url(sp),
                            phases.get(name, "-")))
    return rows


def _log_tail(ctx: Ctx, mode: str, name: str) -> str:
    try:
        return ctx.runtime(mode).log_tail(name, 2)
    except Exception:  # a log that cannot be read shows no download
        return ""


def gateway_url(sp: ServicePlan | None) -> str | None:
    """Where a built-in front serves its gateway (under /v1 on the front's own port)."""
    if isinstance(sp, FrontPlan) and sp.kind == "gradio" and sp.url:
        return f"{sp.url.rstrip('/')}/v1"
    return None


def health_probe(path: str) -> Any:
    from h2ostack.backends.base import Probe

    return Probe("health", "GET", path, timeout=2.0)


def log_sources(target: str | Path, service: str | None = None) -> list[tuple[str, Runtime]]:
    ctx = ctx_for(target)
    observed = ctx.observe()
    saved = ctx.saved_services()
    names = [n for n, sp in saved.items() if sp.started]
    names += [n for n in observed if n not in names and not n.startswith("<")]
    if ctx.errors and (not names or (service is not None and service not in names)):
        _, exc = next(iter(ctx.errors.items()))  # what could not be listed may be what was asked for
        raise exc if isinstance(exc, EngineUnavailable) else EngineUnavailable(str(exc))
    if service is not None:
        if service not in names:
            raise NotFound(f"no started service named {service!r} in stack {ctx.name!r}")
        names = [service]
    modes = {n: sp.runtime_key for n, sp in saved.items()}
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
