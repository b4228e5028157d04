"""Cores for the benchmarks: the backends on the first half, what is measured on the other.

On a GPU server the inference engine does not compute on the cores of the gateway, the front or
the browser; on a small CPU box running the CPU vLLM, a shared core would measure the contention
between them rather than the component under test. BENCH_SHARED=1 leaves every process on every
core.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess

import psutil

# the cores this run may use, as they were when it began: `split` narrows this process to a half,
# and a second call still splits the whole set
ALL = tuple(sorted(os.sched_getaffinity(0)))


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of a process and of its descendants onto `cores`."""
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    for p in procs:
        for t in p.threads():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(t.id, cores)


def split(h2o: list[str], stack: str, env: dict[str, str], measured: tuple[int, ...] = (),
          load_with_backends: bool = False) -> str:
    """Pin the stack's running services to the first half of the cores and the `measured`
    processes to the other half. This process (the load, and what it starts from now on) goes
    with the measured ones, or with the backends when `load_with_backends`: then the measured
    process has cores of its own and what both arms of a comparison share (backends and load)
    shares the rest. Says what was done."""
    cores = list(ALL)
    if os.environ.get("BENCH_SHARED") == "1" or len(cores) < 2:
        return f"every process on every core ({len(cores)})"
    backend, rest = set(cores[:len(cores) // 2]), set(cores[len(cores) // 2:])
    # (status exits 1 while a service is not healthy: its rows are printed all the same)
    rows = json.loads(subprocess.run([*h2o, "status", stack, "--json"], env=env, capture_output=True,
                                     text=True).stdout)
    for row in rows:
        if str(row.get("ident", "")).isdigit():
            pin(int(row["ident"]), backend)
    for pid in measured:
        pin(pid, rest)
    os.sched_setaffinity(0, backend if load_with_backends else rest)
    load = "the load" + (" with the backends" if load_with_backends else " beside it")
    return f"backends on cores {sorted(backend)}; what is measured on {sorted(rest)}; {load}"
