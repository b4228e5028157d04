"""A question's `Turn` on its own: no Gradio, a fake clock, fake answer streams."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from h2ostack.front.clients import Backend
from h2ostack.front.session import Session
from h2ostack.front.turn import FIRST_FRAME_WAIT, Frame, Turn
from tests.unit.front_clock import FakeClock


def test_the_turn_and_the_session_import_no_gradio() -> None:
    code = ("import sys, h2ostack.front.turn, h2ostack.front.session; "
            "print(sorted(m for m in ('gradio', 'openai', 'httpx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_turn_yields_its_frames_and_updates_the_session_in_place() -> None:
    clock = FakeClock(start=50.0)
    bs = [Backend("a", "vllm", "openai", "http://127.0.0.1:9", "a"),
          Backend("b", "tgi", "tgi", "http://127.0.0.1:9", "b")]
    sess = Session.fresh(bs, extra=1)
    sess.chats[0] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]
    sess.past[0] = 2
    asked: list[tuple[str, Any, str]] = []

    def stream(b: Backend, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
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
