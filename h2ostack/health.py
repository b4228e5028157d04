"""Readiness: each kind's probes in order (health, model listed, one short generation), and the
phase a server is in on its way there.

Time and HTTP are passed in, so the waiting logic is tested with fakes; `up` passes a real
httpx client. A service whose process exits while starting is reported at once.

Phases (`PHASES`): `downloading` (the process runs and its weights are being fetched: the hub
cache's `.incomplete` files growing, or the engine's log showing a download's progress), `loading`
(the process runs, its port does not answer), `warming` (the port answers, the warm-up request is
not answered yet), `ready`, `asleep` (vLLM's sleep mode), `stopped (on demand)` (started by the
gateway's next request) and `stopped`. The readiness timeout is meant for loading: time during
which a download makes progress (its bytes grew within `DOWNLOAD_STALL` seconds) does not count
towards it, and is bounded by a limit of its own, `download_timeout` (`H2OSTACK_DOWNLOAD_TIMEOUT`,
default `DOWNLOAD_TIMEOUT`). A download that stalls counts towards the readiness timeout again.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from h2ostack.backends.base import Probe

PHASES = ("downloading", "loading", "warming", "ready", "asleep", "stopped (on demand)", "stopped")
DOWNLOAD_TIMEOUT = 6 * 3600.0  # seconds a download may take, on top of the readiness timeout
DOWNLOAD_STALL = 60.0  # seconds without new bytes after which a download no longer holds the timeout off
DOWNLOAD_LOOK_EVERY = 1.0  # seconds between two looks at the cache and the log


def download_timeout(environ: Mapping[str, str] | None = None) -> float:
    """`H2OSTACK_DOWNLOAD_TIMEOUT` seconds when it is a positive finite number, else the default."""
    raw = (os.environ if environ is None else environ).get("H2OSTACK_DOWNLOAD_TIMEOUT", "")
    try:
        value = float(raw)
    except ValueError:
        return DOWNLOAD_TIMEOUT
    return value if math.isfinite(value) and value > 0 else DOWNLOAD_TIMEOUT


@dataclass(frozen=True)
class Download:
    """How far a download is: bytes on disk and/or a percentage, whichever its source shows."""

    done: int | None = None  # bytes
    percent: float | None = None

    @property
    def amount(self) -> float:
        """What grows as the download progresses."""
        return float(self.done) if self.done is not None else (self.percent or 0.0)

    def __str__(self) -> str:
        parts = []
        if self.percent is not None:
            parts.append(f"{self.percent:.0f}%")
        if self.done is not None:
            parts.append(human_bytes(self.done))
        return ", ".join(parts)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # (not reached)


REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_dir(env: Mapping[str, Any] | None = None) -> Path:
    """The Hugging Face hub cache a server uses: its env's HF_HUB_CACHE or HF_HOME, else this process's."""
    for source in (env or {}, os.environ):
        cache = source.get("HF_HUB_CACHE")
        if isinstance(cache, str) and cache:
            return Path(cache)
        home = source.get("HF_HOME")
        if isinstance(home, str) and home:
            return Path(home) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def repo_ids(argv: Iterable[Any]) -> list[str]:
    """The hub ids an argv names (`org/name`, not a path on this machine)."""
    return [a for a in argv if isinstance(a, str) and REPO_ID.match(a) and not Path(a).exists()]


def hub_download(hub: Path, repo_id: str) -> Download | None:
    """A download of `repo_id` under way in the hub cache (its blobs have `.incomplete` files): the
    bytes of its blobs so far; None when nothing is being downloaded."""
    blobs = hub / ("models--" + repo_id.replace("/", "--")) / "blobs"
    try:
        entries = list(os.scandir(blobs))
    except OSError:
        return None
    if not any(e.name.endswith(".incomplete") for e in entries):
        return None
    total = 0
    for e in entries:
        try:
            total += e.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return Download(total)


# TGI's download lines ("Download: [2/4] -- ETA: 0:01:10") and tqdm bars ("45%|████  | 2.20G/4.95G")
_TGI = re.compile(r"Download: \[(\d+)/(\d+)\]")
_TQDM = re.compile(r"(\d{1,3})%\|[^|\n]*\|\s*([\d.]+)([kMGT]?)B?/([\d.]+)([kMGT]?)B?")
_UNIT = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def log_download(text: str) -> Download | None:
    """A download the last lines of an engine's log show under way (not finished), if any."""
    lines = [ln for ln in re.split(r"[\r\n]", text) if ln.strip()]
    if not lines:
        return None
    last = lines[-1]
    m = _TGI.search(last)
    if m:
        done, total = int(m.group(1)), int(m.group(2))
        return Download(percent=100.0 * done / total) if total > 0 and done < total else None
    m = _TQDM.search(last)
    if m and int(m.group(1)) < 100:
        return Download(int(float(m.group(2)) * _UNIT[m.group(3)]), float(m.group(1)))
    return None


def detect_download(hub: Path, ids: Iterable[str], log: Callable[[], str] | None = None) -> Download | None:
    """What a starting server is downloading: the hub cache first, then its log."""
    for repo in ids:
        got = hub_download(hub, repo)
        if got is not None:
            return got
    return log_download(log()) if log is not None else None


def derive_phase(started: bool, alive: bool, answering: bool | None, recorded: str | None,
                 on_demand: bool = False, download: Download | None = None, restarted: bool = False) -> str:
    """The phase `status` shows, from what it observed: the process (`alive`), whether the port
    answers the first probe (`answering`, None: not probed), the phase last recorded for the
    service (by `up` or the gateway), a download under way, and whether the server was restarted
    (by its restart policy) since. A ready server that stops answering stays `ready` (its health
    says `unhealthy`); a restarted one loads again."""
    if not started:
        return "ready" if answering else "-"
    if not alive:
        return "stopped (on demand)" if on_demand else "stopped"
    if recorded == "asleep":
        return "asleep"
    if answering is None:
        return recorded or "-"
    if not answering:
        if recorded == "ready" and not restarted:
            return "ready"
        return f"downloading ({download})" if download is not None else "loading"
    return "warming" if recorded in ("downloading", "loading", "warming") else "ready"


class NotReady(Exception):
    pass


class Exited(Exception):
    def __init__(self, code: int | None):
        self.code = code
        super().__init__(f"exited with code {code}" if code is not None else "exited")


class Cancelled(Exception):
    pass


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # parsed JSON, or None


# (method, url, json body, timeout, headers) -> Answer; raises on connection errors
Requester = Callable[[str, str, Any, float, dict[str, str]], Answer]


def httpx_requester() -> Requester:
    import httpx

    client = httpx.Client(trust_env=False)

    def request(method: str, url: str, body: Any, timeout: float, headers: dict[str, str]) -> Answer:
        resp = client.request(method, url, json=body, timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
                              headers=headers)
        try:
            data = resp.json()
        except ValueError:
            data = None
        return Answer(resp.status_code, data)

    return request


def names_model(body: Any, model: str) -> bool:
    """/v1/models lists it, TGI's /info names it, or a listing of `models` names it (Ollama's /api/tags)."""
    if not isinstance(body, dict):
        return False
    if isinstance(body.get("data"), list):
        return any(isinstance(m, dict) and m.get("id") == model for m in body["data"])
    if isinstance(body.get("models"), list):
        return any(isinstance(m, dict) and model in (m.get("name"), m.get("model")) for m in body["models"])
    return body.get("model_id") == model


def probe_once(base: str, probe: Probe, request: Requester, headers: dict[str, str]) -> str | None:
    """None when the probe passes, else why not."""
    try:
        ans = request(probe.method, base.rstrip("/") + probe.path, probe.body, probe.timeout, headers)
    except Exception as exc:  # connection refused, reset, timeout: all mean "not yet"
        return f"{probe.name}: {type(exc).__name__}"
    if not 200 <= ans.status < 300:
        return f"{probe.name}: HTTP {ans.status}"
    if probe.expect_model and not names_model(ans.body, probe.expect_model):
        return f"{probe.name}: model {probe.expect_model!r} not listed yet"
    return None


def wait_ready(base: str, probes: tuple[Probe, ...] | list[Probe], timeout: float, interval: float,
               exit_code: Callable[[], int | None | bool], request: Requester,
               headers: dict[str, str] | None = None, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep, cancel: threading.Event | None = None,
               on_step: Callable[[str], None] | None = None,
               on_phase: Callable[[str, str], None] | None = None,
               download: Callable[[], Download | None] | None = None,
               download_limit: float = DOWNLOAD_TIMEOUT) -> float:
    """Block until every probe has passed in order; return the seconds it took.

    `exit_code()` returns None while the server runs (False: unknown, keep waiting). `on_phase(phase,
    detail)` hears each change of phase (`loading`, `downloading` with its progress, `warming`,
    `ready`); `download()` tells a download under way (looked at once a second while the port does
    not answer). `timeout` bounds the wait less the time a download made progress; `download_limit`
    bounds that time.
    """
    start = clock()
    step = 0
    last = "not probed yet"
    headers = headers or {}
    shown: tuple[str, str] | None = None
    downloading = 0.0  # seconds of the wait during which a download made progress
    looked = grew = -math.inf  # when the download was last looked at, and last seen growing
    amount = -1.0
    got: Download | None = None
    before = start

    def phase(name: str, detail: str = "") -> None:
        nonlocal shown
        if on_phase is not None and shown != (name, detail):
            shown = (name, detail)
            on_phase(name, detail)

    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        code = exit_code()
        if code is not None and code is not False:
            raise Exited(code if isinstance(code, int) and not isinstance(code, bool) else None)
        while step < len(probes):
            why = probe_once(base, probes[step], request, headers)
            if why is not None:
                last = why
                break
            step += 1
            if step < len(probes):
                phase("warming")  # the port answers: the next probes (the warm-up request) may take a while
                if on_step:
                    on_step(probes[step].name)
        now = clock()
        if step == len(probes):
            phase("ready")
            return now - start
        if step == 0 and download is not None:
            if now - looked >= DOWNLOAD_LOOK_EVERY:
                looked = now
                got = download()
                if got is not None and got.amount > amount:
                    if amount >= 0:
                        grew = now
                    amount = got.amount
            if got is not None and now - grew <= DOWNLOAD_STALL:
                downloading += now - before
        before = now
        if step > 0:
            phase("warming")
        elif got is not None and download is not None:
            phase("downloading", str(got))
        else:
            phase("loading")
        if downloading > download_limit:
            raise NotReady(f"still downloading after {download_limit:g} s (H2OSTACK_DOWNLOAD_TIMEOUT; {got})")
        if now - start - downloading > timeout:
            raise NotReady(f"not ready after {timeout:g} s ({last})")
        sleep(interval)
