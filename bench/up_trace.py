"""Run `h2ostack up` in this process with a timestamp at each phase, for bench/up_parallel.py --profile.

Usage: python bench/up_trace.py TRACE_FILE up STACK... (the rest is h2ostack's command line). The
phases are wrapped from outside (nothing in h2ostack is changed for this): interpreter up, CLI
imported, stack loaded, observed, facts gathered, planned, plan saved, and per service the shim
spawned, the server's process created (read from /proc as a child of the shim), each readiness
probe that passed and `ready`. Times are wall-clock (time.time()), written as JSON lines.
"""

from __future__ import annotations

import time

T_INTERP = time.time()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from typing import Any  # noqa: E402

OUT: list[dict[str, Any]] = [{"what": "interpreter up", "t": T_INTERP}]
LOCK = threading.Lock()


def mark(what: str, **kw: Any) -> None:
    with LOCK:
        OUT.append({"what": what, "t": time.time(), **kw})


def wrap(mod: Any, attr: str, label: str) -> None:
    fn = getattr(mod, attr)

    def wrapped(*a: Any, **kw: Any) -> Any:
        mark(f"{label} begin")
        try:
            return fn(*a, **kw)
        finally:
            mark(f"{label} end")

    setattr(mod, attr, wrapped)


def child_created(pid: int) -> float | None:
    """When the shim's child (the server) was created, from /proc at clock-tick resolution (psutil's
    create_time adds the boot time, which /proc/stat gives in whole seconds)."""
    import psutil

    try:
        kids = psutil.Process(pid).children()
        if not kids:
            return None
        with open(f"/proc/{kids[0].pid}/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (psutil.Error, OSError, ValueError, IndexError):
        return None


def main() -> None:
    trace, argv = sys.argv[1], sys.argv[2:]
    from h2ostack import cli

    mark("cli imported")
    from h2ostack import api, facts, health, loader, plan, state
    from h2ostack.runtimes import process

    mark("modules for up imported")
    wrap(loader, "load", "load")
    wrap(api.Ctx, "observe", "observe")
    wrap(facts, "gather", "gather")
    wrap(plan, "make_plan", "plan")
    wrap(state.StackState, "save_plan", "save plan")
    orig_start, orig_probe = process.start, health.probe_once
    shims: dict[str, int] = {}

    def start(sp: Any, st: Any, *a: Any, **kw: Any) -> Any:
        mark("spawn begin", service=sp.name)
        out = orig_start(sp, st, *a, **kw)
        shims[sp.name] = out.record.pid
        mark("spawn end", service=sp.name)
        return out

    def probe_once(base: str, probe: Any, *a: Any, **kw: Any) -> Any:
        why = orig_probe(base, probe, *a, **kw)
        name = next((n for n, s in current.items() if s == base.rstrip("/")), "?")
        if why is None:
            mark(f"probe {probe.name} passed", service=name)
            if name in shims and name not in created:
                created[name] = child_created(shims[name])
        elif name not in first_try:
            first_try[name] = time.time()
            mark("first probe", service=name)
        return why

    current: dict[str, str] = {}
    created: dict[str, float | None] = {}
    first_try: dict[str, float] = {}
    orig_plan = plan.make_plan

    def make_plan(*a: Any, **kw: Any) -> Any:
        p = orig_plan(*a, **kw)
        current.update({s.name: (s.url or "").rstrip("/") for s in p.all().values()})
        return p

    plan.make_plan = make_plan
    process.start = start
    health.probe_once = probe_once
    orig_event = cli._Progress.event

    def event(self: Any, ev: Any) -> None:
        mark(f"event {ev.kind}", service=ev.service)
        orig_event(self, ev)

    cli._Progress.event = event
    real_exit = os._exit

    def dump(code: int) -> None:  # the CLI's os._exit
        write()
        real_exit(code)

    def write() -> None:
        mark("exit")
        for name, t in created.items():
            OUT.append({"what": "server process created", "t": t, "service": name})
        with open(trace, "w") as fh:
            for row in OUT:
                fh.write(json.dumps(row) + "\n")

    os._exit = dump  # the CLI's own end after `up`: the trace is written just before it
    sys.argv = ["h2ostack", *argv]
    try:
        cli.main()  # ends in os._exit after a finished `up` (h2ostack since 2026-12-01)
    except SystemExit:  # an older h2ostack, or a failed `up`: the interpreter's own exit, as without the trace
        write()
        raise
    write()


if __name__ == "__main__":
    main()
