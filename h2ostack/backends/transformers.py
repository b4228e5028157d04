"""Hugging Face `transformers serve` as a process: the CPU / laptop default."""

from __future__ import annotations

from typing import Any, Literal

from h2ostack.backends.base import (
    Backend,
    Context,
    ExternalSpec,
    Probe,
    ProcessSpec,
    StartSpec,
    args_to_flags,
)
from h2ostack.backends.vllm import openai_probes
from h2ostack.fields import Secret, ServiceBase

API = "openai"
DEFAULT_HEALTH_TIMEOUT = 300.0
DEFAULT_PORT = 8000
# the module behind the `transformers` console script: runs from a bare interpreter path
MODULE = "transformers.cli.transformers"


def command(ctx: Context, device: str | None, dtype: str | None) -> list[str]:
    argv = [ctx.python, "-m", MODULE, "serve", ctx.model, "--host", ctx.host, "--port", str(ctx.port),
            "--device", device or ("auto" if ctx.gpus else "cpu")]
    if dtype:
        argv += ["--dtype", dtype]
    return argv + args_to_flags(ctx.args)


def served_model(model: str) -> str:
    # the forced model answers every request; requests name it as the server was given it
    return model


def probes(ctx: Context) -> list[Probe]:
    # its /v1/models lists the hub cache, not the model it was started with: skip that step
    health, _listed, generation = openai_probes(ctx.served_model, completions=False)
    return [health, generation]


class TransformersService(ServiceBase):
    kind: Literal["transformers"]
    python: str | None = None
    device: str | None = None
    dtype: str | None = None
    api_key: Secret | None = None

    @property
    def starts_something(self) -> bool:
        return self.url is None

    def load_rules(self) -> list[tuple[str | tuple[str, ...], str]]:
        return self.server_rules()


class Transformers(Backend):
    kind = "transformers"
    spec_model = TransformersService
    protocol = API
    default_port = DEFAULT_PORT
    default_health_timeout = DEFAULT_HEALTH_TIMEOUT
    lock_packages = ("transformers", "torch", "tokenizers", "accelerate", "safetensors")
    server_module = MODULE

    def served_model(self, svc: Any, model: str) -> str:
        return served_model(model)

    def start_spec(self, svc: Any, ctx: Context) -> StartSpec:
        if svc.external:
            return ExternalSpec(svc.url or "")
        return ProcessSpec(command(ctx, svc.device, svc.dtype), {"PYTHONUNBUFFERED": "1"})

    def probes(self, svc: Any, ctx: Context | None) -> list[Probe]:
        if ctx is None:
            return openai_probes(svc.model or "")[:2]
        return probes(ctx)


backend = Transformers()
