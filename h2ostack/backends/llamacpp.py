"""The llama.cpp server (llama-cpp-python's OpenAI-compatible server) as a process, serving one GGUF file.

Its flags are its settings' names as written (`--n_ctx 2048`, `--n_gpu_layers -1`); booleans take a
value (`--verbose false`). It loads the model before it listens and has no health route: ready means
its API page answers, `/v1/models` names the model and one token is generated. Its chat completions
use the chat template inside the GGUF file. On GPUs (a CUDA build) every layer is offloaded
(`n_gpu_layers: -1`) to the devices the planner gives it through CUDA_VISIBLE_DEVICES.

The server also reads its settings from the environment (API_KEY, MODEL, N_CTX, ... any of its settings,
HOST and PORT over its flags, CONFIG_FILE instead of them): it is started through a few lines that drop
those variables first, so that a shell's `PORT` or `API_KEY` cannot change what the plan says. The
service's `api_key:` reaches it as API_KEY by way of LLAMACPP_API_KEY, never on the command line.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from h2ostack.backends.base import (
    Backend,
    Context,
    ExternalSpec,
    Finding,
    Probe,
    ProcessSpec,
    StartSpec,
)
from h2ostack.fields import ArgValue, EnvValue, Secret, ServiceBase

API = "openai"
DEFAULT_PORT = 8000
DEFAULT_HEALTH_TIMEOUT = 600.0
PACKAGE = "llama-cpp-python"
MODULE = "llama_cpp.server"
# the service's api_key, on its way to the server's API_KEY (past the lines that clear the environment)
KEY_ENV = "LLAMACPP_API_KEY"
RUN = ("import os,runpy;from llama_cpp.server.settings import Settings as S;"
       f"k=os.environ.pop('{KEY_ENV}',None);"
       "tuple(os.environ.pop(n) for n in tuple(os.environ) if n.lower() in S.model_fields or n.lower()=='config_file');"
       "os.environ.update({'API_KEY':k} if k else {});"
       f"runpy.run_module('{MODULE}',run_name='__main__',alter_sys=True)")
# what the stack's own fields set: in `args:` they would contradict the plan
RESERVED = {"model": "model", "host": "defaults.bind", "port": "port", "config_file": "model",
            "api_key": "api_key"}
# the server's defaults that h2ostack changes: a new request would otherwise cut a stream in progress
# (its interrupt_requests), which a front asking several questions at once does all the time
DEFAULT_ARGS: dict[str, ArgValue] = {"interrupt_requests": False}


def gguf_path(model: str, base_dir: str) -> str:
    """The GGUF file as the server is given it: `~` expanded, relative to the stack file's folder."""
    path = os.path.expanduser(model)
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base_dir, path))


def alias(model: str, args: Mapping[str, ArgValue]) -> str:
    """The name requests use: `args.model_alias`, else the file's name without `.gguf`."""
    given = args.get("model_alias")
    if given is not None and not isinstance(given, bool | list):
        return str(given)
    name = Path(model).name
    return name[:-5] if name.lower().endswith(".gguf") else name


def flags(args: Mapping[str, ArgValue]) -> list[str]:
    """`n_ctx: 512` -> `--n_ctx 512`; booleans as values (`--verbose false`); lists as several values."""
    out: list[str] = []
    for key, value in args.items():
        flag = "--" + key
        if isinstance(value, bool):
            out += [flag, str(value).lower()]
        elif isinstance(value, list):
            out += [flag, *(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def command(ctx: Context, model_path: str) -> list[str]:
    args: dict[str, ArgValue] = {**DEFAULT_ARGS, **{k: v for k, v in ctx.args.items() if k != "model_alias"}}
    if ctx.gpus and "n_gpu_layers" not in args:
        args["n_gpu_layers"] = -1
    return [ctx.python, "-c", RUN, "--model", model_path, "--model_alias", ctx.served_model,
            "--host", ctx.host, "--port", str(ctx.port), *flags(args)]


def probes(served: str) -> list[Probe]:
    """The server answers (it has no /health; it loads the model before it listens, and its API page
    answers without the key, for `status` and liveness, which send none), the model is listed, then
    one token is generated."""
    return [Probe("server answers", "GET", "/docs", timeout=2.0),
            Probe("model listed", "GET", "/v1/models", expect_model=served, timeout=5.0),
            Probe("generation", "POST", "/v1/completions",
                  {"model": served, "prompt": "Hello", "max_tokens": 1, "temperature": 0}, timeout=120.0)]


def file_facts(path: str) -> dict[str, Any]:
    """What `lock` records of the GGUF file: its name, size and sha256 (its folder differs between
    machines and is not locked)."""
    entry: dict[str, Any] = {"gguf": os.path.basename(path)}
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return {**entry, "size": os.path.getsize(path), "sha256": h.hexdigest()}
    except OSError as exc:
        return {**entry, "error": f"cannot read {path}: {exc.strerror or exc}"}


def model_of(command: list[str] | tuple[str, ...]) -> str | None:
    """The GGUF path in a planned command line."""
    argv = list(command)
    return argv[argv.index("--model") + 1] if "--model" in argv[:-1] else None


class LlamaCppService(ServiceBase):
    kind: Literal["llamacpp"]
    python: str | None = None
    api_key: Secret | None = None

    @property
    def starts_something(self) -> bool:
        return self.url is None

    def load_rules(self) -> list[tuple[str | tuple[str, ...], str]]:
        out = self.server_rules()
        if self.model and self.url is None and not self.model.lower().endswith(".gguf"):
            out.append(("model", "a llama.cpp server loads one GGUF file: give its path, absolute or relative "
                                 "to the stack file (model: models/llama-3-8b.Q4_K_M.gguf)"))
        named = self.args.get("model_alias", "x")
        if isinstance(named, bool | list) or not str(named).strip():
            out.append((("args", "model_alias"), "model_alias is the name requests use: a non-empty name"))
        for key in self.args:
            if key in RESERVED:
                out.append((("args", key), f"'{key}' is set by h2ostack from the service's `{RESERVED[key]}`: "
                                           "set that instead"))
            elif key.startswith("-") or not key.replace("_", "").isalnum():
                out.append((("args", key), f"'{key}' is no setting of the llama.cpp server: its flags are its "
                                           "settings' names as written (n_ctx, n_gpu_layers, chat_format)"))
        return out


class LlamaCpp(Backend):
    kind = "llamacpp"
    spec_model = LlamaCppService
    protocol = API
    default_port = DEFAULT_PORT
    default_health_timeout = DEFAULT_HEALTH_TIMEOUT
    resolves_local_model = False  # a file, not a folder: its path is resolved here (gguf_path)
    lock_packages = (PACKAGE,)
    server_module = MODULE
    api_key_env = KEY_ENV  # the shim's own environment keeps it; the server is handed it as API_KEY

    def served_model(self, svc: Any, model: str) -> str:
        return alias(svc.model or "", svc.args)

    def start_spec(self, svc: Any, ctx: Context) -> StartSpec:
        if svc.external:
            return ExternalSpec(svc.url or "")
        env: dict[str, EnvValue] = {"PYTHONUNBUFFERED": "1"}
        if svc.api_key is not None:
            env[KEY_ENV] = svc.api_key
        return ProcessSpec(command(ctx, gguf_path(svc.model or "", ctx.base_dir)), env)

    def probes(self, svc: Any, ctx: Context | None) -> list[Probe]:
        if ctx is None:  # a server at `url:`: up and listing its model as named (no generation asked of it)
            return probes(svc.model or "")[:2]
        return probes(ctx.served_model)

    def lock_entry(self, sp: Any) -> dict[str, Any] | None:
        path = model_of(sp.command)
        return {"model": file_facts(path)} if path else None

    def doctor(self, name: str, sp: Any, svc: Any) -> Finding | None:
        path = model_of(sp.command)
        if path is None:
            return None
        if os.path.isfile(path):
            return Finding(f"GGUF file of {name}", True, f"{path} ({os.path.getsize(path) / 2**20:.0f} MiB)")
        return Finding(f"GGUF file of {name}", False, f"{path}: no such file",
                       "put the model's .gguf file there, or fix `model:` (relative to the stack file)")


backend = LlamaCpp()
