"""The first process of every started service: runs the server as its child, in its own session.

It is the process group's leader, so `down` signals the group and reaches every child the server
forked (vLLM's EngineCore and workers included). When the server exits, the shim writes its exit
code where `status` finds it, sweeps what is left of the group so nothing is orphaned holding a
GPU, and exits with the same code. It ignores SIGTERM itself: the signal sent to the group reaches
the server, and the shim waits to record how the server ended.

Usage: python -S h2ostack/shim.py EXIT_FILE -- ARGV...
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def _write_exit(path: str, rc: int) -> None:
    info = {"code": rc if rc >= 0 else 128 - rc, "signal": -rc if rc < 0 else None, "at": time.time()}
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            json.dump(info, fh)
        os.replace(tmp, path)
    except OSError:
        pass  # the state dir may be gone; the exit is then simply not recorded


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m h2ostack.shim EXIT_FILE -- ARGV...", file=sys.stderr)
        return 2
    exit_file, cmd = argv[0], argv[2:]
    # a Python-level handler (not SIG_IGN, which the server would inherit across exec)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    try:
        child = subprocess.Popen(cmd)
    except OSError as exc:
        print(f"h2ostack: cannot start {cmd[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        _write_exit(exit_file, 127)
        return 127
    while True:
        try:
            rc = child.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
            continue
    how = f"signal {-rc}" if rc < 0 else f"code {rc}"
    print(f"h2ostack: server exited with {how}", file=sys.stderr, flush=True)
    _write_exit(exit_file, rc)
    # leave nothing of the group behind (forked workers outlive a killed parent)
    pgid = os.getpgid(0)
    try:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _others_in_group(pgid):
            time.sleep(0.1)
        if _others_in_group(pgid):
            os.killpg(pgid, signal.SIGKILL)  # ends the shim too, after the exit file is written
    except ProcessLookupError:
        pass
    return rc if rc >= 0 else 128 - rc


def _others_in_group(pgid: int) -> bool:
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
        except (OSError, IndexError, ValueError):
            continue
    return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
