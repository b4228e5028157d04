"""The first process of every started service: runs the server as its child, in its own session.

It is the process group's leader, so `down` signals the group and reaches every child the server
forked (vLLM's EngineCore and workers included). When the server exits, the shim records how
(`run/<service>.exit`, read by `status`), sweeps what is left of the group so nothing is
orphaned holding a GPU, and either restarts the server (the service's `restart:` policy, with
backoff, once the old port is free and NVML shows the old server's GPU memory released) or exits with the server's code. With a liveness URL it also
restarts a server that stops answering for `unhealthy_after` seconds.

It ignores SIGTERM itself, so the signal sent to the group reaches the server and the shim stays
to record the ending; a SIGTERM means "stop", never "restart".

The shim needs only the standard library and runs with `python -S`. It takes no secrets: they
reach the server through the environment it inherits. (Not supervisord: it takes each program's
environment, secrets included, from its config file, and the state dir must never hold a secret.)

Usage: python -S h2ostack/shim.py EXIT_FILE -- ARGV...
Policy (environment, optional): H2OSTACK_RESTART=no|on-failure|always, H2OSTACK_MAX_RESTARTS,
H2OSTACK_LIVENESS_URL, H2OSTACK_UNHEALTHY_AFTER, H2OSTACK_LIVENESS_INTERVAL, H2OSTACK_PORT,
H2OSTACK_CANARY (a JSON body: the liveness probe then asks for a token), H2OSTACK_GPU_IDS and
H2OSTACK_NVML_PATH (the service's GPUs, and where nvidia-ml-py's `pynvml` module lives).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

# json, socket and urllib are imported where they are used (the record of an ending, a restart,
# the liveness probe): the server starts after the shim's imports, 30-50 ms sooner without them

BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
PORT_FREE_TIMEOUT = 60.0
GPU_RELEASE_TIMEOUT = 120.0


class Shim:
    def __init__(self, exit_file: str, cmd: list[str], env: dict[str, str]):
        self.exit_file = exit_file
        self.cmd = cmd
        self.policy = env.get("H2OSTACK_RESTART", "no")
        self.max_restarts = int(env["H2OSTACK_MAX_RESTARTS"]) if env.get("H2OSTACK_MAX_RESTARTS") else None
        self.liveness_url = env.get("H2OSTACK_LIVENESS_URL")
        self.unhealthy_after = float(env.get("H2OSTACK_UNHEALTHY_AFTER") or 0)
        self.interval = float(env.get("H2OSTACK_LIVENESS_INTERVAL") or 5)
        self.probe_timeout = max(1.0, min(10.0, self.unhealthy_after / 2))
        self.port = int(env["H2OSTACK_PORT"]) if env.get("H2OSTACK_PORT") else None
        self.gpus = [int(g) for g in env.get("H2OSTACK_GPU_IDS", "").split(",") if g.strip()]
        self.nvml_path = env.get("H2OSTACK_NVML_PATH")
        self.stopping = False
        self.restarts = 0
        self.last_probe_failure: str | None = None
        self.last_rc: int | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    # -- records ------------------------------------------------------------------------
    def record(self, rc: int | None, running: bool) -> None:
        import json

        rc = self.last_rc = rc if rc is not None else self.last_rc
        info = {"restarts": self.restarts, "running": running, "at": time.time(),
                "last_probe_failure": self.last_probe_failure, "policy": self.policy}
        if rc is not None:
            info.update({"code": rc if rc >= 0 else 128 - rc, "signal": -rc if rc < 0 else None})
        tmp = f"{self.exit_file}.tmp{os.getpid()}"
        try:
            # private like the rest of the state dir (0600), and never written through a symlink
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(info, fh)
            os.replace(tmp, self.exit_file)
        except OSError:
            pass  # the state dir may be gone; the record is then simply not kept

    def say(self, text: str) -> None:
        print(f"h2ostack: {text}", file=sys.stderr, flush=True)

    # -- the loop -----------------------------------------------------------------------
    def on_term(self, *_: object) -> None:
        self.stopping = True

    def wants_restart(self, rc: int) -> bool:
        if self.stopping or self.policy == "no":
            return False
        if self.policy == "on-failure" and rc == 0:
            return False
        return self.max_restarts is None or self.restarts < self.max_restarts

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # a Python-level handler (not SIG_IGN, which the server would inherit across exec)
            signal.signal(sig, self.on_term)
        if self.liveness_url and self.unhealthy_after > 0:
            threading.Thread(target=self.watch, daemon=True).start()
        backoff = BACKOFF_START
        while True:
            started = time.monotonic()
            try:
                with self.lock:
                    self.child = subprocess.Popen(self.cmd)
            except OSError as exc:
                self.say(f"cannot start {self.cmd[0]}: {exc.strerror}")
                self.record(127, False)
                return 127
            if self.restarts:
                self.record(None, True)
            rc = self.child.wait()
            how = f"signal {-rc}" if rc < 0 else f"code {rc}"
            self.say(f"server exited with {how}")
            old = {self.child.pid} | self.sweep()
            restart = self.wants_restart(rc)
            self.record(rc, restart)
            if not restart:
                return rc if rc >= 0 else 128 - rc
            if time.monotonic() - started > 60:
                backoff = BACKOFF_START  # it ran a while: start the backoff over
            self.restarts += 1
            self.say(f"restarting in {backoff:g} s (restart {self.restarts}, policy {self.policy})")
            deadline = time.monotonic() + backoff
            while time.monotonic() < deadline and not self.stopping:
                time.sleep(0.1)
            if self.stopping:
                return rc if rc >= 0 else 128 - rc
            self.wait_port_free()
            self.wait_gpu_release(old)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def wait_port_free(self) -> None:
        """A restart must not fail because the old server still holds its port."""
        if not self.port:
            return
        import socket

        deadline = time.monotonic() + PORT_FREE_TIMEOUT
        while time.monotonic() < deadline and not self.stopping:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.2)

    def wait_gpu_release(self, old: set[int]) -> None:
        """A restart must not fail for want of memory the old server's processes still hold:
        wait until none of them is among the GPUs' processes in NVML (the driver frees a dead
        process's memory a little after it is gone)."""
        if not self.gpus:
            return
        got = release_wait(old, self.gpus, self.nvml_path, GPU_RELEASE_TIMEOUT, lambda: self.stopping)
        if got.outcome == "no NVML":
            self.say("NVML cannot be read: restarting without waiting for GPU memory")
        elif got.left:
            self.say(f"GPU memory still held by {sorted(got.left)} after {GPU_RELEASE_TIMEOUT:g} s; restarting anyway")

    def sweep(self) -> set[int]:
        """Leave nothing of the group behind (forked workers outlive a killed parent); the pids found."""
        me, pgid = os.getpid(), os.getpgid(0)
        others = _group_members(pgid, me)
        for pid in others:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _group_members(pgid, me):
            time.sleep(0.1)
        for pid in _group_members(pgid, me):
            _signal(pid, signal.SIGKILL)
        return set(others)

    # -- liveness -----------------------------------------------------------------------
    def watch(self) -> None:
        healthy_once = False
        failing_since: float | None = None
        while not self.stopping:
            time.sleep(self.interval)
            why = probe(self.liveness_url or "", self.probe_timeout)
            now = time.monotonic()
            if why is None:
                healthy_once, failing_since = True, None
                continue
            self.last_probe_failure = f"{time.strftime('%H:%M:%S')} {why}"
            if not healthy_once:
                continue  # still starting: readiness is `up`'s business
            failing_since = failing_since or now
            if now - failing_since >= self.unhealthy_after:
                self.say(f"liveness: no healthy answer for {now - failing_since:.0f} s ({why}); restarting")
                with self.lock:
                    child = self.child
                if child is not None and child.poll() is None:
                    child.terminate()
                    try:
                        child.wait(10)
                    except subprocess.TimeoutExpired:
                        child.kill()
                healthy_once, failing_since = False, None


def probe(url: str, timeout: float) -> str | None:
    """The liveness probe: the one "is it up" check (`h2ostack.protocols.probe`, standard library
    only, so importable here) over urllib; the canary body (`H2OSTACK_CANARY`) POSTed where the
    stack gave one."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if package_root not in sys.path:  # run as a script with -S: the package is beside it, not on the path
        sys.path.append(package_root)
    from h2ostack.protocols.probe import probe as probe_once
    from h2ostack.protocols.probe import urllib_requester

    body = os.environ.get("H2OSTACK_CANARY")
    headers = {}
    key = os.environ.get(os.environ.get("H2OSTACK_LIVENESS_KEY_ENV") or "")  # the server's own key, by its name
    if key:  # servers guard /v1/* with it
        headers["authorization"] = "Bearer " + key
    check = _Liveness("POST" if body else "GET", body.encode() if body else None, timeout)
    why = probe_once(url, check, urllib_requester(), headers, explain=True)
    return None if why is None else why.removeprefix("liveness: ")


class _Liveness:
    """The one request the liveness probe makes (the shape of `backends.base.Probe`)."""

    name, path, expect_model = "liveness", "", None

    def __init__(self, method: str, body: bytes | None, timeout: float):
        self.method, self.body, self.timeout = method, body, timeout


def wait_released(old: set[int], holders: Callable[[], set[int]], timeout: float, stop: Callable[[], bool],
                  sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> set[int]:
    """Poll `holders()` (the pids using the GPUs) until none of `old` is among them, `stop()`
    says to give up, or `timeout` passes; the old pids still holding memory (empty: released)."""
    deadline = clock() + timeout
    while True:
        try:
            left = old & holders()
        except Exception:  # NVML went away: nothing more to learn from it
            return set()
        if not left or stop() or clock() >= deadline:
            return left
        sleep(0.5)


class Released:
    """How a wait for GPU memory ended: `outcome` released | timed out | no NVML | stopped."""

    def __init__(self, outcome: str, seconds: float, left: set[int]):
        self.outcome, self.seconds, self.left = outcome, seconds, left

    def __str__(self) -> str:
        if self.outcome == "no NVML":
            return "GPU memory not checked (NVML cannot be read here)"
        if self.outcome == "released":
            return f"GPU memory released in {self.seconds:.1f} s"
        return f"GPU memory still held by {sorted(self.left)} after {self.seconds:.1f} s ({self.outcome})"


def release_wait(old: set[int], gpus: list[int], nvml_path: str | None, timeout: float, stop: Callable[[], bool],
                 need_gib: float | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 view: tuple[Callable[[], set[int]], Callable[[], float]] | None = None) -> Released:
    """The one wait before a server starts on GPUs another just left (a restart here, an on-demand
    start or wake in h2ostack.ondemand): until NVML lists none of the old pids on these GPUs and,
    with `need_gib`, every one of them has that much free again; bounded by `timeout`."""
    t0 = clock()
    if view is None:
        view = nvml_view(gpus, nvml_path)
    if view is None:
        return Released("no NVML", 0.0, set())
    holders, free = view
    left = wait_released(old, holders, timeout, stop, sleep, clock)
    if left:
        return Released("stopped" if stop() else "timed out", clock() - t0, left)
    deadline = t0 + timeout
    while need_gib is not None:
        try:
            if free() >= need_gib:
                break
        except Exception:  # NVML went away: nothing more to learn from it
            break
        if stop() or clock() >= deadline:
            return Released("stopped" if stop() else "timed out", clock() - t0, set())
        sleep(0.2)
    return Released("released", clock() - t0, set())


def nvml_view(gpus: list[int], path: str | None) -> tuple[Callable[[], set[int]], Callable[[], float]] | None:
    """The pids holding memory on these GPUs, and the least free GiB among them, by NVML."""
    holders = nvml_holders(gpus, path)
    if holders is None:
        return None
    import pynvml  # nvidia-ml-py: importable, since nvml_holders found it

    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in gpus]

    def free() -> float:
        return min(pynvml.nvmlDeviceGetMemoryInfo(h).free for h in handles) / 2**30

    return holders, free


def nvml_holders(gpus: list[int], path: str | None) -> Callable[[], set[int]] | None:
    """A function giving the pids with memory on these GPUs, by NVML; None where NVML is not there."""
    if path and path not in sys.path:
        sys.path.append(path)
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in gpus]
    except Exception:  # no module, no driver, no such GPU
        return None

    def holders() -> set[int]:
        pids: set[int] = set()
        for h in handles:
            for get in (pynvml.nvmlDeviceGetComputeRunningProcesses, pynvml.nvmlDeviceGetGraphicsRunningProcesses):
                with contextlib.suppress(pynvml.NVMLError):
                    pids |= {p.pid for p in get(h)}
        return pids

    return holders


def _group_members(pgid: int, me: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, sig)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -S shim.py EXIT_FILE -- ARGV...", file=sys.stderr)
        return 2
    return Shim(argv[0], argv[2:], dict(os.environ)).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
