"""bench/gpu_check.py's pure parts, against stated facts and the real planner's messages; and its
CPU dry run, end to end through h2ostack's own commands (no GPU, no NVML)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from h2ostack.facts import GPU, Facts
from h2ostack.loader import load
from h2ostack.plan import PlanError, make_plan

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
assert _spec and _spec.loader
gc = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gc
_spec.loader.exec_module(gc)

H200 = GPU(0, 139.8, 139.2, "NVIDIA H200")


def plan_of(tmp_path: Path, text: str, gpus: tuple[GPU, ...] = (H200,), sizes: dict[str, float] | None = None):
    path = tmp_path / "stack.yaml"
    path.write_text(text)
    stack = load(path)
    facts = Facts(gpus=gpus, gpu_source="nvml", model_gib={str((tmp_path / "model").resolve()): w
                                                            for w in (sizes or {}).values()})
    return make_plan(stack, facts)


def refusal(tmp_path: Path, extra: dict, sizes: dict[str, float] | None = None) -> str:
    with pytest.raises(PlanError) as err:
        plan_of(tmp_path, gc.stack_yaml("chk", "./model", [0], extra, share=True), sizes=sizes)
    return str(err.value)


# -- the wheel list ------------------------------------------------------------------------------

def names() -> list[str]:
    return gc.requirement_names(gc.REQUIREMENTS.read_text())


def test_the_wheel_list_has_what_h2ostack_and_the_gateway_import_and_no_gradio():
    listed = set(names())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    own = set(gc.requirement_names("\n".join(project["dependencies"])))
    assert own <= listed, own - listed
    assert {"fastapi", "uvicorn", "starlette", "httptools", "nvidia-ml-py", "pip", "setuptools"} <= listed
    assert not {n for n in listed if n.startswith("gradio")}
    assert not {"torch", "transformers", "accelerate"} & listed  # the GPU machine's own


def test_requirement_names_normalise_and_refuse_what_is_not_a_requirement():
    assert gc.requirement_names("# c\nPyYAML>=6  # yaml\n\nhuggingface_hub>=0.24\n-r other.txt\nNvidia.ML_py\n") == [
        "pyyaml", "huggingface-hub", "nvidia-ml-py"]
    with pytest.raises(ValueError, match="not a requirement"):
        gc.requirement_names(">=1.0\n")


def test_the_wheel_script_targets_cpython_312_binaries_from_the_list():
    text = (REPO / "scripts" / "gpu-wheels.sh").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu-wheels.sh")]).returncode == 0
    for part in ('-m pip download --quiet --only-binary=:all: --python-version "$PY_VERSION"',
                 "-r bench/gpu-requirements.txt", 'PY_VERSION="${PY_VERSION:-3.12}"', "manylinux2014_x86_64",
                 '-m pip wheel --quiet --no-deps --no-index --find-links "$DEST"'):
        assert part in text, part


# -- the model's size ----------------------------------------------------------------------------

def test_llama_shape_comes_to_the_asked_size():
    six = gc.llama_shape(6.0)
    assert six["hidden_size"] == 4096 and abs(six["gib"] - 6.0) < 0.2
    small = gc.llama_shape(0.05)
    assert small["num_hidden_layers"] >= 2 and small["hidden_size"] < 4096 and abs(small["gib"] - 0.05) < 0.03
    assert gc.llama_shape(40.0)["num_hidden_layers"] > six["num_hidden_layers"]
    with pytest.raises(ValueError):
        gc.llama_shape(0)


def test_llama_shape_counts_the_parameters_transformers_makes():
    import torch  # the project environment has the CPU torch (scripts/setup.sh)
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = gc.llama_shape(0.3, vocab=504)
    config = LlamaConfig(**{k: v for k, v in shape.items() if k not in ("params", "gib")}, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == shape["params"]


# -- step 1: NVML against the plan's facts ---------------------------------------------------------

def nvml_card(**over):
    return {"index": 0, "pci_bus_id": "00000000:1B:00.0", "name": "NVIDIA H200", "total_gib": 139.8,
            "free_gib": 139.2, **over}


def test_compare_gpus_finds_each_difference():
    facts = [{"index": 0, "name": "NVIDIA H200", "total_gib": 139.8047}]
    assert gc.compare_gpus([nvml_card()], facts) == []
    assert "name" in gc.compare_gpus([nvml_card(name="H100")], facts)[0]
    assert "memory" in gc.compare_gpus([nvml_card(total_gib=80.0)], facts)[0]
    assert "GPU ids" in gc.compare_gpus([nvml_card(), nvml_card(index=1)], facts)[0]
    assert "memory" in gc.compare_gpus([nvml_card()], [{"index": 0, "name": "NVIDIA H200", "total_gib": None}])[0]


def test_the_plan_pins_cuda_to_nvml_order_and_the_planned_gpu(tmp_path):
    p = plan_of(tmp_path, gc.stack_yaml("chk", "./model", 1), gpus=(GPU(0, 80, 80), GPU(1, 80, 80)))
    svc = p.services["llm"].to_json()
    assert svc["gpus"] == [0] and gc.check_planned_env(svc) == []
    assert "CUDA_DEVICE_ORDER" in gc.check_planned_env({**svc, "env": {"CUDA_VISIBLE_DEVICES": "0"}})[0]
    assert "CUDA_VISIBLE_DEVICES" in gc.check_planned_env({**svc, "gpus": [1]})[0]
    assert "no GPU" in gc.check_planned_env({**svc, "gpus": [], "env": {}})[0]


def test_bus_numbers_and_cuda_against_nvml():
    assert gc.bus_number("00000000:1B:00.0") == 0x1B and gc.bus_number("0000:c1:00.0") == 0xC1
    assert gc.bus_number("nonsense") is None
    cuda = {"count": 1, "name": "NVIDIA H200", "pci_bus_id": 0x1B, "total_gib": 139.4}
    assert gc.cuda_matches(cuda, nvml_card())
    assert gc.cuda_matches({**cuda, "pci_bus_id": None}, nvml_card())  # an older torch: name and memory
    assert not gc.cuda_matches({**cuda, "pci_bus_id": 0x2A}, nvml_card())
    assert not gc.cuda_matches({**cuda, "count": 2}, nvml_card())
    assert not gc.cuda_matches({**cuda, "total_gib": 79.2}, nvml_card())


# -- step 2: the plan's estimate against NVML ------------------------------------------------------

def test_the_estimate_is_read_from_the_planners_own_refusal(tmp_path):
    (tmp_path / "model").mkdir()
    fits = plan_of(tmp_path, gc.stack_yaml("chk", "./model", 1), sizes={"llm": 6.0})  # 7.2 of 139.2 GiB
    assert fits.services["llm"].gpus == (0,)
    with pytest.raises(PlanError) as err:
        plan_of(tmp_path, gc.stack_yaml("chk", "./model", 1), gpus=(GPU(0, 0.001, 0.001),), sizes={"llm": 6.0})
    got = gc.parse_fit_refusal(str(err.value))
    assert got == {"gpu": 0, "needed_gib": 7.2, "claims": {"llm": 7.2}, "free_gib": 0.0}
    assert gc.parse_fit_refusal("something else") is None


def test_memory_verdict_by_process_else_by_device():
    v = gc.memory_verdict(7.2, 6.6, 6.9, 5.94)
    assert v["measured_by"] == "process" and v["within"] and v["weights_on_gpu"] and v["ratio"] == 0.917
    over = gc.memory_verdict(7.2, 7.5, None, 5.94)
    assert not over["within"] and over["weights_on_gpu"]
    device = gc.memory_verdict(7.2, None, 6.8, 5.94)
    assert device["measured_by"] == "device" and device["within"]
    assert not gc.memory_verdict(7.2, 0.5, None, 5.94)["weights_on_gpu"]  # left on the CPU
    none = gc.memory_verdict(None, None, None, 5.94)
    assert none["measured_by"] is None and not none["within"] and none["ratio"] is None


# -- step 4 and 5: the restart's and down's timing --------------------------------------------------

S = gc.Sample


def test_restart_timeline_by_pid_sees_the_shim_wait_for_the_release():
    samples = [S(0.1, True, 7.0, False, False), S(1.2, False, 0.6, False, False), S(2.4, False, 0.6, True, False),
               S(14.0, False, 7.1, True, True)]
    got = gc.restart_timeline(samples, baseline_gib=0.5)
    assert got == {"released_s": 1.2, "released_by": "pid", "restarted_s": 2.4, "healthy_s": 14.0,
                   "waited_for_release": True}
    early = [S(0.1, True, 7.0, False, False), S(0.9, True, 7.0, True, False), S(1.5, False, 0.6, True, True)]
    assert gc.restart_timeline(early, 0.5)["waited_for_release"] is False


def test_restart_timeline_by_device_memory_where_nvml_pids_are_foreign():
    samples = [S(0.1, None, 7.0, False, False), S(0.8, None, 1.2, False, False), S(2.0, None, 0.7, True, False),
               S(9.0, None, 7.0, True, True)]
    got = gc.restart_timeline(samples, baseline_gib=0.5)
    assert got["released_by"] == "device" and got["released_s"] == 0.8 and got["waited_for_release"]
    assert gc.restart_timeline(samples, baseline_gib=None)["released_s"] is None
    never = gc.restart_timeline([S(0.1, True, 7.0, False, False)], 0.5)
    assert never["released_s"] is None and never["healthy_s"] is None and not never["waited_for_release"]


def test_release_time_is_the_start_of_the_last_free_stretch():
    assert gc.release_time([(0.1, True), (0.4, False), (0.5, True), (0.9, False), (1.0, False)]) == 0.9
    assert gc.release_time([(0.1, True)]) is None
    assert gc.release_time([]) is None


# -- step 6: refusals with the card's figures --------------------------------------------------------

def test_a_missing_gpu_is_refused_with_the_ids_there_are(tmp_path):
    message = refusal(tmp_path, {"ghost": {"kind": "transformers", "model": "./model", "gpus": [1]}})
    cards = [nvml_card()]
    assert gc.refusal_verdict("missing", 2, message, cards, 0, 1) == []
    assert "exited 1" in gc.refusal_verdict("missing", 1, message, cards, 0, 1)[0]
    assert "NVML [0, 1]" in gc.refusal_verdict("missing", 2, message, [*cards, nvml_card(index=1)], 0, 1)[0]
    assert "not 3" in gc.refusal_verdict("missing", 2, message, cards, 0, 3)[0]
    assert "does not exist" in gc.refusal_verdict("missing", 2, "error: port busy", cards, 0, 1)[0]


def test_a_service_beyond_the_card_is_refused_with_its_free_memory(tmp_path):
    (tmp_path / "model").mkdir()
    message = refusal(tmp_path, {"big": {"kind": "transformers", "model": "./model", "gpus": [0],
                                         "vram_gb": 156, "share_gpus": True}}, sizes={"llm": 6.0})
    got = gc.parse_fit_refusal(message)
    assert got["claims"] == {"llm": 7.2, "big": 156.0} and got["free_gib"] == 139.2
    cards = [nvml_card()]
    assert gc.refusal_verdict("memory", 2, message, cards, 0, 1) == []
    assert gc.refusal_verdict("memory", 2, message, [nvml_card(free_gib=139.5)], 0, 1) == []  # moved a little
    assert "NVML 120.00 GiB" in gc.refusal_verdict("memory", 2, message, [nvml_card(free_gib=120.0)], 0, 1)[0]
    assert "not 1" in gc.refusal_verdict("memory", 2, message, [nvml_card(index=1)], 1, 2)[0]
    with pytest.raises(ValueError):
        gc.refusal_verdict("other", 2, message, cards, 0, 1)


# -- the report ---------------------------------------------------------------------------------

def finished(dry: bool, **verdicts):
    report = gc.new_report({"weights_gib": 6.0}, dry)
    for step in report["steps"]:
        if step["name"] in verdicts:
            ok = verdicts[step["name"]]
            step.update(skipped=False, ok=ok, seconds=1.0, error=None if ok else "it broke")
    return gc.finish_report(report, 12.345)


def test_the_swap_budget_holds_one_of_the_two_services_never_both(tmp_path):
    assert gc.swap_budget(7.2) == 10.8 and gc.swap_budget(0.2) == 0.3
    with pytest.raises(ValueError):
        gc.swap_budget(0)
    (tmp_path / "model").mkdir()
    path = tmp_path / "swap.yaml"
    path.write_text(gc.swap_stack_yaml("chk-swap", "./model", 0))
    stack = load(path)
    assert [n for n, s in stack.services.items() if s.on_demand] == ["a", "b"]
    card = GPU(0, gc.swap_budget(7.2), gc.swap_budget(7.2), "NVIDIA H200")
    plan = make_plan(stack, Facts(gpus=(card,), gpu_source="nvml", model_gib={str((tmp_path / "model").resolve()): 6.0}))
    assert plan.services["a"].gpus == plan.services["b"].gpus == (0,)  # one card, one at a time
    roomy = GPU(0, 139.8, 139.2, "NVIDIA H200")
    both = make_plan(stack, Facts(gpus=(roomy,), gpu_source="nvml", model_gib={str((tmp_path / "model").resolve()): 6.0}))
    from h2ostack.plan import fits

    claims = {n: dict(plan.services[n].claims) for n in ("a", "b")}
    assert fits("a", [], claims, plan.gpu_budget) and not fits("a", ["b"], claims, plan.gpu_budget)
    roomy_claims = {n: dict(both.services[n].claims) for n in ("a", "b")}
    assert fits("a", ["b"], roomy_claims, both.gpu_budget)  # the stated budget is what keeps them apart


def leg(**kw):
    base = {"old": "a", "new": "b", "status": 200, "released_s": 0.8, "restarted_s": 0.9, "healthy_s": 9.0,
            "waited_for_release": True, "phases": {"a": "stopped", "b": "ready"}}
    return {**base, **kw}


PLANNED = {"a": {"on_demand": True, "excludes": ["b"]}, "b": {"on_demand": True, "excludes": ["a"]}}


def test_swap_verdicts():
    assert gc.swap_verdict(PLANNED, leg(), by_nvml=True) == []
    early = gc.swap_verdict(PLANNED, leg(restarted_s=0.5, waited_for_release=False), by_nvml=True)
    assert early == ["b was on the card at 0.5 s, before NVML showed a's memory released at 0.8 s"]
    assert gc.swap_verdict(PLANNED, leg(released_s=None), by_nvml=True) == ["NVML never showed a's memory released"]
    assert gc.swap_verdict(PLANNED, leg(released_s=None), by_nvml=False) == ["a's processes did not end"]
    failed = gc.swap_verdict(PLANNED, leg(status=503, healthy_s=None, phases={"a": "stopped", "b": "stopped"}),
                             by_nvml=False)
    assert failed == ["b: the gateway answered 503", "b did not answer within the step's bound",
                      "the manager shows {'a': 'stopped', 'b': 'stopped'}, not a stopped and b ready"]
    together = {**PLANNED, "b": {"on_demand": True, "excludes": []}}
    assert gc.swap_verdict(together, leg(), by_nvml=True)[0].startswith("plan --json: b is not on demand excluding a")


def test_a_report_is_ok_only_when_every_step_passed():
    every = {n: True for n in gc.STEP_NAMES}
    good = finished(False, **every)
    assert good["ok"] and good["failed_step"] is None and gc.report_problems(good) == []
    bad = finished(False, **{**every, "restart": False, "down": False})
    assert not bad["ok"] and bad["failed_step"] == "restart" and gc.report_problems(bad) == []
    partial = finished(False, facts=True)  # a real run that skipped steps is not a pass
    assert not partial["ok"] and gc.report_problems(partial) == []
    dry = finished(True, facts=True, serve=True, refusal=True)
    assert dry["ok"] and dry["elapsed_s"] == 12.35 and gc.report_problems(dry) == []
    assert json.loads(json.dumps(good)) == good


def test_report_problems_catch_a_broken_shape():
    good = finished(False, **{n: True for n in gc.STEP_NAMES})
    assert gc.report_problems([]) == ["the report is not an object"]
    assert gc.report_problems({**good, "ok": "yes"}) == ["ok: missing or not <class 'bool'>"]
    assert "steps" in gc.report_problems({**good, "steps": good["steps"][:-1]})[0]
    broken = json.loads(json.dumps(good))
    broken["steps"][2].update(ok=False, error=None)
    problems = gc.report_problems(broken)
    assert any("failed without an error" in p for p in problems) and any("failed_step" in p for p in problems)
    assert any("ok although" in p for p in problems)
    ran = json.loads(json.dumps(good))
    ran["steps"][1]["ok"] = None
    assert any("no verdict" in p for p in gc.report_problems(ran))


# -- the script itself -----------------------------------------------------------------------------

def run_script(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


@pytest.mark.integration  # starts a real `transformers serve` (on the CPU) and the stack's gateway
def test_the_cpu_self_test_runs_every_step_but_the_cards_verdicts(tmp_path):
    got = run_script("--dry-run", "--serve-on-cpu", "--weights-gib", "0.2", "--out", str(tmp_path / "out"),
                     "--budget-s", "200")
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    report = json.loads(got.stdout)
    assert gc.report_problems(report) == [] and report["ok"] and report["dry_run"]
    assert json.loads((tmp_path / "out" / "gpu-check.json").read_text()) == report
    assert list((tmp_path / "out").glob("*llm*.log"))  # the server's log comes back with the report
    steps = {s["name"]: s for s in report["steps"]}
    assert [n for n, s in steps.items() if s["skipped"]] == ["bootstrap"]
    facts = steps["facts"]["data"]
    assert facts["planned"]["gpus"] == [0] and facts["facts"]["source"] == "stated"
    assert facts["planned"]["env"] == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"}
    serve = steps["serve"]["data"]
    assert serve["model"]["bytes"] > 0.15 * 2**30 and serve["model"]["shape"]["num_hidden_layers"] >= 2
    assert serve["plan_estimate_gib"] == round(serve["model"]["bytes"] / 2**30 * 1.2, 1)
    assert serve["server"]["status_gpus"] == [0] and serve["server"]["pid"] in serve["server"]["group"]
    chat = steps["chat"]["data"]
    assert chat["status"] == 200 and chat["usage"]["completion_tokens"] >= 1 and chat["overhead_ms"]
    restart = steps["restart"]["data"]
    assert restart["old_pids"] == [serve["server"]["pid"]] and restart["new_server"] != restart["old_pids"]
    assert 1.0 <= restart["restarted_s"] < restart["healthy_s"] and restart["status"]["restarts"] == 1
    assert "h2ostack: server exited with signal 9" in restart["shim_said"]
    down = steps["down"]["data"]
    assert down["left"] == [] and down["released_by"] == "process"
    refused = steps["refusal"]["data"]
    assert refused["missing"]["rc"] == 2 and "GPU 1 does not exist" in refused["missing"]["message"]
    assert refused["memory"]["rc"] == 2 and "141.0 GiB is free there" in refused["memory"]["message"]
    swap = steps["swap"]["data"]
    assert swap["budget_gib"] == gc.swap_budget(serve["plan_estimate_gib"])
    assert swap["planned"]["a"]["excludes"] == ["b"] and swap["planned"]["b"]["excludes"] == ["a"]
    first, to_b, back = swap["legs"]
    assert (first["new"], first["status"], first["phases"]) == ("a", 200, {"a": "ready", "b": "stopped"})
    for got, old, new in ((to_b, "a", "b"), (back, "b", "a")):
        assert (got["old"], got["new"], got["status"], got["released_by"]) == (old, new, 200, "process")
        assert got["waited_for_release"] and got["released_s"] <= got["restarted_s"] < got["healthy_s"]
        assert got["phases"] == {old: "stopped", new: "ready"} and got["put_away_s"] > 0 and got["start_s"] > 0
        assert "GPU memory not checked (NVML cannot be read here)" in got["note"]
    assert report["teardown"]["killed_left"] == []
    assert report["elapsed_s"] < 480  # the whole run's rule: under 8 minutes


def test_a_run_without_the_wheel_folder_says_how_to_make_it(tmp_path):
    got = run_script("--wheels", str(tmp_path / "none"), "--out", str(tmp_path / "out"), timeout=60)
    assert got.returncode == 1
    report = json.loads(got.stdout)
    assert gc.report_problems(report) == [] and report["failed_step"] == "bootstrap"
    assert "scripts/gpu-wheels.sh" in report["steps"][0]["error"]


@pytest.mark.parametrize("args,message", [(["--weights-gib", "-1"], "--weights-gib takes a size"),
                                          (["--budget-s", "30"], "--budget-s must exceed"),
                                          (["--weights-gib", "six"], "invalid float value")])
def test_bad_options_exit_2_without_a_traceback(args, message):
    got = run_script(*args, timeout=60)
    assert got.returncode == 2 and message in got.stderr and "Traceback" not in got.stderr


def test_a_run_past_its_budget_fails_its_step_and_still_reports(tmp_path):
    got = run_script("--dry-run", "--serve-on-cpu", "--budget-s", "61", "--weights-gib", "0.05", timeout=120)
    assert got.returncode == 1, got.stderr[-2000:]
    report = json.loads(got.stdout)
    assert gc.report_problems(report) == [] and not report["ok"]
    failed = next(s for s in report["steps"] if s["name"] == report["failed_step"])
    assert "budget" in failed["error"] or "did not finish" in failed["error"]
    assert report["teardown"]["killed_left"] == []
