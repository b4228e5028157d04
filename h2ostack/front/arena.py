"""The Arena tab of the built-in front: each question goes to two of the front's models, shown as
"Model A" and "Model B" in random order, streaming side by side; a vote (A better, B better, tie,
both bad) reveals their names and goes to the stack's vote store; a Leaderboard tab shows the
ratings. Questions within a battle continue its conversation; Regenerate asks the last one again;
New battle draws another pair (favouring pairs with few votes). A page can be linked: `?tab=arena`
opens it on the Arena, `?pair=x,y` makes its first battle one between those two models.

Scripts and LLM judges use Gradio's API: `/arena_new`, `/arena_ask` (a question; both answers),
`/arena_vote` (a, b, tie or bothbad; the names) and `/arena_leaderboard` (JSON), in one client
session (gradio_client keeps the page's state between its calls).
"""

from __future__ import annotations

import functools
import json
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from h2ostack.front.arena_core import (
    VOTE_LABELS,
    VOTES,
    Side,
    Vote,
    VoteStore,
    leaderboard,
    leaderboard_markdown,
    sample_pair,
    stream_pair,
)
from h2ostack.front.clients import Pane, stream_answer
from h2ostack.front.turn import HoldFn

MAX_NEW_TOKENS = 256
TEMPERATURE = 0.0
YIELD_EVERY = 0.05  # seconds: the answers' updates are gathered this long
BOOTSTRAP_ROUNDS = 200


@dataclass
class Arena:
    """What every page of one front shares: its models, the vote store, the pair sampler."""

    backends: list[Pane]
    store: VoteStore
    front: str = ""
    rng: random.Random = field(default_factory=random.Random)
    hold: HoldFn | None = None  # on-demand models: started first and held up while a side streams

    def backend(self, name: str) -> Pane:
        return next(b for b in self.backends if b.name == name)

    def held(self, name: str, answer: Callable[[], Iterator[str]], given_up: Callable[[], bool]
             ) -> Callable[[], Iterator[str]]:
        """`answer`, preceded by holding `name` up (an on-demand model is started first; its start
        failing ends the side with the reason) and released when the answer ends."""
        if self.hold is None:
            return answer

        def run() -> Iterator[str]:
            assert self.hold is not None
            release = self.hold(name, lambda _: None, given_up)
            try:
                yield from answer()
            finally:
                release()
        return run


@dataclass
class Battle:
    """A page's battle: the two models (a on side A), the exchanges so far, the vote once cast."""

    a: str
    b: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    turns: list[dict[str, str]] = field(default_factory=list)  # prompt, answer_a, answer_b
    timings: dict[str, Any] = field(default_factory=dict)  # the last turn's, per side
    voted: str | None = None
    asking: int = 0  # the turn now streaming (its serial number), 0 when none
    serial: int = 0
    question: str = ""  # the question of the turn streaming now


def new_battle(arena: Arena) -> Battle:
    a, b = sample_pair([x.name for x in arena.backends], arena.rng, arena.store.pair_counts(arena.front))
    return Battle(a, b)


def chats(battle: Battle | None, live: tuple[str, str, str] | None = None) -> tuple[list[Any], list[Any]]:
    """The two chatbots' messages: the battle's exchanges, and the one streaming now."""
    out: tuple[list[Any], list[Any]] = ([], [])
    turns = list(battle.turns if battle else [])
    if live:
        turns.append({"prompt": live[0], "answer_a": live[1], "answer_b": live[2]})
    for t in turns:
        for side, msgs in zip(("answer_a", "answer_b"), out, strict=True):
            msgs += [{"role": "user", "content": t["prompt"]}, {"role": "assistant", "content": t[side]}]
    return out


def reveal_text(battle: Battle | None) -> str:
    if battle is not None and battle.voted is None and battle.asking:
        return "Model A and Model B are answering…"
    if battle is not None and battle.voted is None and battle.turns:
        return "Which answer is better? Vote to see which models they were, or ask on."
    if battle is None or battle.voted is None:
        return "Two anonymous models answer; vote to see which they were."
    return (f"**{VOTE_LABELS[battle.voted]}.** Model A was **{battle.a}**, Model B was **{battle.b}**. "
            "Ask again for a new battle.")


def side_text(side: Side) -> str:
    return side.text + (("\n\n" if side.text else "") + f"⚠ error: {side.error}" if side.error else "")


def ask(arena: Arena, message: str, battle: Battle | None) -> Iterator[list[Any]]:
    """A question to both models of the battle (a new battle when there is none, or it was voted
    on), their answers streaming side by side."""
    message = (message or "").strip()
    if not message:
        a, b = chats(battle)
        yield ["", a, b, reveal_text(battle), battle]
        return
    if battle is None or battle.voted is not None:
        battle = new_battle(arena)
    history = [(t["prompt"], t["answer_a"]) for t in battle.turns], [(t["prompt"], t["answer_b"])
                                                                     for t in battle.turns]
    battle.serial += 1
    battle.asking = turn = battle.serial  # a turn still streaming sees this and stops
    streams = [arena.held(name, functools.partial(stream_answer, arena.backend(name), hist, message, MAX_NEW_TOKENS,
                                                  TEMPERATURE), lambda: battle.asking != turn)
               for name, hist in zip((battle.a, battle.b), history, strict=True)]
    battle.question = message
    a, b = chats(battle, (message, "", ""))
    yield ["", a, b, reveal_text(battle), battle]
    sides = [Side(), Side()]
    for sides in stream_pair(streams, YIELD_EVERY, stopped=lambda: battle.asking != turn):
        a, b = chats(battle, (message, side_text(sides[0]), side_text(sides[1])))
        yield [gr.skip(), a, b, gr.skip(), gr.skip()]
    if battle.asking != turn:  # replaced (New battle, Regenerate): this turn leaves nothing
        return
    battle.asking = 0
    battle.turns.append({"prompt": message, "answer_a": side_text(sides[0]), "answer_b": side_text(sides[1])})
    battle.timings = {"a": sides[0].timings(), "b": sides[1].timings()}
    a, b = chats(battle)
    yield [gr.skip(), a, b, reveal_text(battle), battle]


def regenerate(arena: Arena, battle: Battle | None) -> Iterator[list[Any]]:
    """The last question asked again of the same two models (before the vote)."""
    if battle is None or battle.voted is not None or not (battle.turns or battle.asking):
        a, b = chats(battle)
        yield [gr.skip(), a, b, reveal_text(battle), battle]
        return
    question = battle.question if battle.asking else battle.turns.pop()["prompt"]
    yield from ask(arena, question, battle)


def start(arena: Arena, battle: Battle | None) -> list[Any]:
    """New battle: another pair, empty panes (a turn still streaming stops)."""
    if battle is not None:
        battle.asking = 0
    fresh = new_battle(arena)
    return ["", [], [], reveal_text(fresh), fresh]


def vote(arena: Arena, kind: str, battle: Battle | None) -> list[Any]:
    """The vote goes to the store (one transaction) and the names are revealed."""
    if kind not in VOTES:
        return [f"⚠ unknown vote {kind!r}; one of {', '.join(VOTES)}", gr.skip(), battle]
    if battle is None or not battle.turns or battle.asking:
        return ["⚠ ask a question first, and let both answers finish", gr.skip(), battle]
    if battle.voted is not None:
        return [reveal_text(battle) + " (already voted)", gr.skip(), battle]
    last = battle.turns[-1]
    arena.store.add(Vote(battle.a, battle.b, kind, last["prompt"], last["answer_a"], last["answer_b"],
                         turns=list(battle.turns), timings=battle.timings, front=arena.front, battle=battle.id))
    battle.voted = kind
    return [reveal_text(battle), board_markdown(arena), battle]


def linked(arena: Arena, query: dict[str, str], battle: Battle | None) -> Battle | None:
    """A page opened with `?pair=x,y` battles those two models first (in random sides)."""
    names = [b.name for b in arena.backends]
    pair = list(dict.fromkeys(x for x in (query.get("pair") or "").split(",") if x in names))
    if len(pair) != 2:
        return battle
    a, b = pair if arena.rng.random() < 0.5 else pair[::-1]
    return Battle(a, b)


# `?tab=arena` (or leaderboard, compare): the page opens on that tab
OPEN_TAB_JS = """() => { const t = (new URL(location).searchParams.get('tab') || '').toLowerCase();
  const b = t && [...document.querySelectorAll('button[role=tab]')].find(x => x.textContent.trim().toLowerCase() === t);
  if (b) b.click(); }"""


def board_markdown(arena: Arena) -> str:
    return leaderboard_markdown(leaderboard(arena.store.votes(arena.front), rounds=BOOTSTRAP_ROUNDS))


def board_json(arena: Arena) -> str:
    return json.dumps(leaderboard(arena.store.votes(arena.front), rounds=BOOTSTRAP_ROUNDS).to_json())


def build_tabs(arena: Arena, demo: gr.Blocks) -> None:
    """The Arena and Leaderboard tabs, inside the front's Blocks (`demo`, for its load events)."""
    battle = gr.State(None)
    with gr.Tab("Arena", id="arena", elem_id="arena-tab"):
        reveal = gr.Markdown(reveal_text(None), elem_id="arena-reveal")
        with gr.Row(equal_height=False):
            bot_a = gr.Chatbot(label="Model A", elem_id="arena-a", height=380, buttons=["copy"])
            bot_b = gr.Chatbot(label="Model B", elem_id="arena-b", height=380, buttons=["copy"])
        with gr.Row():
            votes = {kind: gr.Button(label, elem_id=f"arena-vote-{kind}") for kind, label in
                     (("a", "👈 A is better"), ("b", "👉 B is better"), ("tie", "🤝 Tie"),
                      ("bothbad", "👎 Both are bad"))}
        with gr.Row():
            box = gr.Textbox(placeholder="Ask both models", show_label=False, scale=6, elem_id="arena-input")
            send = gr.Button("Submit", variant="primary", scale=1, elem_id="arena-submit")
            regen = gr.Button("Regenerate", scale=1, elem_id="arena-regen")
            fresh = gr.Button("New battle", scale=1, elem_id="arena-new")
        # the vote API: a script names its vote (a, b, tie, bothbad)
        api_kind = gr.Textbox(visible=False)
        api_vote = gr.Button(visible=False)
    with gr.Tab("Leaderboard", id="leaderboard", elem_id="leaderboard-tab") as board_tab:
        board = gr.Markdown(elem_id="arena-board")
        refresh = gr.Button("Refresh", elem_id="arena-board-refresh")

    outputs = [box, bot_a, bot_b, reveal, battle]
    streaming = {"concurrency_limit": None, "show_progress_on": [box], "show_progress": "hidden"}
    send.click(functools.partial(ask, arena), [box, battle], outputs, api_name="arena_ask", **streaming)
    box.submit(functools.partial(ask, arena), [box, battle], outputs, api_visibility="private", **streaming)
    regen.click(functools.partial(regenerate, arena), [battle], outputs, api_name="arena_regenerate", **streaming)
    fresh.click(functools.partial(start, arena), [battle], outputs, api_name="arena_new", show_progress="hidden")
    for kind, button in votes.items():
        button.click(functools.partial(vote, arena, kind), [battle], [reveal, board, battle],
                     api_visibility="private", show_progress="hidden")
    api_vote.click(functools.partial(vote, arena), [api_kind, battle], [reveal, board, battle],
                   api_name="arena_vote")
    for trigger in (refresh.click, board_tab.select):
        trigger(functools.partial(board_markdown, arena), None, [board], api_visibility="private")

    def arena_leaderboard() -> str:
        """The leaderboard as JSON: ratings with 95% intervals, votes, win rates, side bias."""
        return board_json(arena)

    gr.api(arena_leaderboard, api_name="arena_leaderboard")

    def page_loaded(request: gr.Request, current: Battle | None) -> Battle | None:
        return linked(arena, dict(request.query_params) if request else {}, current)

    demo.load(page_loaded, [battle], [battle], api_visibility="private", show_progress="hidden")
    demo.load(None, None, None, js=OPEN_TAB_JS, api_visibility="private", show_progress="hidden")
