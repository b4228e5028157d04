"""Per-stack state under H2OSTACK_STATE_DIR: the masked plan, a pidfile per process, log files.

Layout: `<root>/<stack>/plan.json`, `run/<service>.json` (pid, pgid, start time, config hash),
`run/<service>.exit` (written by the shim when the server exits), `logs/<service>.log`, `lock`.
Writes are atomic (write, fsync, rename). Nothing secret is ever written here: the plan is
stored through `Plan.to_json()`, which masks by construction.

The state dir is private: directories are created 0700 and files 0600; a directory or file that is
a symlink where records, logs or the lock are written is refused, and so is a state dir owned by
another user. A stack's name is a name (the service-name rule), never a path: it resolves only
under the state root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from h2ostack.errors import NotFound

# the service-name rule (spec.NAME_RE), repeated here so the state module needs no models
STACK_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
DIR_MODE, FILE_MODE = 0o700, 0o600


class UnsafeState(NotFound):
    """The state dir (or a path in it) is a symlink, not a directory, or another user's: refused
    (exit 2, like an unknown stack)."""


ONDEMAND_FILE = "ondemand.json"  # the on-demand manager's view of its models, for `status`


def state_root() -> Path:
    return Path(os.environ.get("H2OSTACK_STATE_DIR") or Path.home() / ".local" / "state" / "h2ostack").expanduser()


def check_stack_name(name: str) -> str:
    if not isinstance(name, str) or not STACK_NAME_RE.match(name):
        raise NotFound(f"{name!r} is not a stack name (a letter, then letters, digits, '-' or '_'; at most 63): "
                       "give the stack file or the name of a stack under the state dir")
    return name


def _check_dir(path: Path, create: bool) -> None:
    """`path` is a real directory of this user (created 0700 when `create`), or UnsafeState."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, DIR_MODE)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeState(f"state dir {path} is a symlink; refusing to use it (records and logs are never "
                          "written through a link)")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeState(f"state dir {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeState(f"state dir {path} belongs to another user (uid {st.st_uid}); refusing to use it. "
                          "Point H2OSTACK_STATE_DIR at a directory of your own")
    if create and st.st_mode & 0o077:
        os.chmod(path, DIR_MODE)  # made by an older version with the umask's mode


def secure_dirs(root: Path, *subdirs: str, create: bool = True) -> Path:
    """Check (and with `create`, make) the state root, then each of `subdirs` below it in turn."""
    if create:
        root.parent.mkdir(parents=True, exist_ok=True)
    _check_dir(root, create)
    path = root
    for part in subdirs:
        path = path / part
        _check_dir(path, create)
    return path


def _open_private(path: Path, flags: int) -> int:
    """A file of the state dir, created 0600, never through a symlink."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafeState(f"{path} is a symlink; refusing to write through it") from None
        raise exc
    if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
        os.fchmod(fd, FILE_MODE)  # made by an older version with the umask's mode
    return fd


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600, O_EXCL
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


MAX_RECORD = 64 * 1024  # a pidfile is a few hundred bytes


MAX_PLAN = 16 * 1024 * 1024  # a saved plan: a few KiB per service


def read_record_file(path: Path, limit: int = MAX_RECORD) -> Any:
    """A pidfile's JSON, read without trusting the file: a regular file (never a FIFO or a device,
    never through a symlink), at most `limit` bytes. Raises ValueError saying what is wrong."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        raise ValueError(f"cannot be opened ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("not JSON") from None


def _field(data: dict[str, Any], key: str, kinds: tuple[type, ...], optional: bool = False) -> Any:
    if key not in data:
        if optional:
            return None
        raise ValueError(f"no {key!r}")
    value = data[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{key!r} is not a {' or '.join(k.__name__ for k in kinds)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key!r} is not finite")
    return value


@dataclass(frozen=True)
class ProcRecord:
    """A pidfile: enough to find the process group again and to never signal a reused pid (or a
    stranger's: before any signal the process must also carry this stack's markers)."""

    service: str
    pid: int
    pgid: int
    create_time: float
    config_hash: str
    started_at: float
    port: int | None = None
    kind: str = ""

    @classmethod
    def from_json(cls, data: Any) -> ProcRecord:
        """The record, checked field by field; ValueError saying what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        rec = cls(_field(data, "service", (str,)), _field(data, "pid", (int,)), _field(data, "pgid", (int,)),
                  float(_field(data, "create_time", (int, float))), _field(data, "config_hash", (str,)),
                  float(_field(data, "started_at", (int, float))), _field(data, "port", (int,), optional=True),
                  _field(data, "kind", (str,), optional=True) or "")
        if not 1 < rec.pid < 2**22 or not 1 < rec.pgid < 2**22:
            raise ValueError("'pid' or 'pgid' out of range")
        if rec.port is not None and not 0 < rec.port < 65536:
            raise ValueError("'port' out of range")
        return rec


class StackState:
    def __init__(self, stack: str, root: Path | None = None):
        self.stack = check_stack_name(stack)
        self.base = root or state_root()
        self.root = self.base / stack
        secure_dirs(self.base, stack, create=False)  # what exists already must be safe to read

    def ensure(self, *subdirs: str) -> Path:
        """The stack's dir (and `subdirs`), private and checked, before anything is written there."""
        return secure_dirs(self.base, self.stack, *subdirs)

    def open_log(self, service: str) -> BinaryIO:
        """The service's log, appended to; created 0600; never a symlink."""
        self.ensure("logs")
        return os.fdopen(_open_private(self.log_path(service), os.O_WRONLY | os.O_APPEND), "ab")

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
        self.ensure()
        write_json(self.root / "plan.json", {"plan": plan_json, "source": source, "saved_at": time.time()})

    def load_plan(self) -> dict[str, Any] | None:
        return read_json(self.root / "plan.json")

    def read_plan(self) -> Any:
        """The saved plan's JSON as the file holds it (None: no file), read without trusting the file
        (ValueError saying what is wrong with it)."""
        path = self.root / "plan.json"
        if not os.path.lexists(path):
            return None
        return read_record_file(path, MAX_PLAN)

    def save_record(self, rec: ProcRecord) -> None:
        self.ensure("run")
        write_json(self.pidfile(rec.service), rec.__dict__)

    def records(self) -> dict[str, ProcRecord]:
        return self.read_records()[0]

    def read_records(self) -> tuple[dict[str, ProcRecord], dict[str, str]]:
        """The pidfiles that hold a well-formed record for their service, and, apart, what is
        wrong with each of the others (skipped: never a reason to leave the rest running)."""
        out: dict[str, ProcRecord] = {}
        bad: dict[str, str] = {}
        try:
            paths = sorted(self.run_dir.glob("*.json")) if self.run_dir.is_dir() else []
        except OSError:
            paths = []
        for p in paths:
            try:
                rec = ProcRecord.from_json(read_record_file(p))
                if rec.service != p.stem:
                    raise ValueError(f"it names service {rec.service!r}")
            except ValueError as exc:
                bad[p.stem] = f"malformed pidfile {p.name} skipped: {exc}"
                continue
            out[p.stem] = rec
        return out, bad

    def exit_info(self, service: str) -> dict[str, Any] | None:
        try:
            data = read_record_file(self.exit_path(service))
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def ondemand_view(self) -> dict[str, Any]:
        """What the front's on-demand manager last wrote of its models (h2ostack.ondemand), or {}."""
        try:
            data = read_json(self.root / ONDEMAND_FILE)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

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
        self.ensure()
        with os.fdopen(_open_private(self.root / "lock", os.O_RDWR), "r+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def known_stacks(root: Path | None = None) -> list[str]:
    base = root or state_root()
    if not base.is_dir():
        return []
    secure_dirs(base, create=False)
    # only real directories with a stack's name: a link or a stray entry is never taken for a stack
    return sorted(p.name for p in base.iterdir()
                  if STACK_NAME_RE.match(p.name) and p.is_dir() and not p.is_symlink())
