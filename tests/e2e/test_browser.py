"""End to end in headless Chromium: a question typed once streams into every pane."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import FrontStack

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


# where a pane's first and last messages sit in its scroll box, in pixels from its top and bottom
SCROLL_BOX = """(i) => { const box = document.querySelector('#h2o-bot-' + i + ' .bubble-wrap');
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
