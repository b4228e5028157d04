"""Per-stack state under H2OSTACK_STATE_DIR: the masked plan, a pidfile per process, log files.

Layout: `<root>/<stack>/plan.json`, `run/<service>.json` (pid, pgid, start time, config hash),
`run/<service>.exit` (written by the shim when the server exits), `logs/<service>.log`, `lock`.
Writes are atomic (write, fsync, rename). Nothing secret is ever written here: the plan is
stored through `Plan.to_json()`, which masks by construction.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def state_root() -> Path:
    return Path(os.environ.get("H2OSTACK_STATE_DIR") or Path.home() / ".local" / "state" / "h2ostack").expanduser()


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ProcRecord:
    """A pidfile: enough to find the process group again and to never signal a reused pid."""

    service: str
    pid: int
    pgid: int
    create_time: float
    config_hash: str
    started_at: float
    port: int | None = None
    kind: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class StackState:
    def __init__(self, stack: str, root: Path | None = None):
        self.stack = stack
        self.root = (root or state_root()) / stack

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def log_path(self, service: str) -> Path:
        return self.log_dir / f"{service}.log"

    def exit_path(self, service: str) -> Path:
        return self.run_dir / f"{service}.exit"

    def pidfile(self, service: str) -> Path:
        return self.run_dir / f"{service}.json"

    def save_plan(self, plan_json: dict[str, Any], source: str) -> None:
        write_json(self.root / "plan.json", {"plan": plan_json, "source": source, "saved_at": time.time()})

    def load_plan(self) -> dict[str, Any] | None:
        return read_json(self.root / "plan.json")

    def save_record(self, rec: ProcRecord) -> None:
        write_json(self.pidfile(rec.service), rec.__dict__)

    def records(self) -> dict[str, ProcRecord]:
        out = {}
        if self.run_dir.is_dir():
            for p in sorted(self.run_dir.glob("*.json")):
                data = read_json(p)
                if isinstance(data, dict):
                    with contextlib.suppress(TypeError, KeyError):
                        out[p.stem] = ProcRecord.from_json(data)
        return out

    def exit_info(self, service: str) -> dict[str, Any] | None:
        return read_json(self.exit_path(service))

    def auth_path(self, service: str) -> Path:
        """An h2oGPT front's login database (it holds the passwords h2oGPT checks): 0600, gone at `down`."""
        return self.run_dir / f"{service}.auth.db"

    def forget(self, service: str) -> None:
        auth = self.auth_path(service)
        for p in (self.pidfile(service), self.exit_path(service), auth, auth.with_name(auth.name + ".lock"),
                  auth.with_name(auth.name + "-journal")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    @contextlib.contextmanager
    def lock(self, wait: bool = True) -> Iterator[None]:
        """One changing command per stack at a time (up/up, up/down); `status` never takes it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def known_stacks(root: Path | None = None) -> list[str]:
    base = root or state_root()
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir())
