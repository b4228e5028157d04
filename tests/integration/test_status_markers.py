"""`status` with the state dir deleted under a running stack: it finds the stack as `down` does,
by its processes' markers, and with the stack file at hand fills in kind, URL and health."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import H2O, free_port, marked_processes

pytestmark = pytest.mark.integration
STANDIN = Path(__file__).resolve().parents[1] / "standin-python"


def _rows(h2o: H2O, *args: str) -> tuple[int, dict[str, dict]]:
    out = h2o("status", *args, "--json", timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, {f"{r['stack']}/{r['service']}": r for r in json.loads(out.stdout or "[]")}


def test_status_finds_a_stack_whose_state_dir_is_gone(h2o: H2O, write_stack, stack_name: str) -> None:
    pa, pb = free_port(), free_port()
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  a: {{kind: vllm, python: {STANDIN}, model: fake-a, port: {pa}}}
  b: {{kind: vllm, python: {STANDIN}, model: fake-b, port: {pb}}}
""")
    h2o("up", str(path), check=True, timeout=120)
    shutil.rmtree(h2o.state_dir)
    a, b = f"{stack_name}/a", f"{stack_name}/b"

    _, every = _rows(h2o)  # no argument: every stack, found by markers too
    assert every[a]["state"] == every[b]["state"] == "running"
    assert "no stacks are running" not in h2o("status", timeout=120).stdout

    _, named = _rows(h2o, stack_name)  # by name: known by its markers, not "unknown"
    assert set(named) == {a, b} and {r["state"] for r in named.values()} == {"running"}

    rc, filled = _rows(h2o, str(path))  # with the stack file: kind, URL and health instead of ?
    assert rc == 0
    assert [(r["kind"], r["url"], r["health"]) for r in (filled[a], filled[b])] == [
        ("vllm", f"http://127.0.0.1:{pa}", "healthy"), ("vllm", f"http://127.0.0.1:{pb}", "healthy")]
    assert filled[a]["ident"] and filled[a]["ident"] != filled[b]["ident"]

    down = h2o("down", stack_name, timeout=120)  # by name too: the stack is known by its markers
    assert down.returncode == 0, down.stderr
    assert marked_processes(h2o.state_dir, stack_name) == []
    _, after = _rows(h2o)
    assert a not in after and b not in after
