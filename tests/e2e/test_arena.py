"""The Arena in headless Chromium over real servers (the tiny model under `transformers serve`, the
TGI stand-in): a battle streams two anonymous answers, a vote reveals the names and reaches the
leaderboard, and two pages voting at once lose no vote."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import H2O, free_port, marked_processes, tgi_standin
from tests.e2e.test_browser import ARGS, CHROMIUM

NAMES = ("tiny", "tgi")


class ArenaStack:
    def __init__(self, h2o: H2O, path: Path, url: str):
        self.h2o, self.path, self.url = h2o, path, url

    def votes(self) -> dict[str, Any]:
        out = self.h2o("arena", str(self.path), "--json", timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


@pytest.fixture(scope="module")
def arena_stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ArenaStack]:
    base = tmp_path_factory.mktemp("arena")
    runner = H2O(base / "state", base)
    ports = {k: free_port() for k in ("tiny", "tgi", "chat")}
    path = base / "arena.yaml"
    path.write_text(f"""\
version: 1
name: arenastack
services:
  tiny: {{kind: transformers, model: {tiny_model}, port: {ports['tiny']}}}
  tgi: {tgi_standin(ports['tgi'], "0.05")}
fronts:
  chat:
    port: {ports['chat']}
    models: [tiny, tgi]
    arena: true
""")
    up = runner("up", str(path), timeout=900)
    assert up.returncode == 0, up.stderr[-4000:]
    yield ArenaStack(runner, path, f"http://127.0.0.1:{ports['chat']}")
    runner("kill", "--all", timeout=120)
    assert marked_processes(runner.state_dir) == []


def open_arena(browser: Any, url: str) -> Any:
    """A page of its own (its own context: its own Gradio session) on the Arena tab."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(url + "/")
    page.get_by_role("tab", name="Arena").click()
    page.wait_for_selector("#arena-input textarea", timeout=60_000)
    return page


def ask(page: Any, question: str) -> None:
    page.fill("#arena-input textarea", question)
    page.click("#arena-submit")


def answered(page: Any) -> None:
    page.wait_for_function("document.querySelector('#arena-reveal').innerText.includes('Which answer is better')",
                           timeout=120_000)


def answer_text(page: Any, side: str) -> str:
    return str(page.evaluate(f"[...document.querySelectorAll('#arena-{side} [data-testid=\"bot\"]')]"
                             ".map(e => e.textContent).join(' ')"))


def test_battle_streams_two_anonymous_answers_and_a_vote_reveals_them(arena_stack: ArenaStack) -> None:
    assert os.path.exists(CHROMIUM), "scripts/browser.sh installs Chromium"
    before = arena_stack.votes()["votes"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        # a link opens the page on the Arena, its first battle between the two models named
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.goto(arena_stack.url + "/?tab=arena&pair=tgi,tiny")
        page.wait_for_selector("#arena-input textarea", state="visible", timeout=60_000)
        ask(page, "Hello there, who are you?")
        # both sides stream: the answers grow over several looks (the TGI stand-in sends a piece
        # every 50 ms), while the sides are named only Model A and Model B
        lengths = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(set(lengths)) < 3:
            lengths.append(len(answer_text(page, "a")) + len(answer_text(page, "b")))
            page.wait_for_timeout(100)
        assert len(set(lengths)) >= 3, f"no streaming seen: {lengths}"
        answered(page)
        a, b = answer_text(page, "a"), answer_text(page, "b")
        assert a.strip() and b.strip() and a != b, (a, b)
        assert "Hello from the stand-in" in a + b
        labels = page.inner_text("#arena-a") + page.inner_text("#arena-b")
        assert "Model A" in labels and "Model B" in labels
        hidden = page.inner_text("#arena-reveal")
        assert not any(f"**{n}**" in hidden or n in hidden.split() for n in NAMES), hidden

        page.click("#arena-vote-a")
        page.wait_for_function("document.querySelector('#arena-reveal').innerText.includes('Model A was')",
                               timeout=30_000)
        shown = page.inner_text("#arena-reveal")
        side_a = "tgi" if "Hello from the stand-in" in a else "tiny"
        side_b = ({"tiny", "tgi"} - {side_a}).pop()
        assert f"Model A was {side_a}" in shown and f"Model B was {side_b}" in shown, shown

        # the leaderboard tab shows the vote, and so does the CLI, from the stack's state dir
        page.get_by_role("tab", name="Leaderboard").click()
        page.wait_for_function(f"document.querySelector('#arena-board').innerText.includes('{before + 1} vote')",
                               timeout=60_000)
        board = page.inner_text("#arena-board")
        assert side_a in board and side_b in board and "Model A won" in board
        browser.close()
    data = arena_stack.votes()
    assert data["votes"] == before + 1
    assert data["models"][0]["model"] == side_a or data["votes"] > 1
    assert (arena_stack.h2o.state_dir / "arenastack" / "arena.sqlite3").is_file()


def test_two_pages_voting_at_once_lose_no_vote(arena_stack: ArenaStack) -> None:
    before = arena_stack.votes()["votes"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pages = [open_arena(browser, arena_stack.url) for _ in range(2)]
        for k, page in enumerate(pages):
            ask(page, f"Question {k}: what is two plus two?")
        for page in pages:
            answered(page)
        # both votes sent before either is answered
        pages[0].click("#arena-vote-tie", no_wait_after=True)
        pages[1].click("#arena-vote-bothbad", no_wait_after=True)
        for page in pages:
            page.wait_for_function("document.querySelector('#arena-reveal').innerText.includes('Model A was')",
                                   timeout=30_000)
        browser.close()
    data = arena_stack.votes()
    assert data["votes"] == before + 2, data
    assert data["side_bias"]["ties"] >= 1 and data["side_bias"]["bothbad"] >= 1
    lines = [json.loads(x) for x in arena_stack.h2o("arena", str(arena_stack.path), "--jsonl").stdout.splitlines()]
    assert {r["prompt"] for r in lines[-2:]} == {"Question 0: what is two plus two?",
                                                 "Question 1: what is two plus two?"}
