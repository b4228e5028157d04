"""Benchmark: `h2ostack up` against Docker Compose on the same four TGI stand-in containers.

Each container's server listens T seconds after it starts (`STANDIN_LOAD_DELAY`, as TGI loading
weights). Four arms on the same engine, interleaved (A B C D D C B A ...):
- by hand: the four containers created and started at once with the Docker SDK, each polled every
  10 ms until it answers: what a perfect parallel start costs here, container creation included;
- h2ostack: `h2ostack up` of the stack file;
- compose: `docker compose up -d --wait` (compose v2, scripts/compose-env.sh) of what
  `h2ostack render --format compose` writes for the same stack, healthchecks as written;
- compose 1 s: the same file with the healthchecks' interval set to BENCH_COMPOSE_INTERVAL (1s).
With compose 1.29 (no `--wait`) set BENCH_COMPOSE=docker-compose: `up -d`, then `ps` until every
service shows healthy. BENCH_ARMS (comma-separated) picks arms; "by hand" and "h2ostack" are needed.

Per arm: wall time from the command's start to all-ready (the command's exit), and readiness
noticed: the time the tool said a service was ready (h2ostack's `ready`, compose's `Healthy` line)
after that server's first healthy answer (the first `GET /health -> 200` in the container's log,
timestamped by the engine). Needs DOCKER_HOST (or H2OSTACK_TEST_DOCKER_HOST) and the base image
that scripts/docker-engine.sh builds; the stand-in image is built from it when missing.

Run: DOCKER_HOST=unix:///path/docker.sock .venv/bin/python bench/up_compose.py
"""

from __future__ import annotations

import datetime as dt
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from up_parallel import free_ports  # noqa: E402  (bench/up_parallel.py)

from tests.conftest import IMAGE, build_standin  # noqa: E402

T = float(os.environ.get("BENCH_T", "3"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
TUNED = os.environ.get("BENCH_COMPOSE_INTERVAL", "1s")
N = 4
H2O = [sys.executable, "-m", "h2ostack.cli"]


def stack(name: str, ports: list[int]) -> str:
    lines = [f"name: {name}", "services:"]
    for i, port in enumerate(ports):
        lines += [f"  s{i}:", "    kind: tgi", f"    image: {IMAGE}", f"    model: m{i}", f"    port: {port}",
                  f"    env: {{STANDIN_LOAD_DELAY: '{T:g}'}}", "    health: {interval: 0.05, timeout: 300}"]
    return "\n".join(lines) + "\n"


def stamp(text: str) -> float:
    """An engine log timestamp (RFC 3339, nanoseconds, UTC) as epoch seconds."""
    head, _, frac = text.rstrip("Z").partition(".")
    base = dt.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp()
    return base + float("0." + (frac or "0"))


def server_times(container: Any) -> tuple[float | None, float | None]:
    """(listening, first healthy answer) from the container's log, as the engine timestamped it."""
    listening = healthy = None
    for raw in container.logs(timestamps=True).decode(errors="replace").splitlines():
        when, _, line = raw.partition(" ")
        if listening is None and line.startswith("Connected; listening"):
            listening = stamp(when)
        if healthy is None and line.startswith("GET /health -> 200"):
            healthy = stamp(when)
    return listening, healthy


class Run:
    def __init__(self, arm: str, wall: float, t0: float, noticed: dict[str, float], containers: dict[str, Any]):
        self.arm, self.wall = arm, wall
        times = {n: server_times(c) for n, c in containers.items()}
        # the last container started (creation included: the vfs driver copies the image for each)
        self.started = max(stamp(c.attrs["State"]["StartedAt"]) - t0 for c in containers.values())
        self.listening = max((lst or 0.0) - t0 for lst, _ in times.values())  # the slowest server listens
        self.lags = [noticed[n] - h for n, (_, h) in times.items() if h is not None and n in noticed]
        self.missing = [n for n, (_, h) in times.items() if h is None or n not in noticed]


def ours(client: Any, project: str) -> dict[str, Any]:
    out = {}
    for c in client.containers.list(all=True, filters={"label": f"io.h2ostack.stack={project}"}):
        out[c.labels.get("io.h2ostack.service", c.name)] = c
    return out


def by_hand(client: Any, name: str, ports: list[int]) -> Run:
    noticed: dict[str, float] = {}
    t0 = time.time()

    def one(i: int, port: int) -> None:
        client.containers.run(IMAGE, ["--model-id", f"m{i}", "--hostname", "0.0.0.0"], detach=True,
                              ports={"80/tcp": ("127.0.0.1", port)}, environment={"STANDIN_LOAD_DELAY": f"{T:g}"},
                              labels={"io.h2ostack.stack": name, "io.h2ostack.service": f"s{i}"})
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                noticed[f"s{i}"] = time.time()
                return
            except OSError:
                time.sleep(0.01)

    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(ports)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.time() - t0
    containers = ours(client, name)
    run = Run("by hand", wall, t0, noticed, containers)
    for c in containers.values():
        c.remove(force=True)
    return run


def h2ostack(client: Any, tmp: Path, name: str, ports: list[int], env: dict[str, str]) -> Run:
    path = tmp / f"{name}.yaml"
    path.write_text(stack(name, ports))
    noticed: dict[str, float] = {}
    t0 = time.time()
    proc = subprocess.Popen([*H2O, "up", str(path)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    assert proc.stderr is not None
    for line in proc.stderr:
        m = re.match(r"ready\s+(\S+)", line)
        if m:
            noticed[m.group(1)] = time.time()
    proc.wait()
    wall = time.time() - t0
    run = Run("h2ostack", wall, t0, noticed, ours(client, name))
    subprocess.run([*H2O, "down", str(path), "--timeout", "2"], env=env, capture_output=True, check=True)
    if proc.returncode != 0:
        raise SystemExit(f"h2ostack up failed (exit {proc.returncode})")
    return run


def compose(client: Any, tmp: Path, name: str, ports: list[int], env: dict[str, str], cmd: list[str],
            interval: str | None) -> Run:
    path = tmp / f"{name}.yaml"
    path.write_text(stack(name, ports))
    text = subprocess.run([*H2O, "render", str(path), "--format", "compose"], env=env, capture_output=True,
                          text=True, check=True).stdout
    if interval:
        text = re.sub(r"(\n\s+interval: )\S+", rf"\g<1>{interval}", text)
    file = tmp / f"{name}.compose.yaml"
    file.write_text(text)
    base = [*cmd, "-p", name, "-f", str(file)]
    v2 = "--wait" in subprocess.run([*cmd, "up", "--help"], capture_output=True, text=True, env=env).stdout
    noticed: dict[str, float] = {}
    t0 = time.time()
    if v2:
        proc = subprocess.Popen([*base, "up", "-d", "--wait"], stderr=subprocess.STDOUT, stdout=subprocess.PIPE,
                                text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(rf"Container {re.escape(name)}-(s\d+)-1\s+Healthy", line)
            if m:
                noticed[m.group(1)] = time.time()
        proc.wait()
        ok = proc.returncode == 0
    else:  # compose 1.29: no --wait
        ok = subprocess.run([*base, "up", "-d"], env=env, capture_output=True).returncode == 0
        while ok and len(noticed) < N:
            for c in ours(client, name).values():  # listed afresh: their state as of now
                svc = c.labels.get("io.h2ostack.service", "")
                if svc not in noticed and c.attrs["State"].get("Health", {}).get("Status") == "healthy":
                    noticed[svc] = time.time()
            time.sleep(0.05)
    wall = time.time() - t0
    run = Run(f"compose{' ' + interval if interval else ''}", wall, t0, noticed, ours(client, name))
    subprocess.run([*base, "down", "-t", "2"], env=env, capture_output=True)
    if not ok:
        raise SystemExit(f"compose up failed for {name}")
    return run


def compose_command(env: dict[str, str]) -> list[str]:
    given = os.environ.get("BENCH_COMPOSE")
    if given:
        return given.split()
    out = subprocess.run(["bash", str(ROOT / "scripts" / "compose-env.sh")], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"compose v2 could not be installed:\n{out.stderr[-2000:]}")
    return [out.stdout.strip().splitlines()[-1]]


def summary(runs: list[Run], base: float) -> str:
    walls = [r.wall for r in runs]
    lags = [lag for r in runs for lag in r.lags]
    med = statistics.median(walls)
    after = statistics.median(r.wall - r.listening for r in runs)
    started = statistics.median(r.started for r in runs)
    lag = f"median {statistics.median(lags) * 1000:5.0f} ms, max {max(lags) * 1000:5.0f} ms" if lags else "-"
    return (f"{runs[0].arm:<12} wall {med:6.2f} s (T' + {med - base:5.2f} s; {min(walls):.2f}-{max(walls):.2f})  "
            f"last container started {started:5.2f} s  after the last server listened {after:5.2f} s  noticed after first healthy answer {lag}")


def main() -> None:
    host = os.environ.get("DOCKER_HOST") or os.environ.get("H2OSTACK_TEST_DOCKER_HOST")
    if not host:
        raise SystemExit("set DOCKER_HOST (or H2OSTACK_TEST_DOCKER_HOST) to the Docker engine to use")
    client = docker.DockerClient(base_url=host)
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        build_standin(client)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env = {**os.environ, "DOCKER_HOST": host, "H2OSTACK_STATE_DIR": str(tmp / "state"), "COLUMNS": "200"}
        cmd = compose_command(env)
        version = subprocess.run([*cmd, "version"], capture_output=True, text=True, env=env).stdout.strip()
        arms = [a for a in ["by hand", "h2ostack", "compose", "compose tuned"]
                if a in os.environ.get("BENCH_ARMS", "by hand,h2ostack,compose,compose tuned").split(",")]
        runs: dict[str, list[Run]] = {a: [] for a in arms}
        for i in range(RUNS):
            for arm in arms if i % 2 == 0 else arms[::-1]:
                name = f"upc{os.getpid()}x{i}{arm[:2].replace(' ', '')}{arms.index(arm)}"
                ports = free_ports(N)
                if arm == "by hand":
                    run = by_hand(client, name, ports)
                elif arm == "h2ostack":
                    run = h2ostack(client, tmp, name, ports, env)
                else:
                    run = compose(client, tmp, name, ports, env, cmd, TUNED if arm == "compose tuned" else None)
                if run.missing:
                    raise SystemExit(f"{arm}: no first healthy answer or readiness seen for {run.missing}")
                runs[arm].append(run)
                print(f"  run {i + 1} {run.arm:<12} {run.wall:6.2f} s", flush=True)
    base = statistics.median(r.wall for r in runs["by hand"])
    print(f"\n`up` of {N} TGI stand-in containers that listen {T:g} s after they start ({RUNS} runs each, "
          f"interleaved; {version})")
    print(f"T' (by hand, in parallel, polled every 10 ms, container creation included): {base:.2f} s (median)")
    for arm in arms:
        print("  " + summary(runs[arm], base))
    h2o = statistics.median(r.wall for r in runs["h2ostack"])
    print(f"h2ostack {h2o - base:+.2f} s over T' (target +0.3 s)")
    if arms[2:]:
        best = min(statistics.median(r.wall for r in runs[a]) for a in arms[2:])
        print(f"compose's best arm / h2ostack: {best / h2o:.2f}x")


if __name__ == "__main__":
    main()
