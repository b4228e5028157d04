"""`doctor` lists every missing prerequisite of a stack this machine cannot run (it does not stop
at the first planning error), and `render` needs none of this machine's secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from h2ostack import doctor
from h2ostack.cli import app

GPU_STACK = """\
version: 1
name: big
services:
  falcon40b:
    kind: tgi
    image: ghcr.io/huggingface/text-generation-inference:1.4.5
    model: h2oai/h2ogpt-oasst1-falcon-40b
    gpus: [1, 2]
    port: {port}
    env: {{HF_TOKEN: "${{HF_TOKEN}}"}}
  llama:
    kind: vllm
    python: /nonexistent/env/bin/python
    model: meta-llama/Llama-2-7b-chat-hf
    env: {{HF_TOKEN: "${{HF_TOKEN}}"}}
    api_key: "${{LLAMA_KEY}}"
    gpus: [3]
    port: {port2}
"""


@pytest.fixture
def gpu_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "LLAMA_KEY", "H2OSTACK_GPUS", "H2OSTACK_GPU_MEMORY"):
        monkeypatch.delenv(var, raising=False)
    # the machine's engine is not what these tests are about: none answers
    monkeypatch.setattr(doctor, "check_docker", lambda needed, gpu=False: [
        doctor.Check("docker engine", not needed, "none", "start one"),
        *([doctor.Check("nvidia container runtime", False, "unknown", "install it")] if gpu else [])])
    monkeypatch.setattr(doctor, "running_ports", lambda name: {})
    path = tmp_path / "big.yaml"
    path.write_text(GPU_STACK.format(port=46112, port2=46113))
    return path


def failed(checks: list[doctor.Check]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in checks:
        if not c.ok:
            assert c.fix, c  # every failure says what to do
            out.setdefault(c.name, []).append(c.detail)
    return out


def test_doctor_lists_every_missing_prerequisite_of_a_gpu_stack_on_a_laptop(gpu_stack: Path) -> None:
    checks = doctor.run(str(gpu_stack), gpus="0")
    bad = failed(checks)
    assert set(bad) >= {"docker engine", "nvidia container runtime", "gpus needed", "variable HF_TOKEN",
                        "variable LLAMA_KEY", "plan", "token for llama", "python of llama"}, bad
    assert "3 GPU(s)" in bad["gpus needed"][0] and "this machine has 1" in bad["gpus needed"][0]
    assert any("GPU 1 does not exist" in d for d in bad["plan"]) and any("GPU 3" in d for d in bad["plan"])
    # the checks after planning ran, on the GPUs the stack names
    names = [c.name for c in checks]
    assert "port 46112 (falcon40b)" in names and "port 46113 (llama)" in names


def test_doctor_with_the_secrets_set_and_the_gpus_there(gpu_stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("LLAMA_KEY", "llama-secret")
    bad = failed(doctor.run(str(gpu_stack), gpus="0,1,2,3"))
    assert not [n for n in bad if n.startswith(("variable", "token", "plan", "gpus"))], bad
    assert "python of llama" in bad  # the one thing still missing


def test_doctor_of_an_invalid_stack_is_the_loaders_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nservices:\n  a: {kind: vllm, model: m, prot: 1}\n")
    out = CliRunner().invoke(app, ["doctor", str(path)])
    assert out.exit_code == 2 and "prot" in out.output and "did you mean" in out.output


def test_render_needs_none_of_this_machines_secrets(gpu_stack: Path) -> None:
    run = CliRunner().invoke
    for fmt in ("shell", "compose", "k8s"):
        out = run(app, ["render", str(gpu_stack), "--format", fmt, "--gpus", "0,1,2,3"])
        assert out.exit_code == 0, out.output
        assert "HF_TOKEN" in out.output and "h2ostack-unset" not in out.output
    shell = run(app, ["render", str(gpu_stack), "--gpus", "0,1,2,3"]).output
    assert "-e HF_TOKEN" in shell and "${VLLM_API_KEY:?" in shell


def test_render_with_the_secrets_set_writes_none_of_them(gpu_stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("LLAMA_KEY", "llama-secret")
    for fmt in ("shell", "compose", "k8s"):
        out = CliRunner().invoke(app, ["render", str(gpu_stack), "--format", fmt, "--gpus", "0,1,2,3"])
        assert out.exit_code == 0 and "hf_secret_value" not in out.output and "llama-secret" not in out.output


@pytest.mark.parametrize("field", ["model: ${MODEL}", "port: ${PORT}", "model: m-${MODEL}"])
def test_render_refuses_an_unset_variable_that_would_be_written(tmp_path: Path, field: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    base = {"model": "model: m", "port": "port: 5000"}
    base[field.split(":")[0]] = field
    path = tmp_path / "s.yaml"
    path.write_text(f"name: x\nservices:\n  a:\n    kind: vllm\n    {base['model']}\n    {base['port']}\n")
    out = CliRunner().invoke(app, ["render", str(path)])
    var = field.split("${")[1].rstrip("}")
    assert out.exit_code == 2 and f"variable ${{{var}}} is not set" in out.output, out.output


def test_render_keeps_defaults_and_env_file_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    (tmp_path / ".env").write_text("PORT=5123\n")
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nenv_file: .env\nservices:\n  a: {kind: vllm, model: '${MODEL:-org/m}', "
                    "port: '${PORT}'}\n")
    out = CliRunner().invoke(app, ["render", str(path)])
    assert out.exit_code == 0 and "--model org/m" in out.output and "--port 5123" in out.output, out.output


def test_render_says_what_is_wrong_with_its_options_before_any_variable(gpu_stack: Path) -> None:
    out = CliRunner().invoke(app, ["render", str(gpu_stack), "--gpus", "abc"])
    assert out.exit_code == 2 and "--gpus takes device ids" in out.output and "HF_TOKEN" not in out.output
