"""Text Generation Inference: its launcher flags (shared by Docker and local launcher), readiness."""

from __future__ import annotations

import os
import re
import shutil
from typing import Any, Literal

from pydantic import Field

from h2ostack.backends.base import (
    Backend,
    ContainerSpec,
    Context,
    ExternalSpec,
    Finding,
    Mode,
    Probe,
    ProcessSpec,
    StartSpec,
    args_to_flags,
    resolve_path,
)
from h2ostack.fields import BasicAuth, EnvValue, Secret, ServiceBase

API = "tgi"
DEFAULT_HEALTH_TIMEOUT = 900.0
DEFAULT_PORT = 8080
CONTAINER_PORT = 80
# flags that always take a value, even `false`
VALUE_FLAGS = ("sharded",)
# where the image keeps the Hugging Face cache: up to 2.2 HUGGINGFACE_HUB_CACHE=/data (the hub layout),
# from 2.3 HF_HOME=/data (the hub cache in /data/hub)
DATA = "/data"
TOKEN_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # newer images read the first, older the second


def hub_at_data(image: str | None) -> bool:
    """Whether the image keeps the hub cache itself in /data (TGI up to 2.2), not in /data/hub."""
    tag = (image or "").rsplit("/", 1)[-1].partition(":")[2]
    m = re.match(r"^v?(\d+)\.(\d+)", tag)
    return bool(m) and (int(m.group(1)), int(m.group(2))) < (2, 3)


def cache_volume(image: str | None, hf_home: str) -> str:
    """The host's Hugging Face cache (HF_HOME) mounted where the image looks for it, so nothing is
    downloaded twice: its hub folder at /data for TGI up to 2.2, the whole of it from 2.3."""
    return (hf_home.rstrip("/") + "/hub" if hub_at_data(image) else hf_home.rstrip("/")) + ":" + DATA


def launcher_flags(ctx: Context, hostname: str) -> list[str]:
    flags = ["--model-id", ctx.model]
    if ctx.revision:
        flags += ["--revision", ctx.revision]
    args = dict(ctx.args)
    sharded = args.get("sharded")
    if (sharded is True or str(sharded).lower() == "true") and "num_shard" not in args and len(ctx.gpus) > 1:
        args["num_shard"] = len(ctx.gpus)
    flags += args_to_flags(args, value_flags=VALUE_FLAGS, skip=("hostname", "port", "model_id"))
    return [*flags, "--hostname", hostname]


def launcher_command(ctx: Context, launcher: str) -> list[str]:
    return [launcher, *launcher_flags(ctx, ctx.host), "--port", str(ctx.port)]


def probes(ctx: Context) -> list[Probe]:
    return tgi_probes(ctx.model)


def tgi_probes(model: str | None) -> list[Probe]:
    return [Probe("health", "GET", "/health", timeout=2.0),
            Probe("model info", "GET", "/info", expect_model=model, timeout=5.0),
            Probe("generation", "POST", "/generate",
                  {"inputs": "Hello", "parameters": {"max_new_tokens": 1}}, timeout=120.0)]


class TGIService(ServiceBase):
    kind: Literal["tgi"]
    image: str | None = None
    launcher: str | None = None
    shm_size: str | None = None
    volumes: list[str] = Field(default_factory=list)
    auth: BasicAuth | None = None
    api_key: Secret | None = None  # TGI 2.3+: clients send `Bearer KEY`; reaches the server as $API_KEY

    @property
    def starts_something(self) -> bool:
        return bool(self.image or self.launcher)

    def load_rules(self) -> list[tuple[str | tuple[str, ...], str]]:
        out: list[tuple[str | tuple[str, ...], str]] = []
        modes = [m for m in ("image", "launcher", "url") if getattr(self, m)]
        if len(modes) != 1:
            out.append(("kind", "a tgi service needs exactly one of `image:` (Docker), `launcher:` (a local install) "
                                f"or `url:` (an existing server); got {', '.join(modes) or 'none'}"))
        if not self.url and not self.model:
            out.append(("model", "this field is required"))
        if self.starts_something and self.port is None and self.image:
            out.append(("port", "a TGI container needs a host `port:` (the container listens on 80)"))
        return out


class TGI(Backend):
    kind = "tgi"
    spec_model = TGIService
    protocol = API
    default_port = DEFAULT_PORT
    default_health_timeout = DEFAULT_HEALTH_TIMEOUT
    lock_packages = ("text-generation-server", "torch", "transformers")  # a local launcher's environment
    resolves_local_model = False  # the model id as given: a container sees its own paths
    api_key_env = "API_KEY"  # a launcher started as a process reads it there

    def mode(self, svc: Any) -> Mode:
        return "external" if svc.external else "container" if svc.image else "process"

    def start_spec(self, svc: Any, ctx: Context) -> StartSpec:
        if svc.external:
            return ExternalSpec(svc.url or "")
        env: dict[str, EnvValue] = {}
        if svc.api_key is not None:
            env["API_KEY"] = svc.api_key  # never --api-key: argv shows in `ps` and `docker inspect`
        if svc.launcher:
            return ProcessSpec(launcher_command(ctx, resolve_path(ctx.base_dir, svc.launcher)), env)
        return ContainerSpec(svc.image or "", launcher_flags(ctx, "0.0.0.0"), CONTAINER_PORT, env, cache_at=DATA,
                             cache_volume=cache_volume(svc.image, ctx.hf_home) if ctx.hf_home else None)

    def probes(self, svc: Any, ctx: Context | None) -> list[Probe]:
        return tgi_probes(ctx.model if ctx is not None else None)

    def finish_env(self, env: dict[str, EnvValue]) -> None:
        # either token name reaches the server, whichever its version reads
        token = next((env[k] for k in TOKEN_NAMES if k in env), None)
        for k in TOKEN_NAMES if token is not None else ():
            env.setdefault(k, token)

    def lock_entry(self, sp: Any) -> dict[str, Any] | None:
        # a local launcher: its own install, not a Python environment
        return {"launcher": sp.command[0] if sp.command else None}

    def doctor(self, name: str, sp: Any, svc: Any) -> Finding | None:
        exe = sp.command[0]
        ok = bool(shutil.which(exe)) or os.access(exe, os.X_OK)
        return Finding(f"launcher of {name}", ok, exe, "" if ok else "install TGI locally or use `image:`")


backend = TGI()
