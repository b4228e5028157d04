"""One question of the compare grid, asked of its panes' models at once, without Gradio.

A `Turn` streams every pane's answer in a thread of its own (started by its clock), gathers the
pieces and yields `Frame`s: the panes' turns in progress, as the page is to show them. It reads
its time from a `Clock`, so that a test runs it on a fake one, and answers from a stream function
(`clients.stream_answer`, or a fake)."""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from h2ostack.front.clients import Pane
from h2ostack.front.session import Message, Session, in_progress

FIRST_FRAME_WAIT = 0.15  # seconds a question waits for the first piece of an answer to go with it
YIELD_EVERY = 0.05  # seconds: coalesce token updates so the page never falls behind
# Gradio's page renders every message of a chatbot again on each update of it, so each pane is two
# chatbots in one scroll box: its finished turns, updated once a turn is over, and the turn in
# progress, which the streamed updates go to. Later pieces are still gathered for
# YIELD_PER_MESSAGE more per message in the streamed chatbots (normally two per pane).
YIELD_PER_MESSAGE = 0.0015
POLL = 0.1  # seconds: how often a streaming turn looks for Stop, Clear and Regenerate at most

T = TypeVar("T")
# (backend, earlier turns as (question, answer), question, max_new_tokens, temperature) -> pieces
StreamFn = Callable[[Pane, list[tuple[str, str]], str, int, float], Iterator[str]]
# (model, tell(notice) shows what the pane waits for, given_up()) -> release: a pane's hold on an
# on-demand model, which starts it when it is not up (`ondemand.Manager.hold_from_thread`); it
# raises with the reason when the model cannot be had
HoldFn = Callable[[str, Callable[[str], None], Callable[[], bool]], Callable[[], None]]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic clock (timings, deadlines)."""

    def wall(self) -> float:
        """Seconds since the epoch (the times in the JSONL records)."""

    def get(self, events: queue.Queue[T], timeout: float) -> T:
        """The next item of `events`, waiting up to `timeout`; `queue.Empty` if none came."""

    def spawn(self, target: Callable[[], None]) -> None:
        """Run `target` in a thread of its own."""


class SystemClock:
    """The machine's clocks and threads."""

    def now(self) -> float:
        return time.perf_counter()

    def wall(self) -> float:
        return time.time()

    def get(self, events: queue.Queue[T], timeout: float) -> T:
        return events.get(timeout=timeout)

    def spawn(self, target: Callable[[], None]) -> None:
        threading.Thread(target=target, daemon=True).start()


@dataclass
class Frame:
    """One update of the page: the input box (None: left as it is, the user may be typing the
    next question; "": emptied), every pane's turn in progress, and whether the turn is over (the
    last frame, which also sets the session)."""

    box: str | None
    panes: list[list[Message]]
    done: bool = False


class Turn:
    """One question asked of the panes `idx` of a session. The session's own lists are updated in
    place, so a turn stopped half way keeps what its panes show; `frames()` runs it."""

    def __init__(self, sess: Session, message: str, idx: list[int], stream: StreamFn, clock: Clock,
                 first_byte: float, hold: HoldFn | None = None) -> None:
        self.sess, self.message, self.idx, self.stream, self.clock = sess, message, idx, stream, clock
        self.hold = hold  # on-demand models: held up while their pane streams
        self.first_byte = first_byte  # REQUEST_TIMEOUT_FAST bounds each pane's connection and first piece
        self.first_frame_wait, self.yield_every, self.yield_per_message = (FIRST_FRAME_WAIT, YIELD_EVERY,
                                                                          YIELD_PER_MESSAGE)
        self.slots = sess.slots  # as they were asked (Add a model replaces the list)
        self.max_toks = [p["max_new_tokens"] for p in sess.settings]
        self.temperatures = [p["temperature"] for p in sess.settings]
        self.events: queue.Queue[tuple[int, str, Any]] = queue.Queue()
        self.stopping = threading.Event()
        self.abandoned: set[int] = set()  # panes given up on: their thread stops at its next piece
        self.stats: dict[int, dict[str, Any]] = {}
        self.mine: dict[int, list[Message]] = {}
        self.asked = False  # the question is in the page
        self.noticed: set[int] = set()  # panes showing what they wait for (a model starting), not an answer

    def work(self, i: int) -> None:
        """Pane i's answer, streamed into the turn's events (run in a thread of its own)."""
        clock, hist = self.clock, self.sess.chats[i]
        b = Pane.from_slot(self.slots[i])  # type: ignore[arg-type]
        turns = [(hist[k]["content"], hist[k + 1]["content"]) for k in range(0, len(hist) - 2, 2)]
        t0 = clock.now()
        first = None
        first_at = last_at = None
        count = 0
        release: Callable[[], None] | None = None
        try:
            if self.hold is not None:
                # an on-demand model is started first (the pane says so, and waits past
                # REQUEST_TIMEOUT_FAST while it does), and held up until this answer ends
                told: list[str] = []

                def tell(text: str) -> None:
                    told.append(text)
                    self.events.put((i, "notice", text))

                release = self.hold(b.name, tell, lambda: self.stopping.is_set() or i in self.abandoned)
                if told:
                    self.events.put((i, "held", None))
                    t0 = clock.now()  # the answer's timings from the model being up
            for piece in self.stream(b, turns, self.message, int(self.max_toks[i]), float(self.temperatures[i])):
                if self.stopping.is_set() or i in self.abandoned:
                    break
                last_at = clock.wall()
                if first is None:
                    first, first_at = clock.now() - t0, last_at
                count += 1
                self.events.put((i, "piece", piece))
            total = clock.now() - t0
            tps = (count - 1) / (total - first) if first is not None and count > 1 and total > first else None
            # wall-clock times of the first and last piece from the backend, for the JSONL export
            self.events.put((i, "done", {"ttft": first, "tps": tps, "tokens": count, "seconds": total,
                                         "first_token_at": first_at, "last_token_at": last_at}))
        except Exception as exc:  # a backend down or dying mid-answer: its pane says so
            self.events.put((i, "error", f"{type(exc).__name__}: {exc}"))
        finally:
            if release is not None:
                release()

    def record(self, i: int) -> None:
        """A pane's answer goes to the JSONL export as it ends, whatever then becomes of its turn
        (a pane stopped while it streams leaves no record)."""
        slot = self.slots[i]
        assert slot is not None
        self.sess.log.append({"time": self.clock.wall(), "model": slot["name"], "backend": slot["kind"],
                              "prompt": self.message, "answer": self.mine[i][-1]["content"],
                              "max_new_tokens": int(self.max_toks[i]), "temperature": float(self.temperatures[i]),
                              **self.stats.get(i, {})})

    def frame(self, done: bool = False) -> Frame:
        """Every pane's turn in progress (the messages its finished-turns chatbot does not show).
        The headers and the finished turns are not in it: they follow once the turn is over
        (`settle`). The first update also clears the input box."""
        box = None if self.asked else ""
        self.asked = True
        return Frame(box, in_progress(self.sess.chats, self.sess.past), done)

    def frames(self) -> Iterator[Frame]:
        sess, clock, idx, mine = self.sess, self.clock, self.idx, self.mine
        hists, past = sess.chats, sess.past
        for i in idx:
            hists[i] = [*hists[i], {"role": "user", "content": self.message}, {"role": "assistant", "content": ""}]
        # this turn's conversations: pieces go to these lists, not to whatever the session holds
        # when they come, so a turn cancelled by Regenerate (which takes the turn back out of the
        # session) cannot write a late piece into the next one
        mine.update({i: hists[i] for i in idx})
        sess.turns += 1
        sess.streaming = turn = sess.turns
        for i in idx:
            clock.spawn(functools.partial(self.work, i))
        # the question goes to the page with the first pieces of the answers, or after
        # FIRST_FRAME_WAIT with those that came by then: one update, not two, where the backends
        # answer at once (the page takes longest over an update that adds messages)
        show_by = clock.now() + self.first_frame_wait
        every = self.yield_every + self.yield_per_message * sum(len(hists[i]) - past[i] for i in idx)
        changed = False  # since the last update
        pending = set(idx)
        waiting = set(idx)  # no first piece yet
        deadlines = dict.fromkeys(idx, clock.now() + self.first_byte)
        last = 0.0
        try:
            while pending:
                for i in [i for i in pending if hists[i] is not mine[i]]:
                    # the pane's conversation was replaced: emptied by Clear or by its own clear
                    # button, or its turn taken back by Regenerate. Its answer stops there and
                    # leaves no record; the other panes go on (a turn taken back by Regenerate has
                    # had every pane replaced, so it ends here)
                    self.abandoned.add(i)
                    pending.discard(i)
                    waiting.discard(i)
                if sess.stop == turn:
                    # Stop: the panes keep what they show; an answer stopped while it streamed
                    # leaves no record
                    self.abandoned.update(pending)
                    pending.clear()
                if not pending:
                    break
                if not self.asked and (not waiting or clock.now() >= show_by):
                    last = clock.now()
                    yield self.frame()
                    changed = False
                    continue
                late = [i for i in waiting if clock.now() > deadlines[i]]
                if late:
                    for i in late:  # given up on; the others keep streaming
                        self.abandoned.add(i)
                        pending.discard(i)
                        mine[i][-1] = {"role": "assistant", "content": "⚠ error: no answer within "
                                       f"REQUEST_TIMEOUT_FAST ({self.first_byte:g} s)"}
                        self.record(i)
                        changed = True
                    waiting.difference_update(late)
                    yield self.frame()
                    changed = False
                    continue
                try:
                    got = [clock.get(self.events, POLL if self.asked else max(0.0, show_by - clock.now()))]
                except queue.Empty:
                    continue
                while True:  # everything already queued, then one update
                    try:
                        got.append(self.events.get_nowait())
                    except queue.Empty:
                        break
                started = False  # a pane's first piece is in this batch
                for i, kind, value in got:
                    if i not in pending:  # a pane already given up on
                        continue
                    changed = True
                    if kind in ("notice", "held"):
                        # a model starting: no deadline while it does, REQUEST_TIMEOUT_FAST again once it is up
                        deadlines[i] = float("inf") if kind == "notice" else clock.now() + self.first_byte
                        if kind == "notice":
                            started = True  # shown at once
                            self.noticed.add(i)
                            mine[i][-1] = {"role": "assistant", "content": value}
                        continue
                    started |= i in waiting
                    waiting.discard(i)
                    if i in self.noticed:  # the notice gives way to the answer (or its error)
                        self.noticed.discard(i)
                        mine[i][-1] = {"role": "assistant", "content": ""}
                    if kind == "piece":
                        mine[i][-1] = {"role": "assistant", "content": mine[i][-1]["content"] + value}
                    elif kind == "error":
                        text = mine[i][-1]["content"]
                        mine[i][-1] = {"role": "assistant", "content": (text + "\n\n" if text else "")
                                       + f"⚠ error: {value}"}
                        pending.discard(i)
                        self.record(i)
                    else:
                        self.stats[i] = sess.stats[i] = value
                        pending.discard(i)
                        self.record(i)
                now = clock.now()
                # a first piece goes to the page at once; later ones at most every `every`
                if changed and self.asked and (started or now - last >= every or not pending):
                    last = now
                    yield self.frame()
                    changed = False
        finally:
            self.stopping.set()
        if sess.streaming == turn:
            sess.streaming = None
        else:  # taken back by Regenerate or Clear: the input box is theirs (the question Regenerate
            self.asked = True  # put back), even where this turn never cleared it
        yield self.frame(done=True)
