"""The Arena tab's handlers and its Gradio API, over fake answer streams (the real servers are the
browser test's), and both answers streaming at once on an injected clock."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from h2ostack.front import arena as arena_mod
from h2ostack.front.arena_core import VoteStore, stream_pair
from h2ostack.front.clients import Pane
from h2ostack.protocols.endpoint import Endpoint


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stream_pair_times_each_side_on_the_clock() -> None:
    clock = FakeClock()
    saw_first, a_ended = threading.Event(), threading.Event()

    def side_a() -> Iterator[str]:
        clock.now += 2  # the first piece after 2 s
        yield "he"
        saw_first.wait(30)
        clock.now += 3
        yield "llo"
        a_ended.set()

    def side_b() -> Iterator[str]:
        a_ended.wait(30)  # B answers once A is done, so only A moves the clock
        yield "x"
        raise ConnectionError("cut")

    frames = []
    for sides in stream_pair([side_a, side_b], every=10.0, clock=clock):
        frames.append(sides)
        saw_first.set()
    a, b = frames[-1]
    assert (a.text, a.ttft, a.seconds, a.tokens, a.error) == ("hello", 2.0, 5.0, 2, None)
    assert b.text == "x" and b.done and b.error == "ConnectionError: cut"
    # a first piece goes out at once; A's second piece, 3 s of the clock later (under `every`),
    # waits for B's first piece or the end
    assert frames[0][0].text == "he" and not frames[0][0].done
    assert [f[0].text for f in frames[1:]] == ["hello"] * (len(frames) - 1) and len(frames) <= 3


def test_stream_pair_stops_when_told() -> None:
    """Once `stopped()` says so, the turn ends and both streams are let go at their next piece."""
    stop = threading.Event()
    ended = [threading.Event(), threading.Event()]

    def endless(i: int) -> Iterator[str]:
        try:
            while True:
                yield "a"
                stop.wait(0.01)
        finally:
            ended[i].set()

    frames = 0
    for _ in stream_pair([lambda: endless(0), lambda: endless(1)], every=0.0, stopped=stop.is_set, poll=0.01):
        frames += 1
        stop.set()
    assert frames >= 1
    assert ended[0].wait(10) and ended[1].wait(10), "a stream went on after the turn was stopped"


def fake_stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Iterator[str]:
    yield f"{b.name} says "
    yield f"{message} after {len(history)}"


@pytest.fixture
def arena(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> arena_mod.Arena:
    monkeypatch.setattr(arena_mod, "stream_answer", fake_stream)
    backends = [Pane(Endpoint(n, "openai", "http://127.0.0.1:9", n, "vllm")) for n in ("x", "y", "z")]
    return arena_mod.Arena(backends, VoteStore(tmp_path / "arena.sqlite3"), "chat", random.Random(5))


def last(gen: Iterator[list[Any]]) -> list[Any]:
    out = None
    for out in gen:  # noqa: B007
        pass
    assert out is not None
    return out


def test_battle_multi_turn_regenerate_vote_and_reveal(arena: arena_mod.Arena) -> None:
    box, bot_a, bot_b, reveal, battle = last(arena_mod.ask(arena, "hi", None))
    assert battle.a != battle.b and {battle.a, battle.b} <= {"x", "y", "z"}
    assert battle.a not in reveal and battle.b not in reveal  # anonymous until the vote
    assert bot_a[-1]["content"] == f"{battle.a} says hi after 0"
    # the second question continues each side's own conversation
    _, bot_a, bot_b, _, same = last(arena_mod.ask(arena, "more", battle))
    assert same is battle and len(bot_a) == 4 and bot_b[-1]["content"] == f"{battle.b} says more after 1"
    # regenerate asks the last question again, in place
    _, bot_a, _, _, _ = last(arena_mod.regenerate(arena, battle))
    assert len(bot_a) == 4 and len(battle.turns) == 2 and battle.turns[-1]["prompt"] == "more"
    shown, board, battle = arena_mod.vote(arena, "b", battle)
    assert f"Model A was **{battle.a}**" in shown and f"Model B was **{battle.b}**" in shown
    assert battle.b in board and "1 vote(s)" in board
    (v,) = arena.store.votes()
    assert (v.model_a, v.model_b, v.vote, v.prompt, v.front, v.battle) == (battle.a, battle.b, "b", "more", "chat",
                                                                         battle.id)
    assert len(v.turns) == 2 and v.timings["a"]["tokens"] == 2
    # a second vote on the same battle counts once; the next question starts a new battle
    assert "already voted" in arena_mod.vote(arena, "a", battle)[0]
    assert arena.store.count() == 1
    *_, nxt = last(arena_mod.ask(arena, "again", battle))
    assert nxt is not battle and len(nxt.turns) == 1


def test_votes_refused_before_an_answer_or_unknown(arena: arena_mod.Arena) -> None:
    assert "ask a question first" in arena_mod.vote(arena, "a", None)[0]
    *_, battle = arena_mod.start(arena, None)
    assert "ask a question first" in arena_mod.vote(arena, "tie", battle)[0]
    *_, battle = last(arena_mod.ask(arena, "q", battle))
    assert "unknown vote" in arena_mod.vote(arena, "maybe", battle)[0]
    assert arena.store.count() == 0
    empty = last(arena_mod.ask(arena, "   ", battle))
    assert empty[-1] is battle and len(battle.turns) == 1


def test_gradio_api_battle_and_vote(arena: arena_mod.Arena) -> None:
    """A script (or an LLM judge) battles and votes through Gradio's API, in one client session."""
    import gradio as gr
    from gradio_client import Client

    from h2ostack.front.app import build_blocks

    demo = build_blocks(arena.backends, None, None, arena=arena)
    assert isinstance(demo, gr.Blocks)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    try:
        client = Client(url, verbose=False)
        names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
        assert {"/arena_ask", "/arena_vote", "/arena_new", "/arena_leaderboard", "/arena_regenerate"} <= names
        for verdict in ("a", "tie"):
            client.predict(api_name="/arena_new")
            _, bot_a, bot_b, _ = client.predict("who are you?", api_name="/arena_ask")
            assert "says who are you? after 0" in json.dumps(bot_a[-1]["content"])
            shown, board = client.predict(verdict, api_name="/arena_vote")
            assert "Model A was" in shown
        board = json.loads(client.predict(api_name="/arena_leaderboard"))
        assert board["votes"] == 2 and board["side_bias"]["a_wins"] == 1 and board["side_bias"]["ties"] == 1
        assert arena.store.count() == 2
    finally:
        demo.close()


def test_a_link_names_the_first_battles_pair(arena: arena_mod.Arena) -> None:
    sides = set()
    for _ in range(40):
        battle = arena_mod.linked(arena, {"pair": "z,x"}, None)
        assert battle is not None and {battle.a, battle.b} == {"x", "z"}
        sides.add(battle.a)
    assert sides == {"x", "z"}  # still in random sides
    kept = arena_mod.Battle("x", "y")
    for bad in ({}, {"pair": "x"}, {"pair": "x,x"}, {"pair": "x,nope"}, {"pair": "../x,y\n"}):
        assert arena_mod.linked(arena, bad, kept) is kept


def test_a_battles_on_demand_models_are_held_up_while_they_answer(arena: arena_mod.Arena) -> None:
    """Each side holds its model (an on-demand one is started first) before it streams and lets go
    when its answer ends; a side whose model cannot be had says why and the other side answers."""
    events: list[tuple[str, str]] = []

    def hold(name: str, tell: Any, given_up: Any) -> Any:
        events.append(("hold", name))
        if name == "z":
            raise RuntimeError("z could not start: out of memory")
        return lambda: events.append(("release", name))

    arena.hold = hold
    arena.backends = arena.backends[:2]  # x and y
    _, bot_a, bot_b, _, battle = last(arena_mod.ask(arena, "hi", None))
    assert sorted(events) == [("hold", "x"), ("hold", "y"), ("release", "x"), ("release", "y")]
    assert bot_a[-1]["content"] == f"{battle.a} says hi after 0"
    events.clear()
    arena.backends = [arena.backend("x"), arena_mod.Pane(Endpoint("z", "openai", "http://127.0.0.1:9", "z", "vllm"))]
    _, bot_a, bot_b, _, battle = last(arena_mod.ask(arena, "hi", None))
    told = {battle.a: bot_a[-1]["content"], battle.b: bot_b[-1]["content"]}
    assert "z could not start" in told["z"] and told["x"] == "x says hi after 0"
    assert ("release", "x") in events and ("release", "z") not in events
