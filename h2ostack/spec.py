"""The stack file as typed, frozen models: one schema per service `kind`, no I/O.

The field types and the base of every service model are in `h2ostack.fields`; each kind's model
is in its backend module (`h2ostack/backends/`), and the registry (`h2ostack.backends`) lists
them: `Service` is the union of the registered kinds' models.

Secrets are `SecretStr` from the moment they are parsed, so every printer masks them by
construction; `reveal()` is the one way back to the value, used only where a process or
container is handed its environment.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BeforeValidator, Field, PrivateAttr, SecretStr, field_validator  # noqa: F401 - SecretStr re-exported

from h2ostack import backends
from h2ostack.fields import (  # noqa: F401 - re-exported: the stack file's types are spec's
    NAME_RE,
    SECRET_KEY_RE,
    ArgValue,
    BasicAuth,
    EnvValue,
    Float,
    Health,
    Int,
    Secret,
    ServiceBase,
    _Model,
    _not_a_bool,
    mask,
    reveal,
    share,
)

_Service = ServiceBase

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


# every kind's model, from the registry (built-in kinds first, then those of installed plugins)
SERVICE_MODELS: dict[str, type[ServiceBase]] = backends.spec_models()
KINDS = tuple(SERVICE_MODELS)
Service = Union[tuple(SERVICE_MODELS.values())]  # type: ignore[valid-type]  # noqa: UP007 - built at run time


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
