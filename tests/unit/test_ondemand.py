"""The on-demand manager's decisions with fake operations and a fake clock: starts, LRU put-away,
never a model in use, bounded queues, failed starts, idle timeouts, sleep and wake."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

from h2ostack.ondemand import Manager, Model, OnDemandEvent, PutAway, Started, choose_victims, idle_due

BOTH = {0: 8.0, 1: 8.0}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeOps:
    """Servers that start when told (a gate per start), record what happened, fail on demand."""

    def __init__(self, can_sleep: bool = False) -> None:
        self.log: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.at_gate: dict[str, asyncio.Event] = {}  # a start has come to its gate
        self.fail: dict[str, str] = {}
        self.can_sleep = can_sleep
        self.running: set[str] = set()

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    async def starting(self, name: str) -> None:
        """Until a start of `name` waits at its gate (every request asked before it is queued by then)."""
        await self.at_gate.setdefault(name, asyncio.Event()).wait()

    async def start(self, name: str) -> Started:
        self.log.append(f"start {name}")
        if name in self.gates:
            self.at_gate.setdefault(name, asyncio.Event()).set()
            await self.gates[name].wait()
        if name in self.fail:
            raise RuntimeError(self.fail[name])
        self.running.add(name)
        return Started(4.0, self.can_sleep, "" if self.can_sleep else "stopped when put away: cannot sleep")

    async def put_away(self, name: str, sleep: int | None) -> PutAway:
        self.log.append(f"{'sleep' if sleep else 'stop'} {name}")
        if not sleep:
            self.running.discard(name)
        return PutAway("asleep" if sleep else "stopped", 0.5, "asleep" if sleep else "stopped; released")

    async def wake(self, name: str) -> float:
        self.log.append(f"wake {name}")
        return 0.3


def manager(ops: FakeOps, clock: Clock, names: Iterable[str] = "abc", claims: dict | None = None,
            sleep: int | None = None, **kw: object) -> Manager:
    models = [Model(n, idle_timeout=60, sleep=sleep) for n in names]
    claims = claims or {n: dict(BOTH) for n in names}
    return Manager(models, claims, {0: 10.0, 1: 10.0}, ops, clock, **kw)  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_requests_in_turn_start_put_away_and_start_again() -> None:
    async def go() -> None:
        ops, clock = FakeOps(), Clock()
        m = manager(ops, clock)
        events: list[OnDemandEvent] = []
        m.listeners.append(events.append)
        for name in "abca":
            lease = await m.acquire(name)
            assert lease.error is None and m.phase(name) == "ready"
            clock.now += 1
            lease.release()
        assert ops.log == ["start a", "stop a", "start b", "stop b", "start c", "stop c", "start a"]
        assert [m.phase(n) for n in "abc"] == ["ready", "stopped", "stopped"]
        kinds = [(e.service, e.kind) for e in events]
        assert kinds[:5] == [("a", "starting"), ("a", "ready"), ("a", "putting away"), ("a", "put away"),
                             ("b", "starting")]
        assert ("a", "put away") in kinds and [e.seconds for e in events if e.kind == "ready"] == [4.0] * 4
    run(go())


def test_the_least_recently_used_idle_model_goes_first() -> None:
    models = {n: Model(n, phase="ready", last_used=t) for n, t in (("a", 5.0), ("b", 1.0), ("c", 3.0))}
    claims = {n: {0: 4.0} for n in "abcd"}
    assert choose_victims("d", models, claims, {0: 12.0}) == ["b"]
    models["b"].inflight = 1  # in use: never put away
    assert choose_victims("d", models, claims, {0: 12.0}) == ["c"]
    assert choose_victims("d", models, claims, {0: 4.0}) is None  # b stays, and nothing fits beside it
    models["b"].inflight = 0
    assert choose_victims("d", models, claims, {0: 4.0}) == ["b", "c", "a"]
    assert choose_victims("d", models, {**claims, "d": {1: 4.0}}, {0: 4.0, 1: 4.0}) == []  # other GPU


def test_concurrent_requests_for_a_starting_model_all_get_it_with_one_start() -> None:
    async def go() -> None:
        ops, clock = FakeOps(), Clock()
        m = manager(ops, clock)
        gate = ops.gate("a")
        waiting = [asyncio.ensure_future(m.acquire("a")) for _ in range(5)]
        await ops.starting("a")
        assert m.phase("a") == "starting" and not any(w.done() for w in waiting)
        gate.set()
        leases = await asyncio.gather(*waiting)
        assert all(lease.error is None for lease in leases) and ops.log == ["start a"]
        assert m.models["a"].inflight == 5
    run(go())


def test_a_model_with_a_request_in_flight_is_not_put_away() -> None:
    async def go() -> None:
        ops, clock = FakeOps(), Clock()
        m = manager(ops, clock)
        streaming = await m.acquire("a")
        wanting_b = asyncio.ensure_future(m.acquire("b"))
        for _ in range(5):
            await settle()
        assert not wanting_b.done() and ops.log == ["start a"]  # b waits for a's answer to end
        streaming.release()
        lease = await wanting_b
        assert lease.error is None and ops.log == ["start a", "stop a", "start b"]
    run(go())


def test_busy_gpus_give_up_after_the_bounded_wait() -> None:
    async def go() -> None:
        ops, clock = FakeOps(), Clock()
        m = manager(ops, clock, busy_wait=0.05)
        held = await m.acquire("a")
        lease = await m.acquire("b")
        assert lease.error and "does not fit beside a" in lease.error and lease.retry_after > 0
        assert m.phase("a") == "ready" and ops.log == ["start a"]
        held.release()
    run(go())


def test_a_full_queue_answers_at_once() -> None:
    async def go() -> None:
        ops, clock = FakeOps(), Clock()
        m = manager(ops, clock, queue_limit=2)
        gate = ops.gate("a")
        waiting = [asyncio.ensure_future(m.acquire("a")) for _ in range(2)]
        await ops.starting("a")
        refused = await m.acquire("a")
        assert refused.error and "2 requests already wait" in refused.error and refused.retry_after > 0
        gate.set()
        assert all(lease.error is None for lease in await asyncio.gather(*waiting))
    run(go())


def test_a_failing_start_fails_every_waiter_and_the_next_request_tries_again() -> None:
    async def go() -> None:
        ops, clock = FakeOps(), Clock()
        m = manager(ops, clock)
        gate = ops.gate("a")
        ops.fail["a"] = "exited while starting (code 1)"
        waiting = [asyncio.ensure_future(m.acquire("a")) for _ in range(3)]
        await ops.starting("a")
        gate.set()
        leases = await asyncio.gather(*waiting)
        assert all(lease.error and "could not be started: exited while starting" in lease.error for lease in leases)
        assert m.phase("a") == "stopped" and "last start failed" in m.models["a"].note
        assert ops.log == ["start a"] and m.models["a"].waiters == 0
        del ops.fail["a"]
        assert (await m.acquire("a")).error is None and ops.log == ["start a", "start a"]
    run(go())


def test_idle_timeout_puts_away_on_the_fake_clock() -> None:
    async def go() -> None:
        ops, clock = FakeOps(), Clock()
        m = manager(ops, clock, names="ab", claims={"a": {0: 1.0}, "b": {1: 1.0}})
        (await m.acquire("a")).release()
        held = await m.acquire("b")
        clock.now += 59
        await m.tick()
        assert ops.log == ["start a", "start b"]
        clock.now += 1
        await m.tick()
        assert ops.log == ["start a", "start b", "stop a"] and m.phase("b") == "ready"  # b is in use
        held.release()
        clock.now += 60
        await m.tick()
        assert ops.log[-1] == "stop b"
    run(go())
    models = [Model("a", 10, phase="ready", last_used=0), Model("b", 10, phase="ready", last_used=0, waiters=1),
              Model("c", 10, phase="asleep", last_used=0), Model("d", 10, phase="ready", last_used=5)]
    assert idle_due(models, 10) == ["a"]


def test_sleep_where_the_engine_can_and_stop_where_it_cannot() -> None:
    async def go(can: bool) -> list[str]:
        ops, clock = FakeOps(can_sleep=can), Clock()
        m = manager(ops, clock, names="ab", sleep=1)
        for name in "aba":
            (await m.acquire(name)).release()
        assert m.phase("b") == ("asleep" if can else "stopped")
        return ops.log
    assert run(go(True)) == ["start a", "sleep a", "start b", "sleep b", "wake a"]
    assert run(go(False)) == ["start a", "stop a", "start b", "stop b", "start a"]


def test_a_listener_that_raises_breaks_nothing() -> None:
    async def go() -> None:
        ops, clock = FakeOps(), Clock()
        m = manager(ops, clock)

        def bad(_: OnDemandEvent) -> None:
            raise ValueError("observer bug")

        m.listeners.append(bad)
        assert (await m.acquire("a")).error is None
    run(go())


@pytest.mark.parametrize("twice", [True, False])
def test_release_is_idempotent(twice: bool) -> None:
    async def go() -> None:
        m = manager(FakeOps(), Clock())
        lease = await m.acquire("a")
        lease.release()
        if twice:
            lease.release()
        assert m.models["a"].inflight == 0
    run(go())


def test_a_ready_server_that_exited_on_its_own_is_started_again() -> None:
    class Dying(FakeOps):
        async def alive(self, name: str) -> bool:
            return name in self.running

    async def go() -> None:
        ops, clock = Dying(), Clock()
        m = manager(ops, clock)
        (await m.acquire("a")).release()
        await m.tick()
        assert m.phase("a") == "ready"
        ops.running.discard("a")  # it crashed
        await m.tick()
        assert m.phase("a") == "stopped" and "exited on its own" in m.models["a"].note
        assert (await m.acquire("a")).error is None and ops.log == ["start a", "start a"]
    run(go())


class LoopThread:
    """An event loop in a thread of its own, as the gateway's server runs one."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, fn: object) -> object:
        async def go() -> object:
            return fn()  # type: ignore[operator]
        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def settled(self, fn: object, rounds: int = 200) -> object:
        """`fn` asked in the loop once what is ready to run there has run (up to `rounds` passes)."""
        async def go() -> object:
            for _ in range(rounds):
                if fn():  # type: ignore[operator]
                    break
                await asyncio.sleep(0)
            return fn()  # type: ignore[operator]
        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_a_thread_holds_a_model_through_the_managers_loop_and_releases_it() -> None:
    from h2ostack.ondemand import Unavailable

    lt = LoopThread()
    try:
        ops, clock = FakeOps(), Clock()
        m = manager(ops, clock)
        with pytest.raises(Unavailable, match="event loop is not running"):
            m.hold_from_thread("a")  # not bound yet: no loop to start it on
        m.bind(lt.loop)
        told: list[str] = []
        release = m.hold_from_thread("a", told.append)
        assert told == ["starting a…"] and ops.log == ["start a"]
        assert lt.call(lambda: (m.phase("a"), m.models["a"].inflight)) == ("ready", 1)
        release()
        release()  # twice is once
        assert lt.call(lambda: m.models["a"].inflight) == 0
        told.clear()
        m.hold_from_thread("a", told.append)()  # up already: nothing to tell
        assert told == [] and ops.log == ["start a"]
        ops.fail["b"] = "exited while starting"
        with pytest.raises(Unavailable, match=r"could not be started: exited while starting \(503, retry after 10 s"):
            m.hold_from_thread("b")
        assert lt.call(lambda: m.phase("b")) == "stopped"
    finally:
        lt.close()


def test_a_thread_that_gives_up_waiting_leaves_no_hold_behind() -> None:
    import threading

    from h2ostack.ondemand import Unavailable

    lt = LoopThread()
    try:
        ops, clock = FakeOps(), Clock()
        m = manager(ops, clock)
        m.bind(lt.loop)
        gate = lt.call(lambda: ops.gate("a"))
        stop = threading.Event()
        started = threading.Event()

        def tell(_: str) -> None:
            started.set()

        got: list[BaseException] = []

        def pane() -> None:
            try:
                m.hold_from_thread("a", tell, stop.is_set, poll=0.01)
            except Unavailable as exc:
                got.append(exc)

        t = threading.Thread(target=pane)
        t.start()
        assert started.wait(10)
        stop.set()  # the pane is stopped while its model starts
        t.join(10)
        assert [str(e) for e in got] == ["gave up waiting for model a"]
        lt.call(gate.set)  # the start ends: its lease, made for nobody, is released at once
        assert lt.settled(lambda: (m.phase("a"), m.models["a"].inflight) == ("ready", 0)), \
            "the given-up lease was not released"
    finally:
        lt.close()


def test_a_start_a_request_waits_on_polls_readiness_often_and_the_view_is_replaced_whole(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    from pathlib import Path
    from types import SimpleNamespace

    from h2ostack import api, ondemand
    from h2ostack.plan import ProcessPlan

    polls: list[float] = []
    monkeypatch.setattr(api, "start_service", lambda sp, stack, emit: polls.append(sp.health_interval) or 2.0)
    plan = SimpleNamespace(services={"a": ProcessPlan(name="a", kind="vllm", api="openai", health_interval=0.5),
                                     "b": ProcessPlan(name="b", kind="vllm", api="openai", health_interval=0.01)})
    ops = ondemand.ProcessOps(plan, SimpleNamespace(name="s"))
    assert run(ops.start("a")) == Started(2.0, False, "") and run(ops.start("b")).seconds == 2.0
    assert polls == [ondemand.START_POLL, 0.01]  # the service's own, where shorter
    assert plan.services["a"].health_interval == 0.5  # the plan itself untouched

    monkeypatch.setenv("H2OSTACK_STATE_DIR", str(tmp_path))
    m = manager(FakeOps(), Clock(), "a")
    m.listeners.append(ondemand.write_state("s", m))
    m.emit("a", "starting")
    view = Path(str(tmp_path)) / "s" / "ondemand.json"
    assert json.loads(view.read_text())["a"]["event"] == "starting"
    assert [p.name for p in view.parent.iterdir() if p.name.startswith(".ondemand")] == []  # no temporary left
