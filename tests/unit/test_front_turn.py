"""A question's `Turn` on its own: no Gradio, a fake clock, fake answer streams."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from h2ostack.front.clients import Pane
from h2ostack.front.session import Session
from h2ostack.front.turn import FIRST_FRAME_WAIT, Frame, Turn
from h2ostack.protocols.endpoint import Endpoint
from tests.unit.front_clock import FakeClock


def test_the_turn_and_the_session_import_no_gradio() -> None:
    code = ("import sys, h2ostack.front.turn, h2ostack.front.session; "
            "print(sorted(m for m in ('gradio', 'openai', 'httpx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_turn_yields_its_frames_and_updates_the_session_in_place() -> None:
    clock = FakeClock(start=50.0)
    bs = [Pane(Endpoint("a", "openai", "http://127.0.0.1:9", "a", "vllm")),
          Pane(Endpoint("b", "tgi", "http://127.0.0.1:9", "b", "tgi"))]
    sess = Session.fresh(bs, extra=1)
    sess.chats[0] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]
    sess.past[0] = 2
    asked: list[tuple[str, Any, str]] = []

    def stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        asked.append((b.name, history, message))
        clock.sleep(0.01)
        yield "x"
        clock.sleep(1.0)
        yield "y"

    frames = [(clock.now(), f) for f in Turn(sess, "hi", [0], stream, clock, first_byte=10).frames()]
    assert asked == [("a", [("q", "r")], "hi")]  # pane a alone, with its conversation so far
    assert all(isinstance(f, Frame) for _, f in frames)
    (t1, first), (t2, second), (t3, last) = frames
    assert (t1, first.box, first.panes[0], first.done) == (
        pytest.approx(50.01), "", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], False)
    assert first.panes[1:] == [[], []]  # pane b not asked, the free pane empty
    assert (t2, second.box, second.panes[0][-1]["content"]) == (pytest.approx(51.01), None, "xy")
    assert (t3, last.done, last.box) == (pytest.approx(51.01), True, None)
    assert sess.chats[0][-1] == {"role": "assistant", "content": "xy"} and sess.past[0] == 2
    assert sess.turns == 1 and sess.streaming is None
    assert [r["model"] for r in sess.log] == ["a"] and sess.stats[0]["tokens"] == 2
    assert FIRST_FRAME_WAIT > 0.01  # (the question went with the first piece)


def _answer(clock: FakeClock) -> Any:
    def stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        clock.sleep(0.5)
        yield "x"
        clock.sleep(1.0)
        yield "y"
    return stream


def test_a_pane_of_an_on_demand_model_says_it_starts_waits_past_the_first_byte_bound_then_streams() -> None:
    clock = FakeClock()
    bs = [Pane(Endpoint("a", "openai", "http://127.0.0.1:9", "a", "vllm")),
          Pane(Endpoint("b", "openai", "http://127.0.0.1:9", "b", "vllm"))]
    sess = Session.fresh(bs, extra=0)
    held: list[str] = []

    def hold(name: str, tell: Any, given_up: Any) -> Any:
        if name == "a":  # `b` is up: straight through
            tell("starting a…")
            clock.sleep(30)  # a start far longer than the first-byte bound (10 s)
        held.append(f"hold {name}")
        return lambda: held.append(f"release {name}")

    frames = [(clock.now(), f) for f in Turn(sess, "hi", [0, 1], _answer(clock), clock, first_byte=10,
                                             hold=hold).frames()]
    shown = [(t, f.panes[0][-1]["content"]) for t, f in frames]
    assert shown[0] == (pytest.approx(FIRST_FRAME_WAIT), "starting a…")  # with the question
    assert all(c == "starting a…" for t, c in shown if t < 30)
    assert not any("no answer within" in c for _, c in shown)
    assert shown[-1] == (pytest.approx(31.5), "xy") and frames[-1][1].panes[1][-1]["content"] == "xy"
    assert sorted(held) == ["hold a", "hold b", "release a", "release b"]  # each released as its answer ended
    assert sess.stats[0]["ttft"] == pytest.approx(0.5)  # timed from the model being up


def test_an_on_demand_model_that_cannot_be_had_shows_why_in_its_pane() -> None:
    clock = FakeClock()
    bs = [Pane(Endpoint("a", "openai", "http://127.0.0.1:9", "a", "vllm"))]
    sess = Session.fresh(bs, extra=0)
    asked: list[str] = []

    def hold(name: str, tell: Any, given_up: Any) -> Any:
        tell("starting a…")
        clock.sleep(5)
        raise RuntimeError("model a could not be started: exited while starting (503, retry after 10 s)")

    def stream(b: Pane, *_: Any) -> Any:
        asked.append(b.name)
        yield "never"

    last = list(Turn(sess, "hi", [0], stream, clock, first_byte=10, hold=hold).frames())[-1]
    assert last.panes[0][-1]["content"] == ("⚠ error: RuntimeError: model a could not be started: exited while "
                                            "starting (503, retry after 10 s)")
    assert asked == [] and [r["model"] for r in sess.log] == ["a"]


def test_a_stopped_pane_releases_its_model_and_the_start_it_waited_for() -> None:
    clock = FakeClock()
    bs = [Pane(Endpoint("a", "openai", "http://127.0.0.1:9", "a", "vllm")),
          Pane(Endpoint("b", "openai", "http://127.0.0.1:9", "b", "vllm"))]
    sess = Session.fresh(bs, extra=0)
    held: list[str] = []

    def hold(name: str, tell: Any, given_up: Any) -> Any:
        if name == "b":  # still starting when Stop comes: it gives up as it sees the turn stopped
            tell("starting b…")
            while not given_up():
                clock.sleep(0.1)
            held.append("gave up b")
            raise RuntimeError("gave up waiting for model b")
        return lambda: held.append(f"release {name}")

    def stream(b: Pane, *_: Any) -> Any:
        for k in range(100):
            clock.sleep(1.0)
            yield f"{k} "

    frames = Turn(sess, "hi", [0, 1], stream, clock, first_byte=10, hold=hold).frames()
    for f in frames:
        if f.panes[0][-1]["content"].startswith("0 1 2"):
            sess.stop = sess.streaming
    with clock.cond:  # the streams' threads see the stop at their next piece
        clock.advance(clock.now() + 2)
    clock.settle()
    assert sorted(held) == ["gave up b", "release a"]
    assert sess.log == []  # stopped answers leave no record
