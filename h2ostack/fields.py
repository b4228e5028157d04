"""The field types of the stack file and the base every service kind's spec model builds on: no I/O.

Secrets are `SecretStr` from the moment they are parsed, so every printer masks them by
construction; `reveal()` is the one way back to the value, used only where a process or
container is handed its environment. The kinds' own models live in their backend modules
(`h2ostack/backends/`); `h2ostack.spec` joins them into the stack file's models.
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
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
# env keys that hold credentials: their values become SecretStr
SECRET_KEY_RE = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD|PASSWD|PASS|AUTH|CREDENTIAL)", re.IGNORECASE)

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


# the error type a kind's load rules are reported under; its context's "problems" holds (path, message)
RULES_ERROR = "service_rules"


ArgValue = str | int | float | bool | list[str | int | float]


class ServiceBase(_Model):
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

    def load_rules(self) -> list[tuple[str | tuple[str, ...], str]]:
        """The kind's own rules between fields, as (field or field path, message): what the loader
        reports at that field's line. A kind's model extends this; the base has none."""
        return []

    def server_rules(self) -> list[tuple[str | tuple[str, ...], str]]:
        """The rules of a kind that starts a server from `python:` unless `url:` names a running one:
        not both, and a model to serve."""
        out: list[tuple[str | tuple[str, ...], str]] = []
        if self.url and getattr(self, "python", None):
            out.append(("url", "give either `url:` (an existing server) or `python:` (start one), not both"))
        if not self.model:
            out.append(("model", "this field is required"))
        return out

    @model_validator(mode="after")
    def _load_rules(self, info: ValidationInfo) -> ServiceBase:
        # only where the loader asks (context {"rules": True}): models built in code are taken as given
        if info.context and info.context.get("rules"):
            problems = [((p,) if isinstance(p, str) else tuple(p), m) for p, m in self.load_rules()]
            if problems:
                raise PydanticCustomError(RULES_ERROR, "; ".join(m for _, m in problems), {"problems": problems})
        return self
