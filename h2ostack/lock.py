"""Lock files: what a stack resolves to today, so `up --locked` brings up the same servers later.

`h2ostack lock STACK` writes `STACK.lock` (YAML): the h2ostack version, and per service its kind,
planned GPU ids, its image as the engine has it (image id and repo digest), its model with the
revision (as given; resolved from the Hub where it is reachable; a content digest for a local
model folder) and the package versions of the Python environment that runs it. `up --locked`
computes the same now and refuses any difference, listing each.

No secret is ever part of a lock.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from h2ostack import __version__, backends

# the packages that decide how the built-in front behaves (a kind's are its backend's `lock_packages`)
FRONT_PACKAGES = ["h2ostack", "gradio", "gradio_client", "openai", "huggingface_hub", "httptools"]
HEADER = ("# Written by `h2ostack lock`. `h2ostack up --locked` refuses to start anything that differs.\n"
          "# Commit it beside the stack file.\n")


def lock_path(stack_file: str | Path) -> Path:
    return Path(f"{stack_file}.lock")


def python_packages(python: str, names: list[str]) -> dict[str, str]:
    """Versions of the installed `names` in another interpreter's environment (and its Python)."""
    code = ("import importlib.metadata as m, json, platform, sys\n"
            "out = {'python': platform.python_version()}\n"
            "for n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    try:
        done = subprocess.run([python, "-c", code, *names], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"cannot run {python}: {exc}"}
    if done.returncode != 0:
        return {"error": f"{python} failed: {done.stderr.strip().splitlines()[-1:] or '?'}"}
    return dict(sorted(json.loads(done.stdout).items()))


def local_model_digest(path: Path) -> str:
    """A digest of a model folder: every file's name and size, and the content of its small files
    (configs, tokenizer, the weights index), so a different model or tokenizer shows."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts):
        rel = f.relative_to(path).as_posix()
        size = f.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        if size <= 32 * 2**20:
            h.update(f.read_bytes())
    return "sha256:" + h.hexdigest()


def hub_revision(model: str, revision: str | None) -> str | None:
    """The commit a Hub model (at `revision`) resolves to, or None where the Hub is not reachable."""
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(model, revision=revision, timeout=5).sha
    except Exception:  # offline, private, unknown: the lock keeps the revision as given
        return None


def image_facts(client: Any, image: str) -> dict[str, Any]:
    try:
        img = client.images.get(image)
    except Exception as exc:  # not pulled yet, or no engine
        return {"image": image, "image_id": None, "note": f"not on the engine ({type(exc).__name__})"}
    digests = img.attrs.get("RepoDigests") or []
    return {"image": image, "image_id": img.id, "digest": digests[0] if digests else None}


def compute(stack: Any, plan: Any, docker_client: Callable[[str | None], Any] | None = None,
            resolve_hub: Callable[[str, str | None], str | None] = hub_revision) -> dict[str, Any]:
    """What the stack resolves to now (the lock's content)."""
    from h2ostack.facts import local_model_path

    pythons: dict[tuple[str, str], dict[str, str]] = {}
    clients: dict[str | None, Any] = {}  # one per engine: the default, and each host's
    services: dict[str, Any] = {}
    for name, sp in plan.all().items():
        entry: dict[str, Any] = {"kind": sp.kind, "gpus": list(sp.gpus)}
        svc = stack.services.get(name)
        backend = None if sp.is_front else backends.find(sp.kind)
        own = backend.lock_entry(sp) if backend is not None and sp.mode == "process" else None
        if svc is not None and svc.model and "model" not in (own or {}):  # (a kind's own record of its model)
            local = local_model_path(svc.model, stack.base_dir)
            if local is not None and Path(local).is_dir():
                entry["model"] = {"local": svc.model, "digest": local_model_digest(Path(local))}
            elif sp.mode == "external":
                entry["model"] = {"name": svc.model}
            else:
                resolved = resolve_hub(svc.model, svc.revision)
                entry["model"] = {"name": svc.model, "revision": resolved or svc.revision}
        if sp.mode == "external":
            entry["url"] = sp.url
        elif sp.mode == "container":
            if sp.docker_url not in clients:
                clients[sp.docker_url] = (docker_client or _docker)(sp.docker_url)
            entry.update(image_facts(clients[sp.docker_url], sp.image or ""))
        else:
            # a Python server's packages (a kind with no `server_module` and its own record, TGI's local
            # launcher, has no Python environment), then what the kind itself records
            if sp.command and (own is None or backend is None or backend.server_module):
                kind = "gradio" if sp.is_front and sp.kind == "gradio" else sp.kind
                key = (sp.command[0], kind)
                if key not in pythons:
                    pythons[key] = python_packages(sp.command[0], _packages(kind))
                entry["packages"] = dict(pythons[key])  # (paths differ between machines: not locked)
            entry.update(own or {})
        services[name] = entry
    return {"h2ostack": __version__, "stack": plan.stack, "services": services}


def _packages(kind: str) -> list[str]:
    """The packages `lock` records of a kind's Python environment (the built-in front's for `gradio`)."""
    if kind == "gradio":
        return FRONT_PACKAGES
    backend = backends.find(kind)
    return list(backend.lock_packages) if backend is not None else []


def _docker(base_url: str | None) -> Any:
    from h2ostack.runtimes.docker import engine

    return engine(base_url)


def write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1 << 16))
    tmp.replace(path)


def read(path: Path) -> dict[str, Any]:
    from h2ostack.loader import Unreadable, bounded_yaml, read_text_file

    try:
        data = bounded_yaml(read_text_file(path))
    except (Unreadable, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or "services" not in data:
        raise ValueError(f"{path} is not a lock file written by `h2ostack lock`")
    return data


def diff(locked: Any, now: Any, where: str = "") -> list[str]:
    """Every difference, as `path: locked X, now Y`."""
    if isinstance(locked, dict) and isinstance(now, dict):
        out = []
        for key in [*locked, *(k for k in now if k not in locked)]:
            sub = f"{where}.{key}" if where else str(key)
            if key not in now:
                out.append(f"{sub}: locked {_show(locked[key])}, now absent")
            elif key not in locked:
                out.append(f"{sub}: not in the lock, now {_show(now[key])}")
            else:
                out += diff(locked[key], now[key], sub)
        return out
    return [] if locked == now else [f"{where}: locked {_show(locked)}, now {_show(now)}"]


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value
