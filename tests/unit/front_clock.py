"""A fake clock for the front's turns (`turn.Clock`): time moves only when every thread it runs
waits on it, so a turn over fake answer streams runs the same way on any machine, however loaded."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
STUCK = 30.0  # real seconds: a thread that neither ends nor waits on the clock is a bug of the test


class FakeClock:
    """`spawn`ed threads (the answer streams) wait with `sleep`; the turn waits for its events with
    `get`, and it alone moves the time: once every spawned thread waits (or has ended) and no event
    is queued, to the next thread's wake-up or the end of the wait, whichever is first."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start
        self.cond = threading.Condition()
        self.running = 0  # spawned threads not waiting on the clock
        self.wakes: list[float] = []  # when each waiting thread wakes

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t

    def spawn(self, target: Callable[[], None]) -> None:
        with self.cond:
            self.running += 1

        def run() -> None:
            try:
                target()
            finally:
                with self.cond:
                    self.running -= 1
                    self.cond.notify_all()
        threading.Thread(target=run, daemon=True).start()

    def sleep(self, seconds: float) -> None:
        """For a spawned thread: wait until the clock has moved `seconds` on."""
        with self.cond:
            until = self.t + seconds
            self.wakes.append(until)
            self.running -= 1
            self.cond.notify_all()
            while self.t < until:
                self.cond.wait()  # (`get` counts it running again as it moves the time past `until`)

    def settle(self) -> None:
        """Wait until every spawned thread waits on the clock or has ended."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.running == 0, timeout=STUCK):
                raise AssertionError("a thread of the fake clock neither ended nor waited on it")

    def get(self, events: queue.Queue[T], timeout: float) -> T:
        deadline = self.t + timeout
        with self.cond:
            while True:
                if not self.cond.wait_for(lambda: self.running == 0, timeout=STUCK):
                    raise AssertionError("a thread of the fake clock neither ended nor waited on it")
                if not events.empty():
                    return events.get_nowait()
                if self.t >= deadline:
                    raise queue.Empty
                self.advance(min([deadline, *self.wakes]))

    def advance(self, to: float) -> None:
        """(holding `cond`) the time moved to `to`, the threads due by then woken."""
        self.t = max(self.t, to)
        due = [w for w in self.wakes if w <= self.t]
        self.wakes = [w for w in self.wakes if w > self.t]
        self.running += len(due)
        self.cond.notify_all()
