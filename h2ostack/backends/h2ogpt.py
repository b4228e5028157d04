"""h2oGPT's Gradio server (`generate.py`): started as a process serving one model, or external."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from h2ostack.backends.base import Backend, Context, ExternalSpec, Probe, ProcessSpec, StartSpec, resolve_path
from h2ostack.backends.openai import DEFAULT_URL as OPENAI_URL
from h2ostack.fields import BasicAuth, EnvValue, ServiceBase, reveal


def reveal_or_none(value: Any) -> str:
    return reveal(value) or ""

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


# h2oGPT prints its model_lock entries and inference_server strings as it starts, credentials included:
# where a front holds secrets, its stdout and stderr replace each (named in $H2OSTACK_REDACT) with ***
REDACT_ENV = "H2OSTACK_REDACT"
REDACTING = ("import json,os,runpy,sys\n"
             "class _Redact:\n"
             " def __init__(self,f,k):self.f,self.k=f,k\n"
             " def write(self,t):\n"
             "  for x in self.k:t=t.replace(x,'***')\n"
             "  return self.f.write(t)\n"
             " def __getattr__(self,n):return getattr(self.f,n)\n"
             f"_k=sorted((x for x in json.loads(os.environ.pop('{REDACT_ENV}','[]')) if x),key=len,reverse=True)\n"
             "sys.stdout,sys.stderr=_Redact(sys.stdout,_k),_Redact(sys.stderr,_k)\n")
RUN_CHECKOUT = "sys.argv[0]='generate.py';runpy.run_path('generate.py',run_name='__main__')"


def launcher(python: str, workdir: str | None, redact: bool = False) -> list[str]:
    """`python generate.py` in a git checkout (`workdir:`), else generate.py of the installed package;
    with `redact`, behind the filter that keeps credentials out of its log."""
    if redact:
        return [python, "-c", REDACTING + (RUN_CHECKOUT if workdir else RUN_INSTALLED)]
    return [python, "generate.py"] if workdir else [python, "-c", RUN_INSTALLED]


def secret_values(front: Any, specs: Mapping[str, Any]) -> list[str]:
    """Every credential an h2oGPT front is given, as text: what its log must not show."""
    found: list[Any] = [front.auth.password if front.auth else None, front.admin_pass, *front.api_keys,
                        *(v for v in front.env.values() if isinstance(v, SecretStr))]
    for name in front.models:
        svc = specs.get(name)
        auth = getattr(svc, "auth", None)
        found += [auth.token if auth else None, getattr(svc, "api_key", None)]
    return sorted({reveal(v) or "" for v in found if v is not None} - {""})


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
        argv.append(f"--prompt_dict={literal(dict(prompt_dict))}")
    if ctx.revision:
        argv.append(f"--revision={ctx.revision}")
    given = {k.replace("-", "_") for k in ctx.args}
    argv += flags({k: v for k, v in DEFAULT_FLAGS.items() if k not in given})
    argv += flags(ctx.args)
    return argv


def env(ctx: Context) -> dict[str, str]:
    return {"GRADIO_SERVER_PORT": str(ctx.port), "GRADIO_SERVER_NAME": ctx.host, "h2ogpt_server_name": ctx.host}


def probes(login: bool = False) -> list[Probe]:
    """Gradio's config; behind a login (which /config refuses), the login page Gradio serves instead."""
    if login:
        return [Probe("gradio login page", "GET", "/", timeout=5.0)]
    return [Probe("gradio config", "GET", "/config", timeout=5.0)]


# generate.py options the front's own fields set: given in `args:` they would bypass them
FRONT_FIELDS = {"server_name": "defaults.bind", "server_port": "port", "model_lock": "models",
                "model_lock_columns": "columns", "auth": "auth", "auth_filename": "auth", "auth_access": "auth",
                "guest_name": "auth", "h2ogpt_api_keys": "api_keys", "enforce_h2ogpt_api_key": "api_keys",
                "admin_pass": "admin_pass", "base_model": "models", "inference_server": "models"}
# the environment variable generate.py reads --model_lock from (ast.literal_eval), before its argv
MODEL_LOCK_ENV = "model_lock"
# where a front's login database lives: the process runtime sets it to a 0600 file in the state dir
AUTH_FILE_ENV = "H2OGPT_AUTH_FILENAME"


def literal(value: Any) -> str:
    """A Python literal without spaces between items, as h2oGPT's CLI (fire, literal_eval) reads it."""
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{literal(str(k))}:{literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(literal(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ",".join(literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
    return repr(value)


def openai_server(prefix: str, url: str, key: str | None) -> str:
    """`vllm:HOST:PORT`, or with a scheme, path and key `vllm:https://HOST:PORT:/v1:KEY` (h2oGPT's set_openai)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = str(parts.port) if parts.port else "None"
    path = parts.path.rstrip("/")
    if parts.scheme == "http" and not path and not key:
        return f"{prefix}:{host}:{port}"
    if not path.endswith("/v1"):
        path += "/v1"
    scheme = "https://" if parts.scheme == "https" else ""
    return f"{prefix}:{scheme}{host}:{port}:{path}" + (f":{key}" if key else "")


def wired_prompt_type(plan: Any) -> str | None:
    """The prompt type a vLLM service is asked with through completions (given, or known for its model):
    the same rule as the built-in front's panes and its /v1."""
    from h2ostack.backends import completion_prompt_type

    return completion_prompt_type(plan.kind, plan.prompt_type, plan.served_model)


def inference_server(plan: Any, svc: Any = None, secret: Callable[[Any], str] = reveal_or_none) -> str:
    """The `inference_server` string h2oGPT expects for a planned service (`svc`: its stack entry, for its
    credentials; `secret` turns a credential into text: its value, or *** for display)."""
    url = (plan.url or "").rstrip("/")
    auth = getattr(svc, "auth", None)
    key = getattr(svc, "api_key", None)
    if plan.kind == "openai":
        return "openai_chat"
    if plan.api == "openai":
        # completions with h2oGPT's prompt where the prompt type is known; chat (the server's template) else
        prefix = "vllm" if wired_prompt_type(plan) else "vllm_chat"
        return openai_server(prefix, url, secret(key) if key is not None else None)
    if plan.api == "tgi":
        if auth is not None:
            return f"{url}    {auth.user}    {secret(auth.token)}"
        if key is not None:
            return f"{url}    Bearer    {secret(key)}"
        return url
    if plan.api == "h2ogpt" and auth is not None:
        parts = urlsplit(url)
        port = "" if parts.port else ":None"
        return f"{url}{port}:{auth.user}:{secret(auth.token)}"
    return url


def lock_entries(front: Any, services: Mapping[str, Any], specs: Mapping[str, Any],
                 secret: Callable[[Any], str] = reveal_or_none) -> list[dict[str, Any]]:
    entries = []
    for name in front.models:
        plan, svc = services[name], specs.get(name)
        entry: dict[str, Any] = {"inference_server": inference_server(plan, svc, secret),
                                 "base_model": plan.served_model or name}
        if plan.prompt_type:
            entry["prompt_type"] = plan.prompt_type
        elif entry["inference_server"].startswith("vllm:"):
            entry["prompt_type"] = wired_prompt_type(plan)
        if getattr(svc, "prompt_dict", None):
            entry.setdefault("prompt_type", "custom")
            entry["prompt_dict"] = dict(svc.prompt_dict)
        entries.append(entry)
    return entries


def wiring(front: Any, services: Mapping[str, Any], specs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What `plan` says of each model: the endpoint form h2oGPT is given (credentials as ***), and how it asks."""
    out = []
    for name, entry in zip(front.models, lock_entries(front, services, specs, secret=lambda _: "***"), strict=True):
        server = entry["inference_server"]
        how = ("completions, prompt built by h2oGPT as " + entry["prompt_type"] if server.startswith("vllm:") else
               "chat completions, the server's chat template" if server.startswith("vllm_chat:") else
               "OpenAI chat completions" if server.startswith("openai") else
               "prompt built by h2oGPT as " + entry.get("prompt_type", "its own table says for the model"))
        out.append((name, f"{server} ({how})"))
    return out


def openai_endpoints(front: Any, specs: Mapping[str, Any]) -> dict[tuple[str, str | None], str]:
    """The OpenAI base URL and key of each of the front's OpenAI models, with the first model that has them:
    h2oGPT reads one of each from its environment."""
    seen: dict[tuple[str, str | None], str] = {}
    for model in front.models:
        svc = specs.get(model)
        if getattr(svc, "kind", None) == "openai":
            seen.setdefault(((svc.url or OPENAI_URL).rstrip("/"), reveal(svc.api_key)), model)
    return seen


def has_secret(front: Any, specs: Mapping[str, Any]) -> bool:
    return any(getattr(specs.get(n), "auth", None) is not None or
               (getattr(specs.get(n), "api_key", None) is not None and getattr(specs.get(n), "kind", "") != "openai")
               for n in front.models)


def model_lock_args(front: Any, services: Mapping[str, Any], specs: Mapping[str, Any] | None = None
                    ) -> tuple[list[str], dict[str, EnvValue]]:
    """`--model_lock=[{...},...]` written without spaces, as h2oGPT's CLI parses it; where an entry holds a
    credential, the whole lock goes to generate.py's `model_lock` environment variable instead of argv."""
    specs = specs or {}
    text = literal(lock_entries(front, services, specs))
    args: list[str] = []
    env: dict[str, EnvValue] = {}
    if has_secret(front, specs):
        env[MODEL_LOCK_ENV] = SecretStr(text)
    else:
        args.append(f"--model_lock={text}")
    if front.columns:
        args.append(f"--model_lock_columns={front.columns}")
    return args, env


def front_env(front: Any, specs: Mapping[str, Any]) -> dict[str, EnvValue]:
    """Credentials of the front and of its OpenAI models, as the environment h2oGPT reads them."""
    env: dict[str, EnvValue] = {}
    if front.auth is not None:
        # H2OGPT_<option> is read by h2oGPT's CLI as --<option>; never argv, which `ps` shows
        pair = literal([(front.auth.user, front.auth.password.get_secret_value())])
        env["H2OGPT_AUTH"] = SecretStr(pair)
    if front.admin_pass is not None:
        env["ADMIN_PASS"] = front.admin_pass
    if front.api_keys:
        env["H2OGPT_H2OGPT_API_KEYS"] = SecretStr(literal([k.get_secret_value() for k in front.api_keys]))
    for name in front.models:
        svc = specs.get(name)
        if getattr(svc, "kind", None) != "openai":
            continue
        if svc.api_key is not None:
            env["OPENAI_API_KEY"] = svc.api_key
        if svc.url and svc.url.rstrip("/") != OPENAI_URL:
            env["OPENAI_BASE_URL"] = svc.url.rstrip("/")
    return env


def prepare_auth_db(path: Path, pairs: str) -> None:
    """h2oGPT's login database, made by h2ostack first so that it is 0600 (h2oGPT would make it with the
    umask's mode; it holds the passwords h2oGPT checks, in plain) and already holds the stack's user:
    h2oGPT 0.2.1 lets a user of --auth in with any password the first time, when it is not in this file."""
    import ast
    import json
    import sqlite3
    import uuid

    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS Users (username VARCHAR(255) PRIMARY KEY, data TEXT)")
        for user, password in ast.literal_eval(pairs):
            db.execute("INSERT OR REPLACE INTO Users (username, data) VALUES (?, ?)",
                       (user, json.dumps({"password": password, "userid": str(uuid.uuid4())})))
        db.commit()


def front_flags(front: Any, bind: str) -> list[str]:
    """Options that are no secret: where it listens, and what auth and API keys mean."""
    out = [f"--server_name={bind}"]
    if front.auth is not None:
        out += ["--auth_access=closed", "--guest_name="]
    if front.admin_pass is not None:
        out.append("--system_api_open=True")  # /system_info_dict, answered only to ADMIN_PASS
    if front.api_keys:
        out.append("--enforce_h2ogpt_api_key=True")
    return out


class H2OGPTService(ServiceBase):
    kind: Literal["h2ogpt"]
    python: str | None = None
    workdir: str | None = None
    auth: BasicAuth | None = None

    @property
    def starts_something(self) -> bool:
        return self.python is not None

    def load_rules(self) -> list[tuple[str | tuple[str, ...], str]]:
        out: list[tuple[str | tuple[str, ...], str]] = []
        if not (self.url or self.python):
            out.append(("kind", "an h2ogpt service needs `url:` (an existing server) or `python:` (start one)"))
        if self.url and self.python:
            out.append(("url", "give either `url:` (an existing server) or `python:` (start one), not both"))
        if not self.model and not self.url:
            out.append(("model", "this field is required"))
        return out


class H2OGPT(Backend):
    kind = "h2ogpt"
    spec_model = H2OGPTService
    protocol = API
    default_port = DEFAULT_PORT
    default_health_timeout = DEFAULT_HEALTH_TIMEOUT
    lock_packages = ("h2ogpt", "gradio", "transformers", "torch", "text-generation")
    server_module = "gradio"

    def start_spec(self, svc: Any, ctx: Context) -> StartSpec:
        if svc.external:
            return ExternalSpec(svc.url or "")
        return ProcessSpec(command(ctx, svc.prompt_type, svc.prompt_dict, svc.workdir), env(ctx),
                           resolve_path(ctx.base_dir, svc.workdir) if svc.workdir else None)

    def probes(self, svc: Any, ctx: Context | None) -> list[Probe]:
        return probes()


backend = H2OGPT()
