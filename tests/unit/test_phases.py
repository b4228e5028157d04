"""Readiness phases on a fake clock: loading, downloading, warming, ready; a download holds the
loading timeout off only while it makes progress, and has a limit of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from h2ostack.backends.base import Probe
from h2ostack.health import (
    DOWNLOAD_STALL,
    DOWNLOAD_TIMEOUT,
    Answer,
    Download,
    NotReady,
    derive_phase,
    detect_download,
    download_timeout,
    hub_dir,
    hub_download,
    log_download,
    repo_ids,
    wait_ready,
)
from tests.unit.test_executor_health import FakeClock

PROBES = (Probe("health", "GET", "/health"), Probe("gen", "POST", "/v1/completions", {"x": 1}))


Clock = FakeClock  # now() and sleep(), no real time


def server(clock: Clock, port_at: float, warm_at: float):
    """A server whose port answers from `port_at` and whose generation answers from `warm_at`."""
    def request(method: str, url: str, *_: object) -> Answer:
        if clock.t < port_at:
            raise ConnectionRefusedError()
        if url.endswith("/v1/completions") and clock.t < warm_at:
            return Answer(503, None)
        return Answer(200, {})
    return request


def run(clock: Clock, request, timeout: float, download=None, limit: float = DOWNLOAD_TIMEOUT
        ) -> tuple[list[tuple[str, str]], float]:
    seen: list[tuple[str, str]] = []
    took = wait_ready("http://h:1", PROBES, timeout, 0.5, lambda: None, request, clock=clock.now, sleep=clock.sleep,
                      on_phase=lambda p, d: seen.append((p, d)), download=download, download_limit=limit)
    return seen, took


def test_loading_then_warming_then_ready() -> None:
    clock = Clock()
    seen, took = run(clock, server(clock, 3, 5), 60)
    assert seen == [("loading", ""), ("warming", ""), ("ready", "")]
    assert took == pytest.approx(5.0)


def test_a_download_in_progress_is_never_killed_by_the_loading_timeout() -> None:
    clock = Clock()

    def download() -> Download | None:  # 10 MB a second for 200 s, then loading
        return Download(int(clock.t * 10_000_000)) if clock.t < 200 else None

    seen, took = run(clock, server(clock, 210, 212), 30, download)
    assert took == pytest.approx(212.0)
    phases = [p for p, _ in seen]
    assert phases[0] == "downloading"
    assert phases[-3:] == ["loading", "warming", "ready"]
    details = [d for p, d in seen if p == "downloading"]
    assert details[0] == "0 B" and details[-1].endswith("GiB") and len(details) > 100  # the bytes, as they grow


def test_a_stalled_download_counts_towards_the_timeout_again() -> None:
    clock = Clock()

    def download() -> Download:  # grows for 50 s, then stays where it is
        return Download(int(min(clock.t, 50.0) * 1_000_000))

    with pytest.raises(NotReady, match="not ready after 30 s"):
        run(clock, server(clock, 10_000, 10_000), 30, download)
    # ~50 s of progress and DOWNLOAD_STALL more held the timeout off, then 30 s of it ran
    assert clock.t == pytest.approx(50 + DOWNLOAD_STALL + 30, abs=2)


def test_a_download_has_a_limit_of_its_own() -> None:
    clock = Clock()
    with pytest.raises(NotReady, match="still downloading after 100 s"):
        run(clock, server(clock, 10_000, 10_000), 30, lambda: Download(int(clock.t * 1000)), limit=100)
    assert clock.t == pytest.approx(101, abs=2)


def test_without_a_download_the_timeout_holds() -> None:
    clock = Clock()
    with pytest.raises(NotReady, match="not ready after 30 s"):
        run(clock, server(clock, 10_000, 10_000), 30, lambda: None)
    assert clock.t == pytest.approx(30.5)


def test_the_hub_cache_shows_a_download(tmp_path: Path) -> None:
    blobs = tmp_path / "models--org--model" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "aaa").write_bytes(b"x" * 1000)
    assert hub_download(tmp_path, "org/model") is None  # complete: nothing being downloaded
    (blobs / "bbb.incomplete").write_bytes(b"x" * 2048)
    assert hub_download(tmp_path, "org/model") == Download(3048)
    assert hub_download(tmp_path, "org/other") is None
    assert detect_download(tmp_path, ["org/other", "org/model"]) == Download(3048)
    assert str(Download(3 * 1024**3, 40.0)) == "40%, 3.0 GiB"


def test_engine_logs_show_a_download() -> None:
    assert log_download("Starting download process.\nDownload: [1/4] -- ETA: 0:00:30\n") == Download(percent=25.0)
    assert log_download("Download: [4/4] -- ETA: 0\n") is None  # done
    bar = "model-00001-of-00002.safetensors:  45%|████▌     | 2.20G/4.95G [00:10<00:12, 220MB/s]"
    assert log_download("INFO loading\r" + bar) == Download(2_200_000_000, 45.0)
    assert log_download(bar.replace("45%", "100%")) is None
    assert log_download(bar + "\nINFO: loading weights took 3 s\n") is None  # the last line only
    assert log_download("") is None
    assert detect_download(Path("/nonexistent"), ["a/b"], lambda: bar) == Download(2_200_000_000, 45.0)


def test_where_the_hub_cache_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", "/hf")
    assert hub_dir({}) == Path("/hf/hub")
    assert hub_dir({"HF_HOME": "/mine"}) == Path("/mine/hub")
    assert hub_dir({"HF_HUB_CACHE": "/cache"}) == Path("/cache")
    assert repo_ids(["serve", "Qwen/Qwen2.5-0.5B", "--port", "8000", str(tmp_path), "a/b/c", 3]) == [
        "Qwen/Qwen2.5-0.5B"]


def test_download_timeout_from_the_environment() -> None:
    assert download_timeout({"H2OSTACK_DOWNLOAD_TIMEOUT": "120"}) == 120
    for bad in ("", "x", "-1", "nan", "inf", "0"):
        assert download_timeout({"H2OSTACK_DOWNLOAD_TIMEOUT": bad}) == DOWNLOAD_TIMEOUT


@pytest.mark.parametrize(("args", "phase"), [
    ((True, False, None, None), "stopped"),
    ((True, False, None, None, True), "stopped (on demand)"),
    ((True, True, False, "loading"), "loading"),
    ((True, True, False, "downloading", False, Download(2048)), "downloading (2.0 KiB)"),
    ((True, True, True, "warming"), "warming"),
    ((True, True, True, "loading"), "warming"),
    ((True, True, True, "ready"), "ready"),
    ((True, True, False, "ready"), "ready"),  # hung: its health says so
    ((True, True, False, "ready", False, None, True), "loading"),  # restarted by its policy
    ((True, True, False, "ready", False, Download(10), True), "downloading (10 B)"),
    ((True, True, True, None), "ready"),
    ((True, True, False, "asleep"), "asleep"),
    ((True, True, None, "ready"), "ready"),
    ((False, False, True, None), "ready"),
    ((False, False, False, None), "-"),
])
def test_the_phase_status_shows(args: tuple, phase: str) -> None:
    assert derive_phase(*args) == phase


def test_warming_is_told_before_a_warm_up_that_passes_at_its_first_try() -> None:
    clock = Clock()
    seen, _ = run(clock, server(clock, 3, 3), 60)  # (a real warm-up request blocks while the model loads)
    assert seen == [("loading", ""), ("warming", ""), ("ready", "")]


def test_the_recorded_phase_round_trips_and_garbage_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    from h2ostack.api import Event, phase_path, phase_recorder, recorded_phase
    from h2ostack.state import StackState

    monkeypatch.setenv("H2OSTACK_STATE_DIR", str(tmp_path / "state"))
    st = StackState("lab")
    assert recorded_phase(st, "a") is None
    events: list[Event] = []
    record = phase_recorder(st, "a", events.append)
    record("downloading", "40%")
    assert recorded_phase(st, "a") == "downloading"
    record("ready", "")
    assert recorded_phase(st, "a") == "ready"
    assert [e.detail for e in events] == ["downloading (40%)", "ready"] and {e.kind for e in events} == {"phase"}
    assert st.read_records() == ({}, {})  # never taken for a pidfile
    for garbage in ("{not json", '{"phase": "sleepy"}', "[1]"):
        phase_path(st, "a").write_text(garbage)
        assert recorded_phase(st, "a") is None
