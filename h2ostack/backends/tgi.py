"""Text Generation Inference: its launcher flags (shared by Docker and local launcher), readiness."""

from __future__ import annotations

import re

from h2ostack.backends.base import Context, Probe, args_to_flags

API = "tgi"
DEFAULT_HEALTH_TIMEOUT = 900.0
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
