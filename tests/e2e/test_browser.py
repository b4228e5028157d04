"""End to end in headless Chromium: a question typed once streams into every pane."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import H2O, FrontStack, cpu_vllm, free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


# where a pane's first and last messages sit in its scroll box (which holds its finished turns and
# the turn in progress), in pixels from its top and bottom
SCROLL_BOX = """(i) => { const box = document.querySelector('#h2o-bot-' + i);
  const msgs = box.querySelectorAll('[data-testid="user"], [data-testid="bot"]');
  const b = box.getBoundingClientRect();
  return {overflow: box.scrollHeight > box.clientHeight + 1, n: msgs.length,
          first_top: msgs[0].getBoundingClientRect().top - b.top,
          last_bottom: msgs[msgs.length - 1].getBoundingClientRect().bottom - b.bottom}; }"""


def test_question_streams_into_panes_of_three_kinds(front_stack: FrontStack, tmp_path: Path) -> None:
    assert os.path.exists(CHROMIUM), "scripts/browser.sh installs Chromium"
    shot = Path(os.environ.get("H2OSTACK_SCREENSHOT_DIR", tmp_path)) / "front-e2e.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(front_stack.front_url + "/?models=tiny,tgi,vllm,down")
        page.wait_for_selector("#h2o-input textarea", timeout=60_000)
        page.wait_for_function("document.querySelector('#h2o-head-1').innerText.includes('healthy')",
                               timeout=60_000)
        page.fill("#h2o-input textarea", "Hello there, who are you?")
        page.click("#h2o-submit")

        def text(i: int) -> str:
            return page.inner_text(f"#h2o-bot-{i}")

        # the TGI pane streams: its text grows over several looks while the answer arrives
        lengths = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(set(lengths)) < 3:
            lengths.append(len(text(1)))
            time.sleep(0.15)
        assert len(set(lengths)) >= 3, f"no streaming seen in the TGI pane: {lengths}"

        page.wait_for_function("document.querySelector('#h2o-head-1').innerText.includes('tok/s')", timeout=60_000)
        page.wait_for_function("document.querySelector('#h2o-head-2').innerText.includes('ttft')", timeout=120_000)
        page.wait_for_function("document.querySelector('#h2o-head-0').innerText.includes('ttft')", timeout=120_000)
        page.wait_for_function("document.querySelector('#h2o-bot-3').innerText.includes('error')", timeout=60_000)
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")

        question = "Hello there, who are you?"
        for i, kind in ((0, "transformers"), (1, "tgi"), (2, "vllm")):
            body = text(i)
            assert question in body and len(body) > len(question) + 3, (kind, body)
            assert kind in page.inner_text(f"#h2o-head-{i}")
        assert "Hello from the stand-in" in text(1)

        # each pane shows the end of its answer (by CSS: the chat's scroll box lays out from the
        # bottom), and a conversation shorter than its pane starts at the pane's top
        overflowed = 0
        for i in (0, 1, 2):
            box = page.evaluate(SCROLL_BOX, i)
            assert box["last_bottom"] <= 1, (i, box)  # the answer's last line is in view
            if box["overflow"]:
                overflowed += 1
            else:
                assert box["first_top"] < 80, (i, box)
        assert overflowed, "no answer outgrew its pane: the end-of-answer check saw nothing to scroll"
        assert "unavailable" in page.inner_text("#h2o-head-3") or "error" in text(3)

        # hiding a model hides its pane and is kept in the URL
        page.click("#h2o-shown label:has-text('down')")
        page.wait_for_function("!new URL(location).searchParams.get('models').includes('down')", timeout=10_000)
        assert not page.is_visible("#h2o-pane-3")
        browser.close()
    assert shot.stat().st_size > 10_000


@pytest.mark.parametrize("models", ["tgi,tiny"])
def test_shared_url_shows_only_those_models(front_stack: FrontStack, models: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(front_stack.front_url + f"/?models={models}")
        page.wait_for_selector("#h2o-input textarea", timeout=60_000)
        page.wait_for_timeout(1500)
        assert page.is_visible("#h2o-pane-0") and page.is_visible("#h2o-pane-1")
        assert not page.is_visible("#h2o-pane-2") and not page.is_visible("#h2o-pane-3")
        browser.close()


def test_a_real_model_answers_a_real_question(h2o: H2O, write_stack: Any, small_model: Path,
                                              vllm_python: str) -> None:
    """The demo's model, served by `transformers serve` and by the CPU vLLM, asked in the page."""
    ports = {k: free_port() for k in ("hf", "vllm", "chat")}
    vllm = cpu_vllm(vllm_python, small_model, ports["vllm"]).replace("tiny-vllm", "small-vllm").replace(
        "max_model_len: 256", "max_model_len: 1024")
    path = write_stack(f"""\
version: 1
name: realanswer
services:
  small: {{kind: transformers, model: {small_model}, port: {ports['hf']}}}
  vllm: {vllm}
fronts:
  chat: {{port: {ports['chat']}, models: [small, vllm], columns: 2}}
""")
    up = h2o("up", str(path), timeout=900)
    assert up.returncode == 0, up.stderr[-4000:]
    question = "What is the capital of France?"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"http://127.0.0.1:{ports['chat']}/")
        page.wait_for_selector("#h2o-input textarea", timeout=60_000)
        for i in (0, 1):
            page.wait_for_function(f"document.querySelector('#h2o-head-{i}').innerText.includes('healthy')",
                                   timeout=60_000)
        page.fill("#h2o-input textarea", question)
        page.click("#h2o-submit")
        for i in (0, 1):  # each pane's answer has ended
            page.wait_for_function(f"document.querySelector('#h2o-head-{i}').innerText.includes('ttft')",
                                   timeout=180_000)
        answers = {}
        for i, kind in ((0, "transformers"), (1, "vllm")):
            body = page.inner_text(f"#h2o-bot-{i}")
            answers[kind] = body.split(question, 1)[-1].strip()
            assert kind in page.inner_text(f"#h2o-head-{i}")
        browser.close()
    for kind, answer in answers.items():
        assert "paris" in answer.lower(), (kind, answer)
    h2o("down", str(path), check=True, timeout=120)


def bot_count(page: Any, i: int) -> int:
    return int(page.evaluate(f"document.querySelectorAll('#h2o-bot-{i} [data-testid=\"bot\"]').length"))


def turn_records(page: Any, base: str, question: str, want: int, model: str | None = None
                 ) -> list[dict[str, Any]]:
    """The JSONL export's records of `question`, once `want` of them (of `model`'s, if given) are
    there (a pane's answer is recorded as it ends)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        page.click("text=Export conversations (JSONL)")
        href = page.wait_for_selector("a[download]", timeout=30_000).get_attribute("href") or ""
        text = page.request.get(href if href.startswith("http") else base + href).text()
        records = [r for r in map(json.loads, text.splitlines()) if r["prompt"] == question]
        if len([r for r in records if model in (None, r["model"])]) >= want:
            return records
        page.wait_for_timeout(500)
    raise AssertionError(f"no {want} records of {question!r} in the export")


def set_tokens(page: Any, i: int, n: int) -> None:
    """Pane i's max_new_tokens set to n through its settings, and the setting's event (not queued)
    answered by the server: it is in the page's session before the next question is asked."""
    if not page.is_visible(f"#h2o-tokens-{i}"):
        page.click(f"#h2o-pane-{i} >> text=settings")
    field = page.locator(f"#h2o-tokens-{i} input[type=number]")
    with page.expect_response(lambda r: "/run/predict" in r.url and r.request.post_data_json is not None
                              and r.request.post_data_json.get("data", [None])[0] == n,
                              timeout=30_000) as setting:
        for _ in range(5):  # typed again if the field was redrawn while it was typed into
            field.fill(str(n))
            if field.input_value() == str(n):
                break
        field.press("Enter")
    assert setting.value.ok, setting.value.status
    assert field.input_value() == str(n)


def test_pane_settings_regenerate_and_clear(front_stack: FrontStack) -> None:
    """The panes' conversations and settings live in the page's session on the server: a pane's
    own max_new_tokens reaches its backend, Regenerate replaces the last turn, Clear starts over.
    And the page's event stream stays open from one turn to the next."""
    base = front_stack.front_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        streams: list[str] = []  # the page's event streams, opened
        page.on("request", lambda r: streams.append(r.url) if "/queue/data" in r.url else None)
        page.goto(base + "/?models=tiny,vllm")
        page.wait_for_selector("#h2o-input textarea", timeout=60_000)
        page.wait_for_function("document.querySelector('#h2o-head-2').innerText.includes('healthy')",
                               timeout=60_000)
        # the page's load events have been applied (they hide the panes the URL leaves out, and
        # update every pane) before the page is used
        page.wait_for_selector("#h2o-pane-1", state="hidden", timeout=60_000)
        # the vLLM pane answers with at most 3 tokens, the transformers pane keeps the default
        set_tokens(page, 2, 3)

        def ask(question: str) -> list[dict[str, Any]]:
            page.fill("#h2o-input textarea", question)
            page.click("#h2o-submit")
            return turn_records(page, base, question, 2)

        first = {r["model"]: r for r in ask("Say something")}
        assert first["vllm"]["max_new_tokens"] == 3 and 1 <= first["vllm"]["tokens"] <= 3, first["vllm"]
        assert first["tiny"]["max_new_tokens"] == 256, first["tiny"]
        assert bot_count(page, 0) == 1 and bot_count(page, 2) == 1

        # Regenerate asks the last question again in place of its answers
        page.click("#h2o-regen")
        again = turn_records(page, base, "Say something", 4)
        assert len(again) == 4
        page.wait_for_timeout(500)
        assert bot_count(page, 0) == 1 and bot_count(page, 2) == 1
        assert "Say something" in page.inner_text("#h2o-bot-0")

        # Regenerate while a turn streams stops that turn and asks again, and again while the
        # turn asked again streams: the turn is replaced, and each pane shows, whole, the answer
        # the last turn recorded
        page.fill("#h2o-input textarea", "Tell me a long story")
        page.click("#h2o-submit")
        streams_now = ("(document.querySelector('#h2o-live-0 [data-testid=\"bot\"]')"
                       " ?.textContent.trim().length || 0) > 0")
        page.wait_for_function(streams_now, timeout=60_000)
        page.click("#h2o-regen")
        page.wait_for_timeout(300)  # the stopped turn's text has left the pane
        page.wait_for_function(streams_now, timeout=60_000)
        page.click("#h2o-regen")
        turn_records(page, base, "Tell me a long story", 1, model="tiny")  # the last turn's
        page.wait_for_function("[0, 2].every(i => document.querySelectorAll("  # ends and settles
                               "`#h2o-live-${i} [data-testid=\"bot\"]`).length == 0)", timeout=30_000)
        page.wait_for_timeout(500)
        records = turn_records(page, base, "Tell me a long story", 2)
        story = {r["model"]: r for r in records}  # each pane's last
        # the stopped turns' transformers answers (256 tokens) never ended, so they were stopped
        # while they streamed and left no record; the vLLM pane's 3 tokens may have ended first
        told = [r["model"] for r in records]
        assert told.count("tiny") == 1 and told.count("vllm") in (1, 2, 3), told
        for i, model in ((0, "tiny"), (2, "vllm")):
            assert bot_count(page, i) == 2, i  # "Say something" and the story, once
            shown = page.evaluate(f"[...document.querySelectorAll('#h2o-past-{i} [data-testid=\"bot\"]')]"
                                  ".at(-1).textContent")
            assert re.sub(r"\W+", "", shown)[-20:] == re.sub(r"\W+", "", story[model]["answer"])[-20:], (shown, story)
            assert page.evaluate(f"document.querySelectorAll('#h2o-live-{i} [data-testid=\"bot\"]').length") == 0

        # Stop while a turn streams: the transformers pane keeps the text it had, in its finished
        # turns, and its stopped answer leaves no record
        # (the transformers pane's answer may run to 2048 tokens, so that it still streams when Stop
        # comes, however busy the machine)
        set_tokens(page, 0, 2048)
        page.fill("#h2o-input textarea", "Tell me another story")
        page.click("#h2o-submit")
        page.wait_for_function(streams_now, timeout=60_000)
        page.click("#h2o-stop")
        page.wait_for_function("document.querySelectorAll('#h2o-past-0 [data-testid=\"bot\"]').length == 3",
                               timeout=30_000)
        last_bot = "[...document.querySelectorAll('#h2o-past-0 [data-testid=\"bot\"]')].at(-1).textContent"
        kept = page.evaluate(last_bot)
        page.wait_for_timeout(1500)
        assert kept.strip() and page.evaluate(last_bot) == kept
        assert page.evaluate("document.querySelectorAll('#h2o-live-0 [data-testid=\"bot\"]').length") == 0
        other = [r["model"] for r in turn_records(page, base, "Tell me another story", 0)]
        assert "tiny" not in other, other

        set_tokens(page, 0, 256)

        # Clear empties every pane, and the next turn starts a new conversation
        page.click("#h2o-clear")
        page.wait_for_function("document.querySelectorAll('#h2o-bot-0 [data-testid=\"bot\"]').length == 0",
                               timeout=30_000)
        ask("Hello again")
        page.wait_for_timeout(500)
        for i in (0, 2):
            assert bot_count(page, i) == 1, i
            assert "Say something" not in page.inner_text(f"#h2o-bot-{i}")
        # three turns, a clear and the exports, all over the stream the page opened as it loaded
        assert len(streams) == 1, streams
        browser.close()
