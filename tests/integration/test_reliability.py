"""Faults and concurrency with real processes: nothing lost, nothing left running."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import H2O, free_port, marked_processes

pytestmark = pytest.mark.integration
STANDIN = Path(__file__).resolve().parents[1] / "standin-python"


def standin_stack(name: str, ports: list[int], extra: str = "") -> str:
    lines = [f"name: {name}", "services:"]
    for i, port in enumerate(ports):
        lines.append(f"  s{i}: {{kind: vllm, python: {STANDIN}, model: m, port: {port}{extra}}}")
    return "\n".join(lines) + "\n"


def test_a_server_that_ignores_sigterm_is_killed_after_the_grace_period(h2o: H2O, write_stack,
                                                                         stack_name: str) -> None:
    path = write_stack(standin_stack(stack_name, [free_port()], ", env: {STANDIN_IGNORE_SIGTERM: '1'}"))
    assert h2o("up", str(path), check=True).returncode == 0
    assert len(marked_processes(h2o.state_dir)) >= 2
    t0 = time.monotonic()
    out = h2o("down", str(path), "--timeout", "2", check=True)
    took = time.monotonic() - t0
    assert "stopped 1 service(s)" in out.stderr
    assert 2.0 <= took < 15, took
    assert marked_processes(h2o.state_dir) == []


def test_two_ups_at_once_never_duplicate(h2o: H2O, write_stack, stack_name: str) -> None:
    ports = [free_port(), free_port()]
    path = write_stack(standin_stack(stack_name, ports))
    env = {"START_DELAY": "1.5"}
    h2o.env.update(env)
    first, second = h2o.popen("up", str(path)), h2o.popen("up", str(path))
    assert first.wait(120) == 0 and second.wait(120) == 0
    outs = (first.stdout.read() if first.stdout else "") + (second.stdout.read() if second.stdout else "")
    # one started them, the other found them running with the same config
    assert outs.count("starting s0") == 1 and outs.count("kept     s0") == 1
    servers = [p for p in marked_processes(h2o.state_dir) if "openai_standin" in p[1]]
    assert len(servers) == 2, servers


def test_status_never_waits_for_the_lock(h2o: H2O, write_stack, stack_name: str) -> None:
    path = write_stack(standin_stack(stack_name, [free_port()]))
    h2o.env["START_DELAY"] = "5"
    slow = h2o.popen("up", str(path))
    time.sleep(1.5)
    t0 = time.monotonic()
    rows = h2o.status(str(path))
    assert time.monotonic() - t0 < 3
    assert rows["s0"]["state"] == "running" and rows["s0"]["health"] in ("starting", "unhealthy")
    assert slow.wait(60) == 0


def test_exposed_bind_warns(h2o: H2O, write_stack, stack_name: str) -> None:
    path = write_stack(standin_stack(stack_name, [free_port()]).replace("services:", "defaults: {bind: 0.0.0.0}\n"
                                                                       "services:"))
    out = h2o("up", str(path), check=True)
    assert "warning  s0: listens on 0.0.0.0 without an api key" in out.stderr


def test_on_failure_restarts_a_killed_server(h2o: H2O, write_stack, stack_name: str) -> None:
    import os
    import signal

    from tests.conftest import wait_for

    path = write_stack(standin_stack(stack_name, [free_port()], ", restart: on-failure, max_restarts: 1"))
    h2o("up", str(path), check=True)
    first = h2o.status(str(path))["s0"]
    os.kill(int(first["ident"]), signal.SIGKILL)
    row = wait_for(lambda: (r := h2o.status(str(path))["s0"])["restarts"] == 1 and r["health"] == "healthy" and r,
                   30, "a restart")
    assert row["state"] == "running" and row["last_exit"] == 137 and row["ident"] != first["ident"]
    assert "restarts" in h2o("status", str(path)).stdout
    # max_restarts: 1 -> the second crash stays down
    os.kill(int(row["ident"]), signal.SIGKILL)
    row = wait_for(lambda: (r := h2o.status(str(path))["s0"])["state"] == "exited" and r, 30, "exited")
    assert row["exit_code"] == 137 and row["restarts"] == 1
    assert marked_processes(h2o.state_dir) == []


def test_a_gpu_service_restarts_after_its_gpu_memory_check(h2o: H2O, write_stack, stack_name: str) -> None:
    """A service given GPU 0 (stated with --gpus: this machine may have none): on a crash the shim
    asks NVML whether the old server's memory is released before it restarts it."""
    import os
    import signal

    from h2ostack.shim import nvml_holders
    from tests.conftest import wait_for

    path = write_stack(standin_stack(stack_name, [free_port()], ", gpus: [0], restart: on-failure"))
    h2o("up", str(path), "--gpus", "0", check=True)
    first = h2o.status(str(path))["s0"]
    assert first["gpus"] == [0]
    os.kill(int(first["ident"]), signal.SIGKILL)
    wait_for(lambda: (r := h2o.status(str(path))["s0"])["restarts"] == 1 and r["health"] == "healthy", 60,
             "a restart")
    log = h2o("logs", str(path), "s0", "--tail", "100").stdout
    assert "restarting in 1 s (restart 1, policy on-failure)" in log
    if nvml_holders([0], None) is None:  # no driver here: said, and not waited for
        assert "NVML cannot be read: restarting without waiting for GPU memory" in log
    else:
        assert "GPU memory still held" not in log


def test_liveness_restarts_a_server_whose_health_hangs(h2o: H2O, write_stack, stack_name: str,
                                                       tmp_path: Path) -> None:
    from tests.conftest import wait_for

    hang = tmp_path / "hang"
    path = write_stack(standin_stack(stack_name, [free_port()], ", restart: always, health: {unhealthy_after: 2}, "
                                     f"env: {{STANDIN_HANG_FILE: '{hang}'}}"))
    h2o("up", str(path), check=True)
    first = h2o.status(str(path))["s0"]
    hang.write_text("")
    row = wait_for(lambda: (r := h2o.status(str(path))["s0"])["restarts"] >= 1 and r, 40, "a liveness restart")
    assert row["last_probe_failure"]
    assert "liveness: no healthy answer" in h2o("logs", str(path)).stdout
    assert "timed out" in h2o("logs", str(path)).stdout
    hang.unlink()
    row = wait_for(lambda: (r := h2o.status(str(path))["s0"])["health"] == "healthy" and r, 30, "healthy again")
    assert row["ident"] != first["ident"]
    assert h2o("down", str(path), check=True).returncode == 0
    assert marked_processes(h2o.state_dir) == []


def test_port_taken_between_plan_and_start_is_reported(h2o: H2O, write_stack, stack_name: str) -> None:
    import socket

    port = free_port()
    path = write_stack(standin_stack(stack_name, [port]))
    h2o.env["START_DELAY"] = "1.5"  # the server binds late, as one loading weights does
    proc = h2o.popen("up", str(path))
    from tests.conftest import wait_for

    wait_for(lambda: marked_processes(h2o.state_dir), 20, "the server to be spawned")
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", port))
        thief.listen()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "s0: exited while starting" in out and "Address already in use" in out
    assert marked_processes(h2o.state_dir) == []


def test_a_hanging_health_endpoint_is_bounded_by_its_timeout(h2o: H2O, write_stack, stack_name: str,
                                                             tmp_path: Path) -> None:
    hang = tmp_path / "hang"
    hang.write_text("")
    path = write_stack(standin_stack(stack_name, [free_port()], f", health: {{timeout: 3}}, "
                                     f"env: {{STANDIN_HANG_FILE: '{hang}'}}"))
    t0 = time.monotonic()
    out = h2o("up", str(path), timeout=60)
    took = time.monotonic() - t0
    assert out.returncode == 1 and "not ready after 3 s (health: ReadTimeout)" in out.stderr
    assert took < 15, took
    assert marked_processes(h2o.state_dir) == []


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.4, 0.7, 1.0, 1.5, 2.5])
def test_up_killed_at_each_step_then_down_leaves_nothing(h2o: H2O, write_stack, stack_name: str,
                                                         delay: float) -> None:
    import os
    import signal

    path = write_stack(standin_stack(stack_name, [free_port(), free_port(), free_port()]))
    h2o.env["START_DELAY"] = "1"
    proc = h2o.popen("up", str(path))
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    out = h2o("down", str(path), "--timeout", "5")
    assert out.returncode == 0, out.stderr
    assert marked_processes(h2o.state_dir) == []
    # and the next up starts cleanly from whatever state was left
    assert h2o("up", str(path)).returncode == 0
    assert len(h2o.status(str(path))) == 3
