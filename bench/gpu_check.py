#!/usr/bin/env python3
"""The GPU check: what h2ostack plans for GPUs, against what happens on a real card, in one run.

Run by a GPU machine's own `python3` (3.12 with torch, transformers, accelerate and nvidia-ml-py,
no network) from the repository root, with the wheel folder scripts/gpu-wheels.sh builds:

    python3 bench/gpu_check.py --wheels .whl/gpu --out OUT_DIR

It makes a throwaway environment (--system-site-packages: torch and transformers come from the
machine) and installs the working tree's h2ostack and what the machine lacks from the wheel
folder, offline; then, each step timed, with h2ostack's own commands as a user types them:

 1. facts    NVML's GPUs (index, PCI bus id, name, memory) against the facts `plan` reads;
 2. serve    a random Llama built on the planned GPU (under the plan's CUDA_DEVICE_ORDER and
             CUDA_VISIBLE_DEVICES, whose device must be NVML's by PCI bus id), saved as
             safetensors; `plan`'s memory estimate for it against what NVML shows once
             `transformers serve` has loaded it through `h2ostack up`; the server's processes
             seen by NVML on exactly the planned GPU;
 3. chat     a chat request through the stack's gateway (`python -m h2ostack.gateway`) answered
             by that server;
 4. restart  `kill -9` of the server (`restart: on-failure`): until NVML shows its memory
             released, until the shim starts the new server, until that answers again;
 5. down     `h2ostack down`: until no process of the stack holds GPU memory;
 6. refusal  a second service on a GPU that does not exist, and one beyond the card's memory:
             `up` refuses both before anything starts, with the card's real figures;
 7. swap     two on-demand services of the model on the card, under a stated memory budget
             (`--gpu-memory`) that holds one of them: the gateway starts A, then B (A put away:
             seconds to NVML showing A's memory free, to B on the card, to B's first answer),
             then A again.

One JSON document goes to stdout (and OUT_DIR/gpu-check.json); progress goes to stderr. Every
wait is bounded; on any failure the stack is still taken down (`down`, then `kill`) and the
failed step named; the exit code is 0 only when every step passed. `--dry-run` runs on a CPU
machine without NVML: it builds a small random Llama on the CPU and checks the stack files and
the plan's figures against stated GPUs (`--gpus 0 --gpu-memory 141`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "bench" / "gpu-requirements.txt"
SCHEMA_VERSION = 1
STEP_NAMES = ("bootstrap", "facts", "serve", "chat", "restart", "down", "refusal", "swap")
GIB = 2**30
BOOTSTRAP_ENV = "H2OSTACK_GPU_CHECK_BOOTSTRAP"
TEARDOWN_RESERVE_S = 60.0
# the dry run's stated machine: one 141 GiB card (an H200)
DRY_GPUS, DRY_GPU_MEMORY = "0", 141.0
# (hidden, intermediate, attention heads, key/value heads): Llama-style shapes, largest first
SHAPES = ((4096, 11008, 32, 8), (2048, 5504, 16, 4), (1024, 2816, 8, 2), (256, 688, 4, 2))
VOCAB = 512  # h2ostack.tinymodel's tokenizer


# ---------------------------------------------------------------------------------------------
# Pure parts: no GPU, no processes (tested in tests/unit/test_gpu_check.py)
# ---------------------------------------------------------------------------------------------

def requirement_names(text: str) -> list[str]:
    """The distribution names a requirements file lists, normalised (PEP 503), in order."""
    names = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if m is None:
            raise ValueError(f"not a requirement: {raw!r}")
        names.append(re.sub(r"[-_.]+", "-", m.group(0)).lower())
    return names


def layer_params(hidden: int, intermediate: int, heads: int, kv_heads: int) -> int:
    """Parameters of one Llama decoder layer: attention (q, k, v, o), the gated MLP, two norms."""
    head_dim = hidden // heads
    attention = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim
    return attention + 3 * hidden * intermediate + 2 * hidden


def llama_shape(weights_gib: float, vocab: int = VOCAB, bytes_per_param: int = 2) -> dict[str, Any]:
    """A Llama config whose weights come to about `weights_gib` (bf16): the largest shape with at
    least two layers, layers rounded to the nearest; `params` and `gib` are what it comes to."""
    if not weights_gib > 0:
        raise ValueError(f"weights must be a positive size in GiB, got {weights_gib}")
    target = weights_gib * GIB / bytes_per_param
    for i, (hidden, inter, heads, kv) in enumerate(SHAPES):
        per_layer = layer_params(hidden, inter, heads, kv)
        layers = round(target / per_layer)
        if layers >= 2 or i == len(SHAPES) - 1:
            layers = max(layers, 1)
            params = layers * per_layer + 2 * vocab * hidden + hidden  # untied embeddings and head, final norm
            return {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
                    "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
                    "params": params, "gib": round(params * bytes_per_param / GIB, 3)}
    raise AssertionError("unreachable")


def bus_number(pci_bus_id: str) -> int | None:
    """The bus of an NVML PCI id (`00000000:1B:00.0` -> 0x1B), as torch's `pci_bus_id` gives it."""
    m = re.fullmatch(r"(?:[0-9A-Fa-f]{4,8}:)?([0-9A-Fa-f]{2}):[0-9A-Fa-f]{2}\.[0-9A-Fa-f]", pci_bus_id.strip())
    return int(m.group(1), 16) if m else None


def cuda_matches(cuda: Mapping[str, Any], card: Mapping[str, Any]) -> bool:
    """Whether the one device CUDA shows under the plan's variables is NVML's card: by PCI bus
    where torch gives it, and by name and memory (to 1 GiB: CUDA leaves out what it reserves)."""
    if cuda.get("count") != 1 or cuda.get("name") != card.get("name"):
        return False
    if cuda.get("pci_bus_id") is not None and cuda["pci_bus_id"] != bus_number(card.get("pci_bus_id") or ""):
        return False
    return abs(float(cuda.get("total_gib") or 0) - float(card.get("total_gib") or 0)) <= 1.0


def compare_gpus(nvml: Sequence[Mapping[str, Any]], facts: Sequence[Mapping[str, Any]],
                 tolerance_gib: float = 0.01) -> list[str]:
    """What differs between NVML's GPUs and the facts `plan` reads: ids, names, total memory."""
    problems = []
    by_index = {g["index"]: g for g in facts}
    if sorted(by_index) != sorted(g["index"] for g in nvml):
        problems.append(f"GPU ids: NVML {sorted(g['index'] for g in nvml)}, plan's facts {sorted(by_index)}")
    for g in nvml:
        f = by_index.get(g["index"])
        if f is None:
            continue
        if (f.get("name") or "") != (g.get("name") or ""):
            problems.append(f"GPU {g['index']} name: NVML {g.get('name')!r}, plan's facts {f.get('name')!r}")
        if f.get("total_gib") is None or abs(f["total_gib"] - g["total_gib"]) > tolerance_gib:
            problems.append(f"GPU {g['index']} memory: NVML {g['total_gib']:.2f} GiB, plan's facts "
                            f"{f.get('total_gib')} GiB")
    return problems


def check_planned_env(service: Mapping[str, Any]) -> list[str]:
    """A GPU service's plan (`plan --json`) must pin CUDA to NVML's numbering and to its GPUs."""
    env = service.get("env") or {}
    gpus = service.get("gpus") or []
    problems = []
    if not gpus:
        problems.append(f"service {service.get('name')} was planned on no GPU")
    if env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        problems.append(f"CUDA_DEVICE_ORDER is {env.get('CUDA_DEVICE_ORDER')!r}, not 'PCI_BUS_ID'")
    if env.get("CUDA_VISIBLE_DEVICES") != ",".join(str(g) for g in gpus):
        problems.append(f"CUDA_VISIBLE_DEVICES is {env.get('CUDA_VISIBLE_DEVICES')!r} for GPUs {gpus}")
    return problems


FIT_RE = re.compile(r"does not fit on GPU (\d+): ([\d.]+) GiB needed \((.*?)\) but ([\d.]+) GiB is free there")
MISSING_RE = re.compile(r"GPU (\d+) does not exist: the GPUs (.*?) are (\[[\d, ]*\]|none)")


def parse_fit_refusal(message: str) -> dict[str, Any] | None:
    """`plan`'s memory refusal: the GPU, GiB needed in all and per service, GiB free there."""
    m = FIT_RE.search(message)
    if m is None:
        return None
    claims = {name: float(gib) for name, gib in re.findall(r"([A-Za-z0-9_-]+) ([\d.]+) GiB", m.group(3))}
    return {"gpu": int(m.group(1)), "needed_gib": float(m.group(2)), "claims": claims,
            "free_gib": float(m.group(4))}


def parse_missing_refusal(message: str) -> dict[str, Any] | None:
    """`plan`'s refusal of a GPU id that is not there: the id and the ids that are."""
    m = MISSING_RE.search(message)
    if m is None:
        return None
    ids = [] if m.group(3) == "none" else json.loads(m.group(3))
    return {"gpu": int(m.group(1)), "source": m.group(2), "ids": ids}


def refusal_verdict(case: str, rc: int, message: str, gpus: Sequence[Mapping[str, Any]],
                    planned_gpu: int, asked_gpu: int, tolerance_gib: float = 0.5) -> list[str]:
    """Whether `up` refused the second service as it should: exit 2 and a message with the
    machine's real figures (the GPU ids NVML lists; the card's free memory, to a tolerance since
    it moves a little between the refusal and the reading)."""
    problems = []
    if rc != 2:
        problems.append(f"`up` exited {rc}, not 2 (a refused plan)")
    if case == "missing":
        got = parse_missing_refusal(message)
        if got is None:
            return [*problems, f"no 'GPU N does not exist' in the message: {message.strip()[:300]!r}"]
        if got["gpu"] != asked_gpu:
            problems.append(f"the message names GPU {got['gpu']}, not {asked_gpu}")
        if sorted(got["ids"]) != sorted(g["index"] for g in gpus):
            problems.append(f"the message lists GPUs {got['ids']}, NVML {[g['index'] for g in gpus]}")
    elif case == "memory":
        got = parse_fit_refusal(message)
        if got is None:
            return [*problems, f"no 'does not fit on GPU' in the message: {message.strip()[:300]!r}"]
        card = next((g for g in gpus if g["index"] == planned_gpu), None)
        if got["gpu"] != planned_gpu:
            problems.append(f"the message names GPU {got['gpu']}, not {planned_gpu}")
        elif card is None:
            problems.append(f"GPU {planned_gpu} is not among {[g['index'] for g in gpus]}")
        elif abs(got["free_gib"] - card["free_gib"]) > tolerance_gib:
            problems.append(f"the message says {got['free_gib']} GiB free on GPU {planned_gpu}, "
                            f"NVML {card['free_gib']:.2f} GiB")
    else:
        raise ValueError(f"unknown refusal case {case!r}")
    return problems


def memory_verdict(estimate_gib: float | None, process_gib: float | None, device_delta_gib: float | None,
                   weights_gib: float | None) -> dict[str, Any]:
    """The plan's estimate against NVML: the server's own memory where NVML gives it per process,
    else how much the card's used memory rose. `within`: the estimate covers what it took; the
    weights themselves must be on the card (at least 90% of them) for it to count as loaded there."""
    measured = process_gib if process_gib is not None else device_delta_gib
    out: dict[str, Any] = {"estimate_gib": estimate_gib, "process_gib": process_gib,
                           "device_delta_gib": device_delta_gib, "weights_gib": weights_gib,
                           "measured_gib": measured, "measured_by": "process" if process_gib is not None
                           else ("device" if device_delta_gib is not None else None)}
    out["ratio"] = round(measured / estimate_gib, 3) if measured is not None and estimate_gib else None
    out["within"] = bool(measured is not None and estimate_gib is not None and measured <= estimate_gib)
    out["weights_on_gpu"] = bool(measured is not None and weights_gib is not None and measured >= 0.9 * weights_gib)
    return out


@dataclass
class Sample:
    """One look during a restart: seconds since the kill; whether the old server's processes
    still hold GPU memory (None: NVML cannot tell by pid); the card's used GiB; whether a new
    server process runs under the shim; whether it answered."""

    t: float
    old_holding: bool | None
    used_gib: float | None
    new_server: bool
    answered: bool


def restart_timeline(samples: Sequence[Sample], baseline_gib: float | None, slack_gib: float = 1.0
                     ) -> dict[str, Any]:
    """From the samples of a restart: when NVML showed the old server's memory released (by pid;
    else the card's used memory back within `slack_gib` of its level before `up`), when the shim
    started the new server, when that answered; and whether the shim waited for the release."""

    def first(pred: Callable[[Sample], bool]) -> float | None:
        return next((s.t for s in samples if pred(s)), None)

    by_pid = any(s.old_holding is not None for s in samples)
    if by_pid:
        released = first(lambda s: s.old_holding is False)
    elif baseline_gib is not None:
        released = first(lambda s: s.used_gib is not None and s.used_gib <= baseline_gib + slack_gib)
    else:
        released = None
    restarted = first(lambda s: s.new_server)
    healthy = first(lambda s: s.answered)
    return {"released_s": released, "released_by": "pid" if by_pid else "device", "restarted_s": restarted,
            "healthy_s": healthy, "waited_for_release": (released is not None and restarted is not None
                                                         and restarted >= released)}


def release_time(samples: Sequence[tuple[float, bool]]) -> float | None:
    """The first time (seconds) a (t, still_held) series shows the memory released for good."""
    out = None
    for t, held in samples:
        if held:
            out = None
        elif out is None:
            out = t
    return out


SWAP_TARGET_S = 0.5  # h2ostack's own part of a swap: over the put-away and the new server's own start


def swap_budget(estimate_gib: float) -> float:
    """The stated GPU memory for the swap: room for one of two services that each need
    `estimate_gib`, never both (one and a half)."""
    if not estimate_gib > 0:
        raise ValueError(f"the model's estimate must be positive, got {estimate_gib}")
    return round(estimate_gib * 1.5, 1)


def swap_stack_yaml(name: str, model: str, gpu: int, device: str | None = None, health_timeout: float = 240.0
                    ) -> str:
    """Two on-demand `transformers serve` services of the same model on one GPU (`a`, `b`) and the
    front whose gateway starts them. JSON is YAML."""
    def svc() -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "transformers", "model": model, "gpus": [gpu], "dtype": "bfloat16",
                               "on_demand": True, "idle_timeout": 600, "health": {"timeout": health_timeout}}
        if device:
            out["device"] = device
        return out

    doc = {"version": 1, "name": name, "services": {"a": svc(), "b": svc()},
           "fronts": {"chat": {"models": ["a", "b"]}}}
    return json.dumps(doc, indent=2) + "\n"


def swap_verdict(planned: Mapping[str, Any], leg: Mapping[str, Any], by_nvml: bool) -> list[str]:
    """What is wrong with one leg of the swap (`old` put away for `new`): the plan's on-demand
    view (each excludes the other), the timeline (`restart_timeline`'s keys: the old server's
    memory released, the new one on the card after it, its answer), the manager's view."""
    problems = []
    for name, other in (("a", "b"), ("b", "a")):
        svc = planned.get(name) or {}
        if not svc.get("on_demand") or other not in (svc.get("excludes") or []):
            problems.append(f"plan --json: {name} is not on demand excluding {other}: {dict(svc)}")
    old, new = leg.get("old"), leg.get("new")
    if leg.get("status") != 200:
        problems.append(f"{new}: the gateway answered {leg.get('status')}")
    if leg.get("healthy_s") is None:
        problems.append(f"{new} did not answer within the step's bound")
    if by_nvml:
        if leg.get("released_s") is None:
            problems.append(f"NVML never showed {old}'s memory released")
        elif not leg.get("waited_for_release"):
            problems.append(f"{new} was on the card at {leg.get('restarted_s')} s, before NVML showed {old}'s memory "
                            f"released at {leg.get('released_s')} s")
    elif leg.get("released_s") is None:
        problems.append(f"{old}'s processes did not end")
    phases = leg.get("phases") or {}
    if phases.get(old) != "stopped" or phases.get(new) != "ready":
        problems.append(f"the manager shows {phases}, not {old} stopped and {new} ready")
    return problems


def stack_yaml(name: str, model: str, gpus: int | list[int], extra: Mapping[str, Mapping[str, Any]] | None = None,
               share: bool = False, health_timeout: float = 240.0, device: str | None = None) -> str:
    """The stack the check starts: `transformers serve` on a GPU with `restart: on-failure`, a
    front for the gateway, and any other services (the refusal cases). JSON is YAML."""
    llm: dict[str, Any] = {"kind": "transformers", "model": model, "gpus": gpus, "dtype": "bfloat16",
                           "restart": "on-failure", "health": {"timeout": health_timeout}}
    if share:
        llm["share_gpus"] = True
    if device:
        llm["device"] = device  # the CPU self-test: planned on a stated GPU, run on the CPU
    services = {"llm": llm, **{k: dict(v) for k, v in (extra or {}).items()}}
    doc = {"version": 1, "name": name, "services": services, "fronts": {"chat": {"models": ["llm"]}}}
    return json.dumps(doc, indent=2) + "\n"


STEP_KEYS = {"name": str, "ok": (bool, type(None)), "skipped": bool, "seconds": (int, float, type(None)),
             "error": (str, type(None)), "data": dict}
REPORT_KEYS = {"check": str, "schema": int, "ok": bool, "failed_step": (str, type(None)), "dry_run": bool,
               "started_at": str, "elapsed_s": (int, float), "options": dict, "machine": dict, "steps": list}


def new_report(options: Mapping[str, Any], dry_run: bool) -> dict[str, Any]:
    return {"check": "h2ostack-gpu", "schema": SCHEMA_VERSION, "ok": False, "failed_step": None,
            "dry_run": dry_run, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "elapsed_s": 0.0, "options": dict(options), "machine": {},
            "steps": [{"name": n, "ok": None, "skipped": True, "seconds": None, "error": None, "data": {}}
                      for n in STEP_NAMES]}


def finish_report(report: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """ok: every step passed (a dry run: every step it ran); failed_step: the first that did not."""
    report["elapsed_s"] = round(elapsed, 2)
    failed = [s for s in report["steps"] if s["ok"] is False]
    ran = [s for s in report["steps"] if not s["skipped"]]
    report["failed_step"] = failed[0]["name"] if failed else None
    if report["dry_run"]:
        report["ok"] = bool(ran) and not failed
    else:
        report["ok"] = not failed and all(s["ok"] is True for s in report["steps"])
    return report


def report_problems(report: Any) -> list[str]:
    """What is wrong with a report's shape: the contract tests and readers rely on."""
    if not isinstance(report, dict):
        return ["the report is not an object"]
    problems = [f"{k}: missing or not {t}" for k, t in REPORT_KEYS.items() if not isinstance(report.get(k), t)]
    if problems:
        return problems
    if report["schema"] != SCHEMA_VERSION or report["check"] != "h2ostack-gpu":
        problems.append("check/schema: not an h2ostack GPU check report of this version")
    names = [s.get("name") if isinstance(s, dict) else None for s in report["steps"]]
    if names != list(STEP_NAMES):
        problems.append(f"steps: {names}, expected {list(STEP_NAMES)}")
    for s in report["steps"]:
        if not isinstance(s, dict):
            continue
        problems += [f"step {s.get('name')}: {k} missing or not {t}" for k, t in STEP_KEYS.items()
                     if not isinstance(s.get(k), t)]
        if s.get("skipped") and s.get("ok") is not None:
            problems.append(f"step {s.get('name')}: skipped but ok is {s.get('ok')}")
        if not s.get("skipped") and s.get("ok") is None:
            problems.append(f"step {s.get('name')}: ran but has no verdict")
        if s.get("ok") is False and not s.get("error"):
            problems.append(f"step {s.get('name')}: failed without an error")
    failed = [s.get("name") for s in report["steps"] if isinstance(s, dict) and s.get("ok") is False]
    if report["failed_step"] != (failed[0] if failed else None):
        problems.append(f"failed_step is {report['failed_step']!r}, the first failed step is "
                        f"{failed[0] if failed else None!r}")
    if report["ok"] and failed:
        problems.append("ok although a step failed")
    return problems


# ---------------------------------------------------------------------------------------------
# Bootstrap: the machine's python3 with the standard library only
# ---------------------------------------------------------------------------------------------

def log(text: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def tail(text: str, lines: int = 20) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


def bootstrap(wheels: Path, work: Path) -> tuple[Path, dict[str, Any]]:
    """A throwaway environment that sees the machine's packages (torch, transformers, NVML) and
    gets h2ostack (this working tree) and what else it lacks from the wheel folder, offline."""
    env_dir = work / "venv"
    py = env_dir / "bin" / "python"
    info: dict[str, Any] = {"wheels": str(wheels), "python": sys.version.split()[0]}
    made = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)],
                          capture_output=True, text=True, timeout=180)
    if made.returncode != 0:  # no ensurepip on this python: a bare environment, then pip from its wheel
        info["venv_without_pip"] = tail(made.stderr, 3)
        shutil.rmtree(env_dir, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)],
                       check=True, capture_output=True, text=True, timeout=120)
        pip_wheel = next(iter(sorted(wheels.glob("pip-*.whl"))), None)
        if pip_wheel is None:
            raise RuntimeError(f"{wheels} has no pip wheel, and this python makes no environment with pip")
        got = subprocess.run([str(py), f"{pip_wheel}/pip", "install", "--quiet", "--no-index", "--find-links",
                              str(wheels), "pip"], capture_output=True, text=True, timeout=180)
        if got.returncode != 0:
            raise RuntimeError("installing pip from its wheel failed:\n" + tail(got.stderr))
    # a python3 that is itself a virtual environment: --system-site-packages reaches its base, not
    # its packages (torch ...); name them for the new environment, after its own (only those it lacks,
    # so that no folder's .pth files run twice)
    def site_dirs(python: str) -> list[str]:
        got = subprocess.run([python, "-c", "import json, sys; print(json.dumps([p for p in sys.path if "
                              "p.endswith(('site-packages', 'dist-packages'))]))"], capture_output=True, text=True,
                             check=True, timeout=60)
        return json.loads(got.stdout)

    lacking = [p for p in site_dirs(sys.executable) if p not in site_dirs(str(py))]
    if lacking:
        purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        # `import` lines of a .pth run at start-up; addsitedir also reads those folders' own .pth files
        Path(purelib, "zz_h2ostack_gpu_check_outer.pth").write_text(
            "".join(f"import site; site.addsitedir({p!r})\n" for p in lacking))
    info["outer_site_packages"] = lacking
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-index",
           "--find-links", str(wheels)]
    info["installed"] = []
    # first the wheels (setuptools among them), then the working tree built with that setuptools: an
    # isolated build would also see the machine's packages, and an older setuptools there
    for what in (["-r", str(REQUIREMENTS)], ["--no-build-isolation", str(REPO)]):
        got = subprocess.run([*pip, *what], capture_output=True, text=True, timeout=400,
                             env={**os.environ, "PIP_NO_CACHE_DIR": "1", "PIP_CONFIG_FILE": os.devnull})
        if got.returncode != 0:
            raise RuntimeError(f"pip install {what[-1]} from the wheel folder failed:\n"
                               + tail(got.stdout + got.stderr))
        info["installed"] += [ln.split("Successfully installed ", 1)[1] for ln in got.stdout.splitlines()
                              if ln.startswith("Successfully installed ")]
    probe = subprocess.run([str(py), "-c", "import h2ostack, pynvml, psutil, httpx; print(h2ostack.__file__)"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        raise RuntimeError("the environment cannot import h2ostack and NVML:\n" + tail(probe.stderr))
    info["h2ostack"] = probe.stdout.strip()
    return py, info


def outer(argv: list[str], args: argparse.Namespace) -> int:
    """Make the environment, run the check in it, pass its report and exit code on."""
    t0 = time.monotonic()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="h2ostack-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    step: dict[str, Any] = {"ok": False}
    try:
        wheels = Path(args.wheels).resolve()
        if not any(wheels.glob("*.whl")):
            raise RuntimeError(f"no wheels in {wheels}: build the folder with scripts/gpu-wheels.sh")
        log(f"making the environment in {work} from {wheels}")
        py, info = bootstrap(wheels, work)
        step = {"ok": True, "data": info}
    except Exception as exc:
        step = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "data": {}}
    step["seconds"] = round(time.monotonic() - t0, 2)
    try:
        if not step["ok"]:
            report = new_report(vars(args), args.dry_run)
            report["steps"][0].update(skipped=False, **step)
            emit(finish_report(report, time.monotonic() - t0), args.out)
            return 1
        env = {**os.environ, BOOTSTRAP_ENV: json.dumps(step)}
        inner = [str(py), str(Path(__file__).resolve()), "--inner", "--work", str(work), *argv]
        return subprocess.run(inner, env=env).returncode
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


def emit(report: dict[str, Any], out: str | None) -> None:
    text = json.dumps(report, indent=2, default=str)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "gpu-check.json").write_text(text + "\n")


# ---------------------------------------------------------------------------------------------
# The check itself, inside the environment (h2ostack, NVML, psutil, httpx importable)
# ---------------------------------------------------------------------------------------------

class StepFailed(Exception):
    pass


def build_model(path: Path, weights_gib: float, device: str) -> dict[str, Any]:
    """A random Llama of about `weights_gib` in bf16, made on `device` (the planned GPU, as the
    plan's CUDA variables show it), with h2ostack.tinymodel's tokenizer; saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from h2ostack.tinymodel import build_tiny_model

    t0 = time.monotonic()
    tiny = build_tiny_model(path.with_name(path.name + "-tokenizer"))
    tok = PreTrainedTokenizerFast.from_pretrained(tiny)
    shape = llama_shape(weights_gib, vocab=len(tok))
    config = LlamaConfig(**{k: v for k, v in shape.items() if k not in ("params", "gib")},
                         max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    out: dict[str, Any] = {"shape": shape}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out["cuda"] = {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "order": os.environ.get("CUDA_DEVICE_ORDER"),
                       "count": torch.cuda.device_count(), "name": props.name,
                       "pci_bus_id": getattr(props, "pci_bus_id", None),
                       "total_gib": round(props.total_memory / GIB, 2)}
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(torch.bfloat16)
    model.generation_config.max_new_tokens = 16
    out["built_s"] = round(time.monotonic() - t0, 2)
    tok.save_pretrained(path)
    model.save_pretrained(path, safe_serialization=True)
    out["saved_s"] = round(time.monotonic() - t0, 2)
    out["bytes"] = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return out


class Nvml:
    def __init__(self) -> None:
        import pynvml

        self.nv = pynvml
        pynvml.nvmlInit()
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.nv.nvmlShutdown()

    def driver(self) -> str:
        v = self.nv.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)

    def gpus(self) -> list[dict[str, Any]]:
        out = []
        for i, h in enumerate(self.handles):
            mem = self.nv.nvmlDeviceGetMemoryInfo(h)
            name = self.nv.nvmlDeviceGetName(h)
            bus = self.nv.nvmlDeviceGetPciInfo(h).busId
            out.append({"index": i, "pci_bus_id": bus.decode() if isinstance(bus, bytes) else bus,
                        "name": name.decode() if isinstance(name, bytes) else name,
                        "total_gib": round(mem.total / GIB, 3), "free_gib": round(mem.free / GIB, 3),
                        "used_gib": round(mem.used / GIB, 3)})
        return out

    def used_gib(self, index: int) -> float:
        return self.nv.nvmlDeviceGetMemoryInfo(self.handles[index]).used / GIB

    def holders(self) -> dict[int, dict[int, float | None]]:
        """Per GPU: the pids with memory there and how much (None where NVML does not say)."""
        out: dict[int, dict[int, float | None]] = {}
        for i, h in enumerate(self.handles):
            procs: dict[int, float | None] = {}
            for get in (self.nv.nvmlDeviceGetComputeRunningProcesses, self.nv.nvmlDeviceGetGraphicsRunningProcesses):
                with contextlib.suppress(self.nv.NVMLError):
                    for p in get(h):
                        used = p.usedGpuMemory
                        procs[p.pid] = None if used is None or used >= 2**63 else used / GIB
            out[i] = procs
        return out


def group_pids(pgid: int) -> set[int]:
    """The live processes of a process group (the shim leads the service's group)."""
    import psutil

    out = set()
    for p in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                out.add(p.pid)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Run:
    args: argparse.Namespace
    work: Path
    report: dict[str, Any]
    t0: float = field(default_factory=time.monotonic)
    nvml: Nvml | None = None
    stacks: list[str] = field(default_factory=list)
    seen_pids: set[int] = field(default_factory=set)
    gateway: subprocess.Popen[bytes] | None = None
    ctx: dict[str, Any] = field(default_factory=dict)
    tearing_down: bool = False

    # -- plumbing --------------------------------------------------------------------------
    @property
    def dry(self) -> bool:
        return bool(self.args.dry_run)

    def left(self, reserve: float = TEARDOWN_RESERVE_S) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0) - reserve

    def bound(self, seconds: float) -> float:
        """A wait of at most `seconds`, and never past the run's budget (less the teardown's)."""
        if self.tearing_down:
            return seconds
        left = self.left()
        if left <= 1:
            raise StepFailed(f"the run's budget of {self.args.budget_s:g} s is spent")
        return min(seconds, left)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("H2OSTACK_GPUS", "H2OSTACK_GPU_MEMORY",
                                                                  BOOTSTRAP_ENV)}
        env.update(H2OSTACK_STATE_DIR=str(self.work / "state"), COLUMNS="200", PYTHONUNBUFFERED="1")
        # no network on a GPU machine: nothing may wait on the hub
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
        if self.dry:  # every h2ostack process (the gateway's plan too) sees the stated machine, not NVML
            env.update(H2OSTACK_GPUS=DRY_GPUS, H2OSTACK_GPU_MEMORY=str(DRY_GPU_MEMORY))
        return env

    def h2o(self, *argv: str, timeout: float = 120.0, check: bool = False) -> subprocess.CompletedProcess[str]:
        exe = Path(sys.executable).with_name("h2ostack")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "h2ostack.cli"]
        facts = ["--gpus", DRY_GPUS, "--gpu-memory", str(DRY_GPU_MEMORY)] if self.dry and argv[0] in (
            "plan", "up") and "--gpu-memory" not in argv else []
        cmd += [*argv, *facts]
        log("$ h2ostack " + " ".join(cmd[1 if exe.exists() else 3:]))
        try:
            got = subprocess.run(cmd, capture_output=True, text=True, timeout=self.bound(timeout), env=self.env(),
                                 cwd=self.work, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise StepFailed(f"`h2ostack {' '.join(argv)}` did not finish in {exc.timeout:.0f} s") from None
        if check and got.returncode != 0:
            raise StepFailed(f"`h2ostack {' '.join(argv)}` exited {got.returncode}: {tail(got.stderr, 15)}")
        return got

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        s = next(x for x in self.report["steps"] if x["name"] == name)
        s["skipped"] = False
        started = time.monotonic()
        log(f"step {name}")
        try:
            yield s["data"]
            s["ok"] = True
        except Exception as exc:  # a step's failure is reported; the run goes on to teardown
            s["ok"] = False
            s["error"] = str(exc) if isinstance(exc, StepFailed) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, StepFailed):
                s["data"]["traceback"] = tail(traceback.format_exc(), 12)
            log(f"step {name} FAILED: {s['error']}")
        finally:
            s["seconds"] = round(time.monotonic() - started, 2)

    def wait(self, what: str, pred: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
        deadline = time.monotonic() + self.bound(timeout)
        while True:
            got = pred()
            if got:
                return got
            if time.monotonic() >= deadline:
                raise StepFailed(f"{what}: not within {timeout:g} s")
            time.sleep(interval)

    def stack_file(self, name: str, text: str) -> Path:
        path = self.work / f"{name}.yaml"
        path.write_text(text)
        return path

    def status_row(self, stack: str) -> dict[str, Any] | None:
        got = self.h2o("status", stack, "--json", timeout=60)
        with contextlib.suppress(ValueError):
            rows = json.loads(got.stdout or "[]")
            return next((r for r in rows if r.get("service") == "llm"), None)
        return None

    # -- the steps -------------------------------------------------------------------------
    def run(self) -> None:
        if self.dry:
            self.report["machine"] = {"python": sys.version.split()[0], "nvml": None}
        else:
            self.nvml = Nvml()
            self.report["machine"] = {"python": sys.version.split()[0], "driver": self.nvml.driver(),
                                      "gpus": self.nvml.gpus()}
        with contextlib.suppress(Exception):
            import h2ostack

            self.report["machine"]["h2ostack"] = h2ostack.__version__
            rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, timeout=10)
            self.report["machine"]["commit"] = rev.stdout.strip() or None
        name = f"gpucheck-{os.getpid()}"
        self.ctx["name"] = name
        steps = [("facts", self.facts), ("serve", self.serve), ("chat", self.chat), ("restart", self.restart),
                 ("down", self.down), ("refusal", self.refusal), ("swap", self.swap)]
        # what a step needs from those before it: a planned GPU, a running server (a step that failed
        # on a verdict, not for want of these, still lets the next ones take their figures)
        needs = {"serve": ("gpu", "facts"), "chat": ("pid", "serve"), "restart": ("pid", "serve"),
                 "down": ("pid", "serve"), "swap": ("estimate_gib", "serve")}
        try:
            for step_name, fn in steps:
                if self.dry and not self.args.serve_on_cpu and step_name in ("chat", "restart", "down", "swap"):
                    continue  # they need a card: skipped, and said so
                if step_name in needs and self.ctx.get(needs[step_name][0]) is None:
                    with self.step(step_name):
                        raise StepFailed(f"not run: step {needs[step_name][1]} did not get that far")
                    continue
                with self.step(step_name) as data:
                    fn(data)
        finally:
            self.teardown()

    def facts(self, data: dict[str, Any]) -> None:
        from h2ostack.facts import machine_gpus

        name = self.ctx["name"]
        stack = self.stack_file(name, stack_yaml(name, "./model", 1,
                                                 device="cpu" if self.args.serve_on_cpu else None))
        self.ctx["stack"] = stack
        planned = json.loads(self.h2o("plan", str(stack), "--json", check=True).stdout)
        svc = next(s for s in planned["services"] if s["name"] == "llm")
        data["planned"] = {"gpus": svc["gpus"], "url": svc["url"], "model": svc.get("model"),
                           "env": {k: svc["env"].get(k) for k in (
            "CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES")}, "restart": svc.get("restart")}
        problems = check_planned_env(svc)
        self.ctx.update(gpu=svc["gpus"][0] if svc["gpus"] else None, url=svc["url"], env=data["planned"]["env"],
                        served_model=svc.get("model"))
        if self.dry:
            found, source = machine_gpus(DRY_GPUS, DRY_GPU_MEMORY)
            nvml = [{"index": g.index, "name": g.name, "total_gib": g.total_gib, "free_gib": g.free_gib,
                     "pci_bus_id": None} for g in found]
        else:
            assert self.nvml is not None
            found, source = machine_gpus()
            nvml = self.nvml.gpus()
        self.ctx["gpus"] = nvml
        data["nvml"] = nvml
        data["facts"] = {"source": source, "gpus": [{"index": g.index, "name": g.name, "total_gib": g.total_gib,
                                                      "free_gib": g.free_gib} for g in found]}
        problems += compare_gpus(nvml, data["facts"]["gpus"])
        if not self.dry and source != "nvml":
            problems.append(f"plan's facts came from {source!r}, not NVML")
        if problems:
            raise StepFailed("; ".join(problems))

    def serve(self, data: dict[str, Any]) -> None:
        gpu, stack, name = self.ctx["gpu"], self.ctx["stack"], self.ctx["name"]
        model = self.work / "model"
        # the model is made in a child under the plan's CUDA variables: the device CUDA calls 0
        # there must be NVML's planned GPU, by PCI bus id (and this process keeps no CUDA context)
        env = {**self.env(), **({} if self.dry else self.ctx["env"])}
        before = None if self.nvml is None else self.nvml.used_gib(gpu)
        t = time.monotonic()
        try:
            made = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--build-model", str(model),
                                   "--weights-gib", str(self.args.weights_gib), "--device",
                                   "cpu" if self.dry else "cuda"], capture_output=True, text=True, env=env,
                                  timeout=self.bound(240))
        except subprocess.TimeoutExpired:
            raise StepFailed("building the model took over 240 s") from None
        if made.returncode != 0:
            raise StepFailed("building the model failed: " + tail(made.stderr, 15))
        built = json.loads(made.stdout.strip().splitlines()[-1])
        data["model"] = {**built, "seconds": round(time.monotonic() - t, 2), "weights_gib": round(built["bytes"] / GIB, 3)}
        weights_gib = built["bytes"] / GIB
        # verdicts so far are kept for the end: the server still starts, and later steps take their figures
        problems = []
        if not self.dry:
            card = next(g for g in self.ctx["gpus"] if g["index"] == gpu)
            cuda = built["cuda"]
            data["cuda_matches_nvml"] = cuda_matches(cuda, card)
            if not data["cuda_matches_nvml"]:
                problems.append(f"under the plan's CUDA variables CUDA's device 0 is {cuda}, not NVML's GPU "
                                f"{gpu} {card}")
        # the plan's own estimate: asked with a card too small, it names what the model needs
        small = self.h2o("plan", str(stack), "--gpu-memory", "0.001",
                         *(["--gpus", DRY_GPUS] if self.dry else []))
        fit = parse_fit_refusal(small.stderr + small.stdout)
        estimate = None if fit is None else fit["claims"].get("llm", fit["needed_gib"])
        data["plan_estimate_gib"] = estimate
        self.ctx["estimate_gib"] = estimate
        data["plan_estimate_expected_gib"] = round(weights_gib * 1.2, 1)
        if estimate is None:
            problems.append(f"`plan` with a 1 MiB card did not refuse the model: {tail(small.stderr, 5)!r}")
        elif abs(estimate - weights_gib * 1.2) > 0.051:
            problems.append(f"plan estimates {estimate} GiB for {weights_gib:.2f} GiB of weights (x1.2 expected)")
        if self.dry and not self.args.serve_on_cpu:
            if problems:
                raise StepFailed("; ".join(problems))
            return
        baseline = None
        if self.nvml is not None and before is not None:
            nvml = self.nvml
            # the builder's memory goes back to the driver a moment after it exits
            self.wait("the model builder's GPU memory released", lambda: nvml.used_gib(gpu) <= before + 0.5, 30)
            baseline = self.nvml.used_gib(gpu)
        self.ctx["baseline_gib"] = baseline
        self.stacks.append(name)
        t = time.monotonic()
        up = self.h2o("up", str(stack), "llm", timeout=300)
        data["up_s"] = round(time.monotonic() - t, 2)
        if up.returncode != 0:
            data["up_stderr"] = tail(up.stderr, 30)
            raise StepFailed(f"`h2ostack up` exited {up.returncode}")
        row = self.status_row(name)
        if not row or not str(row.get("ident", "")).isdigit():
            raise StepFailed(f"`h2ostack status` shows no running server: {row}")
        pid = int(row["ident"])
        pgid = os.getpgid(pid)
        self.ctx.update(pid=pid, pgid=pgid)
        pids = group_pids(pgid)
        self.seen_pids |= pids
        if self.nvml is None or baseline is None:  # the CPU self-test: no card to look at
            data["server"] = {"pid": pid, "group": sorted(pids), "status_gpus": row.get("gpus")}
            if problems:
                raise StepFailed("; ".join(problems))
            return
        holders = self.nvml.holders()
        on = sorted(g for g, procs in holders.items() if procs.keys() & pids)
        data["server"] = {"pid": pid, "group": sorted(pids), "status_gpus": row.get("gpus"), "nvml_gpus": on}
        data["nvml_processes"] = {str(g): {str(p): (round(u, 3) if u is not None else None) for p, u in procs.items()}
                                  for g, procs in holders.items() if procs}
        self.ctx["pids_visible"] = bool(on)
        process_gib = None
        if gpu in on:
            used = [holders[gpu][p] for p in pids if p in holders[gpu]]
            process_gib = round(sum(u for u in used if u is not None), 3) if all(u is not None for u in used) else None
        delta = round(self.nvml.used_gib(gpu) - baseline, 3)
        data["memory"] = memory_verdict(estimate, process_gib, delta, round(weights_gib, 3))
        if not on:
            problems.append("NVML lists none of the server's pids on any GPU"
                            + (" (it lists others: its pids are of another pid namespace)" if any(holders.values())
                               else ""))
        elif on != [gpu]:
            problems.append(f"the server holds memory on GPUs {on}, planned {[gpu]}")
        if row.get("gpus") != [gpu]:
            problems.append(f"`status` shows GPUs {row.get('gpus')}, planned {[gpu]}")
        if not data["memory"]["weights_on_gpu"]:
            problems.append(f"{data['memory']['measured_gib']} GiB on GPU {gpu} for {weights_gib:.2f} GiB of weights")
        if not data["memory"]["within"]:
            problems.append(f"the server took {data['memory']['measured_gib']} GiB, over the plan's {estimate} GiB")
        if problems:
            raise StepFailed("; ".join(problems))

    def chat(self, data: dict[str, Any]) -> None:
        import httpx

        port = free_port()
        log_file = open(self.work / "gateway.log", "wb")  # noqa: SIM115 - the gateway's for its life
        self.gateway = subprocess.Popen([sys.executable, "-m", "h2ostack.gateway", str(self.ctx["stack"]), "--front",
                                         "chat", "--port", str(port)], stdout=log_file, stderr=subprocess.STDOUT,
                                        env=self.env(), cwd=self.work, start_new_session=True)
        base = f"http://127.0.0.1:{port}/v1"

        def listed() -> bool:
            if self.gateway is not None and self.gateway.poll() is not None:
                raise StepFailed("the gateway exited: " + tail((self.work / "gateway.log").read_text(errors="replace")))
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(base + "/models", timeout=2).status_code == 200
            return False

        self.wait("the gateway answering /v1/models", listed, 60, 0.2)
        body = {"model": "llm", "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 16, "temperature": 0}
        t = time.monotonic()
        r = httpx.post(base + "/chat/completions", json=body, timeout=self.bound(120))
        data["seconds_to_answer"] = round(time.monotonic() - t, 3)
        data["status"] = r.status_code
        data["overhead_ms"] = r.headers.get("x-h2ostack-overhead-ms")
        if r.status_code != 200:
            raise StepFailed(f"the gateway answered {r.status_code}: {r.text[:300]}")
        reply = r.json()
        data["answer"] = (reply["choices"][0]["message"].get("content") or "")[:200]
        data["usage"] = reply.get("usage")
        pids = group_pids(self.ctx["pgid"])
        data["server_on_gpu_after"] = None
        if self.nvml is not None and self.ctx.get("pids_visible"):
            data["server_on_gpu_after"] = bool(self.nvml.holders()[self.ctx["gpu"]].keys() & pids)
        tokens = (reply.get("usage") or {}).get("completion_tokens")
        if not (tokens or data["answer"]):
            raise StepFailed(f"an empty answer: {reply}")
        if data["server_on_gpu_after"] is False:
            raise StepFailed("after answering, the server holds no memory on its GPU")

    def restart(self, data: dict[str, Any]) -> None:
        import httpx
        import psutil

        gpu, pid, pgid = self.ctx["gpu"], self.ctx["pid"], self.ctx["pgid"]
        old = group_pids(pgid) - {pgid}  # the server and what it forked; the shim stays
        self.seen_pids |= old
        by_pid = bool(self.ctx.get("pids_visible"))
        url = self.ctx["url"]
        samples: list[Sample] = []
        log(f"kill -9 {pid}")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = t0 + self.bound(240)
        new_pids: set[int] = set()
        while time.monotonic() < deadline:
            t = time.monotonic() - t0
            holders = self.nvml.holders()[gpu] if self.nvml else {}
            with contextlib.suppress(psutil.Error):
                new_pids = {c.pid for c in psutil.Process(pgid).children()} - old
            answered = False
            if new_pids:
                self.seen_pids |= group_pids(pgid)
                with contextlib.suppress(httpx.HTTPError):
                    answered = httpx.post(url + "/v1/chat/completions", timeout=30, json={
                        "model": self.ctx["served_model"], "max_tokens": 1,
                        "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
            samples.append(Sample(round(t, 3), bool(holders.keys() & old) if by_pid else None,
                                  round(self.nvml.used_gib(gpu), 3) if self.nvml else None, bool(new_pids),
                                  answered))
            if answered:
                break
            time.sleep(0.1)
        timeline = restart_timeline(samples, self.ctx.get("baseline_gib"))
        data.update(timeline)
        if self.nvml is None:
            data["released_by"] = None
        data["old_pids"] = sorted(old)
        data["new_server"] = sorted(new_pids)
        data["samples"] = len(samples)
        logs = self.h2o("logs", self.ctx["name"], "llm", "--tail", "400", timeout=30).stdout
        data["shim_said"] = [ln.strip() for ln in logs.splitlines() if ln.startswith("h2ostack: ")][-4:]
        row = self.status_row(self.ctx["name"]) or {}
        data["status"] = {k: row.get(k) for k in ("state", "health", "restarts", "last_exit", "ident")}
        if row.get("ident") and str(row["ident"]).isdigit():
            self.ctx["pid"] = int(row["ident"])
        problems = []
        if timeline["healthy_s"] is None:
            problems.append("the restarted server did not answer within the step's bound")
        if self.nvml is None:
            pass  # the CPU self-test: no memory to see released
        elif timeline["released_s"] is None:
            problems.append("NVML never showed the old server's memory released")
        elif not timeline["waited_for_release"]:
            problems.append(f"the shim started the new server at {timeline['restarted_s']} s, before NVML showed the "
                            f"old one's memory released at {timeline['released_s']} s")
        if row.get("restarts") != 1:
            problems.append(f"`status` counts {row.get('restarts')} restarts, not 1")
        if problems:
            raise StepFailed("; ".join(problems))

    def down(self, data: dict[str, Any]) -> None:
        self.stop_gateway()
        self.seen_pids |= group_pids(self.ctx["pgid"])
        baseline = self.ctx.get("baseline_gib")
        t0 = time.monotonic()
        got = self.h2o("down", str(self.ctx["stack"]), "--timeout", "30", timeout=90)
        data["down_command_s"] = round(time.monotonic() - t0, 2)
        if got.returncode != 0:
            raise StepFailed(f"`h2ostack down` exited {got.returncode}: {tail(got.stderr, 5)}")
        held: list[tuple[float, bool]] = []

        def released() -> bool:
            if self.nvml is None:  # the CPU self-test: the stack's processes gone
                still = any(_alive(p) for p in self.seen_pids)
                held.append((time.monotonic() - t0, still))
                return not still
            holders = self.nvml.holders()
            by_pid = any(procs.keys() & self.seen_pids for procs in holders.values())
            by_device = baseline is not None and self.nvml is not None and \
                self.nvml.used_gib(self.ctx["gpu"]) > baseline + 1.0
            still = by_pid or (not self.ctx.get("pids_visible") and by_device)
            held.append((time.monotonic() - t0, still))
            return not still

        self.wait("GPU memory released after `down`", released, 60)
        data["released_s"] = round(release_time(held) or 0.0, 2)
        data["released_by"] = "pid" if self.ctx.get("pids_visible") else ("device" if self.nvml else "process")
        data["left"] = sorted(p for p in self.seen_pids if _alive(p))
        self.stacks.remove(self.ctx["name"])
        if data["left"]:
            raise StepFailed(f"processes of the stack still run after `down`: {data['left']}")

    def refusal(self, data: dict[str, Any]) -> None:
        name, gpu = self.ctx["name"], self.ctx["gpu"]
        gpus = self.ctx["gpus"] if self.dry else (self.nvml.gpus() if self.nvml else [])
        missing_gpu = max(g["index"] for g in gpus) + 1
        card = next(g for g in gpus if g["index"] == gpu)
        too_big = round(card["total_gib"] + 16)
        cases = {
            "missing": {"ghost": {"kind": "transformers", "model": "./model", "gpus": [missing_gpu]}},
            "memory": {"big": {"kind": "transformers", "model": "./model", "gpus": [gpu], "vram_gb": too_big,
                               "share_gpus": True}},
        }
        problems = []
        before = self.nvml.holders() if self.nvml else {}
        for case, extra in cases.items():
            stack_name = f"{name}-{case}"
            stack = self.stack_file(stack_name, stack_yaml(stack_name, "./model", [gpu], extra, share=True))
            self.stacks.append(stack_name)
            t = time.monotonic()
            got = self.h2o("up", str(stack), timeout=120)
            if not self.dry:
                gpus = self.nvml.gpus() if self.nvml else gpus  # free memory as it is at the refusal
            verdict = refusal_verdict(case, got.returncode, got.stderr + got.stdout, gpus, gpu, missing_gpu)
            row = self.status_row(stack_name)
            started = bool(row and row.get("state") == "running")
            after = self.nvml.holders() if self.nvml else {}
            new = sorted({p for procs in after.values() for p in procs} - {p for procs in before.values() for p in procs})
            if started or new:
                verdict.append(f"something started: status {row}, new GPU processes {new}")
            data[case] = {"rc": got.returncode, "seconds": round(time.monotonic() - t, 2),
                          "message": tail(got.stderr, 6), "problems": verdict}
            problems += [f"{case}: {p}" for p in verdict]
        if problems:
            raise StepFailed("; ".join(problems))

    def swap(self, data: dict[str, Any]) -> None:
        """Two on-demand services that do not fit together under a stated budget: A, then B (A put
        away), then A again, each through the gateway, timed against NVML."""
        import httpx

        from h2ostack.runtimes.process import marked

        self.stop_gateway()  # the chat step's, if still up
        gpu, name = self.ctx["gpu"], f"{self.ctx['name']}-swap"
        budget = swap_budget(float(self.ctx["estimate_gib"]))
        data["budget_gib"], data["estimate_gib"] = budget, self.ctx["estimate_gib"]
        stack = self.stack_file(name, swap_stack_yaml(name, "./model", gpu,
                                                      device="cpu" if self.args.serve_on_cpu else None))
        self.stacks.append(name)
        planned = json.loads(self.h2o("plan", str(stack), "--json", "--gpu-memory", str(budget),
                                      *(["--gpus", DRY_GPUS] if self.dry else []), check=True).stdout)
        data["planned"] = {s["name"]: {k: s.get(k) for k in ("gpus", "on_demand", "memory_gib", "excludes")}
                           for s in planned["services"]}
        port = free_port()
        env = {**self.env(), "H2OSTACK_GPU_MEMORY": str(budget)}  # the gateway plans under the stated budget
        log_file = open(self.work / "gateway-swap.log", "wb")  # noqa: SIM115 - the gateway's for its life
        self.gateway = subprocess.Popen([sys.executable, "-m", "h2ostack.gateway", str(stack), "--front", "chat",
                                         "--port", str(port)], stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                        cwd=self.work, start_new_session=True)
        base = f"http://127.0.0.1:{port}/v1"
        root = self.work / "state"

        def up() -> bool:
            if self.gateway is not None and self.gateway.poll() is not None:
                raise StepFailed("the gateway exited: " + tail((self.work / "gateway-swap.log").read_text(
                    errors="replace")))
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(base + "/models", timeout=2).status_code == 200
            return False

        self.wait("the swap gateway answering /v1/models", up, 60, 0.2)
        view_file = root / name / "ondemand.json"

        def view() -> dict[str, Any]:
            with contextlib.suppress(OSError, ValueError):
                return dict(json.loads(view_file.read_text()))
            return {}

        def pids(service: str) -> set[int]:
            return {p.pid for p in marked(name, root, service)}

        baseline = self.nvml.used_gib(gpu) if self.nvml else None
        problems: list[str] = []
        legs = []
        for old, new in ((None, "a"), ("a", "b"), ("b", "a")):
            old_pids = pids(old) if old else set()
            self.seen_pids |= old_pids
            others = set(self.nvml.holders()[gpu]) - old_pids if self.nvml else set()
            got: dict[str, Any] = {}
            t0 = time.monotonic()
            deadline = t0 + self.bound(300)

            def ask(new: str = new, got: dict[str, Any] = got, t0: float = t0, deadline: float = deadline) -> None:
                try:
                    r = httpx.post(base + "/chat/completions", timeout=max(1.0, deadline - time.monotonic()),
                                   json={"model": new, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
                    got.update(status=r.status_code, body=r.text[:300])
                except httpx.HTTPError as exc:
                    got.update(status=None, body=f"{type(exc).__name__}: {exc}")
                got["t"] = time.monotonic() - t0

            asker = threading.Thread(target=ask, daemon=True)
            asker.start()
            samples: list[Sample] = []
            while asker.is_alive() and time.monotonic() < deadline:
                t = round(time.monotonic() - t0, 3)
                if self.nvml is not None:
                    held = self.nvml.holders()[gpu]
                    old_holding = (bool(held.keys() & old_pids) if self.ctx.get("pids_visible") else None) \
                        if old else False
                    samples.append(Sample(t, old_holding, round(self.nvml.used_gib(gpu), 3),
                                          bool(set(held) - old_pids - others), False))
                else:  # the CPU self-test: the old server's processes gone, the new one's started
                    samples.append(Sample(t, any(_alive(p) for p in old_pids), None, bool(pids(new)), False))
                time.sleep(0.05)
            asker.join(5)
            if "t" in got:
                samples.append(Sample(round(got["t"], 3), None, None, True, got.get("status") == 200))
            timeline = restart_timeline(samples, baseline) if old else {
                "healthy_s": next((x.t for x in samples if x.answered), None)}
            self.seen_pids |= pids(new)
            seen = view()
            leg: dict[str, Any] = {"old": old, "new": new, "status": got.get("status"), **timeline,
                                   "phases": {n: (seen.get(n) or {}).get("phase") for n in ("a", "b")},
                                   "samples": len(samples)}
            if self.nvml is None and old:
                leg["released_by"] = "process"
            if got.get("status") != 200:
                leg["answer"] = got.get("body")
            if old:
                put_away = (seen.get(old) or {}).get("put_away_s")
                ready = (seen.get(new) or {}).get("ready_s")
                leg.update(put_away_s=put_away, start_s=ready, note=(seen.get(old) or {}).get("note"))
                if put_away is not None and ready is not None and leg.get("healthy_s") is not None:
                    # what the swap took over the put-away (its release wait included) and the new server's start
                    leg["h2ostack_s"] = round(leg["healthy_s"] - put_away - ready, 3)
                problems += swap_verdict(data["planned"], leg, self.nvml is not None)
            elif got.get("status") != 200:
                problems.append(f"{new}: the gateway answered {got.get('status')}: {got.get('body')}")
            legs.append(leg)
            log(f"swap {old} -> {new}: {leg}")
        data["legs"] = legs
        data["h2ostack_target_s"] = SWAP_TARGET_S
        self.stop_gateway()
        if problems:
            raise StepFailed("; ".join(dict.fromkeys(problems)))

    # -- teardown --------------------------------------------------------------------------
    def stop_gateway(self) -> None:
        if self.gateway is None or self.gateway.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.gateway.pid, signal.SIGTERM)
        try:
            self.gateway.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.gateway.pid, signal.SIGKILL)
            self.gateway.wait(5)

    def teardown(self) -> None:
        """Leave nothing running: the gateway, then `down` and `kill` of every stack this run started."""
        self.stop_gateway()
        done: dict[str, Any] = {}
        self.tearing_down = True  # its own bounds only: it runs however the budget went
        for stack in list(self.stacks):
            with contextlib.suppress(Exception):
                got = self.h2o("down", stack, "--timeout", "20", timeout=45)
                done[stack] = {"down": got.returncode}
            with contextlib.suppress(Exception):
                got = self.h2o("kill", stack, timeout=30)
                done[stack]["kill"] = got.returncode
        left = sorted(p for p in self.seen_pids if _alive(p) and _pgid(p) == self.ctx.get("pgid"))
        for p in left:  # only pids this run saw in its own stack's process group, and still in it
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        self.report["teardown"] = {"stacks": done, "killed_left": left}
        if self.nvml is not None:
            self.nvml.close()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


def inner(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    report = new_report({k: v for k, v in vars(args).items() if k not in ("inner", "build_model", "device")},
                        args.dry_run)
    boot = os.environ.get(BOOTSTRAP_ENV)
    if boot:
        report["steps"][0].update({"skipped": False, "error": None, "data": {}, **json.loads(boot)})
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="h2ostack-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    if not args.dry_run:  # the facts `plan` reads in this process too must be NVML's
        os.environ.pop("H2OSTACK_GPUS", None)
        os.environ.pop("H2OSTACK_GPU_MEMORY", None)
    run = Run(args, work, report, t0=t0 - (report["steps"][0]["seconds"] or 0))
    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        run.run()
    except BaseException as exc:  # NVML absent, an interrupt, or a bug: still one report, after teardown
        report["error"] = f"{type(exc).__name__}: {exc}"
        steps = report["steps"]
        pending = next((st for st in steps if not st["skipped"] and st["ok"] is None), None) or next(
            (st for st in steps[1:] if st["skipped"]), None)
        if pending is not None:
            pending.update(skipped=False, ok=False, error=report["error"])
    finally:
        if args.out:
            with contextlib.suppress(OSError):
                Path(args.out).mkdir(parents=True, exist_ok=True)
                for f in (work / "state").rglob("*.log"):
                    shutil.copy(f, Path(args.out) / f"{f.parent.name}-{f.name}")
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    finish_report(report, time.monotonic() - run.t0)
    emit(report, args.out)
    return 0 if report["ok"] else 1


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python3 bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", default=str(REPO / ".whl" / "gpu"), help="the wheel folder (scripts/gpu-wheels.sh)")
    ap.add_argument("--out", help="a folder for gpu-check.json and the services' logs")
    ap.add_argument("--weights-gib", type=float, default=6.0, help="the random model's bf16 weights, GiB (6)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="the whole run's bound, seconds (450)")
    ap.add_argument("--work", help="a folder for the environment, model and state (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--dry-run", action="store_true", help="no GPU, no NVML: the current interpreter, a small "
                    "model on the CPU, stated GPUs (--gpus 0 --gpu-memory 141)")
    ap.add_argument("--bootstrap", action="store_true", help="with --dry-run: make the environment from the "
                    "wheel folder first, as a real run does")
    ap.add_argument("--serve-on-cpu", action="store_true", help="with --dry-run: also start the stack (`transformers "
                    "serve` on the CPU) and run the chat, restart and down steps, without their GPU verdicts")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--build-model", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.weights_gib > 0 or args.weights_gib > 512:
        ap.error(f"--weights-gib takes a size in GiB between 0 and 512, got {args.weights_gib:g}")
    if args.serve_on_cpu and not args.dry_run:
        ap.error("--serve-on-cpu goes with --dry-run")
    if not args.budget_s > TEARDOWN_RESERVE_S:
        ap.error(f"--budget-s must exceed the teardown's {TEARDOWN_RESERVE_S:g} s")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.build_model:
        print(json.dumps(build_model(Path(args.build_model), args.weights_gib, args.device)))
        return 0
    if args.inner or (args.dry_run and not args.bootstrap):
        return inner(args)
    return outer(argv, args)


if __name__ == "__main__":
    sys.exit(main())
