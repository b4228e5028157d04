"""Real `transformers serve` and vLLM servers, started, observed and stopped by h2ostack."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import H2O, free_port, marked_processes, wait_for

pytestmark = pytest.mark.integration


def two_services(name: str, model: Path, p1: int, p2: int) -> str:
    return f"""\
version: 1
name: {name}
services:
  alpha:
    kind: transformers
    model: {model}
    port: {p1}
  beta:
    kind: transformers
    model: {model}
    port: {p2}
    env: {{HF_TOKEN: "${{TEST_SECRET:-hf_plantedsecret123}}"}}
"""


def test_transformers_stack_lifecycle(h2o: H2O, write_stack, stack_name: str, tiny_model: Path) -> None:
    p1, p2 = free_port(), free_port()
    path = write_stack(two_services(stack_name, tiny_model, p1, p2))

    up = h2o("up", str(path), timeout=400)
    assert up.returncode == 0, up.stderr
    assert "ready    alpha" in up.stderr and "ready    beta" in up.stderr

    rows = h2o.status(str(path))
    assert {r["state"] for r in rows.values()} == {"running"}
    assert {r["health"] for r in rows.values()} == {"healthy"}
    assert rows["alpha"]["url"] == f"http://127.0.0.1:{p1}"
    assert h2o("status", str(path)).returncode == 0

    check = h2o("check", str(path), timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(" yes ") == 2

    logs = h2o("logs", str(path), "--tail", "5")
    assert logs.returncode == 0
    prefixes = {line.split(" | ")[0].strip() for line in logs.stdout.splitlines() if " | " in line}
    assert prefixes == {"alpha", "beta"}
    one = h2o("logs", str(path), "alpha")
    assert "Uvicorn running" in one.stdout or "Application startup complete" in one.stdout
    assert " | " not in one.stdout.splitlines()[0]

    # the secret is in the process env but nowhere h2ostack writes or prints
    for text in (up.stdout, up.stderr, h2o("plan", str(path), "--json").stdout,
                 h2o("render", str(path)).stdout):
        assert "hf_plantedsecret123" not in text
    for f in h2o.state_dir.rglob("*"):
        if f.is_file():
            assert "hf_plantedsecret123" not in f.read_text(errors="replace"), f

    # up again: unchanged services are left alone
    pids = {n: r["ident"] for n, r in rows.items()}
    again = h2o("up", str(path), timeout=300)
    assert again.returncode == 0 and "kept     alpha" in again.stderr and "kept     beta" in again.stderr
    assert {n: r["ident"] for n, r in h2o.status(str(path)).items()} == pids

    # a changed config restarts that service only
    p3 = free_port()
    path.write_text(two_services(stack_name, tiny_model, p1, p3))
    changed = h2o("up", str(path), timeout=300)
    assert changed.returncode == 0, changed.stderr
    assert "kept     alpha" in changed.stderr and "stopping beta (config changed)" in changed.stderr
    rows = h2o.status(str(path))
    assert rows["alpha"]["ident"] == pids["alpha"] and rows["beta"]["ident"] != pids["beta"]
    assert rows["beta"]["url"].endswith(f":{p3}") and rows["beta"]["health"] == "healthy"

    down = h2o("down", str(path), timeout=120)
    assert down.returncode == 0, down.stderr
    assert marked_processes(h2o.state_dir) == []
    rows = h2o.status(str(path))
    assert {r["state"] for r in rows.values()} == {"not started"}
    assert h2o("status", str(path)).returncode == 1


def test_kill_9_shows_as_exited_with_its_code(h2o: H2O, write_stack, stack_name: str, tiny_model: Path) -> None:
    path = write_stack(f"name: {stack_name}\nservices:\n  solo: {{kind: transformers, model: {tiny_model}, "
                       f"port: {free_port()}}}\n")
    assert h2o("up", str(path), timeout=300).returncode == 0
    pid = int(h2o.status(str(path))["solo"]["ident"])
    assert "transformers" in " ".join(psutil.Process(pid).cmdline())
    os.kill(pid, signal.SIGKILL)
    row = wait_for(lambda: (r := h2o.status(str(path))["solo"])["state"] == "exited" and r, 20, "exited state")
    assert row["exit_code"] == 137 and row["health"] == "-"
    assert h2o("status", str(path)).returncode == 1
    assert "exited (137)" in h2o("status", str(path)).stdout
    assert marked_processes(h2o.state_dir) == []


def test_up_sigkilled_while_waiting_then_kill_leaves_nothing(h2o: H2O, write_stack, stack_name: str,
                                                             tiny_model: Path) -> None:
    path = write_stack(f"name: {stack_name}\nservices:\n  slow: {{kind: transformers, model: {tiny_model}, "
                       f"port: {free_port()}}}\n")
    proc = h2o.popen("up", str(path))
    # wait until the server process exists, then kill `up` while it waits for health
    wait_for(lambda: len(marked_processes(h2o.state_dir)) >= 2, 60, "the server to start")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert marked_processes(h2o.state_dir), "the server should outlive the killed `up`"
    out = h2o("kill", stack_name)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: not marked_processes(h2o.state_dir), 10, "nothing left running")


def test_a_service_that_exits_while_starting_stops_the_rest(h2o: H2O, write_stack, stack_name: str,
                                                            tiny_model: Path, tmp_path: Path) -> None:
    good, bad = free_port(), free_port()
    path = write_stack(f"""\
name: {stack_name}
services:
  good: {{kind: transformers, model: {tiny_model}, port: {good}}}
  broken: {{kind: transformers, model: {tmp_path / 'no-such-model'}, port: {bad}}}
""")
    t0 = time.monotonic()
    out = h2o("up", str(path), timeout=300)
    took = time.monotonic() - t0
    assert out.returncode == 1
    assert "broken: exited while starting" in out.stderr
    assert "last log lines:" in out.stderr and "no-such-model" in out.stderr
    assert "what this run started has been stopped" in out.stderr
    assert took < 120, "an exit while starting must be reported at once, not after the health timeout"
    assert marked_processes(h2o.state_dir) == []
    assert {r["state"] for r in h2o.status(str(path)).values()} == {"not started"}


def test_invalid_stack_starts_nothing(h2o: H2O, write_stack, stack_name: str, tiny_model: Path) -> None:
    path = write_stack(f"name: {stack_name}\nservices:\n  a: {{kind: transformers, model: {tiny_model}, "
                       f"port: 8001, gpus: [0]}}\n  b: {{kind: transformers, model: {tiny_model}, prot: 1}}\n")
    out = h2o("up", str(path))
    assert out.returncode == 2
    assert f"{path}:4:" in out.stderr and "unknown field 'prot' (did you mean 'port'?)" in out.stderr
    assert h2o("validate", str(path)).returncode == 2
    assert marked_processes(h2o.state_dir) == [] and not (h2o.state_dir / stack_name / "run").exists()


def test_port_taken_is_refused_before_anything_starts(h2o: H2O, write_stack, stack_name: str,
                                                      tiny_model: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        path = write_stack(f"name: {stack_name}\nservices:\n"
                           f"  a: {{kind: transformers, model: {tiny_model}, port: {free_port()}}}\n"
                           f"  b: {{kind: transformers, model: {tiny_model}, port: {taken}}}\n")
        out = h2o("up", str(path))
    assert out.returncode == 2
    assert f"services.b.port: port {taken} is already in use on this machine" in out.stderr
    assert marked_processes(h2o.state_dir) == []


def test_state_dir_deleted_processes_found_by_environment(h2o: H2O, write_stack, stack_name: str,
                                                          tiny_model: Path) -> None:
    path = write_stack(f"name: {stack_name}\nservices:\n  a: {{kind: transformers, model: {tiny_model}, "
                       f"port: {free_port()}}}\n")
    assert h2o("up", str(path), timeout=300).returncode == 0
    shutil.rmtree(h2o.state_dir / stack_name)
    rows = h2o.status(str(path))
    assert rows["a"]["state"] == "running" and "environment markers" in rows["a"]["detail"]
    assert h2o("down", str(path), timeout=120).returncode == 0
    assert marked_processes(h2o.state_dir) == []


def test_vllm_cpu_lifecycle_leaves_no_process_of_its_group(h2o: H2O, write_stack, stack_name: str,
                                                           tiny_model: Path, vllm_python: str) -> None:
    port = free_port()
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  tinyvllm:
    kind: vllm
    python: {vllm_python}
    model: {tiny_model}
    port: {port}
    args: {{served_model_name: tiny, dtype: float32, max_model_len: 256, gpu_memory_utilization: 0.1}}
    env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
""")
    plan = json.loads(h2o("plan", str(path), "--json", check=True).stdout)
    assert plan["services"][0]["command"][1:3] == ["-m", "vllm.entrypoints.openai.api_server"]

    up = h2o("up", str(path), timeout=900)
    assert up.returncode == 0, up.stderr[-4000:]
    row = h2o.status(str(path))["tinyvllm"]
    assert row["health"] == "healthy"
    leader = json.loads((h2o.state_dir / stack_name / "run" / "tinyvllm.json").read_text())
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == leader["pgid"]]
    names = " ".join(" ".join(p.cmdline()) + " " + p.name() for p in group if _alive(p))
    assert len(group) >= 3, names  # shim, api server, EngineCore (and friends)

    check = h2o("check", str(path), timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr

    down = h2o("down", str(path), timeout=180)
    assert down.returncode == 0, down.stderr
    assert [p.pid for p in psutil.process_iter() if _pgid(p.pid) == leader["pgid"] and _alive(p)] == []
    assert marked_processes(h2o.state_dir) == []


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
