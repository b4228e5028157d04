"""Text Generation Inference: its launcher flags (shared by Docker and local launcher), readiness."""

from __future__ import annotations

from h2ostack.backends.base import Context, Probe, args_to_flags

API = "tgi"
DEFAULT_HEALTH_TIMEOUT = 900.0
CONTAINER_PORT = 80
# flags that always take a value, even `false`
VALUE_FLAGS = ("sharded",)


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
