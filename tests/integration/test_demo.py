"""`make demo`'s stack and its closing check, on the real small model: the answer names Paris."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import H2O, ROOT, free_port

pytestmark = pytest.mark.integration


def demo_check_args() -> list[str]:
    """The arguments `make demo` gives `h2ostack check`, read from the Makefile."""
    line = next(ln for ln in (ROOT / "Makefile").read_text().splitlines()
                if re.match(r"\s*\$\(H2O\) check stacks/demo.yaml", ln))
    return shlex.split(line.split("stacks/demo.yaml", 1)[1])


def test_the_demo_stack_answers_its_question(h2o: H2O, small_model: Path) -> None:
    args = demo_check_args()
    assert "--prompt" in args and "--expect" in args
    env = {"DEMO_MODEL": str(small_model), "DEMO_MODEL_RIGHT": str(small_model),
           "DEMO_PORT_LEFT": str(free_port()), "DEMO_PORT_RIGHT": str(free_port()),
           "DEMO_PORT_FRONT": str(free_port())}
    demo = str(ROOT / "stacks" / "demo.yaml")
    up = h2o("up", demo, env=env, timeout=900)
    assert up.returncode == 0, up.stderr[-4000:]
    check = h2o("check", demo, *args, env=env, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("Paris") == 2 and "asked: What is the capital of France?" in check.stdout
    # --expect fails a check whose answers lack the text
    wrong = h2o("check", demo, "--prompt", "What is the capital of France?", "--max-tokens", "24",
                "--expect", "Berlin", env=env, timeout=300)
    assert wrong.returncode == 1 and "lacks 'Berlin'" in wrong.stdout, wrong.stdout
    h2o("down", demo, env=env, check=True, timeout=120)
