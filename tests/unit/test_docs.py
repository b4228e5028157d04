"""The user docs stay short and true: the README's size and links, and the stack-format reference
naming every command and every field the code has."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main
from pydantic import BaseModel

from h2ostack import spec
from h2ostack.cli import app

ROOT = Path(__file__).resolve().parents[2]


def test_readme_is_for_users_and_links_the_reference_and_the_results() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    links = set(re.findall(r"\]\(([^)#]+)\)", text))
    assert {"docs/stack-format.md", "bench/RESULTS.md", "docs/reliability.md"} <= links
    for link in links:
        assert link.startswith("http") or (ROOT / link).exists(), link


def test_stack_format_names_every_command() -> None:
    text = (ROOT / "docs" / "stack-format.md").read_text()
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert len(commands) >= 13
    for name, command in commands.items():
        assert f"`h2ostack {name}" in text, name
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--"):
                    assert opt in text, (name, opt)


def test_stack_format_names_every_field() -> None:
    text = (ROOT / "docs" / "stack-format.md").read_text()
    models: list[type[BaseModel]] = [spec.Stack, spec.Defaults, spec.Host, spec.Health, spec.Front,
                                     spec.BasicAuth, spec.FrontAuth, *spec.SERVICE_MODELS.values()]
    for model in models:
        for field in model.model_fields:
            if field in ("base_dir", "source"):
                continue  # the loader's bookkeeping, not written by users
            assert re.search(rf"\b{field}\b", text), (model.__name__, field)
