"""Hugging Face `transformers serve` as a process: the CPU / laptop default."""

from __future__ import annotations

from h2ostack.backends.base import Context, Probe, args_to_flags
from h2ostack.backends.vllm import openai_probes

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
