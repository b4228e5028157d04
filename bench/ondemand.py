"""Benchmark: models on demand, h2ostack's own time in a start, on servers that start in a known time.

1. A stopped on-demand model's first answer, taken apart in the same start. The servers are the
   OpenAI stand-in (tests/openai_standin.py, as a vLLM) that sleeps START_DELAY before listening
   and writes down when it listened and its pid (SPAWN_LOG), and its first
   healthy answer (READY_LOG). Per run, with the model put away (idle_timeout) beforehand:
   - arrival -> spawn: the request sent -> the server's process started (its start time, read
     with psutil in 10 ms steps against the wall clock as calibrated by spawns by hand);
   - ready -> first byte: the server's first healthy answer (h2ostack's readiness poll) -> the
     response's first byte at the client; and, stricter, from the server listening (the readiness
     poll's wait then counts as h2ostack's);
   - less the plain request time to that server once up (first byte of the same request sent to
     it directly, median of 20).
   h2ostack's part = arrival -> spawn + ready -> first byte - plain. Target: at most 100 ms.
2. The gateway's own added time (`x-h2ostack-overhead-ms`) for a model on demand that is up, beside
   an always-on model of the same kind, sequential requests interleaved. Target: at most 1 ms
   median added.

The gateway and this process are pinned apart from nothing else (bench/cores.py: the servers it
starts run where it runs; BENCH_SHARED=1 leaves all on every core). BENCH_RUNS (default 7) starts,
BENCH_REQUESTS (default 200) for part 2, START_DELAY (default 1.0 s).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cores  # noqa: E402

HERE = Path(__file__).resolve().parent
STANDIN = HERE.parent / "tests" / "standin-python"
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "200"))
DELAY = float(os.environ.get("START_DELAY", "1.0"))
GPUS = {"H2OSTACK_GPUS": "0,1", "H2OSTACK_GPU_MEMORY": "10"}
ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def first_byte(client: httpx.Client, url: str, model: str) -> tuple[float, float]:
    """(sent, first byte of the response) on the wall clock, for one chat request to `url`."""
    sent = time.time()
    with client.stream("POST", url + "/v1/chat/completions", json={"model": model, **ASK}, timeout=300) as resp:
        got = time.time()
        body = resp.read()
    if resp.status_code != 200:
        raise SystemExit(f"{model}: {resp.status_code} {body[:300]!r}")
    return sent, got


def clock_offset() -> float:
    """psutil's process start times (jiffies since a boot time in whole seconds) against the wall
    clock: `create_time - spawned`, least of 9 spawns by hand (10 ms steps)."""
    got = []
    for _ in range(9):
        t0 = time.time()
        proc = subprocess.Popen(["sleep", "5"])
        got.append(psutil.Process(proc.pid).create_time() - t0)
        proc.kill()
        proc.wait()
    return min(got)


def lines(path: Path) -> list[list[str]]:
    return [ln.split() for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ondemand-"))
    spawn_log, ready_log = tmp / "spawn.log", tmp / "ready.log"
    env = {**os.environ, **GPUS, "H2OSTACK_STATE_DIR": str(tmp / "state"), "START_DELAY": str(DELAY),
           "SPAWN_LOG": str(spawn_log), "READY_LOG": str(ready_log)}
    os.environ.update(env)
    front = free_port()
    svc = f"kind: vllm, python: {STANDIN}, model: m, port: {{p}}"
    ports = {n: free_port() for n in ("a", "b", "plain")}
    stack = tmp / "stack.yaml"
    stack.write_text(
        "name: benchod\nservices:\n"
        f"  a: {{{svc.format(p=ports['a'])}, gpus: 2, vram_gb: 8, on_demand: true, idle_timeout: 1}}\n"
        f"  b: {{{svc.format(p=ports['b'])}, gpus: 2, vram_gb: 8, on_demand: true}}\n"
        f"  plain: {{{svc.format(p=ports['plain'])}}}\n"
        f"fronts:\n  gw: {{port: {front}, models: [a, b, plain]}}\n")
    cli = [sys.executable, "-m", "h2ostack.cli"]
    subprocess.run([*cli, "up", str(stack), "plain"], env=env, check=True, capture_output=True)
    gateway = subprocess.Popen([sys.executable, "-m", "h2ostack.gateway", str(stack), "--front", "gw", "--port",
                                str(front)], env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{front}"
    od_file = tmp / "state" / "benchod" / "ondemand.json"
    client = httpx.Client()
    try:
        pinned = cores.split(cli, str(stack), env, (gateway.pid,))
        offset = clock_offset()
        deadline = time.monotonic() + 60
        while True:
            try:
                first_byte(client, base, "plain")
                break
            except (httpx.HTTPError, SystemExit):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        parts: dict[str, list[float]] = {k: [] for k in ("to_spawn", "ready_to_byte", "listen_to_ready", "plain",
                                                         "total", "server")}
        for _ in range(RUNS):
            # put away first: idle_timeout 1 s; the manager's view says when
            while od_file.exists() and json.loads(od_file.read_text()).get("a", {}).get("phase") != "stopped":
                time.sleep(0.05)
            spawned_before = len(lines(spawn_log))
            sent, got = first_byte(client, base, "a")
            mine = [ln for ln in lines(spawn_log) if ln[0] == "a"]
            assert len(lines(spawn_log)) == spawned_before + 1, "the request did not start the model"
            listening = float(mine[-1][2])
            started = psutil.Process(int(mine[-1][3])).create_time() - offset  # the server's exec by the shim
            ready = float([ln for ln in lines(ready_log) if ln[0] == "a"][-1][1])
            direct = [(lambda s, g: g - s)(*first_byte(client, f"http://127.0.0.1:{ports['a']}", "m"))
                      for _ in range(20)]
            plain = statistics.median(direct)
            parts["to_spawn"].append(started - sent)
            parts["ready_to_byte"].append(got - ready)
            parts["listen_to_ready"].append(ready - listening)
            parts["plain"].append(plain)
            parts["total"].append(got - sent)
            parts["server"].append(ready - started)
            if not od_file.exists():
                raise SystemExit("the manager wrote no view")
        added: dict[str, list[float]] = {"plain": [], "b": []}
        first_byte(client, base, "b")  # b up (a put away)
        for _ in range(REQUESTS):
            for name in added:
                got_r = client.post(base + "/v1/chat/completions", json={"model": name, **ASK}, timeout=60)
                added[name].append(float(got_r.headers["x-h2ostack-overhead-ms"]))
    finally:
        client.close()
        gateway.terminate()
        gateway.wait(30)
        subprocess.run([*cli, "kill", "--all"], env=env, capture_output=True)

    med = statistics.median
    ms = {k: [v * 1000 for v in vs] for k, vs in parts.items()}
    own = [s + r - p for s, r, p in zip(ms["to_spawn"], ms["ready_to_byte"], ms["plain"], strict=True)]
    strict = [o + w for o, w in zip(own, ms["listen_to_ready"], strict=True)]

    def show(values: list[float]) -> str:
        return f"median {med(values):.1f} ms ({', '.join(f'{v:.1f}' for v in values)})"

    print(f"{RUNS} starts of a stopped on-demand stand-in (START_DELAY {DELAY:g} s); {pinned}")
    print(f"spawn times from the server process's start time (psutil, 10 ms steps; clock offset {offset:.3f} s)")
    print(f"request -> first byte, whole: median {med(ms['total']):.1f} ms; the server's own start (spawn -> first "
          f"healthy answer): median {med(ms['server']):.1f} ms")
    print(f"  arrival -> spawn:                 {show(ms['to_spawn'])}")
    print(f"  first healthy answer -> first byte: {show(ms['ready_to_byte'])}")
    print(f"  plain request once up (subtracted): {show(ms['plain'])}")
    print(f"  listening -> first healthy answer (the readiness poll): {show(ms['listen_to_ready'])}")
    print(f"h2ostack's part (arrival->spawn + ready->first byte - plain): {show(own)} (target 100 ms)")
    print(f"h2ostack's part with the readiness poll's wait counted too: {show(strict)}")
    for name, values in added.items():
        q = statistics.quantiles(values, n=100)
        print(f"gateway added per request, {'on demand, up' if name == 'b' else 'always-on'}: median "
              f"{med(values):.3f} ms, p99 {q[98]:.3f} ms")
    print(f"on-demand minus always-on, median: {med(added['b']) - med(added['plain']):+.3f} ms (target: at most "
          "1 ms added)")


if __name__ == "__main__":
    main()
