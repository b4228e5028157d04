"""The wheel as users install it: built from the source tree, installed in a fresh virtual
environment (which borrows the project environment's dependencies), with its templates and schema."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_the_wheel_ships_init_its_templates_and_the_schema(tmp_path: Path) -> None:
    # build from a copy of what the wheel is made of, so the checkout gets no build/ of its own
    src = tmp_path / "src"
    keep = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("h2ostack", "templates"):
        shutil.copytree(ROOT / part, src / part, ignore=keep)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, src / part)
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)],
                tmp_path, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("h2ostack-*.whl")

    # a fresh environment: no h2ostack of its own; the project's dependencies reached through a .pth
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
    purelib = Path(site.stdout.strip())
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    assert deps, sys.path
    (purelib / "_project_deps.pth").write_text("\n".join(deps) + "\n")
    missing = run([str(py), "-c", "import h2ostack"], tmp_path)
    assert missing.returncode != 0, "the fresh environment already had an h2ostack"
    installed = run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]
    where = run([str(py), "-c", "import h2ostack; print(h2ostack.__file__)"], tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(purelib), where.stdout

    work = tmp_path / "work"
    work.mkdir()
    h2o = str(env_dir / "bin" / "h2ostack")
    listed = run([h2o, "init", "--list"], work)
    assert listed.returncode == 0, listed.stderr
    for name in ("cpu-demo", "tgi", "tgi-sharded", "vllm-tp", "compare", "two-hosts"):
        assert name in listed.stdout, listed.stdout

    wrote = run([h2o, "init"], work)
    assert wrote.returncode == 0, wrote.stderr
    text = (work / "stack.yaml").read_text()
    schema = Path(text.splitlines()[0].split("$schema=", 1)[1])
    assert schema.is_relative_to(purelib) and schema.is_file(), schema
    assert run([h2o, "validate", "stack.yaml"], work).returncode == 0

    sharded = run([h2o, "init", "big.yaml", "--template", "tgi-sharded", "--gpus", "0,1", "--port", "7001"], work)
    assert sharded.returncode == 0, sharded.stderr
    planned = run([h2o, "plan", "big.yaml", "--gpus", "0,1", "--json"], work)
    assert planned.returncode == 0 and '"port": 7001' in planned.stdout, planned.stderr
    out = run([h2o, "schema"], work)
    assert out.returncode == 0 and out.stdout == schema.read_text()
