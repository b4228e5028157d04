"""Faults while answers stream, against real servers: a backend SIGKILLed mid-answer, seen through
the gateway (TGI translated, vLLM passed through) and in the chat panes of a real browser, and a
frozen backend (SIGSTOP: it accepts connections and never answers) bounded by REQUEST_TIMEOUT_FAST.
In every case the other models keep answering."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from playwright.sync_api import Page, sync_playwright

from tests.conftest import H2O, ROOT, cpu_vllm, free_port, marked_processes, wait_for

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
FAST = 4  # REQUEST_TIMEOUT_FAST of the front, seconds


class Faults:
    def __init__(self, h2o: H2O, path: Path, ports: dict[str, int]):
        self.h2o, self.path, self.ports = h2o, path, ports
        self.base = f"http://127.0.0.1:{ports['chat']}"

    def pid(self, service: str) -> int:
        """The server's pid once it is healthy again (the stand-ins restart on failure)."""
        def healthy() -> int | None:
            row = self.h2o.status(str(self.path))[service]
            return int(row["ident"]) if row["state"] == "running" and row["health"] == "healthy" else None
        return int(wait_for(healthy, 120, f"{service} healthy"))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, vllm_python: str) -> Iterator[Faults]:
    base = tmp_path_factory.mktemp("faults")
    runner = H2O(base / "state", base)
    ports = {k: free_port() for k in ("a", "b", "tiny", "vllm", "chat")}
    standin = f"kind: tgi, launcher: {ROOT / 'tests' / 'tgi-launcher'}, model: h2oai/h2ogpt-oasst1-512-12b"
    path = base / "faults.yaml"
    path.write_text(f"""\
version: 1
name: faultstack
services:
  slow_a: {{{standin}, port: {ports['a']}, restart: on-failure, env: {{STANDIN_TOKEN_DELAY: "0.1"}}}}
  slow_b: {{{standin}, port: {ports['b']}, restart: on-failure, env: {{STANDIN_TOKEN_DELAY: "0.1"}}}}
  tiny: {{kind: transformers, model: {tiny_model}, port: {ports['tiny']}}}
  vllm: {cpu_vllm(vllm_python, tiny_model, ports['vllm'], restart='on-failure')}
fronts:
  chat:
    port: {ports['chat']}
    models: [slow_a, slow_b, tiny, vllm]
    columns: 4
    env: {{REQUEST_TIMEOUT_FAST: "{FAST}"}}
""")
    up = runner("up", str(path), timeout=900)
    assert up.returncode == 0, up.stderr[-4000:]
    yield Faults(runner, path, ports)
    runner("kill", "--all", timeout=120)
    assert marked_processes(runner.state_dir) == []


def test_gateway_streams_cut_by_a_killed_backend_end_in_an_error(faults: Faults) -> None:
    client = openai.OpenAI(base_url=faults.base + "/v1", api_key="x", max_retries=0, timeout=60)
    # the other model streams a whole answer meanwhile
    steady: list[str] = []
    finish: list[str | None] = []

    def other() -> None:
        for c in client.chat.completions.create(model="slow_b", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=40, stream=True):
            if c.choices:
                steady.append(c.choices[0].delta.content or "")
                finish.append(c.choices[0].finish_reason)

    worker = threading.Thread(target=other)
    worker.start()

    # TGI native, translated: the stand-in closes its socket cleanly when killed, so only the
    # missing last event tells a cut stream from a whole one
    pid = faults.pid("slow_a")
    got: list[str] = []
    t_kill = None
    with pytest.raises(openai.APIError) as cut:
        for c in client.chat.completions.create(model="slow_a", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=100, stream=True):
            if c.choices and c.choices[0].delta.content:
                got.append(c.choices[0].delta.content)
                if len(got) == 3:
                    os.kill(pid, signal.SIGKILL)
                    t_kill = time.monotonic()
    assert t_kill is not None and time.monotonic() - t_kill < 5, "the client must not wait for a dead backend"
    assert 3 <= len(got) < 20 and "slow_a failed mid-answer" in str(cut.value)

    worker.join(30)
    assert not worker.is_alive() and finish[-1] == "length" and len([t for t in steady if t]) == 40

    # vLLM, passed through as bytes: the chunked body ends short. The tiny model writes its
    # 240 tokens in about a second; on a busy two-core box the kill can land after the last one,
    # so a race lost that way (the whole answer arrived) is run again on the restarted server.
    for _ in range(3):
        pid = faults.pid("vllm")
        n = 0
        error: openai.APIError | None = None
        try:
            for _c in client.completions.create(model="vllm", prompt="Hello", max_tokens=240, stream=True,
                                               extra_body={"ignore_eos": True}):
                n += 1
                if n == 1:
                    os.kill(pid, signal.SIGKILL)
        except openai.APIError as exc:
            error = exc
        if error is not None or n < 240:
            break
    assert error is not None, f"a stream cut after {n} pieces ended without an error"
    assert n < 240 and "vllm failed mid-answer" in str(error), (n, str(error))

    # the gateway itself is unharmed, and the restarted stand-in answers again
    assert [m.id for m in client.models.list().data] == ["slow_a", "slow_b", "tiny", "vllm"]
    faults.pid("slow_a")
    reply = client.chat.completions.create(model="slow_a", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=3)
    assert reply.choices[0].message.content == "Hello from the"


def pane(page: Page, i: int) -> str:
    return page.inner_text(f"#h2o-bot-{i}")


def test_panes_show_a_killed_or_frozen_backend_while_the_others_answer(faults: Faults, tmp_path: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(faults.base + "/?models=slow_a,slow_b,tiny")
        page.wait_for_selector("#h2o-input textarea", timeout=60_000)

        # 1. slow_a is SIGKILLed after its first words: its pane says so, slow_b streams on to the end
        pid = faults.pid("slow_a")
        faults.pid("slow_b")
        page.fill("#h2o-input textarea", "Tell me a long story")
        page.click("#h2o-submit")
        wait_for(lambda: pane(page, 0).count(" ") >= 6, 30, "slow_a's first words")
        os.kill(pid, signal.SIGKILL)
        page.wait_for_function("document.querySelector('#h2o-bot-0').innerText.includes('error')", timeout=15_000)
        at_kill = len(pane(page, 1))
        assert "StreamCut" in pane(page, 0) or "Error" in pane(page, 0)
        page.wait_for_function("document.querySelector('#h2o-head-1').innerText.includes('tok/s')", timeout=60_000)
        assert len(pane(page, 1)) > at_kill + 20, "slow_b kept streaming after slow_a died"
        assert "error" not in pane(page, 1) and "error" not in pane(page, 2) and "ttft" in page.inner_text(
            "#h2o-head-2")

        # 2. slow_b frozen (it accepts connections, answers nothing): bounded by REQUEST_TIMEOUT_FAST
        faults.pid("slow_a")
        pid = faults.pid("slow_b")
        page.click("text=Clear")
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            page.fill("#h2o-input textarea", "Are you there?")
            page.click("#h2o-submit")
            page.wait_for_function("document.querySelector('#h2o-bot-1').innerText.includes("
                                   "'REQUEST_TIMEOUT_FAST')", timeout=30_000)
            waited = time.monotonic() - t0
            assert FAST - 0.5 <= waited < FAST + 5, waited
            page.wait_for_function("document.querySelector('#h2o-head-0').innerText.includes('tok/s')",
                                   timeout=60_000)
            assert "error" not in pane(page, 0) and len(pane(page, 0)) > 40
            page.screenshot(path=str(tmp_path / "faults.png"), full_page=True)
        finally:
            os.kill(pid, signal.SIGCONT)
        browser.close()
