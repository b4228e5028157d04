"""The stack file as typed, frozen models: one schema per service `kind`, no I/O.

Secrets are `SecretStr` from the moment they are parsed, so every printer masks them by
construction; `reveal()` is the one way back to the value, used only where a process or
container is handed its environment.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
)

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
# env keys that hold credentials: their values become SecretStr
SECRET_KEY_RE = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD|PASSWD|PASS|AUTH|CREDENTIAL)", re.IGNORECASE)
KINDS = ("tgi", "vllm", "transformers", "openai", "h2ogpt")

EnvValue = str | SecretStr


def _not_a_bool(value: Any) -> Any:
    # YAML's true/false would otherwise pass as 1/0: `port: true` is a mistake, not port 1
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is not a number: give a number")
    return value


def _not_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("a secret cannot be empty: an empty key or password would let anyone in "
                         "(set the variable it comes from, or leave the field out)")
    return value


Int = Annotated[int, BeforeValidator(_not_a_bool)]
Float = Annotated[float, BeforeValidator(_not_a_bool), Field(allow_inf_nan=False)]
Secret = Annotated[SecretStr, AfterValidator(_not_empty)]


def reveal(value: EnvValue | None) -> str | None:
    """The plain value of a possibly secret string (for process env and HTTP headers only)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value


def share(value: object) -> float | None:
    """A share in (0, 1] (vLLM's gpu_memory_utilization), or None for anything else (text, true/false, nan)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        got = float(value)
    except ValueError:
        return None
    return got if 0 < got <= 1 else None


def mask(value: Any) -> Any:
    """A value as it may be printed, logged or stored: secrets become '***'."""
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, dict):
        return {k: mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Health(_Model):
    timeout: Float | None = Field(default=None, gt=0, description="seconds to wait for readiness")
    interval: Float = Field(default=0.1, gt=0, le=60)
    unhealthy_after: Float | None = Field(default=None, gt=0, description="liveness: restart after this long "
                                          "without a healthy answer")
    canary: bool = Field(default=False, description="liveness also asks for one token, for servers whose "
                         "/health stays green while generation is broken")


class BasicAuth(_Model):
    """`URL    USER    TOKEN` in h2oGPT's terms: header `authorization: USER TOKEN`."""

    user: str
    token: Secret


class FrontAuth(_Model):
    user: str
    password: Secret


class Host(_Model):
    """A machine the stack spans: its Docker endpoint, how others reach it, its GPUs."""

    docker: str | None = Field(default=None, description="ssh://user@gpu2, tcp://host:2376 or unix:///path")
    address: str | None = Field(default=None, description="how clients and other hosts reach it (default: the "
                                "host of its docker URL; 127.0.0.1 for a unix socket)")
    ssh: str | None = Field(default=None, description="user@host for recipes run there (default: from an "
                            "ssh:// docker URL, else the address)")
    gpus: list[Annotated[Int, Field(ge=0)]] | None = None
    bind: str | None = Field(default=None, description="where its containers publish ports (default: 127.0.0.1 "
                             "when reached at 127.0.0.1, else 0.0.0.0 so the fronts can reach them)")

    @field_validator("docker")
    @classmethod
    def _docker_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("ssh://", "tcp://", "unix://", "http://", "https://")):
            raise ValueError("a Docker endpoint is ssh://user@host, tcp://host:port or unix:///path")
        return value

    @property
    def reach(self) -> str:
        if self.address:
            return self.address
        if self.docker and not self.docker.startswith("unix://"):
            from urllib.parse import urlsplit

            return urlsplit(self.docker).hostname or "127.0.0.1"
        return "127.0.0.1"

    @property
    def publish_on(self) -> str:
        if self.bind:
            return self.bind
        return "127.0.0.1" if self.reach in ("127.0.0.1", "localhost", "::1") else "0.0.0.0"

    @property
    def ssh_target(self) -> str:
        if self.ssh:
            return self.ssh
        if self.docker and self.docker.startswith("ssh://"):
            return self.docker[len("ssh://"):].split("/", 1)[0]
        return self.reach


class Defaults(_Model):
    bind: str = "127.0.0.1"
    hf_home: str | None = None


ArgValue = str | int | float | bool | list[str | int | float]


class _Service(_Model):
    """Fields shared by every service kind."""

    model: str | None = None
    revision: str | None = None
    url: str | None = None
    gpus: Annotated[list[Annotated[Int, Field(ge=0)]] | Annotated[int, Field(ge=0)] | None,
                    BeforeValidator(_not_a_bool)] = None
    port: Int | None = Field(default=None, ge=1, le=65535)
    env: dict[str, EnvValue] = Field(default_factory=dict)
    args: dict[str, ArgValue] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    share_gpus: bool = False
    vram_gb: Float | None = Field(default=None, gt=0)
    restart: Literal["no", "on-failure", "always"] = "no"
    max_restarts: Int | None = Field(default=None, ge=0)
    health: Health = Field(default_factory=Health)
    prompt_type: str | None = None
    # h2oGPT's custom prompt: strings, None (e.g. PreInput) and lists of strings (terminate_response)
    prompt_dict: dict[str, str | None | list[str]] | None = None
    host: str | None = None  # a name of `hosts:`: where a container service runs
    on_demand: bool = Field(default=False, description="`up` does not start it: the stack's gateway starts it "
                            "on its first request and puts it away when idle or when another needs its GPUs")
    idle_timeout: Float = Field(default=600.0, gt=0, description="on demand: seconds without a request before "
                                "it is put away")
    sleep: Annotated[Literal[1, 2] | None, BeforeValidator(_not_a_bool)] = Field(
        default=None, description="on-demand vLLM: put away with vLLM's sleep mode at this level (1: weights "
        "kept in host memory, 2: discarded) and woken on the next request, instead of being stopped")

    @field_validator("restart", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        return "no" if value is False else value  # YAML 1.1 reads a bare `no` as false

    @field_validator("env", mode="before")
    @classmethod
    def _secret_env(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for key, val in value.items():
            if isinstance(val, bool | int | float):
                val = str(val).lower() if isinstance(val, bool) else str(val)
            if isinstance(key, str) and SECRET_KEY_RE.search(key) and isinstance(val, str):
                val = SecretStr(val)
            out[key] = val
        return out

    @property
    def gpu_ids(self) -> list[int] | None:
        return list(self.gpus) if isinstance(self.gpus, list) else None

    @property
    def gpu_count(self) -> int:
        if isinstance(self.gpus, list):
            return len(self.gpus)
        return int(self.gpus or 0)

    @property
    def external(self) -> bool:
        """Wired and health-checked, never started."""
        return self.url is not None and not self.starts_something

    @property
    def starts_something(self) -> bool:
        return False


class TGIService(_Service):
    kind: Literal["tgi"]
    image: str | None = None
    launcher: str | None = None
    shm_size: str | None = None
    volumes: list[str] = Field(default_factory=list)
    auth: BasicAuth | None = None
    api_key: Secret | None = None  # TGI 2.3+: clients send `Bearer KEY`; reaches the server as $API_KEY

    @property
    def starts_something(self) -> bool:
        return bool(self.image or self.launcher)


class VLLMService(_Service):
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


class TransformersService(_Service):
    kind: Literal["transformers"]
    python: str | None = None
    device: str | None = None
    dtype: str | None = None
    api_key: Secret | None = None

    @property
    def starts_something(self) -> bool:
        return self.url is None


class OpenAIService(_Service):
    kind: Literal["openai"]
    api_key: Secret | None = None

    @property
    def external(self) -> bool:
        return True


class H2OGPTService(_Service):
    kind: Literal["h2ogpt"]
    python: str | None = None
    workdir: str | None = None
    auth: BasicAuth | None = None

    @property
    def starts_something(self) -> bool:
        return self.python is not None


Service = TGIService | VLLMService | TransformersService | OpenAIService | H2OGPTService
SERVICE_MODELS: dict[str, type[_Service]] = {
    "tgi": TGIService,
    "vllm": VLLMService,
    "transformers": TransformersService,
    "openai": OpenAIService,
    "h2ogpt": H2OGPTService,
}


class Front(_Model):
    kind: Literal["gradio", "h2ogpt"] = "gradio"
    port: Int | None = Field(default=None, ge=1, le=65535)
    models: list[str] = Field(default_factory=list)
    columns: Int | None = Field(default=None, ge=1)
    auth: FrontAuth | None = None
    admin_pass: Secret | None = None
    api_keys: list[Secret] = Field(default_factory=list)
    python: str | None = None
    workdir: str | None = None
    env: dict[str, EnvValue] = Field(default_factory=dict)
    args: dict[str, ArgValue] = Field(default_factory=dict)  # kind h2ogpt: generate.py options
    depends_on: list[str] = Field(default_factory=list)
    health: Health = Field(default_factory=Health)
    arena: bool = Field(default=False, description="an Arena tab: two anonymous models per question, votes "
                        "-> leaderboard (votes in the state dir's <stack>/arena.sqlite3)")

    _secret_env = field_validator("env", mode="before")(_Service._secret_env.__func__)  # type: ignore[attr-defined]


class Stack(_Model):
    version: Annotated[Literal[1], BeforeValidator(_not_a_bool)] = 1
    name: str
    env_file: str | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    hosts: dict[str, Host] = Field(default_factory=dict)
    services: dict[str, Service] = Field(default_factory=dict)
    fronts: dict[str, Front] = Field(default_factory=dict)
    # where the stack file lives: relative paths (models, env_file, volumes) resolve against it
    base_dir: str = "."
    source: str = "<stack>"
    # field path -> (line, col) in the file, so later checks (the planner's) can point at lines too
    _marks: dict = PrivateAttr(default_factory=dict)

    def position(self, loc: tuple) -> tuple[int | None, int | None]:
        for n in range(len(loc), -1, -1):
            hit = self._marks.get(tuple(loc[:n]))
            if hit:
                return hit
        return None, None

    def all_names(self) -> list[str]:
        return [*self.services, *self.fronts]
