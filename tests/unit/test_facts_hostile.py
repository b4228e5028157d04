"""Machine facts from hostile input: stated GPU memory, a model folder that is the whole disk, names
no file system holds, and a vLLM memory share that is not a number."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from h2ostack import facts
from h2ostack.errors import FactsError, StackError
from h2ostack.facts import GPU, Facts, gib_per_gpu, local_model_path, machine_gpus, model_size_gib
from h2ostack.loader import load_text
from h2ostack.plan import PlanError, make_plan


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0, -1, "nan", "inf", "abc", ""])
def test_stated_gpu_memory_must_be_a_positive_finite_number(value: float | str) -> None:
    with pytest.raises(FactsError) as info:
        gib_per_gpu(value, "--gpu-memory")
    assert str(info.value).startswith("--gpu-memory takes the GiB of memory per GPU, a positive number like 80, got")


def test_gpu_memory_from_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H2OSTACK_GPU_MEMORY", "nan")
    with pytest.raises(FactsError, match="^H2OSTACK_GPU_MEMORY takes"):
        machine_gpus("0")
    with pytest.raises(FactsError, match="^--gpu-memory takes"):
        machine_gpus("0", math.inf)
    monkeypatch.setenv("H2OSTACK_GPU_MEMORY", "24")
    assert machine_gpus("0,1") == ((GPU(0, 24.0, 24.0), GPU(1, 24.0, 24.0)), "stated")


def test_the_model_size_scan_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 2048)
    deep = tmp_path / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "hidden.bin").write_bytes(b"\0" * 4096)  # deeper than a model folder keeps weights
    (tmp_path / "a" / "w.bin").write_bytes(b"\0" * 1024)
    (tmp_path / "loop").symlink_to(tmp_path)  # not followed
    assert model_size_gib(tmp_path) == pytest.approx(3072 / 2**30)
    monkeypatch.setattr(facts, "SCAN_ENTRIES", 3)
    assert model_size_gib(tmp_path) is None  # too many entries to be one model's folder: unknown
    assert model_size_gib(tmp_path / "missing") is None


def test_a_name_no_file_system_holds_is_not_a_local_model(tmp_path: Path) -> None:
    assert local_model_path("x" * 10000, str(tmp_path)) is None
    assert local_model_path("org/" + "y" * 300, str(tmp_path)) is None
    assert local_model_path("a\0b", str(tmp_path)) is None


@pytest.mark.parametrize("share", ["abc", '""', "true", "2", "0", "-0.5", ".nan", "[0.5]"])
def test_a_vllm_memory_share_that_is_not_a_share_is_refused_at_load_with_its_place(share: str) -> None:
    text = ("name: g\nservices:\n  a:\n    kind: vllm\n    model: m\n    gpus: [0]\n    vram_gb: 10\n"
            f"    args: {{gpu_memory_utilization: {share}}}\n")
    with pytest.raises(StackError) as info:  # refused at load, before any plan
        load_text(text, "s.yaml", {}, Path("/stacks"))
    assert str(info.value) == "s.yaml:8:12: services.a.args.gpu_memory_utilization: gpu_memory_utilization is the " \
                              "share of each GPU vLLM may use: a number above 0 and at most 1, like 0.9"


def test_a_vllm_memory_share_as_text_still_counts() -> None:
    text = ("name: g\nservices:\n  a:\n    kind: vllm\n    model: m\n    gpus: [0]\n    vram_gb: 70\n"
            "    args: {gpu_memory_utilization: '0.5'}\n")
    with pytest.raises(PlanError, match="vLLM may use 40.0 GiB of GPU 0"):
        make_plan(load_text(text, "s.yaml", {}, Path("/stacks")), Facts((GPU(0, 80.0, 80.0),), "stated"))
