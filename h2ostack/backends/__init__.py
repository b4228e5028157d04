"""The registry of service kinds: one `Backend` per kind, each in one module.

The built-in kinds are registered the way plugins are: each module of this package that holds a
`Backend` object named `backend` (those of BUILTIN first, in its order, then the others by name), so a
new kind's module needs no line here. An engine outside the package registers under the
`h2ostack.backends` entry-point group, naming its `Backend` object (or a module holding one as `backend`):

    [project.entry-points."h2ostack.backends"]
    myengine = "my_package.h2ostack_backend:backend"

Nothing is imported until a kind is first asked for, so the CLI's start-up does not pay for it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from h2ostack.backends.base import Backend

if TYPE_CHECKING:
    from h2ostack.fields import ServiceBase

ENTRY_POINT_GROUP = "h2ostack.backends"
# the built-in kinds, in the order the stack file's schema lists them
BUILTIN = ("h2ostack.backends.tgi", "h2ostack.backends.vllm", "h2ostack.backends.transformers",
           "h2ostack.backends.openai", "h2ostack.backends.h2ogpt")

_registry: dict[str, Backend] = {}
_loaded = False


class RegistryError(Exception):
    """A plugin that is no backend, or a kind registered twice."""


def register(backend: Backend) -> Backend:
    """Add one kind; a second backend for a kind already registered is refused."""
    if not isinstance(backend, Backend):
        raise RegistryError(f"{backend!r} is not an h2ostack Backend")
    if backend.kind in _registry and _registry[backend.kind] is not backend:
        raise RegistryError(f"kind '{backend.kind}' is registered twice ({type(_registry[backend.kind]).__module__} "
                            f"and {type(backend).__module__})")
    _registry[backend.kind] = backend
    return backend


def _backend_of(obj: object) -> Backend:
    found = getattr(obj, "backend", obj)
    if callable(found) and not isinstance(found, Backend):
        found = found()
    if not isinstance(found, Backend):
        raise RegistryError(f"{obj!r} provides no h2ostack Backend")
    return found


def _plugins() -> list[tuple[str, Callable[[], object]]]:
    from importlib.metadata import entry_points

    return [(f"{ep.name} = {ep.value}", ep.load) for ep in entry_points(group=ENTRY_POINT_GROUP)]


def _builtin_modules() -> list[str]:
    """BUILTIN, then the package's other kind modules by name (not `base`, nor a private one)."""
    import pkgutil

    found = sorted(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)
                   if m.name != "base" and not m.name.startswith("_"))
    return [*BUILTIN, *(name for name in found if name not in BUILTIN)]


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in _builtin_modules():
        module = importlib.import_module(name)
        if name in BUILTIN or isinstance(getattr(module, "backend", None), Backend):
            register(_backend_of(module))  # a module of helpers shared by kinds holds no backend
    for name, load in _plugins():
        try:
            register(_backend_of(load()))
        except Exception as exc:  # a broken plugin costs its own kind, not every command
            sys.stderr.write(f"h2ostack: the backend plugin `{name}` ({ENTRY_POINT_GROUP}) is left out: "
                             f"{type(exc).__name__}: {exc}\n")


def get(kind: str) -> Backend:
    """The backend of a kind; KeyError for a kind nobody registered."""
    _load()
    return _registry[kind]


def find(kind: str) -> Backend | None:
    """The backend of a kind, or None (a front's kind, say)."""
    _load()
    return _registry.get(kind)


def kinds() -> tuple[str, ...]:
    _load()
    return tuple(_registry)


def spec_models() -> dict[str, type[ServiceBase]]:
    """Each kind's model of its stack-file entry, by kind."""
    _load()
    return {kind: b.spec_model for kind, b in _registry.items()}


def completion_prompt_type(kind: str, prompt_type: str | None, model: str | None) -> str | None:
    """The one rule for the built-in front's panes, its /v1 gateway and h2oGPT fronts: a model of a kind
    that takes h2oGPT's prompts (`Backend.completion_prompts`, vLLM's) whose prompt type is given or known
    is asked through completions with that prompt (the guide's `vllm:`); other OpenAI-compatible models
    through chat completions, with the server's chat template."""
    from h2ostack.prompts import known_prompt_type

    backend = find(kind)
    if backend is None or not backend.completion_prompts:
        return None
    return known_prompt_type(prompt_type, model)
