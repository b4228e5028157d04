"""Models on demand with real servers on the CPU: the front's gateway starts `transformers serve`
services as requests name them, puts away the one in the way (two stated GPUs, one model fitting
at a time), never one with a stream in flight, answers 503 to every waiter of a failing start,
puts away on idle_timeout; and the CPU vLLM, which cannot sleep, is stopped instead."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.conftest import H2O, cpu_vllm, free_port, wait_for

pytestmark = pytest.mark.integration
STANDIN = Path(__file__).resolve().parents[1] / "standin-python"
GPUS = {"H2OSTACK_GPUS": "0,1", "H2OSTACK_GPU_MEMORY": "10"}  # stated: this machine has none


def running(state_dir: Path, stack: str) -> set[str]:
    """The services whose processes run now, by the markers h2ostack gives them."""
    out = set()
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if (env.get("H2OSTACK_STATE_DIR") == str(state_dir) and env.get("H2OSTACK_STACK") == stack
                    and proc.status() != psutil.STATUS_ZOMBIE):
                out.add(env.get("H2OSTACK_SERVICE", ""))
        except (psutil.Error, OSError):
            continue
    return out - {""}


class Gateway:
    def __init__(self, h2o: H2O, path: Path, stack: str, port: int):
        self.h2o, self.path, self.stack = h2o, path, stack
        self.base = f"http://127.0.0.1:{port}/v1"
        self.client = openai.OpenAI(base_url=self.base, api_key="none", max_retries=0, timeout=300)

    def ask(self, model: str) -> str:
        reply = self.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=3)
        return reply.choices[0].message.content or ""

    def complete(self, model: str) -> str:
        return self.client.completions.create(model=model, prompt="hi", max_tokens=3).choices[0].text

    def running(self) -> set[str]:
        return running(self.h2o.state_dir, self.stack)

    def status(self) -> dict[str, dict]:
        out = self.h2o("status", str(self.path), "--json", env=GPUS)
        return {row["service"]: row for row in json.loads(out.stdout)}


@pytest.fixture
def on_demand(h2o: H2O, write_stack: Callable[..., Path], stack_name: str) -> Iterator[Callable[[str], Gateway]]:
    """A stack whose services are written by the test, behind the standalone gateway of front `gw`."""
    procs: list[subprocess.Popen[bytes]] = []

    def make(services: str, via_up: bool = False) -> Gateway:
        port = free_port()
        names = [line.split(":")[0].strip() for line in services.splitlines() if line.strip()]
        path = write_stack(f"version: 1\nname: {stack_name}\nservices:\n{services}\nfronts:\n"
                           f"  gw: {{port: {port}, models: [{', '.join(names)}]}}\n")
        if via_up:  # the built-in front, whose /v1 is the gateway
            up = h2o("up", str(path), env=GPUS, timeout=300)
            assert up.returncode == 0, up.stdout + up.stderr
            assert "on demand: the stack's gateway starts it" in up.stdout + up.stderr
            assert running(h2o.state_dir, stack_name) == {"gw"}
        else:  # the gateway alone, without the front's page (quicker to start)
            procs.append(subprocess.Popen([sys.executable, "-m", "h2ostack.gateway", str(path), "--front", "gw",
                                           "--port", str(port)], env={**h2o.env, **GPUS}))
        gw = Gateway(h2o, path, stack_name, port)
        wait_for(lambda: _answers(gw.base + "/models"), 60, "the gateway")
        return gw

    yield make
    for proc in procs:
        proc.terminate()
        proc.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def tiny(name: str, model: Path, extra: str = "") -> str:
    return (f"  {name}: {{kind: transformers, model: {model}, port: {free_port()}, device: cpu, gpus: 2, vram_gb: 8, "
            f"on_demand: true{extra}}}\n")


def test_requests_in_turn_start_put_away_and_start_again(on_demand: Callable[[str], Gateway], tiny_model: Path
                                                         ) -> None:
    gw = on_demand(tiny("a", tiny_model) + tiny("b", tiny_model) + tiny("c", tiny_model), True)
    assert gw.running() == {"gw"}
    rows = gw.status()
    assert {rows[n]["state"] for n in "abc"} == {"stopped (on demand)"}

    # concurrent requests for a model that is starting all get their answers, from one start
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: gw.ask("a"), range(4)))
    assert all(answers) and gw.running() == {"gw", "a"}
    first_pid = rows_pid(gw, "a")

    for name in ("b", "c", "a"):
        assert gw.ask(name)
        assert gw.running() == {"gw", name}, f"after asking {name}"
    assert rows_pid(gw, "a") != first_pid  # started again, not the same server
    rows = gw.status()
    assert rows["a"]["state"] == "running" and rows["a"]["health"] == "healthy"
    assert rows["b"]["state"] == rows["c"]["state"] == "stopped (on demand)"
    assert "stopped; GPU memory not checked (NVML cannot be read here)" in rows["b"]["detail"]
    shown = gw.h2o("status", str(gw.path), env=GPUS)
    assert shown.returncode == 0, shown.stdout  # models put away are no failure
    assert f"{gw.stack}/b: stopped; GPU memory not checked" in shown.stdout
    logged = gw.h2o("logs", str(gw.path), "gw", check=True).stdout  # the front's log says what it did, and why
    assert "h2ostack on demand: a: put away" in logged and "making room for b" in logged
    assert "GPU memory not checked (NVML cannot be read here)" in logged


def rows_pid(gw: Gateway, name: str) -> str:
    return str(gw.status()[name]["ident"])


def test_a_model_with_a_stream_in_flight_is_not_put_away(on_demand: Callable[[str], Gateway], tiny_model: Path
                                                         ) -> None:
    slow = (f"  slow: {{kind: vllm, python: {STANDIN}, model: slow-model, port: {free_port()}, gpus: 2, "
            "vram_gb: 8, on_demand: true, env: {STANDIN_STREAM_CHUNKS: '20', STANDIN_LATENCY_MS: '150'}}\n")
    gw = on_demand(slow + tiny("other", tiny_model))
    stream = gw.client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "x"}],
                                               stream=True)
    pieces = [next(iter(stream)).choices[0].delta.content]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        other = pool.submit(gw.ask, "other")  # needs the GPUs `slow` holds
        finish = None
        for chunk in stream:
            # every chunk of the stream comes while `other` waits: `slow` is not put away under it
            assert gw.running() == {"slow"} and not other.done()
            pieces.append(chunk.choices[0].delta.content)
            finish = chunk.choices[0].finish_reason or finish
        assert finish == "length" and "".join(p or "" for p in pieces) == "".join(f"t{i} " for i in range(20))
        assert other.result(timeout=300)
    assert gw.running() == {"other"}


def test_a_failing_start_gives_503_to_every_waiter_and_leaves_nothing_running(
        on_demand: Callable[[str], Gateway], tiny_model: Path) -> None:
    broken = (f"  broken: {{kind: vllm, python: /bin/false, model: m, port: {free_port()}, gpus: 2, vram_gb: 8, "
              "on_demand: true}\n")
    gw = on_demand(broken + tiny("fine", tiny_model))
    assert gw.ask("fine") and gw.running() == {"fine"}

    def ask_broken(_: int) -> httpx.Response:
        return httpx.post(gw.base + "/chat/completions", timeout=300,
                          json={"model": "broken", "messages": [{"role": "user", "content": "x"}]})

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(ask_broken, range(3)))
    for reply in replies:
        assert reply.status_code == 503 and int(reply.headers["retry-after"]) > 0
        err = reply.json()["error"]
        assert err["type"] == "model_unavailable" and "could not be started: exited while starting" in err["message"]
    assert gw.running() == set()  # `fine` was put away to make room; `broken` left nothing behind
    rows = gw.status()
    assert rows["broken"]["state"] == "stopped (on demand)" and "last start failed" in rows["broken"]["detail"]
    assert gw.ask("fine")  # and the gateway goes on serving


def test_idle_timeout_puts_away(on_demand: Callable[[str], Gateway], tiny_model: Path) -> None:
    gw = on_demand(tiny("brief", tiny_model, ", idle_timeout: 2"))
    assert gw.ask("brief") and gw.running() == {"brief"}
    wait_for(lambda: not gw.running(), 60, "the idle service to be put away")
    rows = gw.status()
    assert rows["brief"]["state"] == "stopped (on demand)"
    assert gw.ask("brief")  # started again on the next request
    # a server that dies on its own is noticed, and started again by the next request
    os.kill(int(gw.status()["brief"]["ident"]), signal.SIGKILL)  # the server (its shim then ends too)
    wait_for(lambda: "exited on its own" in gw.status()["brief"]["detail"], 60, "the gateway to notice the exit")
    assert gw.ask("brief") and gw.running() == {"brief"}


def test_cpu_vllm_cannot_sleep_so_it_is_stopped_and_status_says_so(
        on_demand: Callable[[str], Gateway], tiny_model: Path, vllm_python: str) -> None:
    spec = cpu_vllm(vllm_python, tiny_model, free_port())[:-1] + ", on_demand: true, sleep: 1, idle_timeout: 1}"
    gw = on_demand(f"  v: {spec}\n")
    assert gw.ask("v")
    argv = [p.cmdline() for p in psutil.process_iter() if p.pid and _is_service(p, gw, "v")]
    assert argv and not any("--enable-sleep-mode" in a for a in argv)  # vLLM refuses it on the CPU
    wait_for(lambda: not gw.running(), 120, "the idle vLLM to be put away")
    rows = gw.status()
    assert rows["v"]["state"] == "stopped (on demand)"
    assert "the engine cannot sleep on this platform" in rows["v"]["detail"]


def _is_service(proc: psutil.Process, gw: Gateway, name: str) -> bool:
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        return False
    return env.get("H2OSTACK_STACK") == gw.stack and env.get("H2OSTACK_SERVICE") == name


def test_a_vllm_that_can_sleep_is_put_to_sleep_and_woken_not_restarted(on_demand: Callable[[str], Gateway]
                                                                       ) -> None:
    """vLLM's sleep endpoints, served by the stand-in where the engine says it can sleep (no GPU here)."""
    common = f"kind: vllm, python: {STANDIN}, gpus: 2, vram_gb: 8, on_demand: true"
    gw = on_demand(f"  s1: {{{common}, model: m1, port: {free_port()}, sleep: 1, env: {{STANDIN_CAN_SLEEP: '1'}}}}\n"
                   f"  s2: {{{common}, model: m2, port: {free_port()}}}\n")
    assert gw.complete("s1")
    pid = gw.status()["s1"]["ident"]
    assert any("--enable-sleep-mode" in p.cmdline() for p in psutil.process_iter() if _is_service(p, gw, "s1"))
    assert gw.complete("s2")
    rows = gw.status()
    assert gw.running() == {"s1", "s2"}  # s1 sleeps in its process, its GPU memory handed back
    assert rows["s1"]["state"] == "asleep"
    assert "asleep (vLLM sleep level 1); GPU memory not checked (NVML cannot be read here)" in rows["s1"]["detail"]
    assert gw.complete("s1")  # woken (the stand-in answers 503 while asleep), s2 put away to make room
    rows = gw.status()
    assert rows["s1"]["state"] == "running" and rows["s1"]["ident"] == pid and gw.running() == {"s1"}
    assert rows["s2"]["state"] == "stopped (on demand)"


def test_a_panes_question_starts_its_put_away_model_and_holds_it_while_it_answers(
        on_demand: Callable[[str], Gateway], tiny_model: Path) -> None:
    """The compare grid's panes go through the same manager as /v1: a question to a pane whose
    model is put away starts it (the pane says so meanwhile), putting away the one in the way."""
    from gradio_client import Client

    gw = on_demand(tiny("a", tiny_model) + tiny("b", tiny_model), True)
    assert gw.ask("b") and gw.running() == {"gw", "b"}
    client = Client(gw.base.removesuffix("/v1"), verbose=False)
    job = client.submit("hi", ["a"], api_name="/submit")
    final = job.result(timeout=300)
    shown = [json.dumps(out, ensure_ascii=False) for out in job.outputs()]
    assert any("starting a\u2026" in s for s in shown), shown  # the pane said what it waited for
    pane_a = json.dumps(final[1], ensure_ascii=False)
    assert "error" not in pane_a and "starting a" not in pane_a and "hi" in pane_a, pane_a
    assert gw.running() == {"gw", "a"}  # started by the pane's question, `b` put away to make room
    rows = gw.status()
    assert rows["a"]["state"] == "running" and rows["b"]["state"] == "stopped (on demand)"
    logged = gw.h2o("logs", str(gw.path), "gw", check=True).stdout
    assert "b: put away" in logged and "making room for a" in logged
