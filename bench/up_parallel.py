"""Benchmark: `h2ostack up` of 4 independent services that each take T seconds to become healthy.

Targets: wall time at most T + 0.3 s (they start in parallel; T + 0.5 s before 2026-12-01), and
each service's readiness noticed within 0.25 s of its server's first healthy answer. Baseline,
measured in the same run: T, the same four servers started by hand in parallel and polled every
10 ms (their own interpreter start-up included), and a sequential start (4 x T). The arms
alternate (baseline, up, up, baseline, ...); BENCH_BEFORE=PYTHON adds the `up` of another
checkout's interpreter (e.g. main's .venv/bin/python) to the same rounds, for a before/after.

With --profile, `up` runs under bench/up_trace.py instead, and the wall time is broken down into
its phases (medians over the runs): where the time over T goes.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
T = float(os.environ.get("BENCH_T", "3"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
# the interpreter of another checkout (its own h2ostack), run as a third arm in the same rounds
BEFORE = os.environ.get("BENCH_BEFORE", "")


def stack(name: str, ports: list[int]) -> str:
    lines = [f"name: {name}", "services:"]
    for i, port in enumerate(ports):
        lines += [f"  s{i}:", "    kind: vllm", f"    python: {HERE.parent / 'tests' / 'standin-python'}", "    model: m",
                  f"    port: {port}", "    health: {interval: 0.05}"]
    return "\n".join(lines) + "\n"


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def direct_baseline(tmp: Path) -> float:
    """The same 4 servers started by hand, all at once, polled every 10 ms until all answer:
    what a perfect parallel start costs, the servers' own start-up included."""
    import urllib.request

    ports = free_ports(4)
    env = {**os.environ, "START_DELAY": str(T), "READY_LOG": str(tmp / "direct.ready")}
    t0 = time.time()
    procs = [subprocess.Popen([str(HERE.parent / "tests" / "standin-python"), "--port", str(p)], env=env)
             for p in ports]
    pending = set(ports)
    while pending:
        for p in list(pending):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{p}/health", timeout=1).read()
                pending.discard(p)
            except OSError:
                pass
        time.sleep(0.01)
    took = time.time() - t0
    for proc in procs:
        proc.terminate()
        proc.wait()
    return took


def one_run(tmp: Path, i: int, python: str = sys.executable) -> tuple[float, list[float]]:
    name = f"benchup{os.getpid()}x{i}"
    path = tmp / f"{name}.yaml"
    path.write_text(stack(name, free_ports(4)))
    ready_log = tmp / f"{name}.ready"
    env = {**os.environ, "H2OSTACK_STATE_DIR": str(tmp / "state"), "START_DELAY": str(T),
           "READY_LOG": str(ready_log)}
    h2o = [python, "-m", "h2ostack.cli"]
    t0 = time.time()
    proc = subprocess.Popen([*h2o, "up", str(path)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    noticed: dict[str, float] = {}
    assert proc.stderr is not None
    for line in proc.stderr:
        m = re.match(r"ready\s+(\S+)", line)
        if m:
            noticed[m.group(1)] = time.time()
    proc.wait()
    wall = time.time() - t0
    subprocess.run([*h2o, "down", str(path)], env=env, capture_output=True, check=True)
    if proc.returncode != 0:
        raise SystemExit(f"up failed (exit {proc.returncode})")
    first = {ln.split()[0]: float(ln.split()[1]) for ln in ready_log.read_text().splitlines()}
    # readiness noticed: the server's first healthy answer -> `up` printing "ready" for it
    lags = [noticed[n] - first[n] for n in first]
    return wall, lags


PHASES = [
    ("interpreter up", "bench's spawn of `up` -> its first line runs"),
    ("imports, CLI", "-> the stack file is read (typer, pydantic, the models, the runtimes)"),
    ("load, observe, plan", "-> the plan is saved (stack file, running services, facts, plan)"),
    ("spawn", "-> the last shim is spawned (state dir, log, Popen, pidfile)"),
    ("shim", "shim spawned -> its server's process created (slowest)"),
    ("server", "server created -> its first healthy answer (T and its own start-up; slowest)"),
    ("noticed", "first healthy answer -> `ready` (the probes after /health; slowest)"),
    ("exit", "last `ready` -> `up` has exited"),
]


def profile_run(tmp: Path, i: int) -> dict[str, float]:
    """One `up` under bench/up_trace.py: each phase's seconds, adding up to the wall time."""
    import json

    name = f"benchprof{os.getpid()}x{i}"
    path = tmp / f"{name}.yaml"
    path.write_text(stack(name, free_ports(4)))
    ready_log, trace = tmp / f"{name}.ready", tmp / f"{name}.trace"
    env = {**os.environ, "H2OSTACK_STATE_DIR": str(tmp / "state"), "START_DELAY": str(T),
           "READY_LOG": str(ready_log)}
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(HERE / "up_trace.py"), str(trace), "up", str(path)],
                          capture_output=True, text=True, env=env)
    wall = time.time() - t0
    subprocess.run([sys.executable, "-m", "h2ostack.cli", "down", str(path)], env=env, capture_output=True, check=True)
    if proc.returncode != 0:
        raise SystemExit(f"up failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in trace.read_text().splitlines()]

    def at(what: str, service: str | None = None) -> list[float]:
        return [r["t"] for r in rows if r["what"] == what and (service is None or r.get("service") == service)]

    first = {ln.split()[0]: float(ln.split()[1]) for ln in ready_log.read_text().splitlines()}
    names = sorted(first)
    spawn = {n: at("spawn begin", n)[0] for n in names}
    created = {n: at("server process created", n)[0] for n in names}
    ready = {n: at("event ready", n)[0] for n in names}
    interp, load0, saved = at("interpreter up")[0], at("load begin")[0], at("save plan end")[0]
    spawned = max(at("spawn end"))
    shim = max(created[n] - spawn[n] for n in names)
    server = max(first[n] - created[n] for n in names)
    noticed = max(ready[n] - first[n] for n in names)
    out = {"interpreter up": interp - t0, "imports, CLI": load0 - interp, "load, observe, plan": saved - load0,
           "spawn": spawned - saved, "shim": shim, "server": server, "noticed": noticed,
           "exit": t0 + wall - max(ready.values())}
    out["wall"] = wall
    return out


def profile() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        runs, bases = [], []
        for i in range(RUNS):
            if i % 2 == 0:
                bases.append(direct_baseline(tmp))
            runs.append(profile_run(tmp, i))
            if i % 2 == 1:
                bases.append(direct_baseline(tmp))
    base = statistics.median(bases)
    print(f"where `up`'s time goes: 4 services that each sleep {T:.1f} s (medians of {RUNS} runs; the phases "
          "overlap a little, the slowest service taken in each)")
    for key, what in PHASES:
        vals = [r[key] for r in runs]
        print(f"  {key:<20} {statistics.median(vals) * 1000:7.0f} ms   ({min(vals) * 1000:.0f}-{max(vals) * 1000:.0f})"
              f"  {what}")
    wall = statistics.median(r["wall"] for r in runs)
    print(f"  {'wall (traced)':<20} {wall * 1000:7.0f} ms   baseline T (by hand) {base * 1000:.0f} ms: "
          f"T + {wall - base:.2f} s")


def main() -> None:
    if "--profile" in sys.argv[1:]:
        profile()
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        walls, lags, bases, before = [], [], [], []
        for i in range(RUNS):  # A B B A: drift and order hit both arms alike
            if i % 2 == 0:
                bases.append(direct_baseline(tmp))
            if BEFORE and i % 2 == 1:
                before.append(one_run(tmp, 1000 + i, BEFORE)[0])
            wall, lag = one_run(tmp, i)
            walls.append(wall)
            lags += lag
            if BEFORE and i % 2 == 0:
                before.append(one_run(tmp, 1000 + i, BEFORE)[0])
            if i % 2 == 1:
                bases.append(direct_baseline(tmp))
    med = statistics.median(walls)
    base = statistics.median(bases)
    print(f"up of 4 services that each sleep {T:.1f} s before answering ({RUNS} runs)")
    print(f"  {'baseline T: the 4 started by hand, in parallel':<48} {base:8.2f} s   (median)")
    print(f"  {'4 x T: one after another':<48} {4 * base:8.2f} s")
    print(f"  {'h2ostack up, wall time (median)':<48} {med:8.2f} s   = T + {med - base:.2f} s (target <= T + 0.3 s)")
    print(f"  {'h2ostack up, wall time (max)':<48} {max(walls):8.2f} s")
    if before:
        bmed = statistics.median(before)
        print(f"  {'the same, another checkout (BENCH_BEFORE)':<48} {bmed:8.2f} s   = T + {bmed - base:.2f} s")
    print(f"  {'readiness noticed after first healthy answer':<48} median {statistics.median(lags) * 1000:.0f} ms, "
          f"max {max(lags) * 1000:.0f} ms (target <= 250 ms)")
    ok = med - base <= 0.3 and max(lags) <= 0.25
    print("  targets met" if ok else "  TARGET MISSED")


if __name__ == "__main__":
    main()
