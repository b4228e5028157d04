"""The machine as the planner needs it: GPUs and their memory, busy ports, local model sizes.

Everything here is read once per command and handed to the pure planner, so a plan can be
made (and tested) on a machine without GPUs by stating them (`--gpus`, `--gpu-memory`).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from h2ostack.errors import FactsError
from h2ostack.spec import Stack

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# a model folder holds its weights at the top or a level or two down; `model: /` must not walk the disk
SCAN_DEPTH = 3
SCAN_ENTRIES = 10_000


@dataclass(frozen=True)
class GPU:
    index: int
    total_gib: float | None = None
    free_gib: float | None = None
    name: str = ""


@dataclass(frozen=True)
class Facts:
    gpus: tuple[GPU, ...] = ()
    gpu_source: str = "none"  # stated | nvml | none
    busy_ports: frozenset[int] = frozenset()
    python: str = sys.executable
    model_gib: dict[str, float] = field(default_factory=dict)  # local model path -> weight size
    host_gpus: dict[str, tuple[GPU, ...]] = field(default_factory=dict)  # from the engines of `hosts:`

    def gpu(self, index: int) -> GPU | None:
        return next((g for g in self.gpus if g.index == index), None)


def parse_gpu_list(text: str) -> list[int]:
    text = text.strip()
    if text in ("", "none"):
        return []
    try:
        ids = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise FactsError(f"--gpus takes device ids like 0,1,2,3, got {text!r}") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise FactsError(f"--gpus takes distinct device ids like 0,1,2,3, got {text!r}")
    return ids


def nvml_gpus() -> list[GPU]:
    """GPUs from NVML, or [] where the library or a driver is missing."""
    if not (os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")):
        return []  # no NVIDIA driver here: skip the library's import and init
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            out.append(GPU(i, mem.total / 2**30, mem.free / 2**30, name.decode() if isinstance(name, bytes) else name))
        return out
    finally:
        pynvml.nvmlShutdown()


def gib_per_gpu(value: float | str, where: str) -> float:
    """A stated GPU memory: a positive, finite number of GiB (nan or inf would switch checks off)."""
    try:
        gib = float(value)
    except ValueError:
        gib = math.nan
    if not math.isfinite(gib) or gib <= 0:
        raise FactsError(f"{where} takes the GiB of memory per GPU, a positive number like 80, got {str(value)[:40]!r}")
    return gib


def machine_gpus(gpus: str | None = None, gpu_memory: float | None = None) -> tuple[tuple[GPU, ...], str]:
    stated = gpus if gpus is not None else os.environ.get("H2OSTACK_GPUS")
    mem_text = os.environ.get("H2OSTACK_GPU_MEMORY")
    if gpu_memory is not None:
        gpu_memory = gib_per_gpu(gpu_memory, "--gpu-memory")
    elif mem_text:
        gpu_memory = gib_per_gpu(mem_text, "H2OSTACK_GPU_MEMORY")
    if stated is not None:
        return tuple(GPU(i, gpu_memory, gpu_memory) for i in parse_gpu_list(stated)), "stated"
    found = nvml_gpus()
    if found:
        if gpu_memory is not None:
            found = [GPU(g.index, gpu_memory, gpu_memory, g.name) for g in found]
        return tuple(found), "nvml"
    return (), "none"


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    # a server bound to another address of this host still takes the port for a wildcard bind
    if host not in ("0.0.0.0", "::"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) != 0
    return True


def listening_ports() -> set[int]:
    try:
        import psutil

        return {c.laddr.port for c in psutil.net_connections(kind="inet") if c.status == "LISTEN"}
    except Exception:
        return set()


def local_model_path(model: str | None, base_dir: str) -> Path | None:
    if not model:
        return None
    try:
        if model.startswith(("/", "./", "../", "~")):
            return Path(base_dir, os.path.expanduser(model)).resolve()
        candidate = Path(base_dir, model)
        return candidate.resolve() if candidate.is_dir() else None
    except (OSError, ValueError):  # a name no file system holds (too long, a NUL): a hub id, then
        return None


def model_size_gib(path: Path) -> float | None:
    """The weights' size in a model folder, from at most SCAN_ENTRIES entries SCAN_DEPTH levels deep
    (without following links); None when unknown or when the folder is too large to be one model's."""
    total, seen = 0, 0
    todo = [(path, 0)]
    while todo:
        folder, depth = todo.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    seen += 1
                    if seen > SCAN_ENTRIES:
                        return None
                    if entry.is_dir(follow_symlinks=False):
                        if depth + 1 < SCAN_DEPTH:
                            todo.append((Path(entry.path), depth + 1))
                    elif entry.name.endswith(WEIGHT_SUFFIXES) and entry.is_file():
                        total += entry.stat().st_size
        except OSError:
            if folder == path:
                return None
    return total / 2**30 if total else None


SMI_QUERY = ["--query-gpu=index,memory.total,memory.free,name", "--format=csv,noheader,nounits"]


def parse_smi_csv(text: str) -> list[GPU]:
    """`nvidia-smi --query-gpu=index,memory.total,memory.free,name --format=csv,noheader,nounits` (MiB)."""
    out = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            out.append(GPU(int(parts[0]), round(float(parts[1]) / 1024, 2), round(float(parts[2]) / 1024, 2),
                           parts[3] if len(parts) > 3 else ""))
    return out


def engine_gpus(host: str, base_url: str, image: str, engine: Callable[[str], Any]) -> tuple[GPU, ...]:
    """A host's GPUs as its engine sees them: `nvidia-smi` in a throwaway container of the service's
    image with every GPU requested (the NVIDIA runtime mounts nvidia-smi into it). `engine` connects
    to the engine at a URL: it is given by the caller, so that the facts import neither a runtime
    nor the Docker SDK (the device request is the SDK's DeviceRequest as a plain mapping)."""
    container = None
    try:
        client = engine(base_url)
        try:
            client.images.get(image)
        except Exception:
            client.images.pull(image)
        container = client.containers.create(image, entrypoint="nvidia-smi", command=SMI_QUERY,
                                             device_requests=[{"count": -1, "capabilities": [["gpu"]]}])
        container.start()
        container.wait(timeout=60)
        found = parse_smi_csv(container.logs(stdout=True, stderr=False).decode(errors="replace"))
        if not found:
            raise RuntimeError("nvidia-smi listed no GPU")
    except Exception as exc:  # no engine, no NVIDIA runtime, no image
        why = getattr(exc, "explanation", None) or str(exc)
        raise FactsError(f"could not ask host {host}'s engine ({base_url}) for its GPUs: {why}. State them in "
                         f"`hosts.{host}.gpus`") from None
    finally:
        if container is not None:  # created even when the start fails (no NVIDIA runtime)
            with contextlib.suppress(Exception):
                container.remove(force=True)
    return tuple(found)


def gather(stack: Stack, gpus: str | None = None, gpu_memory: float | None = None,
           check_ports: bool = True, engine: Callable[[str], Any] | None = None) -> Facts:
    """The facts a plan of `stack` needs. `engine` (a Docker client for a URL) asks a host of `hosts:`
    with no `gpus:` stated for its GPUs; without it, such a host is a FactsError."""
    devices, source = machine_gpus(gpus, gpu_memory)
    busy: set[int] = set()
    if check_ports:
        busy = listening_ports()
        host = stack.defaults.bind
        wanted = [s.port for s in stack.services.values() if s.port and not s.external]
        wanted += [f.port for f in stack.fronts.values() if f.port]
        for port in wanted:
            if port not in busy and not port_free(port, host):
                busy.add(port)
    sizes = {}
    for svc in stack.services.values():
        path = local_model_path(svc.model, stack.base_dir)
        if path is not None:
            size = model_size_gib(path)
            if size:
                sizes[str(path)] = size
    host_gpus = {}
    for name, h in stack.hosts.items():
        users = [s for s in stack.services.values() if s.host == name and s.starts_something and s.gpus]
        if h.gpus is None and h.docker and users:
            if engine is None:
                raise FactsError(f"host {name}'s GPUs are not stated: state them in `hosts.{name}.gpus`")
            host_gpus[name] = engine_gpus(name, h.docker, getattr(users[0], "image", None) or "", engine)
    return Facts(devices, source, frozenset(busy), sys.executable, sizes, host_gpus)
