"""What every backend module provides (`Backend`), and the helpers they share to turn `args:` into flags.

One module per kind holds one `Backend` object, named `backend`: its spec model (with its load rules as
the model's `load_rules`), its defaults, how it is started (`start_spec`), how readiness and liveness
are probed, the protocol it speaks, its prompt handling, what `lock` records and what `doctor` checks.
The registry (`h2ostack.backends`) lists them; docs/architecture.md, "Adding an engine", says how.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from h2ostack.fields import ArgValue, EnvValue, ServiceBase

Mode = Literal["process", "container", "external"]


@dataclass(frozen=True)
class Probe:
    """One readiness step: an HTTP request that must answer 2xx (and name the model, when set)."""

    name: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    expect_model: str | None = None
    timeout: float = 5.0


@dataclass(frozen=True)
class Context:
    """What the planner decided for one service, handed to its backend to build argv and probes."""

    name: str
    gpus: tuple[int, ...]
    port: int | None
    host: str
    python: str
    model: str  # the model as the server is given it: a resolved local path or a hub id
    served_model: str  # the name requests use
    args: Mapping[str, ArgValue] = field(default_factory=dict)
    revision: str | None = None
    base_dir: str = "."  # the stack file's folder: relative paths resolve against it
    hf_home: str | None = None  # the host's Hugging Face cache (defaults.hf_home), resolved


@dataclass(frozen=True)
class ProcessSpec:
    """A server started as a process on this machine."""

    command: list[str]
    env: dict[str, EnvValue] = field(default_factory=dict)  # the kind's own; the user's `env:` comes after
    workdir: str | None = None  # None: the stack file's folder


@dataclass(frozen=True)
class ContainerSpec:
    """A server started as a container: the runtime adds ports, GPUs, volumes, restart policy and labels."""

    image: str
    command: list[str]  # the container's arguments
    port: int  # where the server listens inside the container
    env: dict[str, EnvValue] = field(default_factory=dict)
    cache_at: str | None = None  # where the image looks for the Hugging Face cache
    cache_volume: str | None = None  # `host:container` mounting ctx.hf_home there


@dataclass(frozen=True)
class ExternalSpec:
    """A server h2ostack does not start: wired and health-checked at `url`."""

    url: str


StartSpec = ProcessSpec | ContainerSpec | ExternalSpec


@dataclass(frozen=True)
class Finding:
    """One line of `doctor` about a service's environment."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def resolve_path(base_dir: str, value: str) -> str:
    """Expand `~` and make paths relative to the stack file absolute; bare command names stay."""
    value = os.path.expanduser(value)
    if "/" in value and not os.path.isabs(value):
        return os.path.normpath(os.path.join(base_dir, value))
    return value


class Backend:
    """One service kind. A kind's module subclasses it, sets the class attributes and overrides what
    differs, and exposes one instance as `backend`. Methods get the service's spec model (`svc`, an
    instance of `spec_model`) and, for started services, the planner's `Context`."""

    kind: ClassVar[str]  # the stack file's `kind:`
    spec_model: ClassVar[type[ServiceBase]]  # its pydantic model; `load_rules` holds its rules between fields
    protocol: ClassVar[str]  # the wire protocol it speaks: "openai", "tgi", "h2ogpt" (ServicePlan.api)
    default_port: ClassVar[int | None] = None  # the first port tried when `port:` is not given
    default_health_timeout: ClassVar[float] = 300.0  # seconds `up` waits for a started server
    external_health_timeout: ClassVar[float] = 60.0  # ... and for one at `url:`
    completion_prompts: ClassVar[bool] = False  # asked through completions with h2oGPT's prompt, when known
    can_sleep: ClassVar[bool] = False  # on demand, put away with the engine's own sleep mode
    reserves_gpu_share: ClassVar[bool] = False  # takes `gpu_share` of each GPU up front, not its weights' size
    resolves_local_model: ClassVar[bool] = True  # given a local model as its absolute path (ctx.model)
    lock_packages: ClassVar[tuple[str, ...]] = ()  # the packages of its Python environment `lock` records
    server_module: ClassVar[str | None] = None  # what `doctor` checks its `python:` can import
    url_is_api_base: ClassVar[bool] = False  # its `url:` is the API's base (/v1 included), not the server's
    container_shm: ClassVar[str | None] = None  # `render`: the shared memory its container is given
    api_key_env: ClassVar[str | None] = None  # the variable its server reads its API key from (liveness sends it)
    keep_alive_env: ClassVar[str | None] = None  # the variable holding the idle keep-alive its server was given

    def mode(self, svc: Any) -> Mode:
        """How a service of this kind runs: by default a process, or external where it has `url:`."""
        return "external" if svc.external else "process"

    def served_model(self, svc: Any, model: str) -> str:
        """The model name requests use; `model` is the model as the server is given it (a resolved path)."""
        return svc.model or ""

    def start_spec(self, svc: Any, ctx: Context) -> StartSpec:
        """How the service is started: argv/env/workdir, an image and its arguments, or a URL."""
        if svc.external:
            return ExternalSpec(svc.url or "")
        raise NotImplementedError(f"{self.kind} starts nothing")

    def probes(self, svc: Any, ctx: Context | None) -> list[Probe]:
        """The readiness steps, in order (ctx None: a service at `url:`)."""
        return []

    def liveness(self, svc: Any, probes: Sequence[Probe]) -> Probe | None:
        """What the shim asks while it runs (`health.unhealthy_after`): the first probe, or the last
        (a generation) with `health.canary`."""
        if not svc.health.unhealthy_after or not probes:
            return None
        return probes[-1] if svc.health.canary else probes[0]

    def sleep_probe(self) -> str | None:
        """With `can_sleep`: Python code its interpreter runs to say whether the platform can sleep
        (`sleep_probe_says` reads what it printed); None: taken as able."""
        return None

    def sleep_probe_says(self, output: str) -> bool | None:
        """What `sleep_probe` printed: whether the platform can sleep; None when it gave no answer."""
        return None

    def without_sleep(self, command: tuple[str, ...], env: dict) -> tuple[tuple[str, ...], dict]:
        """The command and environment of a server that is stopped instead of put to sleep."""
        return command, env

    def finish_env(self, env: dict[str, EnvValue]) -> None:
        """The environment after the user's `env:` was added: what the kind derives from it."""

    def gpu_share(self, svc: Any) -> float | None:
        """With `reserves_gpu_share`: the share of each GPU the engine reserves up front (vLLM's
        gpu_memory_utilization), None where the stack's value is no share."""
        return None

    def container_args(self, command: Sequence[str], port: int) -> list[str] | None:
        """`render --format compose/k8s`: the arguments a process of this kind takes as a container of the
        engine's own image (listening on `port` there); None: it is not rendered as a container."""
        return None

    def lock_entry(self, sp: Any) -> dict[str, Any] | None:
        """What `lock` records of a started process beyond the default (the packages of `lock_packages` in
        its interpreter, `sp.command[0]`); with a "model" key, its record of the model instead of the
        default's (a hub revision or a local folder's digest). A kind without `server_module` that
        returns an entry has no Python environment: its packages are not recorded (TGI's launcher)."""
        return None

    def doctor(self, name: str, sp: Any, svc: Any) -> Finding | None:
        """`doctor`'s own check of a planned process, besides the default (its python imports
        `server_module`); for a kind without `server_module`, instead of it."""
        return None


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def args_to_flags(args: Mapping[str, ArgValue], value_flags: Iterable[str] = (), skip: Iterable[str] = (),
                  equals: bool = False) -> list[str]:
    """`max_input_length: 2048` -> `--max-input-length 2048`; true -> bare flag; false -> omitted,
    except flags in `value_flags`, which always take a value (`sharded: false` -> `--sharded false`)."""
    value_flags, skip = set(value_flags), set(skip)
    out: list[str] = []
    for key, value in args.items():
        if key in skip:
            continue
        flag = flag_name(key)
        if key in value_flags:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            out += [f"{flag}={text}"] if equals else [flag, text]
        elif value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            out += [flag, *(str(v) for v in value)]
        else:
            out += [f"{flag}={value}"] if equals else [flag, str(value)]
    return out
