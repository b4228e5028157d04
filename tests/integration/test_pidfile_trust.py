"""Pidfiles are not trusted: a process they name is signalled only if it carries the stack's
markers, and a malformed one is skipped and reported while the rest of the stack still stops.
Real services (the OpenAI stand-in as a vLLM interpreter) and a real stranger process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import H2O, free_port, marked_processes

pytestmark = pytest.mark.integration
STANDIN = Path(__file__).resolve().parents[1] / "standin-python"


@pytest.fixture
def stranger() -> Iterator[psutil.Process]:
    """A same-user process that h2ostack did not start, leading its own process group."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    yield psutil.Process(proc.pid)
    proc.kill()
    proc.wait(10)


def _stack(write_stack, name: str) -> Path:
    return write_stack(f"""\
version: 1
name: {name}
services:
  a: {{kind: vllm, python: {STANDIN}, model: fake-a, port: {free_port()}}}
  b: {{kind: vllm, python: {STANDIN}, model: fake-b, port: {free_port()}}}
""")


def _forge(run: Path, service: str, victim: psutil.Process) -> None:
    """A pidfile as h2ostack writes them, naming the victim with its true start time."""
    (run / f"{service}.json").write_text(json.dumps({
        "service": service, "pid": victim.pid, "pgid": victim.pid, "create_time": victim.create_time(),
        "config_hash": "x", "started_at": 0.0, "port": None, "kind": "vllm"}))


def test_down_never_signals_a_process_without_the_stacks_markers(h2o: H2O, write_stack, stack_name: str,
                                                                  stranger: psutil.Process) -> None:
    path = _stack(write_stack, stack_name)
    h2o("up", str(path), check=True, timeout=120)
    run = h2o.state_dir / stack_name / "run"
    _forge(run, "a", stranger)  # over a running service's own pidfile
    _forge(run, "ghost", stranger)  # and for a service the stack never had
    down = h2o("down", str(path), timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert stranger.is_running() and stranger.status() != psutil.STATUS_ZOMBIE
    assert marked_processes(h2o.state_dir, stack_name) == []  # the real `a` was found by its markers
    # a stranger that wears another stack's markers is no more trusted
    h2o("up", str(path), check=True, timeout=120)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True,
                             env={**os.environ, "H2OSTACK_STACK": "other", "H2OSTACK_SERVICE": "a",
                                  "H2OSTACK_STATE_DIR": str(h2o.state_dir)})
    try:
        _forge(run, "a", psutil.Process(other.pid))
        assert h2o("kill", stack_name, timeout=120).returncode == 0
        assert other.poll() is None
    finally:
        other.kill()
        other.wait(10)
    assert marked_processes(h2o.state_dir, stack_name) == []


@pytest.mark.parametrize("command", ["down", "kill"])
def test_a_malformed_pidfile_is_reported_and_the_rest_still_stops(h2o: H2O, write_stack, stack_name: str,
                                                                   command: str) -> None:
    path = _stack(write_stack, stack_name)
    h2o("up", str(path), check=True, timeout=120)
    run = h2o.state_dir / stack_name / "run"
    (run / "b.json").write_text('{"service": "b", "pid": "1; rm -rf /", "pgid": 1}')  # the running b's own
    (run / "junk.json").write_text("{not json")
    (run / "list.json").write_text("[1, 2, 3]")
    (run / "huge.json").write_text('{"pid": ' + "9" * 100_000 + "}")
    os.mkfifo(run / "fifo.json")  # a reader that waits for a writer would hang here
    (run / "link.json").symlink_to("/dev/zero")
    status = h2o("status", stack_name, timeout=60)
    assert "Traceback" not in status.stderr and "malformed pidfile b.json skipped" in status.stderr
    out = h2o(command, stack_name, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "Traceback" not in text
    for name in ("b", "junk", "list", "huge", "fifo", "link"):
        assert f"malformed pidfile {name}.json skipped" in text, text
    assert marked_processes(h2o.state_dir, stack_name) == []  # a and b both stopped
