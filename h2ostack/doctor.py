"""`h2ostack doctor`: what the guide's install section makes people check by hand, one line each.

Docker engine (and which), NVIDIA container runtime, GPUs and their free memory, the Hugging
Face cache, tokens for gated models, each `python:` environment able to import its server, and
free ports. Every failed check says what to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from h2ostack import backends
from h2ostack.backends.base import Finding

# hub organisations whose models need an accepted licence and a token
GATED_ORGS = ("meta-llama/", "mistralai/", "google/gemma", "tiiuae/falcon-180b", "bigcode/starcoder")


# one line of doctor's report: the type a kind's own `Backend.doctor` check returns
Check = Finding


def check_docker(needed: bool, gpu_containers: bool = False) -> list[Check]:
    from h2ostack.errors import EngineUnavailable
    from h2ostack.runtimes.docker import engine

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = engine()
    except EngineUnavailable as exc:
        out = [Check("docker engine", not needed, str(exc) if needed else f"none at {host} (no container here)",
                     "install docker and start it, or set DOCKER_HOST" if needed else "")]
        if gpu_containers:
            out.append(Check("nvidia container runtime", False, "unknown: no engine to ask, and the stack runs "
                             "containers on GPUs", "with the engine running, install nvidia-container-toolkit "
                             "and run `nvidia-ctk runtime configure --runtime=docker`"))
        return out
    info: dict[str, Any] = client.info()
    out = [Check("docker engine", True, f"{host}: Docker {info.get('ServerVersion', '?')}")]
    runtimes = info.get("Runtimes") or {}
    has_nvidia = "nvidia" in runtimes or any("nvidia" in str(v) for v in runtimes.values())
    out.append(Check("nvidia container runtime", has_nvidia or not needed,
                     "present" if has_nvidia else f"absent (runtimes: {', '.join(runtimes) or 'none'})",
                     "" if has_nvidia else "install nvidia-container-toolkit and run "
                                           "`nvidia-ctk runtime configure --runtime=docker`"))
    return out


def check_gpus(gpus: str | None, gpu_memory: float | None) -> Check:
    from h2ostack.facts import machine_gpus

    found, source = machine_gpus(gpus, gpu_memory)
    if not found:
        return Check("gpus", True, "none found (NVML absent or no driver): CPU services only",
                     "state them with --gpus 0,1 to plan for another machine")
    parts = [f"{g.index}: {g.name or 'GPU'} {g.free_gib:.1f}/{g.total_gib:.1f} GiB free" if g.total_gib
             else f"{g.index}" for g in found]
    return Check("gpus", True, f"{source}: " + "; ".join(parts))


def check_hf_cache(stack: Any) -> Check:
    home = stack.defaults.hf_home if stack is not None and stack.defaults.hf_home else (
        os.environ.get("HF_HOME") or "~/.cache/huggingface")
    path = Path(os.path.expanduser(home))
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
        free = shutil.disk_usage(path).free / 2**30
        return Check("hugging face cache", True, f"{path} writable, {free:.0f} GiB free")
    except OSError as exc:
        return Check("hugging face cache", False, f"{path}: {exc.strerror}",
                     "make it writable, or set defaults.hf_home / HF_HOME to a folder that is")


def _is_set(value: str | None) -> bool:
    from h2ostack.render import UNSET

    return bool(value) and not str(value).startswith(UNSET)


def check_tokens(stack: Any) -> list[Check]:
    from h2ostack.spec import reveal

    out = []
    for name, svc in stack.services.items():
        model = svc.model or ""
        if not svc.starts_something or not model.startswith(GATED_ORGS):
            continue
        has = any(k in svc.env and _is_set(reveal(svc.env[k])) for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")) or bool(
            os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
        out.append(Check(f"token for {name}", has, f"{model} is gated: " + ("a token is set" if has else "no token"),
                         "" if has else f"accept the licence of {model} on the hub, then set HF_TOKEN "
                                        "(env: {HF_TOKEN: \"${HF_TOKEN}\"} on the service)"))
    return out


def check_environments(plan: Any, stack: Any) -> list[Check]:
    out = []
    for name, sp in plan.services.items():
        if sp.mode != "process" or not sp.command:
            continue
        svc = stack.services[name]
        backend = backends.get(sp.kind)
        found = backend.doctor(name, sp, svc)
        if found is not None:  # the kind's own check (TGI's launcher, llama.cpp's model file)
            out.append(found)
            if not backend.server_module:  # it replaces the import check
                continue
        python, module = sp.command[0], backend.server_module or ""
        try:
            res = subprocess.run([python, "-c", f"import importlib.util as u, sys; "
                                                f"sys.exit(0 if u.find_spec({module!r}) else 3)"],
                                 capture_output=True, text=True, timeout=60)
            ok, why = res.returncode == 0, "" if res.returncode == 0 else (res.stderr.strip().splitlines() or
                                                                           [f"no module {module}"])[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, why = False, str(exc)
        where = getattr(svc, "python", None) or python
        out.append(Check(f"python of {name}", ok, f"{where} imports {module}" if ok else f"{where}: {why}",
                         "" if ok else "install the server there (vLLM: `pip install vllm`; transformers: "
                                       "`pip install 'transformers[serving]' torch`), or set `python:`"))
    return out


def check_ports(plan: Any, own: dict[int, str] | None = None) -> list[Check]:
    """`own`: ports held by this stack's running services (no conflict for `up`, which keeps them)."""
    from h2ostack.facts import port_free

    out = []
    for sp in plan.all().values():
        if sp.started and sp.port:
            if sp.port in (own or {}):
                out.append(Check(f"port {sp.port} ({sp.name})", True, f"held by this stack's {own[sp.port]}, "
                                                                       "which is running"))
                continue
            free = port_free(sp.port, plan.bind if plan.bind not in ("0.0.0.0", "::") else "127.0.0.1")
            out.append(Check(f"port {sp.port} ({sp.name})", free, "free" if free else "in use",
                             "" if free else "stop what holds it (or h2ostack down), or pick another port"))
    return out


def running_ports(stack_name: str) -> dict[int, str]:
    """Ports of this stack's live services, found the way `status` finds them."""
    from h2ostack.api import Ctx
    from h2ostack.state import StackState

    ctx = Ctx(stack_name, StackState(stack_name))
    return {o.port: n for n, o in ctx.observe().items() if o.alive and o.port and not n.startswith("<")}


def check_variables(stack_file: str, environ: dict[str, str]) -> list[Check]:
    """One failed check per variable the stack references that nobody set (secrets among them)."""
    from h2ostack.render import UNSET

    return [Check(f"variable {name}", False, "not set, and the stack file gives it no default",
                  f"export {name}=... (or put it in the stack's env_file) before `h2ostack up`")
            for name, value in environ.items() if value == UNSET + name]


def gpus_needed(stack: Any) -> tuple[int, int]:
    """(highest device id + 1, devices counted) that the stack's local GPU services ask for."""
    top = count = 0
    for svc in stack.services.values():
        if not svc.starts_something or getattr(svc, "host", None) or not svc.gpus:
            continue
        ids = svc.gpu_ids
        top = max(top, max(ids) + 1 if ids else 0)
        count += svc.gpu_count
    return top, count


def check_gpus_needed(stack: Any, gpus: str | None, gpu_memory: float | None) -> Check | None:
    from h2ostack.facts import machine_gpus

    _, count = gpus_needed(stack)
    if not count:
        return None
    found, _ = machine_gpus(gpus, gpu_memory)
    ids = {g.index for g in found}
    named = [i for svc in stack.services.values() if svc.starts_something and not svc.host
             for i in (svc.gpu_ids or [])]
    missing = sorted({i for i in named if i not in ids})
    ok = not missing and len(found) >= count
    detail = f"the stack asks for {count} GPU(s)" + (f" (ids {sorted(set(named))})" if named else "") + \
        f"; this machine has {len(found)}" + (f" ({', '.join(map(str, sorted(ids)))})" if ids else "")
    return Check("gpus needed", ok, detail, "" if ok else "run it where those GPUs are (check there with "
                 "`h2ostack doctor`), or change `gpus:`; `--gpus 0,1` plans for another machine")


def _fallback_plan(stack: Any, gpus: str | None, gpu_memory: float | None) -> Any:
    """The plan on a machine that has the GPUs the stack names, so the checks after planning still
    run where planning failed (a laptop checking a GPU stack)."""
    from h2ostack.api import docker_engine
    from h2ostack.facts import gather
    from h2ostack.plan import make_plan

    top, count = gpus_needed(stack)
    stated = ",".join(str(i) for i in range(max(top, count))) or None
    try:
        return make_plan(stack, gather(stack, stated or gpus, gpu_memory, check_ports=False, engine=docker_engine))
    except Exception:  # noqa: BLE001 - the planning problems are already listed
        return None


def run(stack_file: str | None, gpus: str | None = None, gpu_memory: float | None = None) -> list[Check]:
    """Every check, each failure listed: a stack that cannot be planned here (a missing secret, GPUs
    this machine lacks) still gets its other checks, planned as if the machine had its GPUs."""
    from h2ostack.errors import FactsError, StackError

    stack = plan = None
    problems: list[Check] = []
    if stack_file:
        from h2ostack.api import docker_engine
        from h2ostack.facts import gather
        from h2ostack.loader import load
        from h2ostack.plan import make_plan
        from h2ostack.render import environ_for

        environ = environ_for(stack_file)
        try:
            stack = load(stack_file, environ)
        except StackError:
            stack = load(stack_file)  # an unset variable the file cannot do without: the loader's message
        problems += check_variables(stack_file, environ)
        try:
            plan = make_plan(stack, gather(stack, gpus, gpu_memory, check_ports=False, engine=docker_engine))
        except (StackError, FactsError) as exc:
            lines = str(exc).splitlines()
            problems += [Check("plan", False, line, "see the other checks; `h2ostack plan --gpus 0,1,...` "
                               "plans for another machine") for line in lines]
            plan = _fallback_plan(stack, gpus, gpu_memory)
    needs_docker = plan is None or any(sp.mode == "container" for sp in plan.services.values())
    gpu_containers = plan is not None and any(sp.mode == "container" and sp.gpus and not sp.host
                                              for sp in plan.services.values())
    checks = check_docker(needs_docker, gpu_containers)
    checks.append(check_gpus(gpus, gpu_memory))
    if stack is not None:
        need = check_gpus_needed(stack, gpus, gpu_memory)
        checks += [need] if need else []
    checks.append(check_hf_cache(stack))
    checks += problems
    if stack is not None:
        checks += check_tokens(stack)
    if stack is not None and plan is not None:
        checks += check_environments(plan, stack) + check_ports(plan, running_ports(stack.name))
    return checks
