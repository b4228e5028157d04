"""`render --format compose` and `render --format k8s`: the stack's model servers for engines
people already run, from the same plan `up` uses.

What runs in a container there: TGI services (their image) and vLLM services (the official
`vllm/vllm-openai` image, whose entrypoint takes the same flags; `--vllm-image` pins a tag).
Processes that need a local environment (transformers serve, h2oGPT's generate.py, the chat
fronts) and external endpoints are listed as not rendered, with the reason.

Secrets are never written: compose reads them from the environment (`${HF_TOKEN:?...}`), and the
Kubernetes Deployments reference keys of a Secret named `<stack>-secrets`, which the header says
how to create.

On-demand services (`on_demand: true`) are started only by h2ostack's gateway, when a request
names one, and put away when idle; no engine here does that, and together they may not fit on
their GPUs. Compose puts them under the `on-demand` profile (a plain `docker compose up` leaves
them out), Kubernetes renders them with `replicas: 0`; each is started by hand, without vLLM's
sleep mode (nothing puts it to sleep there), and the header says so.

The documents are built as data and written only by the YAML emitter; the header comment shows
each value quoted with control characters escaped, so no value can end the comment and start a
document of its own.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import replace
from typing import Any

import yaml
from pydantic import SecretStr

from h2ostack import backends
from h2ostack.backends import tgi, vllm
from h2ostack.plan import Plan, ServicePlan
from h2ostack.quoting import env_name
from h2ostack.runtimes.docker import labels_for

VLLM_IMAGE = "vllm/vllm-openai:latest"
VLLM_PORT = 8000
PROBE_PERIOD = 10
ON_DEMAND_PROFILE = "on-demand"


class _Dumper(yaml.SafeDumper):
    """Block style, keys in the order written, long strings unfolded, no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1 << 16)


def _dump_all(docs: list[Any]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1 << 16)


def dns_name(text: str) -> str:
    """A Kubernetes object name (RFC 1035 label): lowercase letters, digits and '-', a letter first."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = "s-" + name
    return name[:63].rstrip("-")


def _awake(sp: ServicePlan) -> ServicePlan:
    """An on-demand vLLM without sleep mode: nothing puts it to sleep outside h2ostack, and its
    development mode would serve vLLM's development endpoints."""
    if not sp.sleep or not sp.command:
        return sp
    command, env = vllm.without_sleep(sp.command, dict(sp.env))
    return replace(sp, command=command, env=env)


def _on_demand_note(names: list[str], how: str) -> list[str]:
    from h2ostack.quoting import comment_value as cv

    if not names:
        return []
    return [f"# on demand: {', '.join(cv(n) for n in names)}. Under h2ostack (`h2ostack up`) the front's gateway starts",
            "# each when a request names it and puts it away when idle; nothing does here, and together they",
            "# may not fit on their GPUs:", f"# {how}."]


def _rendered(plan: Plan) -> tuple[list[ServicePlan], dict[str, str]]:
    """The services a container engine can run, and the others with why not."""
    out, skipped = [], {}
    for name, sp in plan.all().items():
        sp = _awake(sp)
        if sp.nodes:
            skipped[name] = "multi-node vLLM: started from its Ray recipe (`render --format shell`)"
        elif not sp.started:
            skipped[name] = f"external endpoint {sp.url}"
        elif sp.mode == "container" or (sp.command and not sp.is_front and _as_container(sp)):
            out.append(sp)
        elif sp.is_front:
            skipped[name] = "the chat front runs from h2ostack's own environment (`h2ostack up`)"
        else:
            skipped[name] = f"a {sp.kind} process needs its local Python environment (`h2ostack up`)"
    return out, skipped


def _as_container(sp: ServicePlan) -> bool:
    """Whether a process is rendered as a container of its engine's image (vLLM's)."""
    backend = backends.find(sp.kind)
    return backend is not None and backend.container_args(sp.command or (), VLLM_PORT) is not None


def _container(sp: ServicePlan, vllm_image: str) -> tuple[str, list[str], int]:
    """Image, arguments and the port the server listens on inside its container."""
    if sp.mode == "container":
        spec = sp.container or {}
        return sp.image or "", [str(a) for a in spec.get("command", [])], tgi.CONTAINER_PORT
    args = backends.get(sp.kind).container_args(sp.command or (), VLLM_PORT) or []
    return vllm_image, args, VLLM_PORT


def _env(sp: ServicePlan) -> dict[str, Any]:
    env = {k: v for k, v in sp.env.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    return env


def _probe(sp: ServicePlan) -> str:
    return sp.probes[0].path if sp.probes else "/health"


def _volumes(sp: ServicePlan) -> list[tuple[str, str, bool]]:
    out = []
    for text in (sp.container or {}).get("volumes", []):
        parts = str(text).split(":")
        if len(parts) >= 2:
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def _shm(sp: ServicePlan) -> str | None:
    backend = None if sp.is_front else backends.find(sp.kind)
    return (sp.container or {}).get("shm_size") or (backend.container_shm if backend is not None else None)


def _header(plan: Plan, skipped: dict[str, str], extra: list[str]) -> str:
    from h2ostack.quoting import comment_value as cv

    lines = [f"# stack {cv(plan.stack)}, rendered by h2ostack from {cv(plan.source)}",
             "# Secrets are never written here.", *extra]
    for name, why in skipped.items():
        lines.append(f"# not rendered: {cv(name)} ({cv(why)})")
    return "\n".join(lines) + "\n"


# -- compose ------------------------------------------------------------------------------
def _literal_dollars(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {k: _literal_dollars(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal_dollars(v) for v in value]
    return value


def render_compose(plan: Plan, vllm_image: str = VLLM_IMAGE) -> str:
    services, skipped = _rendered(plan)
    names = {sp.name for sp in services}
    out: dict[str, Any] = {}
    for sp in services:
        image, args, inner = _container(sp, vllm_image)
        env = {}
        for key, value in _env(sp).items():
            env[env_name(key)] = (f"${{{key}:?set {key} in the environment}}" if isinstance(value, SecretStr)
                        else str(value).replace("$", "$$"))
        url = f"http://127.0.0.1:{inner}{_probe(sp)}"
        python_probe = f"import urllib.request; urllib.request.urlopen({json.dumps(url)}, timeout=5)"
        svc: dict[str, Any] = {
            "image": image,
            "command": args,
            "ports": [f"{plan.bind}:{sp.port}:{inner}"],
            "labels": labels_for(plan.stack, sp),
        }
        svc = _literal_dollars(svc)  # compose interpolates `$` everywhere: a value's own `$` stays a `$`
        if env:
            svc["environment"] = env
        if _volumes(sp):
            svc["volumes"] = [f"{h}:{c}" + (":ro" if ro else "") for h, c, ro in _volumes(sp)]
        if _shm(sp):
            svc["shm_size"] = _shm(sp)
        svc["restart"] = {"no": "no", "always": "always"}.get(
            sp.restart, "on-failure" + (f":{sp.max_restarts}" if sp.max_restarts else ""))
        if sp.on_demand:
            svc["profiles"] = [ON_DEMAND_PROFILE]
        if sp.gpus:
            svc["deploy"] = {"resources": {"reservations": {"devices": [
                {"driver": "nvidia", "device_ids": [str(g) for g in sp.gpus], "capabilities": ["gpu"]}]}}}
        svc["healthcheck"] = {
            # TGI's image has curl, vLLM's has Python: the first that exists answers
            "test": ["CMD-SHELL", f"curl -fsS -o /dev/null {shlex.quote(url)} || python3 -c "
                                  f"{shlex.quote(python_probe)}"],
            "interval": f"{PROBE_PERIOD}s", "timeout": "5s", "retries": 3,
            "start_period": f"{math.ceil(sp.health_timeout)}s",
        }
        deps = [d for d in sp.depends_on if d in names]
        if deps:
            svc["depends_on"] = {d: {"condition": "service_healthy"} for d in deps}
        out[sp.name] = svc
    doc: dict[str, Any] = {"name": re.sub(r"[^a-z0-9_-]", "-", plan.stack.lower()), "services": out}
    if skipped:
        doc["x-h2ostack-not-rendered"] = _literal_dollars(skipped)
    secrets = sorted({k for sp in services for k, v in sp.env.items() if isinstance(v, SecretStr)})
    extra = [f"# Before `docker compose up`: export {' '.join(map(env_name, secrets))}"] if secrets else []
    extra += _on_demand_note([sp.name for sp in services if sp.on_demand],
                             f"they are in the `{ON_DEMAND_PROFILE}` profile, which `docker compose up` leaves out;\n"
                             f"# start one with `docker compose --profile {ON_DEMAND_PROFILE} up -d NAME`")
    return _header(plan, skipped, extra) + _dump(doc)


# -- Kubernetes ---------------------------------------------------------------------------
def _quantity(size: str) -> str:
    """Docker's 1g / 512m / 64k to Kubernetes' 1Gi / 512Mi / 64Ki."""
    m = re.fullmatch(r"(\d+)\s*([bkmgt]?)b?", size.strip().lower())
    if not m:
        return size
    unit = {"": "", "b": "", "k": "Ki", "m": "Mi", "g": "Gi", "t": "Ti"}[m.group(2)]
    return m.group(1) + unit


def k8s_documents(plan: Plan, vllm_image: str = VLLM_IMAGE) -> tuple[list[dict[str, Any]], dict[str, str]]:
    services, skipped = _rendered(plan)
    secret_name = dns_name(f"{plan.stack}-secrets")
    docs: list[dict[str, Any]] = []
    for sp in services:
        image, args, inner = _container(sp, vllm_image)
        name = dns_name(sp.name)
        select = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": dns_name(plan.stack),
                  "app.kubernetes.io/managed-by": "h2ostack"}
        labels = {**select, **{k: v for k, v in labels_for(plan.stack, sp).items() if v}}
        env: list[dict[str, Any]] = []
        for key, value in _env(sp).items():
            if isinstance(value, SecretStr):
                env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}})
            else:
                env.append({"name": key, "value": str(value)})
        http = {"httpGet": {"path": _probe(sp), "port": "http"}, "periodSeconds": PROBE_PERIOD, "timeoutSeconds": 5}
        container: dict[str, Any] = {
            "name": name, "image": image, "args": args,
            "ports": [{"name": "http", "containerPort": inner}],
            "env": env,
            "startupProbe": {**http, "failureThreshold": max(1, math.ceil(sp.health_timeout / PROBE_PERIOD))},
            "readinessProbe": {**http, "failureThreshold": 3},
        }
        if sp.unhealthy_after:
            container["livenessProbe"] = {**http, "failureThreshold": max(1, math.ceil(sp.unhealthy_after /
                                                                                      PROBE_PERIOD))}
        if sp.gpus:
            container["resources"] = {"limits": {"nvidia.com/gpu": len(sp.gpus)}}
        volumes: list[dict[str, Any]] = []
        mounts: list[dict[str, Any]] = []
        if _shm(sp):
            volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _quantity(_shm(sp) or "")}})
            mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        for i, (host, inside, ro) in enumerate(_volumes(sp)):
            volumes.append({"name": f"host-{i}", "hostPath": {"path": host, "type": "DirectoryOrCreate"}})
            mounts.append({"name": f"host-{i}", "mountPath": inside, **({"readOnly": True} if ro else {})})
        if mounts:
            container["volumeMounts"] = mounts
        pod: dict[str, Any] = {"containers": [container], "restartPolicy": "Always"}
        if volumes:
            pod["volumes"] = volumes
        docs.append({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": 0 if sp.on_demand else 1, "selector": {"matchLabels": select},
                     "template": {"metadata": {"labels": labels}, "spec": pod}},
        })
        docs.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "labels": labels},
            "spec": {"selector": select, "ports": [{"name": "http", "port": sp.port or inner, "targetPort": "http"}]},
        })
    return docs, skipped


def render_k8s(plan: Plan, vllm_image: str = VLLM_IMAGE) -> str:
    docs, skipped = k8s_documents(plan, vllm_image)
    services, _ = _rendered(plan)
    secrets = sorted({k for sp in services for k, v in sp.env.items() if isinstance(v, SecretStr)})
    extra = ["# GPUs are counted (nvidia.com/gpu), not pinned: the scheduler picks them; readiness gates",
             "# traffic where compose uses depends_on."]
    if secrets:
        literal = " ".join(f'--from-literal={k}="${k}"' for k in map(env_name, secrets))
        extra.append(f"# First: kubectl create secret generic {dns_name(plan.stack + '-secrets')} {literal}")
    extra += _on_demand_note([sp.name for sp in services if sp.on_demand],
                             "their Deployments have `replicas: 0`; start one with\n"
                             "# `kubectl scale deployment/NAME --replicas=1`")
    return _header(plan, skipped, extra) + (_dump_all(docs) if docs else "")
