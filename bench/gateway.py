"""Benchmark: the OpenAI-compatible gateway against the same backends called directly.

1. Sequential non-streaming requests against a backend stand-in with a fixed 50 ms latency (the
   way gateway benchmarks are published), direct and through the gateway interleaved, so drift on
   this shared machine hits both alike: added latency at the median and p99
   (targets: at most 0.4 ms and 2 ms), and the gateway's own `x-h2ostack-overhead-ms`. With
   BENCH_BEFORE=DIR (a folder holding another version's `h2ostack` package, e.g. from `git archive
   REV h2ostack | tar -x -C DIR`), that version's gateway is a third arm in the same interleaving:
   before and after in one run.
2. Streams at 1, 16 and 64 at once against the real CPU vLLM (passed through) and the TGI
   stand-in (translated), measured two ways; target: throughput at 64 streams at least 98% of
   direct.
   a. In turn: rounds of direct, gateway, gateway, direct (so drift and the order of the rounds
      hit both arms alike), BENCH_ROUNDS times; medians of time to first token and tokens/s. The
      two direct rounds of each set, compared with each other, give the noise of this design on
      this machine (the A/A column): a ratio closer to 100% than that is not resolved.
   b. In the same batch: N streams direct and N through the gateway sent together, alternately,
      so both arms share every step of the backend and whatever else the machine is doing;
      tokens/s of each arm up to its own last token, the median of the per-round ratios.
3. The gateway process's memory (target: at most 200 MB).

For the streams, the gateway gets half of the cores to itself and the backends and the load
generator, which both arms of the comparison share, the other half (bench/cores.py;
BENCH_SHARED=1 leaves every process on every core).

Run: .venv/bin/python bench/gateway.py   (needs scripts/vllm-env.sh and the tiny model)
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import psutil
from cores import split  # bench/cores.py

ROOT = Path(__file__).resolve().parents[1]
N_SEQ = int(os.environ.get("BENCH_N", "300"))
MAX_TOKENS = int(os.environ.get("BENCH_TOKENS", "128"))
LEVELS = [int(x) for x in os.environ.get("BENCH_LEVELS", "1,16,64").split(",")]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
PARTS = os.environ.get("BENCH_PARTS", "sequential,streams").split(",")
BACKENDS = [x for x in os.environ.get("BENCH_BACKENDS", "").split(",") if x]  # vllm, tgi (default: both)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def cpu_ns(pid: int | None) -> int:
    """The CPU time a process's main thread has used (ns; the gateway answers on that thread)."""
    if pid is None:
        return 0
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def sequential(direct: str, via: str, model: str, gw_model: str, before: str | None = None,
               pids: dict[str, int] | None = None) -> dict[str, float]:
    """Direct, the gateway (and the `before` gateway), one request each in turn, the order
    rotated every round; with `pids` ("g", "b") also each gateway's CPU time per request, a
    figure the machine's noise moves far less than latency."""
    body = {"model": model, "prompt": "hi", "max_tokens": 4}
    gw_body = {**body, "model": gw_model}
    arms = [("d", direct, body), ("g", via, gw_body)] + ([("b", before, gw_body)] if before else [])
    lat: dict[str, list[float]] = {a: [] for a, _, _ in arms}
    over: dict[str, list[float]] = {a: [] for a, _, _ in arms}
    cpu = dict.fromkeys(lat, 0)
    pids = pids or {}
    with httpx.Client() as c:
        for _ in range(20):
            for _, url, b in arms:
                c.post(url, json=b).read()
        for i in range(N_SEQ):
            # rotated: each arm in each place in turn, and none twice in a row (reversing three arms
            # would put the middle one always between the others, and the two outer ones twice in a
            # row: measured 0.07-0.09 ms in their favour)
            for arm, url, b in arms[i % len(arms):] + arms[:i % len(arms)]:
                c0 = cpu_ns(pids.get(arm))
                t = time.perf_counter()
                r = c.post(url, json=b)
                r.read()
                lat[arm].append((time.perf_counter() - t) * 1000)
                cpu[arm] += cpu_ns(pids.get(arm)) - c0
                over[arm].append(float(r.headers.get("x-h2ostack-overhead-ms", "nan")))
    d, out = lat["d"], {"direct_p50": statistics.median(lat["d"]), "direct_p99": pct(lat["d"], 99)}
    for arm, name in (("g", "gw"), ("b", "before")):
        if arm in lat:
            g = lat[arm]
            out |= {f"{name}_p50": statistics.median(g), f"{name}_p99": pct(g, 99),
                    f"{name}_added_p50": statistics.median(g) - statistics.median(d),
                    f"{name}_added_p99": pct(g, 99) - pct(d, 99),
                    f"{name}_overhead_p50": statistics.median(over[arm]), f"{name}_overhead_p99": pct(over[arm], 99)}
            if arm in pids:
                out[f"{name}_cpu_us"] = cpu[arm] / N_SEQ / 1000
    return out


async def one_stream(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[float, int, float]:
    """Time to first token, tokens, seconds. Tokens come from the stream's `usage` where the server
    sends it (vLLM merges tokens that end inside a UTF-8 character into one event), else one per event."""
    t0 = time.perf_counter()
    first = None
    events = 0
    usage = None
    async with session.post(url, json=body) as r:
        async for line in r.content:
            if line.startswith(b"data:") and b"[DONE]" not in line:
                if b'"usage":{' in line.replace(b" ", b""):
                    usage = json.loads(line[5:])["usage"]["completion_tokens"]
                    continue
                if first is None:
                    first = time.perf_counter() - t0
                events += 1
    return first or float("nan"), usage if usage is not None else events, time.perf_counter() - t0


async def streams(url: str, body: dict, concurrency: int) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = time.perf_counter()
        res = await asyncio.gather(*(one_stream(session, url, body) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ttfts = [r[0] for r in res]
    tokens = sum(r[1] for r in res)
    return {"ttft_p50_ms": statistics.median(ttfts) * 1000, "tokens_per_s": tokens / wall, "tokens": tokens}


def before_env(before_dir: str, env: dict[str, str]) -> dict:
    """Popen's env and cwd that run the `h2ostack` package in `before_dir` (with `-m` the working
    directory comes first on the path: from the checkout it would be this version again); checked."""
    kw = {"env": {**env, "PYTHONPATH": before_dir}, "cwd": before_dir}
    where = subprocess.run([sys.executable, "-c", "import h2ostack; print(h2ostack.__file__)"], capture_output=True,
                           text=True, check=True, **kw).stdout.strip()
    if not where.startswith(str(Path(before_dir).resolve())):
        raise SystemExit(f"BENCH_BEFORE={before_dir} runs {where}, not the package there")
    return kw


def med(xs: list[dict]) -> dict[str, float]:
    return {k: statistics.median(x[k] for x in xs) for k in xs[0]}


def rounds(direct: tuple[str, dict], via: tuple[str, dict], level: int) -> tuple[dict, dict, float]:
    """ROUNDS sets of direct, gateway, gateway, direct: the median of each figure, and the median
    ratio of the second direct round of a set to its first (the A/A noise)."""
    ds, gs, aa = [], [], []
    for _ in range(ROUNDS):
        d1 = asyncio.run(streams(*direct, level))
        gs.append(asyncio.run(streams(*via, level)))
        gs.append(asyncio.run(streams(*via, level)))
        d2 = asyncio.run(streams(*direct, level))
        ds += [d1, d2]
        aa.append(d2["tokens_per_s"] / d1["tokens_per_s"])
    return med(ds), med(gs), statistics.median(aa)


async def together(direct: tuple[str, dict], via: tuple[str, dict], level: int) -> tuple[dict, dict]:
    """`level` streams direct and `level` through the gateway in one batch, sent alternately; each
    arm's tokens/s up to its own last token."""
    async def timed(session: aiohttp.ClientSession, url: str, body: dict, t0: float) -> tuple[float, int, float]:
        ttft, tokens, _ = await one_stream(session, url, body)
        return ttft, tokens, time.perf_counter() - t0

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = time.perf_counter()
        arms = [(direct, via)[i % 2] for i in range(2 * level)]
        res = await asyncio.gather(*(timed(session, url, body, t0) for url, body in arms))

    def arm(rs: list[tuple[float, int, float]]) -> dict[str, float]:
        return {"ttft_p50_ms": statistics.median(r[0] for r in rs) * 1000,
                "tokens_per_s": sum(r[1] for r in rs) / max(r[2] for r in rs)}

    return arm(res[0::2]), arm(res[1::2])


def same_batch(direct: tuple[str, dict], via: tuple[str, dict], level: int) -> tuple[dict, dict, float]:
    ds, gs, ratios = [], [], []
    for _ in range(ROUNDS):
        d, g = asyncio.run(together(direct, via, level))
        ds.append(d)
        gs.append(g)
        ratios.append(g["tokens_per_s"] / d["tokens_per_s"])
    return med(ds), med(gs), statistics.median(ratios)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    vllm_py = subprocess.run(["bash", str(ROOT / "scripts" / "vllm-env.sh")], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
    model = subprocess.run([sys.executable, "-m", "h2ostack.tinymodel",
                            str(Path.home() / ".cache" / "h2ostack" / "tiny-model")], capture_output=True,
                           text=True, check=True).stdout.strip()
    ports = {k: free_port() for k in ("fixed", "tgi", "vllm", "gw")}
    stack = tmp / "bench.yaml"
    stack.write_text(f"""\
name: benchgw
services:
  fixed: {{kind: vllm, python: {ROOT / 'tests' / 'standin-python'}, model: fixed, port: {ports['fixed']},
          env: {{STANDIN_LATENCY_MS: "50"}}}}
  tgi: {{kind: tgi, launcher: {ROOT / 'tests' / 'tgi-launcher'}, model: m/tgi, port: {ports['tgi']},
        env: {{STANDIN_TOKEN_DELAY: "0.005"}}}}
  vllm: {{kind: vllm, python: {vllm_py}, model: {model}, port: {ports['vllm']},
         args: {{served_model_name: tiny, dtype: float32, max_model_len: 256, gpu_memory_utilization: 0.1}},
         env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}}}
fronts:
  gw: {{port: {ports['gw']}, models: [fixed, tgi, vllm]}}
""")
    env = {**os.environ, "H2OSTACK_STATE_DIR": str(tmp / "state")}
    h2o = [sys.executable, "-m", "h2ostack.cli"]
    # (the sequential part alone needs only the stand-in: no CPU vLLM beside it)
    needed = ["fixed", "tgi", "vllm"] if "streams" in PARTS else ["fixed"]
    subprocess.run([*h2o, "up", str(stack), *needed], env=env, check=True, capture_output=True)
    gw = subprocess.Popen([sys.executable, "-m", "h2ostack.gateway", str(stack), "--front", "gw", "--port",
                           str(ports["gw"])], env=env)
    before_dir = os.environ.get("BENCH_BEFORE")
    old = old_base = None
    if before_dir:
        old_port = free_port()
        old = subprocess.Popen([sys.executable, "-m", "h2ostack.gateway", str(stack), "--front", "gw", "--port",
                                str(old_port)], **before_env(before_dir, env))
        old_base = f"http://127.0.0.1:{old_port}/v1"
    try:
        base = f"http://127.0.0.1:{ports['gw']}/v1"
        for url in [base] + ([old_base] if old_base else []):
            for _ in range(100):
                try:
                    if httpx.get(url + "/models").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
        seq: dict[str, float] = {}
        if "sequential" in PARTS:
            seq = sequential(f"http://127.0.0.1:{ports['fixed']}/v1/completions", base + "/completions", "fixed",
                             "fixed", old_base and old_base + "/completions",
                             {"g": gw.pid, **({"b": old.pid} if old else {})})
            print(f"Sequential non-streaming, backend with a fixed 50 ms latency ({N_SEQ} requests each, interleaved)")
            print(f"  {'':<30}{'median':>10}{'p99':>10}")
            print(f"  {'direct':<30}{seq['direct_p50']:>8.2f}ms{seq['direct_p99']:>8.2f}ms")
            for name, label in (("gw", "the gateway"), ("before", f"the gateway of {before_dir}")):
                if f"{name}_p50" not in seq:
                    continue
                print(f"  {'through ' + label:<30}{seq[f'{name}_p50']:>8.2f}ms{seq[f'{name}_p99']:>8.2f}ms")
                print(f"  {'  added':<30}{seq[f'{name}_added_p50']:>8.2f}ms{seq[f'{name}_added_p99']:>8.2f}ms"
                      "   (targets 0.4 ms / 2 ms)")
                print(f"  {'  x-h2ostack-overhead-ms':<30}{seq[f'{name}_overhead_p50']:>8.2f}ms"
                      f"{seq[f'{name}_overhead_p99']:>8.2f}ms")
                print(f"  {'  its CPU time per request':<30}{seq[f'{name}_cpu_us'] / 1000:>8.3f}ms")
        if "streams" in PARTS:
            # the streams against the CPU vLLM: the backends on their own cores from here on
            print(f"\nCores: {split(h2o, str(stack), env, (gw.pid,), load_with_backends=True)}")
            rows = []
            for name, direct_url, body_direct, gw_model in (
                ("vLLM (CPU), passed through", f"http://127.0.0.1:{ports['vllm']}/v1/completions",
                 {"model": "tiny", "prompt": "Hello", "max_tokens": MAX_TOKENS, "stream": True,
                  "ignore_eos": True, "stream_options": {"include_usage": True}}, "vllm"),
                ("TGI stand-in, translated", f"http://127.0.0.1:{ports['tgi']}/generate_stream",
                 {"inputs": "Hello", "parameters": {"max_new_tokens": MAX_TOKENS}}, "tgi"),
            ):
                if BACKENDS and gw_model not in BACKENDS:
                    continue
                via_body = ({**body_direct, "model": gw_model} if gw_model == "vllm" else
                            {"model": gw_model, "prompt": "Hello", "max_tokens": MAX_TOKENS, "stream": True})
                direct, via = (direct_url, body_direct), (base + "/completions", via_body)
                asyncio.run(streams(*direct, 4))  # warm both paths
                asyncio.run(streams(*via, 4))
                for level in LEVELS:
                    rows.append((name, level, *rounds(direct, via, level), *same_batch(direct, via, level)))
            print(f"\nStreams ({MAX_TOKENS} tokens each; medians of {ROUNDS} sets)")
            print("  in turn: rounds of direct, gateway, gateway, direct; A/A: the second direct round of a set"
                  " against the first")
            print("  same batch: N direct and N through the gateway sent together; ratio: median of the rounds' ratios")
            print(f"  {'backend':<30}{'streams':>8}{'ttft direct':>13}{'ttft gw':>10}{'tok/s direct':>14}"
                  f"{'tok/s gw':>10}{'ratio':>8}{'A/A':>8} |{'ttft direct':>13}{'ttft gw':>10}{'tok/s direct':>14}"
                  f"{'tok/s gw':>10}{'ratio':>8}")
            for name, level, d, g, aa, bd, bg, bratio in rows:
                ratio = g["tokens_per_s"] / d["tokens_per_s"] if d["tokens_per_s"] else float("nan")
                print(f"  {name:<30}{level:>8}{d['ttft_p50_ms']:>11.1f}ms{g['ttft_p50_ms']:>8.1f}ms"
                      f"{d['tokens_per_s']:>14.0f}{g['tokens_per_s']:>10.0f}{ratio:>8.1%}{aa:>8.1%} |"
                      f"{bd['ttft_p50_ms']:>11.1f}ms{bg['ttft_p50_ms']:>8.1f}ms"
                      f"{bd['tokens_per_s']:>14.0f}{bg['tokens_per_s']:>10.0f}{bratio:>8.1%}")
        rss = psutil.Process(gw.pid).memory_info().rss / 2**20
        print(f"\nGateway process memory (RSS): {rss:.0f} MB (target: at most 200 MB)")
        print(json.dumps({"sequential": seq, "rss_mb": rss}))
    finally:
        for p in [gw] + ([old] if old else []):
            p.terminate()
            p.wait(10)
        subprocess.run([*h2o, "down", str(stack)], env=env, capture_output=True)


if __name__ == "__main__":
    main()
