"""Services as processes: each in its own session and process group, led by the shim.

Found again by pidfile (pid, pgid and start time, so a reused pid is never signalled) or, with
the state dir gone, by the markers every process of a service carries in its environment
(H2OSTACK_STACK, H2OSTACK_SERVICE, H2OSTACK_STATE_DIR). Never by process name. A pidfile alone is
never trusted: the process it names is signalled only if it also carries this stack's and this
service's markers and leads the recorded process group. A malformed pidfile is skipped and
reported (the service's processes are still found by their markers).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from h2ostack.plan_types import ServicePlan
from h2ostack.runtimes.base import Observed
from h2ostack.spec import reveal
from h2ostack.state import ProcRecord, StackState

SHIM = str(Path(__file__).resolve().parent.parent / "shim.py")
MARK_STACK, MARK_SERVICE, MARK_STATE = "H2OSTACK_STACK", "H2OSTACK_SERVICE", "H2OSTACK_STATE_DIR"


@dataclass
class Started:
    record: ProcRecord
    popen: subprocess.Popen[bytes] | None = None

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen else None


def process_env(plan: ServicePlan, state: StackState) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in plan.env.items():
        env[key] = reveal(value) or ""
    env[MARK_STACK] = state.stack
    env[MARK_SERVICE] = plan.name
    env[MARK_STATE] = str(state.root.parent)
    # the shim's restart policy and liveness probe (no secrets among them)
    env["H2OSTACK_RESTART"] = plan.restart
    env["H2OSTACK_MAX_RESTARTS"] = "" if plan.max_restarts is None else str(plan.max_restarts)
    if plan.port:
        env["H2OSTACK_PORT"] = str(plan.port)
    if plan.is_front and "H2OGPT_AUTH" in plan.env:  # h2oGPT keeps its logins in a file: the state dir's
        env["H2OGPT_AUTH_FILENAME"] = str(state.auth_path(plan.name))
    if plan.gpus:  # before a restart the shim waits until NVML shows the old server's memory released
        env["H2OSTACK_GPU_IDS"] = ",".join(str(g) for g in plan.gpus)
        with contextlib.suppress(ImportError):
            import pynvml  # nvidia-ml-py: one module, which the stdlib-only shim may import from here

            env["H2OSTACK_NVML_PATH"] = str(Path(pynvml.__file__).parent)
    if plan.liveness is not None and plan.unhealthy_after:
        env["H2OSTACK_LIVENESS_URL"] = (plan.url or "") + plan.liveness.path
        env["H2OSTACK_UNHEALTHY_AFTER"] = str(plan.unhealthy_after)
        env["H2OSTACK_LIVENESS_INTERVAL"] = str(min(5.0, max(0.2, plan.unhealthy_after / 5)))
        if plan.liveness.body is not None:
            env["H2OSTACK_CANARY"] = json.dumps(plan.liveness.body)
        from h2ostack import backends

        backend = backends.find(plan.kind)
        if backend is not None and backend.api_key_env:  # the variable's name: the key stays where it is
            env["H2OSTACK_LIVENESS_KEY_ENV"] = backend.api_key_env
    return env


def start(plan: ServicePlan, state: StackState, popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen
          ) -> Started:
    assert plan.command is not None
    state.ensure("run")
    state.forget(plan.name)
    if plan.is_front and "H2OGPT_AUTH" in plan.env:
        from h2ostack.backends.h2ogpt import prepare_auth_db

        prepare_auth_db(state.auth_path(plan.name), reveal(plan.env["H2OGPT_AUTH"]) or "[]")
    with state.open_log(plan.name) as log:
        log.write(f"--- h2ostack: starting {plan.name} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        log.flush()
        # the shim needs only the standard library: -S skips site-packages and starts faster
        argv = [sys.executable, "-S", SHIM, str(state.exit_path(plan.name)), "--", *plan.command]
        proc = popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=plan.workdir,
                     env=process_env(plan, state), start_new_session=True)
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        created = 0.0
    rec = ProcRecord(plan.name, proc.pid, proc.pid, created, plan.config_hash, time.time(), plan.port, plan.kind)
    state.save_record(rec)
    return Started(rec, proc)


def carries_markers(proc: psutil.Process, stack: str, state_root: Path, service: str | None = None) -> bool:
    """Whether the process was started by h2ostack for this stack (and service) under this state dir."""
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        return False
    return (env.get(MARK_STACK) == stack and env.get(MARK_STATE) == str(state_root)
            and (service is None or env.get(MARK_SERVICE) == service))


def verified(rec: ProcRecord, state: StackState) -> psutil.Process | None:
    """The pidfile's process if it is still the one h2ostack started for this service: same start
    time, leading the recorded process group, carrying the stack's markers. Else None."""
    try:
        proc = psutil.Process(rec.pid)
        if abs(proc.create_time() - rec.create_time) > 0.05:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if rec.pgid != rec.pid or os.getpgid(rec.pid) != rec.pgid:
            return None
    except (psutil.Error, OSError):
        return None
    return proc if carries_markers(proc, state.stack, state.root.parent, rec.service) else None


def marked(stack: str, state_root: Path, service: str | None = None) -> list[psutil.Process]:
    """Every live process carrying this stack's markers (optionally one service's)."""
    out = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me or not carries_markers(proc, stack, state_root, service):
            continue
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
    return out


def marked_stacks(state_root: Path) -> list[str]:
    """The stacks whose processes run under this state dir, by their markers alone (the state dir
    itself may be gone)."""
    import re

    names = set()
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get(MARK_STATE) == str(state_root) and env.get(MARK_SERVICE) and proc.pid != os.getpid():
            names.add(env.get(MARK_STACK) or "")
    return sorted(n for n in names if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", n) and ".." not in n)


def _marked_port(procs: list[psutil.Process]) -> int | None:
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError, ValueError):
            port = int(proc.environ().get("H2OSTACK_PORT", ""))
            if 0 < port < 65536:
                return port
    return None


def service_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(MARK_SERVICE)
    except (psutil.Error, OSError):
        return None


def _signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    procs = list(procs)
    ours = {p.pid for p in procs}
    groups = set()
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError):
            groups.add(os.getpgid(proc.pid))
    for pgid in groups & ours:
        # only groups led by one of our own processes: the shim's session, never a stranger's group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for proc in procs:  # a child that left the group (setsid) still carries the markers
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def members(state: StackState, service: str, rec: ProcRecord | None) -> list[psutil.Process]:
    procs = {p.pid: p for p in marked(state.stack, state.root.parent, service)}
    if rec is not None:
        leader = verified(rec, state)
        if leader is not None:
            procs.setdefault(leader.pid, leader)
    return list(procs.values())


def stop(state: StackState, service: str, rec: ProcRecord | None, timeout: float, force: bool = False) -> bool:
    """SIGTERM to the group, SIGKILL after `timeout` (or at once with force). True if anything ran."""
    procs = members(state, service, rec)
    if not procs:
        return False
    if not force:
        _signal_all(procs, signal.SIGTERM)
        _gone, alive = psutil.wait_procs(procs, timeout=timeout)
        # children forked meanwhile
        alive = [*alive, *(p for p in members(state, service, rec) if p not in alive)]
        if not alive:
            return True
        procs = alive
    _signal_all(procs, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)
    return True


def tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a log file, read from its end."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            chunk = min(size, max(4096, lines * 300))
            fh.seek(size - chunk)
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class _ProcHandle:
    def __init__(self, started: Started, state: StackState):
        self.started = started
        self.state = state

    def exit_code(self) -> int | None | bool:
        code = self.started.exit_code()
        if code is None:
            return None
        info = self.state.exit_info(self.started.record.service) or {}
        return info.get("code", code)


class ProcessRuntime:
    mode = "process"

    def __init__(self, state: StackState):
        self.state = state

    def observe(self) -> dict[str, Observed]:
        out = {}
        records, malformed = self.state.read_records()
        strays: dict[str, list[psutil.Process]] = {}
        for proc in marked(self.state.stack, self.state.root.parent):
            name = service_of(proc)
            if name:
                strays.setdefault(name, []).append(proc)
        for name in sorted(set(records) | set(strays) | set(malformed)):
            rec = records.get(name)
            leader = verified(rec, self.state) if rec else None
            procs = strays.get(name, [])
            alive = leader is not None or bool(procs)
            server = _server_pid(leader) if leader else (procs[0].pid if procs else None)
            info = self.state.exit_info(name) or {}
            info = {k: v for k, v in info.items() if isinstance(v, int) and not isinstance(v, bool)
                    or k == "last_probe_failure" and isinstance(v, str)}
            code = info.get("code") if not alive else None
            detail = "" if rec else "found by its environment markers (no pidfile)"
            if alive and rec and leader is None:
                detail = "its shim is gone; processes remain"
            if name in malformed:
                detail = malformed[name] + (f"; {detail}" if alive else "")
            port = rec.port if rec else _marked_port(procs)
            out[name] = Observed(name, "process", alive, rec.config_hash if rec else "", port,
                                 str(server or (rec.pid if rec else "")), rec.started_at if rec else None, code,
                                 detail, info.get("restarts", 0), info.get("code") if alive else code,
                                 info.get("last_probe_failure"))
        return out

    def start(self, plan: ServicePlan) -> _ProcHandle:
        return _ProcHandle(start(plan, self.state), self.state)

    def stop(self, name: str, timeout: float, force: bool = False) -> bool:
        rec = self.state.records().get(name)  # a malformed one: None, the markers alone find the processes
        return stop(self.state, name, rec, timeout, force)

    def log_tail(self, name: str, lines: int) -> str:
        return tail(self.state.log_path(name), lines)

    def log_path(self, name: str) -> str | None:
        return str(self.state.log_path(name))


def _server_pid(leader: psutil.Process) -> int:
    """The server under the shim: the pid a user would look for in `ps`."""
    with contextlib.suppress(psutil.Error):
        children = leader.children()
        if children:
            return children[0].pid
    return leader.pid
