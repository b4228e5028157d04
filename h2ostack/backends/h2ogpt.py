"""h2oGPT's Gradio server (`generate.py`): started as a process serving one model, or external."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from h2ostack.backends.base import Context, Probe, args_to_flags

API = "h2ogpt"
DEFAULT_HEALTH_TIMEOUT = 600.0
DEFAULT_PORT = 7860


def command(ctx: Context, prompt_type: str | None, prompt_dict: dict | None) -> list[str]:
    argv = [ctx.python, "generate.py", f"--base_model={ctx.model}"]
    if prompt_type:
        argv.append(f"--prompt_type={prompt_type}")
    if prompt_dict:
        argv.append(f"--prompt_dict={prompt_dict!r}")
    if ctx.revision:
        argv.append(f"--revision={ctx.revision}")
    # h2oGPT's CLI (fire) takes --key=value with the names as written
    for flag in args_to_flags(ctx.args, equals=True):
        name, sep, value = flag[2:].partition("=")
        argv.append("--" + name.replace("-", "_") + (sep + value if sep else ""))
    return argv


def env(ctx: Context) -> dict[str, str]:
    return {"GRADIO_SERVER_PORT": str(ctx.port), "GRADIO_SERVER_NAME": ctx.host, "h2ogpt_server_name": ctx.host}


def probes() -> list[Probe]:
    return [Probe("gradio config", "GET", "/config", timeout=5.0)]


def inference_server(plan: Any) -> str:
    """The `inference_server` string h2oGPT expects for a planned service."""
    host_port = (plan.url or "").split("://", 1)[-1].rstrip("/")
    if plan.kind == "openai":
        return "openai_chat"
    if plan.api == "openai":
        return ("vllm:" if plan.prompt_type else "vllm_chat:") + host_port
    return plan.url or ""


def model_lock_args(front: Any, services: Mapping[str, Any]) -> list[str]:
    """`--model_lock=[{...},...]` written without spaces, as h2oGPT's CLI parses it."""
    entries = []
    for name in front.models:
        plan = services[name]
        entry = {"inference_server": inference_server(plan), "base_model": plan.served_model or name}
        if plan.prompt_type:
            entry["prompt_type"] = plan.prompt_type
        entries.append(entry)
    text = "[" + ",".join("{" + ",".join(f"'{k}':'{v}'" for k, v in e.items()) + "}" for e in entries) + "]"
    args = [f"--model_lock={text}"]
    if front.columns:
        args.append(f"--model_lock_columns={front.columns}")
    return args
