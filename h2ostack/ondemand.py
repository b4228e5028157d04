"""Models on demand: the gateway starts an on-demand service when a request names it, puts away
the least recently used idle ones when the GPUs cannot hold both, and puts each away after its
`idle_timeout`.

`Manager` owns the decisions and runs on the gateway's event loop; what it does to servers comes
through `Ops` (start, put away, wake), so its rules are unit-tested with a fake clock and fake
operations. `ProcessOps` is the real one: `api.start_service` (the same runtimes, records and
markers as `up`, so status, down and kill see what it started), vLLM's own sleep endpoints where
the engine can sleep, else a stop followed by `shim.release_wait` (the wait a restart uses too)
until NVML shows the old server's memory back.

Observing it (the readiness and metrics code reads this): `Manager.phase(name)` is one of
PHASES; every change is an `OnDemandEvent` handed to each callable in `Manager.listeners`
(kinds in EVENT_KINDS, with `seconds` for starts, wakes and put-aways). The manager also writes
its view to the stack's state dir (`ondemand.json`), which `h2ostack status` reads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from h2ostack.plan import fits

log = logging.getLogger("h2ostack.ondemand")

PHASES = ("stopped", "starting", "ready", "putting away", "asleep", "waking")
EVENT_KINDS = ("starting", "ready", "start failed", "waking", "woken", "putting away", "put away", "queue full",
               "busy", "exited")
QUEUE_ENV, BUSY_WAIT_ENV = "H2OSTACK_ONDEMAND_QUEUE", "H2OSTACK_ONDEMAND_BUSY_WAIT"
DEFAULT_QUEUE = 64  # requests waiting per model while it starts
DEFAULT_BUSY_WAIT = 120.0  # seconds a start waits for busy models to finish before it gives up
RELEASE_TIMEOUT = 120.0
# seconds between readiness polls of a server a request waits for (the service's own `health.interval`
# if shorter): at `up`'s 0.1 s the request waited 50 ms on average after the server could answer
START_POLL = 0.025


@dataclass(frozen=True)
class OnDemandEvent:
    service: str
    kind: str  # one of EVENT_KINDS
    seconds: float | None = None  # how long the start, wake or put-away took
    detail: str = ""
    at: float = 0.0  # the manager's clock


Listener = Callable[[OnDemandEvent], None]


@dataclass
class Model:
    """One on-demand service as the manager sees it."""

    name: str
    idle_timeout: float = 600.0
    sleep: int | None = None
    phase: str = "stopped"
    inflight: int = 0
    waiters: int = 0
    last_used: float = 0.0
    can_sleep: bool | None = None  # None until a start has said
    note: str = ""  # what status shows: how it was last put away, why a start failed
    attempt: asyncio.Future[str | None] | None = field(default=None, repr=False)

    @property
    def occupies(self) -> bool:
        """Whether its GPU memory is taken (asleep: vLLM has handed it back)."""
        return self.phase in ("starting", "ready", "waking", "putting away")


@dataclass(frozen=True)
class Started:
    seconds: float
    sleeps: bool  # started with sleep mode
    note: str = ""


@dataclass(frozen=True)
class PutAway:
    how: str  # asleep | stopped
    seconds: float
    note: str


class Ops(Protocol):
    async def start(self, name: str) -> Started: ...

    async def put_away(self, name: str, sleep: int | None) -> PutAway: ...

    async def wake(self, name: str) -> float: ...


@dataclass
class Lease:
    """A request's hold on a model: `release()` when its answer is sent (or given up); `error` and
    `retry_after` instead when the model could not be had."""

    release: Callable[[], None] = lambda: None
    error: str | None = None
    retry_after: int = 0


class Unavailable(RuntimeError):
    """An on-demand model that could not be had (what the gateway answers 503 for)."""


def choose_victims(name: str, models: Mapping[str, Model], claims: Mapping[str, Mapping[int, float | None]],
                   budget: Mapping[int, float]) -> list[str] | None:
    """What to put away so that `name` fits: the least recently used idle on-demand services on
    its GPUs, as few as needed; None when it cannot fit while busy ones hold the GPUs. Pure."""
    up = [n for n, m in models.items() if n != name and m.occupies]
    if fits(name, up, claims, budget):
        return []
    mine = set(claims.get(name, {}))
    idle = sorted((m for n, m in models.items() if n in up and m.phase == "ready" and not m.inflight
                   and not m.waiters and mine & set(claims.get(n, {}))), key=lambda m: m.last_used)
    victims: list[str] = []
    for m in idle:
        victims.append(m.name)
        if fits(name, [n for n in up if n not in victims], claims, budget):
            return victims
    return None


def idle_due(models: Iterable[Model], now: float) -> list[str]:
    """Ready services with nothing in flight or waiting for longer than their idle_timeout. Pure."""
    return [m.name for m in models if m.phase == "ready" and not m.inflight and not m.waiters
            and now - m.last_used >= m.idle_timeout]


def _env_number(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 and value != float("inf") else default


class Manager:
    def __init__(self, models: Iterable[Model], claims: Mapping[str, Mapping[int, float | None]],
                 budget: Mapping[int, float], ops: Ops, clock: Callable[[], float] = time.monotonic,
                 queue_limit: int | None = None, busy_wait: float | None = None, tick_interval: float = 1.0):
        self.models = {m.name: m for m in models}
        self.claims, self.budget, self.ops, self.clock = claims, budget, ops, clock
        self.queue_limit = int(queue_limit if queue_limit is not None else _env_number(QUEUE_ENV, DEFAULT_QUEUE))
        self.busy_wait = busy_wait if busy_wait is not None else _env_number(BUSY_WAIT_ENV, DEFAULT_BUSY_WAIT)
        self.tick_interval = tick_interval
        self.listeners: list[Listener] = []
        self._lock: asyncio.Lock | None = None
        self._freed: asyncio.Event | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the one loop it runs on (`bind`, or its first use)
        for m in self.models.values():
            m.last_used = clock()

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def phase(self, name: str) -> str:
        return self.models[name].phase

    def emit(self, service: str, kind: str, seconds: float | None = None, detail: str = "") -> None:
        event = OnDemandEvent(service, kind, seconds, detail, self.clock())
        log.info("%s: %s%s%s", service, kind, f" in {seconds:.2f} s" if seconds is not None else "",
                 f" ({detail})" if detail else "")
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # an observer's failure never breaks serving
                log.exception("on-demand listener failed")

    def _loop_state(self) -> tuple[asyncio.Lock, asyncio.Event]:
        if self._lock is None or self._freed is None:
            self._lock, self._freed = asyncio.Lock(), asyncio.Event()
            if self.loop is None:
                self.loop = asyncio.get_running_loop()
        return self._lock, self._freed

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the manager runs on (the gateway's), for `hold_from_thread`."""
        if self.loop is None:
            self.loop = loop

    def hold_from_thread(self, name: str, tell: Callable[[str], None] = lambda _: None,
                         given_up: Callable[[], bool] = lambda: False, poll: float = 0.1) -> Callable[[], None]:
        """`acquire` for a thread outside the manager's loop (a front's pane): blocks until `name`
        is up, calling `tell` with what it waits for (when it is not up already), and returns the
        release (itself safe from any thread). Raises `Unavailable` with the 503's reason when the
        model cannot be had, or when `given_up()` turns true while it waits (the lease, if one
        comes after all, is then released at once)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            raise Unavailable(f"model {name} is on demand and the gateway's event loop is not running")
        phase = self.models[name].phase
        if phase != "ready":
            tell(f"waking {name}…" if phase == "asleep" else f"starting {name}…")
        fut = asyncio.run_coroutine_threadsafe(self.acquire(name), loop)

        def release_on(lease: Lease) -> Callable[[], None]:
            def release() -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed: nothing is served any more
                    loop.call_soon_threadsafe(lease.release)
            return release

        while True:
            try:
                lease = fut.result(timeout=poll)
                break
            except concurrent.futures.TimeoutError:
                if given_up():
                    # not cancelled (a lease made as the cancel lands would be lost): released once it comes
                    fut.add_done_callback(lambda f: f.cancelled() or f.exception() is not None
                                          or release_on(f.result())())
                    raise Unavailable(f"gave up waiting for model {name}") from None
        if lease.error is not None:
            raise Unavailable(f"{lease.error} (503, retry after {lease.retry_after} s)")
        return release_on(lease)

    def start_ticker(self) -> None:
        """The idle_timeout check, every tick_interval on the running loop (started on first use)."""
        if self._ticker is None:
            self._ticker = asyncio.ensure_future(self._tick_forever())

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            try:
                await self.tick()
            except Exception:
                log.exception("on-demand idle check failed")

    async def tick(self) -> None:
        """Put away what has been idle for its idle_timeout; forget a ready server that has exited on
        its own (the next request starts it again)."""
        lock, _ = self._loop_state()
        alive = getattr(self.ops, "alive", None)
        for m in [m for m in self.models.values() if m.phase in ("ready", "asleep")] if alive else []:
            if not await alive(m.name) and m.phase in ("ready", "asleep"):
                m.phase, m.note = "stopped", "exited on its own; started again on the next request"
                self.emit(m.name, "exited", detail=m.note)
        for name in idle_due(self.models.values(), self.clock()):
            async with lock:
                if name in idle_due([self.models[name]], self.clock()):
                    await self._put_away(self.models[name], f"idle for {self.models[name].idle_timeout:g} s")

    # -- requests -----------------------------------------------------------------------
    async def acquire(self, name: str) -> Lease:
        """Hold `name` up for one request: at once when it is ready, else after it is started or
        woken (waiting in its bounded queue). Never puts away a model with requests in flight."""
        m = self.models[name]
        self.start_ticker()
        if m.phase == "ready":
            return self._lease(m)
        if m.waiters >= self.queue_limit:
            self.emit(name, "queue full", detail=f"{m.waiters} requests waiting")
            return Lease(error=f"model {name} is starting and {m.waiters} requests already wait for it "
                               f"(the queue holds {self.queue_limit}, {QUEUE_ENV}); try again shortly",
                         retry_after=5)
        m.waiters += 1
        try:
            while m.phase != "ready":
                if m.attempt is None or m.attempt.done():
                    m.attempt = asyncio.ensure_future(self._bring_up(m))
                error = await asyncio.shield(m.attempt)
                if error is not None:
                    return Lease(error=error, retry_after=10)
        finally:
            m.waiters -= 1
        return self._lease(m)

    def _lease(self, m: Model) -> Lease:
        m.inflight += 1
        m.last_used = self.clock()
        done = False

        def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            m.inflight -= 1
            m.last_used = self.clock()
            if self._freed is not None:
                self._freed.set()

        return Lease(release)

    async def _bring_up(self, m: Model) -> str | None:
        """Make room, then start or wake `m`: None when it is ready, else the error every waiter gets."""
        lock, freed = self._loop_state()
        async with lock:
            if m.phase == "ready":
                return None
            waited_from = time.monotonic()
            while True:
                victims = choose_victims(m.name, self.models, self.claims, self.budget)
                if victims is not None:
                    break
                left = self.busy_wait - (time.monotonic() - waited_from)
                busy = [n for n, o in self.models.items() if n != m.name and o.occupies and not fits(m.name, [n],
                                                                                                    self.claims,
                                                                                                    self.budget)]
                if left <= 0:
                    self.emit(m.name, "busy", detail=", ".join(busy))
                    return (f"model {m.name} does not fit beside {', '.join(busy)}, which are answering requests "
                            f"(waited {self.busy_wait:g} s, {BUSY_WAIT_ENV}); try again shortly")
                freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(freed.wait(), left)
            for victim in victims:
                await self._put_away(self.models[victim], f"making room for {m.name}")
            waking = m.phase == "asleep"
            m.phase = "waking" if waking else "starting"
            self.emit(m.name, m.phase)
        t0 = self.clock()
        try:
            if waking:
                await self.ops.wake(m.name)
                m.note = ""
                m.phase = "ready"
                self.emit(m.name, "woken", self.clock() - t0)
            else:
                got = await self.ops.start(m.name)
                m.can_sleep, m.note = got.sleeps, got.note
                m.phase = "ready"
                self.emit(m.name, "ready", got.seconds, got.note)
        except Exception as exc:
            why = str(exc).strip() or type(exc).__name__
            m.phase, m.note = "stopped", f"last start failed: {why.splitlines()[0]}"
            self.emit(m.name, "start failed", self.clock() - t0, why)
            return f"model {m.name} could not be {'woken' if waking else 'started'}: {why}"
        m.last_used = self.clock()
        return None

    async def _put_away(self, m: Model, why: str) -> None:
        m.phase = "putting away"
        self.emit(m.name, "putting away", detail=why)
        t0 = self.clock()
        try:
            got = await self.ops.put_away(m.name, m.sleep if m.can_sleep else None)
        except Exception as exc:
            m.phase, m.note = "stopped", f"put away with an error: {exc}"
            self.emit(m.name, "put away", self.clock() - t0, m.note)
            return
        m.phase, m.note = got.how, got.note
        self.emit(m.name, "put away", got.seconds, f"{why}; {got.note}")
        if self._freed is not None:
            self._freed.set()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """What status shows of each model."""
        return {n: {"phase": m.phase, "note": m.note, "inflight": m.inflight, "waiting": m.waiters,
                    "sleep": m.sleep if m.can_sleep else None} for n, m in self.models.items()}


# -- the real operations ------------------------------------------------------------------
class ProcessOps:
    """Start, put away and wake real servers of a planned stack (blocking work in threads)."""

    def __init__(self, plan: Any, stack: Any, release_timeout: float = RELEASE_TIMEOUT):
        self.plan, self.stack, self.release_timeout = plan, stack, release_timeout
        self.sleep_known: dict[str, tuple[bool, str]] = {}

    @staticmethod
    def warm() -> None:
        """Import what a start uses now (in a thread), not in the first request's wait (about 100 ms)."""
        import importlib

        for module in ("h2ostack.api", "h2ostack.health", "h2ostack.runtimes.process", "h2ostack.shim", "httpx"):
            with contextlib.suppress(Exception):
                importlib.import_module(module)

    async def can_sleep(self, sp: Any) -> tuple[bool, str]:
        """Ask the engine itself whether its platform can sleep (vLLM refuses --enable-sleep-mode
        where it cannot: its CPU build)."""
        if sp.name in self.sleep_known:
            return self.sleep_known[sp.name]
        from h2ostack import backends
        from h2ostack.spec import reveal

        backend = backends.get(sp.kind)
        code = backend.sleep_probe()
        if code is None:
            return True, ""
        env = {**os.environ, **{k: reveal(v) or "" for k, v in sp.env.items()}}
        try:
            proc = await asyncio.create_subprocess_exec(sp.command[0], "-c", code, env=env,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 300)
            says = backend.sleep_probe_says(out.decode(errors="replace"))
        except (OSError, TimeoutError) as exc:
            says, out = None, str(exc).encode()
        if says is None:
            got = (False, "stopped when put away: the engine did not say whether it can sleep")
        elif says:
            got = (True, "")
        else:
            got = (False, "stopped when put away: the engine cannot sleep on this platform (vLLM reports sleep "
                          "mode unavailable)")
        self.sleep_known[sp.name] = got
        return got

    async def alive(self, name: str) -> bool:
        """Whether the service's recorded process still runs (containers are taken as running)."""
        sp = self.plan.services[name]
        if sp.mode != "process":
            return True
        return await asyncio.to_thread(self._alive, name)

    def _alive(self, name: str) -> bool:
        from h2ostack.runtimes.process import verified
        from h2ostack.state import StackState

        state = StackState(self.stack.name)
        rec = state.records().get(name)
        return rec is not None and verified(rec, state) is not None

    async def start(self, name: str) -> Started:
        from h2ostack import api, backends

        sp = self.plan.services[name]
        sleeps, note = False, ""
        if sp.sleep:
            sleeps, note = await self.can_sleep(sp)
            if not sleeps:
                command, env = backends.get(sp.kind).without_sleep(sp.command, dict(sp.env))
                sp = replace(sp, command=command, env=env)  # the same config_hash: `up` keeps it
        sp = replace(sp, health_interval=min(sp.health_interval, START_POLL))  # a request waits on it
        seconds = await asyncio.to_thread(api.start_service, sp, self.stack,
                                          lambda ev: log.info("%s: %s %s", ev.service, ev.kind, ev.detail[:200]))
        return Started(seconds, sleeps, note)

    async def put_away(self, name: str, sleep: int | None) -> PutAway:
        sp = self.plan.services[name]
        t0 = time.monotonic()
        declined = ""
        if sleep:
            why = await asyncio.to_thread(self._sleep, sp, sleep)
            if why is None:
                # a sleeping server keeps its CUDA context (NVML still lists it): wait for the memory alone
                released = await asyncio.to_thread(self._released, sp, set())
                return PutAway("asleep", time.monotonic() - t0, f"asleep (vLLM sleep level {sleep}){released}")
            declined = f"the engine declined to sleep ({why}); "
        note = await asyncio.to_thread(self._stop, sp)
        return PutAway("stopped", time.monotonic() - t0, declined + note)

    def _stop(self, sp: Any) -> str:
        from h2ostack import api

        pids = api.stop_service(sp, self.stack.name)
        return "stopped" + self._released(sp, pids)

    def _released(self, sp: Any, pids: set[int]) -> str:
        """The release wait on the service's GPUs (its old pids gone, its memory free again)."""
        from h2ostack.shim import release_wait

        if not sp.gpus:
            return ""
        need = max((c for _, c in sp.claims if c is not None), default=None)
        got = release_wait(pids, list(sp.gpus), None, self.release_timeout, lambda: False, need_gib=need)
        log.info("%s: %s", sp.name, got)
        return f"; {got}"

    def _request(self, sp: Any, method: str, path: str, timeout: float) -> tuple[int, Any]:
        import httpx

        from h2ostack.api import auth_headers

        resp = httpx.request(method, (sp.url or "") + path, headers=auth_headers(sp, self.stack), timeout=timeout)
        try:
            body = resp.json()
        except ValueError:
            body = None
        return resp.status_code, body

    def _sleep(self, sp: Any, level: int) -> str | None:
        """vLLM's own sleep; None when /is_sleeping then says it sleeps, else why not."""
        try:
            code, _ = self._request(sp, "POST", f"/sleep?level={level}", 300)
            if code != 200:
                return f"POST /sleep answered {code}"
            code, body = self._request(sp, "GET", "/is_sleeping", 10)
        except Exception as exc:  # refused, timed out: the server is then stopped instead
            return f"{type(exc).__name__}: {exc}"
        if code == 200 and isinstance(body, dict) and body.get("is_sleeping") is True:
            return None
        return f"GET /is_sleeping answered {code} {body!r}"[:200]

    async def wake(self, name: str) -> float:
        sp = self.plan.services[name]
        t0 = time.monotonic()
        code, _ = await asyncio.to_thread(self._request, sp, "POST", "/wake_up", 300)
        if code != 200:
            raise RuntimeError(f"POST /wake_up answered {code}")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            code, body = await asyncio.to_thread(self._request, sp, "GET", "/is_sleeping", 10)
            if code == 200 and isinstance(body, dict) and body.get("is_sleeping") is False:
                return time.monotonic() - t0
            await asyncio.sleep(0.2)
        raise TimeoutError("vLLM still sleeping 300 s after /wake_up")


def write_state(stack: str, manager: Manager) -> Listener:
    """A listener keeping `<state dir>/<stack>/ondemand.json` (read by `status`) up to date."""
    from h2ostack.state import ONDEMAND_FILE, StackState

    state = StackState(stack)
    last: dict[str, dict[str, Any]] = {}

    def on_event(ev: OnDemandEvent) -> None:
        entry = last.setdefault(ev.service, {})
        entry.update(event=ev.kind, at=time.time(), detail=ev.detail[:500])
        if ev.seconds is not None:
            entry[ev.kind.replace(" ", "_") + "_s"] = round(ev.seconds, 3)
        view = {n: {**snap, **last.get(n, {})} for n, snap in manager.snapshot().items()}
        try:
            state.ensure()
            _write_view(state.root / ONDEMAND_FILE, view)
        except OSError as exc:
            log.warning("could not write %s: %s", ONDEMAND_FILE, exc)

    return on_event


def _write_view(path: Path, view: Any) -> None:
    """Replaced whole (readers see the old view or the new), not synced to disk: it runs on the
    gateway's loop before the waiting requests go on, and an fsync there took milliseconds; a view
    lost to a crash of the machine is rewritten by the next event."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(view, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _is_sleeping(sp: Any, stack: Any) -> bool | None:
    """What a running vLLM's /is_sleeping says (None: it says nothing, so it cannot sleep)."""
    import httpx

    from h2ostack.api import auth_headers

    try:
        got = httpx.get((sp.url or "") + "/is_sleeping", headers=auth_headers(sp, stack), timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    return got.get("is_sleeping") if isinstance(got, dict) and isinstance(got.get("is_sleeping"), bool) else None


def manager_for(plan: Any, stack: Any, models: Iterable[str], ops: Ops | None = None) -> Manager | None:
    """The manager of a front's on-demand models (None when it has none): what runs already (a
    front started again beside them) counts as ready."""
    names = [n for n in models if n in plan.services and plan.services[n].on_demand]
    if not names:
        return None
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("h2ostack on demand: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    alive: set[str] = set()
    with contextlib.suppress(Exception):
        from h2ostack.runtimes.process import marked
        from h2ostack.state import state_root

        alive = {n for n in names if marked(stack.name, state_root(), n)}
    out = []
    for n in names:
        sp = plan.services[n]
        model = Model(n, sp.idle_timeout, sp.sleep, phase="ready" if n in alive else "stopped")
        if n in alive and sp.sleep:
            sleeping = _is_sleeping(sp, stack)
            model.can_sleep = sleeping is not None
            model.phase = "asleep" if sleeping else model.phase
        out.append(model)
    claims = {n: dict(plan.services[n].claims) for n in names}
    if ops is None:
        ops = ProcessOps(plan, stack)
        threading.Thread(target=ProcessOps.warm, daemon=True, name="h2ostack-ondemand-warm").start()
    manager = Manager(out, claims, plan.gpu_budget, ops)
    manager.listeners.append(write_state(stack.name, manager))
    return manager
