"""h2oGPT's Gradio server (`generate.py`): started as a process serving one model, or external."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from h2ostack.backends.base import Context, Probe

API = "h2ogpt"
DEFAULT_HEALTH_TIMEOUT = 600.0
DEFAULT_PORT = 7860


# generate.py of a pip-installed h2oGPT (the `h2ogpt` wheel keeps it inside the package), run the way a git
# checkout runs it: its folder first on sys.path, so that its `src` is found before any other
RUN_INSTALLED = ("import os,runpy,sys,h2ogpt;d=os.path.dirname(h2ogpt.__file__);sys.path.insert(0,d);"
                 "sys.argv[0]=os.path.join(d,'generate.py');runpy.run_path(sys.argv[0],run_name='__main__')")
# h2oGPT starts its own OpenAI-compatible server (port 5000) and function server (5002) unless told not to:
# ports h2ostack did not plan, and (without sse_starlette) a crash at start. The stack's gateway is the API.
DEFAULT_FLAGS = {"openai_server": False, "function_server": False}


def launcher(python: str, workdir: str | None) -> list[str]:
    """`python generate.py` in a git checkout (`workdir:`), else generate.py of the installed package."""
    return [python, "generate.py"] if workdir else [python, "-c", RUN_INSTALLED]


def flags(args: Mapping[str, Any]) -> list[str]:
    """h2oGPT's CLI (fire) takes --key=value with the names as written; booleans as True/False."""
    out = []
    for key, value in args.items():
        if value is None:
            continue
        out.append("--" + key.replace("-", "_") + "=" + str(value))
    return out


def command(ctx: Context, prompt_type: str | None, prompt_dict: dict | None, workdir: str | None = None
            ) -> list[str]:
    argv = [*launcher(ctx.python, workdir), f"--base_model={ctx.model}"]
    if prompt_type:
        argv.append(f"--prompt_type={prompt_type}")
    if prompt_dict:
        argv.append(f"--prompt_dict={prompt_dict!r}")
    if ctx.revision:
        argv.append(f"--revision={ctx.revision}")
    given = {k.replace("-", "_") for k in ctx.args}
    argv += flags({k: v for k, v in DEFAULT_FLAGS.items() if k not in given})
    argv += flags(ctx.args)
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
