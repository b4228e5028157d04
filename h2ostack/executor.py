"""One small dependency runner: start in dependency order, in parallel, and stop in reverse.

Each node runs as soon as all of its dependencies have succeeded; a failure marks every node
that depends on it as skipped, and (with `fail_fast`) sets `cancel` so waits in flight stop.
Tested with plain values; `up` and `down` hand it their start and stop functions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    state: str  # ok | failed | skipped | cancelled
    value: object = None
    error: BaseException | None = None


def reverse(deps: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """For stopping: a node waits for everything that depends on it."""
    out: dict[str, list[str]] = {n: [] for n in deps}
    for node, ds in deps.items():
        for d in ds:
            if d in out:
                out[d].append(node)
    return out


def run_graph(deps: Mapping[str, list[str]], fn: Callable[[str], object], fail_fast: bool = False,
              cancel: threading.Event | None = None, max_workers: int = 32) -> dict[str, Outcome]:
    cancel = cancel or threading.Event()
    outcomes: dict[str, Outcome] = {}
    pending = {n: [d for d in ds if d in deps] for n, ds in deps.items()}
    running: dict[Future[object], str] = {}

    def blocked(node: str) -> str | None:
        for d in pending[node]:
            if d in outcomes and outcomes[d].state != "ok":
                return d
        return None

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(deps) or 1))) as pool:
        while pending or running:
            for node in list(pending):
                bad = blocked(node)
                if bad is not None:
                    outcomes[node] = Outcome("skipped", f"'{bad}' did not start")
                    del pending[node]
                elif cancel.is_set():
                    outcomes[node] = Outcome("cancelled")
                    del pending[node]
                elif all(d in outcomes for d in pending[node]):
                    del pending[node]
                    running[pool.submit(fn, node)] = node
            if not running:
                if pending:  # only nodes whose deps will never run (a cycle): refuse them
                    for node in list(pending):
                        outcomes[node] = Outcome("skipped", "dependency cycle")
                        del pending[node]
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                node = running.pop(fut)
                try:
                    outcomes[node] = Outcome("ok", fut.result())
                except BaseException as exc:  # noqa: BLE001 - reported per node
                    outcomes[node] = Outcome("failed", error=exc)
                    if fail_fast:
                        cancel.set()
    return outcomes
