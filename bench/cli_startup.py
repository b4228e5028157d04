"""Benchmark: `h2ostack --help` and `h2ostack status` wall time against a bare interpreter
importing typer and pydantic (the baseline, in the same run; target at most 3x), and what
planning a 40-service stack adds on top.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = int(os.environ.get("BENCH_RUNS", "15"))


def timed(argv: list[str], env: dict[str, str]) -> float:
    samples = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env = {**os.environ, "H2OSTACK_STATE_DIR": str(tmp / "state"), "H2OSTACK_GPUS": "0,1,2,3,4,5,6,7"}
        big = tmp / "forty.yaml"
        lines = ["name: forty", "services:"]
        for i in range(40):
            lines += [f"  s{i}:", "    kind: vllm", f"    model: org/model-{i}", f"    port: {20000 + i}"]
        big.write_text("\n".join(lines) + "\n")
        py = sys.executable
        base = timed([py, "-c", "import typer, pydantic"], env)
        rows = [
            ("baseline: python -c 'import typer, pydantic'", base),
            ("h2ostack --help", timed([py, "-m", "h2ostack.cli", "--help"], env)),
            ("h2ostack status (no stacks)", timed([py, "-m", "h2ostack.cli", "status"], env)),
            ("h2ostack plan (40 services)", timed([py, "-m", "h2ostack.cli", "plan", str(big), "--json"], env)),
            ("h2ostack validate (40 services)", timed([py, "-m", "h2ostack.cli", "validate", str(big)], env)),
        ]
    print(f"CLI start-up, median of {RUNS} runs")
    for label, t in rows:
        print(f"  {label:<48} {t * 1000:7.0f} ms   {t / base:4.2f}x baseline")
    ok = all(t / base <= 3 for label, t in rows[1:3])
    print("  targets met (--help and status at most 3x)" if ok else "  TARGET MISSED")


if __name__ == "__main__":
    main()
