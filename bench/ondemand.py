"""Benchmark: models on demand, on the CPU with the tiny model and `transformers serve`.

1. First answer of a put-away model through the gateway, against that server's plain cold start
   (its own command started by hand, asked every 20 ms until it answers) measured just before,
   run by run. Two on-demand services share two stated GPUs, one fitting at a time, so each request is a
   swap: the other model is put away (stopped) first; that put-away time is read from the manager's
   own record and shown apart. Target: cold start + at most 100 ms of h2ostack.
2. The gateway's own added time (`x-h2ostack-overhead-ms`) for a model on demand that is up, beside
   an always-on model of the same kind, sequential requests interleaved. Target: at most 1 ms
   median added.

BENCH_RUNS (default 3) swaps and cold starts each; BENCH_REQUESTS (default 200) for part 2.
H2OSTACK_TEST_TINY_MODEL names a tiny model already built.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "200"))
GPUS = {"H2OSTACK_GPUS": "0,1", "H2OSTACK_GPU_MEMORY": "10"}
ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_model() -> Path:
    given = os.environ.get("H2OSTACK_TEST_TINY_MODEL")
    if given:
        return Path(given)
    from h2ostack.tinymodel import build_tiny_model

    return build_tiny_model(Path.home() / ".cache" / "h2ostack" / "tiny-model")


def answer_when_up(url: str, model: str, timeout: float = 300) -> float:
    """Seconds until a chat request to `url` is answered, asking every 20 ms."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if httpx.post(url + "/v1/chat/completions", json={"model": model, **ASK}, timeout=60).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def cold_start(plan: object, name: str) -> float:
    """The server's own command, started by hand, until its first answer."""
    from h2ostack.spec import reveal

    sp = plan.services[name]  # type: ignore[attr-defined]
    env = {**os.environ, **{k: reveal(v) or "" for k, v in sp.env.items()}}
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(sp.command), env=env, cwd=sp.workdir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        answer_when_up(sp.url, sp.served_model)
        return time.perf_counter() - t0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def main() -> None:
    model = tiny_model()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ondemand-"))
    env = {**os.environ, **GPUS, "H2OSTACK_STATE_DIR": str(tmp / "state")}
    os.environ.update(env)
    front = free_port()
    svc = "kind: transformers, model: {m}, device: cpu, port: {p}"
    stack = tmp / "stack.yaml"
    stack.write_text(
        f"name: benchod\nservices:\n"
        f"  a: {{{svc.format(m=model, p=free_port())}, gpus: 2, vram_gb: 8, on_demand: true}}\n"
        f"  b: {{{svc.format(m=model, p=free_port())}, gpus: 2, vram_gb: 8, on_demand: true}}\n"
        f"  plain: {{{svc.format(m=model, p=free_port())}}}\n"
        f"fronts:\n  gw: {{port: {front}, models: [a, b, plain]}}\n")
    cli = [sys.executable, "-m", "h2ostack.cli"]
    subprocess.run([*cli, "up", str(stack), "plain"], env=env, check=True, capture_output=True)
    gateway = subprocess.Popen([sys.executable, "-m", "h2ostack.gateway", str(stack), "--front", "gw", "--port",
                                str(front)], env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{front}"
    try:
        from h2ostack.api import load_plan

        _, _, plan = load_plan(stack, check_ports=False)
        answer_when_up(base, "plain")
        od_file = tmp / "state" / "benchod" / "ondemand.json"
        swaps, put_aways, cold = [], [], []
        for _ in range(RUNS):
            # b up (a put away), then a started by hand on its own port, then a through the gateway
            got = httpx.post(base + "/v1/chat/completions", json={"model": "b", **ASK}, timeout=300)
            assert got.status_code == 200, got.text
            cold.append(cold_start(plan, "a"))
            t0 = time.perf_counter()
            got = httpx.post(base + "/v1/chat/completions", json={"model": "a", **ASK}, timeout=300)
            swaps.append(time.perf_counter() - t0)
            assert got.status_code == 200, got.text
            put_aways.append(json.loads(od_file.read_text())["b"]["put_away_s"])
        added = {"plain": [], "a": []}
        for _ in range(REQUESTS):
            for name in added:
                got = httpx.post(base + "/v1/chat/completions", json={"model": name, **ASK}, timeout=60)
                added[name].append(float(got.headers["x-h2ostack-overhead-ms"]))
    finally:
        gateway.terminate()
        gateway.wait(30)
        subprocess.run([*cli, "kill", "--all"], env=env, capture_output=True)

    med = statistics.median
    net = [s - p - c for s, p, c in zip(swaps, put_aways, cold, strict=True)]
    print(f"cold start to first answer, by hand: median {med(cold):.3f} s  ({', '.join(f'{c:.3f}' for c in cold)})")
    print(f"put-away model, first answer through the gateway (a swap): median {med(swaps):.3f} s; of it the other "
          f"model's put-away median {med(put_aways):.3f} s")
    print(f"h2ostack's cost over the cold start (swap - put-away - cold start, each run's own): median "
          f"{med(net) * 1000:.0f} ms ({', '.join(f'{n * 1000:.0f}' for n in net)}) (target 100 ms)")
    for name, values in added.items():
        q = statistics.quantiles(values, n=100)
        print(f"gateway added per request, {'on demand, up' if name == 'a' else 'always-on'}: median "
              f"{med(values):.3f} ms, p99 {q[98]:.3f} ms")
    print(f"on-demand minus always-on, median: {med(added['a']) - med(added['plain']):+.3f} ms (target: at most "
          "1 ms added)")


if __name__ == "__main__":
    main()
