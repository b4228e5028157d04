"""Benchmark: a long conversation in the page. Four panes on the TGI stand-in (256 words per
answer, 100 words/s, so the tiny model's 512-token context does not end the conversation) are
asked TURNS questions (default 20) on one page; for each turn it prints the rate the page kept
against the rate the front received (the baseline, measured in the same run, from the front's
JSONL export), and the time from the front's first and last piece to the page.

Gradio's page renders every message of a chatbot again on each update of it, so each pane keeps
its finished turns in a chatbot the streamed updates do not touch; this shows whether the updates'
cost stays flat as the conversation grows. Target, as for bench/front_stream.py: the page keeps at least 90% of the
rate at every turn. The stand-in gets the first half of the cores; the front, Chromium and this
process the other half (bench/cores.py; BENCH_SHARED=1 leaves every process on every core).

Run: .venv/bin/python bench/front_long.py   (needs Chromium: scripts/browser.sh)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cores import pin  # bench/cores.py
from front_stream import ARGS, OBSERVE, clock_offset, free_port, seen  # bench/front_stream.py
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
TURNS = int(os.environ.get("TURNS", "20"))
PANES = 4


def answered(page: Any, turn: int) -> None:
    """Every pane has its answer to `turn` and none has changed for 1.5 s."""
    for i in range(PANES):
        page.wait_for_function(f"document.querySelectorAll('#h2o-bot-{i} [data-testid=\"bot\"]').length > {turn}",
                               timeout=120_000)
    while True:
        time.sleep(0.5)
        quiet = page.evaluate("(performance.timeOrigin + performance.now()) - Math.max("
                              "...Object.values(window.h2oMarks).map(m => m.length ? m[m.length - 1][0] : 0))")
        if quiet > 1500:
            return


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-front-long-"))
    tport, fport = free_port(), free_port()
    cores = sorted(os.sched_getaffinity(0))
    shared = os.environ.get("BENCH_SHARED") == "1" or len(cores) < 2
    standin = subprocess.Popen([sys.executable, str(ROOT / "tests" / "tgi_standin.py"), "--model-id", "m",
                                "--port", str(tport), "--max-total-tokens", "1000000"],
                               env={**os.environ, "STANDIN_TOKEN_DELAY": "0.01"}, stdout=subprocess.DEVNULL)
    if not shared:  # the stand-in on the first half; this process, and the front it starts, on the rest
        pin(standin.pid, set(cores[:len(cores) // 2]))
        os.sched_setaffinity(0, set(cores[len(cores) // 2:]))
    names = [f"p{i}" for i in range(PANES)]
    panes = "\n".join(f"  {m}: {{kind: tgi, url: 'http://127.0.0.1:{tport}', prompt_type: plain}}" for m in names)
    stack = tmp / "bench.yaml"
    stack.write_text(f"name: benchlong\nservices:\n{panes}\n"
                     f"fronts:\n  chat: {{port: {fport}, models: [{', '.join(names)}], columns: {PANES}}}\n")
    env = {**os.environ, "H2OSTACK_STATE_DIR": str(tmp / "state")}
    h2o = [sys.executable, "-m", "h2ostack.cli"]
    rows = []
    try:
        subprocess.run([*h2o, "up", str(stack)], env=env, check=True, capture_output=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"http://127.0.0.1:{fport}/")
            page.wait_for_selector("#h2o-input textarea")
            page.wait_for_timeout(1500)
            offset, within = clock_offset(page)
            marks = []
            for turn in range(TURNS):
                page.evaluate(OBSERVE, PANES)
                page.fill("#h2o-input textarea", f"Question number {turn}")
                page.click("#h2o-submit")
                answered(page, turn)
                marks.append(page.evaluate("window.h2oMarks"))
            page.click("text=Export conversations (JSONL)")
            href = page.wait_for_selector("a[download]", timeout=30_000).get_attribute("href") or ""
            records = [json.loads(x) for x in page.request.get(
                href if href.startswith("http") else f"http://127.0.0.1:{fport}{href}").text().splitlines()]
            browser.close()
        for turn in range(TURNS):
            for i, name in enumerate(names):
                rec = next(r for r in records if r["prompt"] == f"Question number {turn}" and r["model"] == name)
                first_seen, last_seen = seen(marks[turn][str(i)], offset)
                span = rec["last_token_at"] - rec["first_token_at"]
                rows.append({"turn": turn, "front": (rec["tokens"] - 1) / span,
                             "page": (rec["tokens"] - 1) / (last_seen - first_seen),
                             "first_ms": (first_seen - rec["first_token_at"]) * 1000,
                             "last_ms": (last_seen - rec["last_token_at"]) * 1000})
    finally:
        subprocess.run([*h2o, "down", str(stack)], env=env, capture_output=True)
        standin.kill()
    print(f"A conversation of {TURNS} turns, {PANES} panes on the TGI stand-in (256 words per answer; "
          f"clocks matched within {within * 1000:.2f} ms; "
          + ("every process on every core" if shared else "the stand-in on its own cores") + ")")
    print(f"  {'turn':>4}{'messages':>10}{'front tok/s':>13}{'page tok/s':>12}{'kept':>8}"
          f"{'first piece -> page':>21}{'last piece -> page':>20}   (medians over the panes)")
    worst = 1.0
    for turn in range(TURNS):
        rs = [r for r in rows if r["turn"] == turn]
        front, shown = statistics.median(r["front"] for r in rs), statistics.median(r["page"] for r in rs)
        worst = min(worst, min(r["page"] / r["front"] for r in rs))
        print(f"  {turn + 1:>4}{PANES * 2 * (turn + 1):>10}{front:>13.1f}{shown:>12.1f}{shown / front:>8.1%}"
              f"{statistics.median(r['first_ms'] for r in rs):>19.0f}ms"
              f"{statistics.median(r['last_ms'] for r in rs):>18.0f}ms")
    print(f"  lowest rate kept by a pane: {worst:.1%} (target 90%): " + ("met" if worst >= 0.9 else "MISSED"))


if __name__ == "__main__":
    main()
