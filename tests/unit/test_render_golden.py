"""`render --format shell` of every deployment of h2oGPT's inference-server guide, as goldens,
and the guide's own traps, which rendered output must never contain."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from h2ostack.api import load_plan
from h2ostack.render import render_shell

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "render"
GUIDE = sorted((ROOT / "stacks").glob("guide-*.yaml"))
SECRET = "hf_goldensecret_value"


def rendered(stack: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HOME", "/home/user")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.chdir(ROOT)
    _, _, plan = load_plan(stack.relative_to(ROOT), gpus="0,1,2,3,4,5,6,7", check_ports=False)
    return render_shell(plan).replace(str(ROOT), "<root>")


def test_every_guide_deployment_has_a_stack() -> None:
    assert [p.stem for p in GUIDE] == ["guide-falcon40b", "guide-falcon7b", "guide-llama2-70b", "guide-mpt30b",
                                       "guide-neox20b", "guide-pythia12b", "guide-vicuna33b",
                                       "guide-vllm-llama65b"]


@pytest.mark.parametrize("stack", GUIDE, ids=lambda p: p.stem)
def test_render_matches_golden(stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = rendered(stack, monkeypatch)
    golden = GOLDEN / f"{stack.stem}.sh"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("stack", GUIDE, ids=lambda p: p.stem)
def test_guide_traps_cannot_happen(stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = rendered(stack, monkeypatch)
    assert SECRET not in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    # an unquoted device list is read by docker as device 0 and a count of 3
    for m in re.finditer(r"--gpus (\S+)", text):
        assert m.group(1).startswith("'\"device=") and m.group(1).endswith("\"'"), m.group(0)
    # `-e` swallowing the next option (`-e -p 6112:80`)
    assert not re.search(r"-e\s+-", text)
    # a misspelt CUDA_VISIBLE_DEVICES restricts nothing
    assert not re.search(r"CUDA_VISIBLE_DEVICES[A-Za-z]", text)
    if "docker run" in text:
        assert re.search(r"-p 127\.0\.0\.1:6112:80", text)


def test_mpt_on_gpus_0_and_3(monkeypatch: pytest.MonkeyPatch) -> None:
    text = rendered(ROOT / "stacks" / "guide-mpt30b.yaml", monkeypatch)
    assert "--gpus '\"device=0,3\"'" in text and "-e HF_TOKEN \\" in text


def test_vllm_65b_uses_two_gpus_and_tensor_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    text = rendered(ROOT / "stacks" / "guide-vllm-llama65b.yaml", monkeypatch)
    assert "CUDA_VISIBLE_DEVICES=0,1 " in text and "--tensor-parallel-size 2" in text
    assert "/home/user/envs/vllm/bin/python -m vllm.entrypoints.openai.api_server" in text
