"""The layers of docs/architecture.md hold: import-linter checks the contracts of pyproject.toml, imports
inside functions counted, and a module that imports one above it (a cycle) breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
        "--no-cache"]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the package under `root` (the current directory comes first on its path)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(LINT, cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_layers_hold() -> None:
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout and " KEPT" in out.stdout


def test_an_import_inside_a_function_that_points_up_breaks_the_layers(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "h2ostack", tmp_path / "h2ostack", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert lint_imports(tmp_path).returncode == 0
    with open(tmp_path / "h2ostack" / "spec.py", "a") as f:  # spec -> cli: a cycle through every layer
        f.write("\n\ndef _upward() -> None:\n    from h2ostack import cli  # noqa: F401\n")
    out = lint_imports(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "BROKEN" in out.stdout and "h2ostack.spec -> h2ostack.cli" in out.stdout


def test_a_module_without_a_layer_breaks_the_layers(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "h2ostack", tmp_path / "h2ostack", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "h2ostack" / "newthing.py").write_text('"""A module nobody placed."""\n')
    out = lint_imports(tmp_path)
    assert out.returncode == 1 and "h2ostack.newthing" in out.stdout, out.stdout + out.stderr
