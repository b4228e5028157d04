"""The dependency runner and the readiness wait, with plain values and a fake clock."""

from __future__ import annotations

import threading

import pytest

from h2ostack.backends.base import Probe
from h2ostack.executor import reverse, run_graph
from h2ostack.health import Answer, Cancelled, Exited, NotReady, names_model, wait_ready


def test_runs_in_dependency_order_and_in_parallel() -> None:
    seen: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(2, timeout=5)

    def fn(n: str) -> str:
        if n in ("a", "b"):
            barrier.wait()  # a and b must run at the same time
        with lock:
            seen.append(n)
        return n.upper()

    out = run_graph({"a": [], "b": [], "c": ["a", "b"], "d": ["c"]}, fn)
    assert {k: v.state for k, v in out.items()} == dict.fromkeys("abcd", "ok")
    assert seen.index("c") > max(seen.index("a"), seen.index("b")) and seen[-1] == "d"
    assert out["c"].value == "C"


def test_failure_skips_dependents_only() -> None:
    def fn(n: str) -> None:
        if n == "a":
            raise RuntimeError("boom")

    out = run_graph({"a": [], "b": ["a"], "c": ["b"], "x": []}, fn)
    assert out["a"].state == "failed" and str(out["a"].error) == "boom"
    assert out["b"].state == out["c"].state == "skipped"
    assert out["x"].state == "ok"


def test_fail_fast_sets_cancel_for_waits_in_flight() -> None:
    cancel = threading.Event()

    def fn(n: str) -> None:
        if n == "bad":
            raise RuntimeError("x")
        assert cancel.wait(5), "cancel was not set"
        raise Cancelled()

    out = run_graph({"bad": [], "slow": [], "later": ["slow"]}, fn, fail_fast=True, cancel=cancel)
    assert out["bad"].state == "failed" and isinstance(out["slow"].error, Cancelled)
    assert out["later"].state == "cancelled"


def test_reverse_for_stopping() -> None:
    assert reverse({"a": [], "b": ["a"], "front": ["a", "b"]}) == {"a": ["b", "front"], "b": ["front"], "front": []}


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


PROBES = (Probe("health", "GET", "/health"), Probe("listed", "GET", "/v1/models", expect_model="m"),
          Probe("gen", "POST", "/v1/completions", {"x": 1}))


def test_wait_ready_walks_probes_in_order() -> None:
    clock = FakeClock()
    calls: list[str] = []

    def request(method: str, url: str, body: object, timeout: float, headers: dict[str, str]) -> Answer:
        calls.append(url)
        if clock.t < 1.0:
            raise ConnectionRefusedError()
        if url.endswith("/v1/models"):
            return Answer(200, {"data": [{"id": "m"}] if clock.t >= 2.0 else []})
        return Answer(200, {})

    took = wait_ready("http://h:1", PROBES, 10, 0.1, lambda: None, request, clock=clock.now, sleep=clock.sleep)
    assert 2.0 <= took < 2.2
    assert calls[-1] == "http://h:1/v1/completions" and calls[-2] == "http://h:1/v1/models"


def test_wait_ready_reports_exit_at_once() -> None:
    clock = FakeClock()

    def request(*_: object) -> Answer:
        raise ConnectionRefusedError()

    codes = iter([None, None, 3])
    with pytest.raises(Exited) as info:
        wait_ready("http://h:1", PROBES, 100, 0.1, lambda: next(codes), request, clock=clock.now, sleep=clock.sleep)
    assert info.value.code == 3 and clock.t < 0.5


def test_wait_ready_times_out_with_reason() -> None:
    clock = FakeClock()
    with pytest.raises(NotReady, match=r"not ready after 5 s \(health: HTTP 503\)"):
        wait_ready("http://h:1", PROBES, 5, 0.5, lambda: None, lambda *_: Answer(503, None),
                   clock=clock.now, sleep=clock.sleep)


def test_names_model() -> None:
    assert names_model({"data": [{"id": "a"}, {"id": "b"}]}, "b")
    assert not names_model({"data": []}, "b")
    assert names_model({"model_id": "org/x"}, "org/x")
    assert not names_model(None, "x")
    # a listing of `models` by name (Ollama's /api/tags)
    tags = {"models": [{"name": "smollm:135m", "model": "smollm:135m", "size": 1, "details": {}}]}
    assert names_model(tags, "smollm:135m")
    assert not names_model(tags, "llama3:latest")
    assert not names_model({"models": "smollm:135m"}, "smollm:135m")
    assert not names_model({"models": [None, 3, {"name": 5}]}, "smollm:135m")
