"""The errors a user can cause, in a module with no dependencies, so the CLI can catch them
without importing the models."""

from __future__ import annotations

from dataclasses import dataclass

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    loc: Loc
    message: str
    line: int | None = None
    col: int | None = None


class StackError(Exception):
    """One or more problems in a stack file; str() is what the user sees."""

    def __init__(self, path: str, problems: list[Problem]):
        self.path = path
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(format_problem(self.path, p) for p in self.problems)


def format_problem(path: str, p: Problem) -> str:
    where = path if p.line is None else f"{path}:{p.line}:{p.col}"
    field_path = ".".join(str(x) for x in p.loc)
    return f"{where}: {field_path}: {p.message}" if field_path else f"{where}: {p.message}"



class FactsError(ValueError):
    """A machine fact stated wrongly (--gpus, --gpu-memory)."""


class NotFound(Exception):
    """No such stack or service."""


class UpError(Exception):
    """Some services failed to start; what this `up` started has been stopped."""

    def __init__(self, failures: dict[str, str]):
        self.failures = failures
        super().__init__("; ".join(f"{k}: {v}" for k, v in failures.items()))


class EngineUnavailable(RuntimeError):
    """No Docker engine answers where DOCKER_HOST points."""
