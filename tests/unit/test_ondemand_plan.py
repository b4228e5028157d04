"""Models on demand in the loader and the planner: the fields' rules, GPUs shared between on-demand
services only, each fitting alone beside the always-on ones, and what `plan --json` says."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from h2ostack.facts import GPU, Facts
from h2ostack.loader import StackError, load_text
from h2ostack.plan import PlanError, fits, make_plan
from h2ostack.spec import Stack

PY = "/opt/py/bin/python"


def stack(text: str) -> Stack:
    return load_text(textwrap.dedent(text), "s.yaml", {}, Path("/stacks"))


def facts(n_gpus: int = 2, mem: float | None = 10.0) -> Facts:
    return Facts(tuple(GPU(i, mem, mem) for i in range(n_gpus)), "stated", frozenset(), PY, {})


def load_error(text: str) -> str:
    with pytest.raises(StackError) as info:
        stack(text)
    return str(info.value)


THREE = """\
name: od
services:
  a: {kind: transformers, model: m/a, on_demand: true, gpus: 2, vram_gb: 8, port: 9001, idle_timeout: 30}
  b: {kind: transformers, model: m/b, on_demand: true, gpus: 2, vram_gb: 8, port: 9002}
  c: {kind: transformers, model: m/c, on_demand: true, gpus: 2, vram_gb: 8, port: 9003}
fronts:
  f: {port: 9000, models: [a, b, c]}
"""


def test_three_on_demand_services_share_two_gpus_one_at_a_time() -> None:
    plan = make_plan(stack(THREE), facts())
    for name in "abc":
        sp = plan.services[name]
        assert sp.on_demand and sp.gpus == (0, 1) and dict(sp.claims) == {0: 8.0, 1: 8.0}
        assert sorted(sp.excludes) == sorted(set("abc") - {name})
    assert plan.services["a"].idle_timeout == 30 and plan.services["b"].idle_timeout == 600
    assert plan.order == (("f",),)  # `up` starts the front, not the models on demand
    assert plan.fronts["f"].depends_on == ()
    out = plan.to_json()
    assert [s["on_demand"] for s in out["services"]] == [True, True, True]
    assert out["services"][0]["memory_gib"] == {"0": 8.0, "1": 8.0}
    assert out["on_demand_budget_gib"] == {"0": 10.0, "1": 10.0}


def test_on_demand_services_that_fit_together_say_so() -> None:
    plan = make_plan(stack(THREE.replace("vram_gb: 8", "vram_gb: 4")), facts())
    assert plan.services["a"].excludes == ()
    # two fit on a 10 GiB GPU, a third does not
    claims = {n: dict(plan.services[n].claims) for n in "abc"}
    assert fits("a", ["b"], claims, plan.gpu_budget)
    assert not fits("a", ["b", "c"], claims, plan.gpu_budget)


def test_unknown_memory_never_shares_a_gpu() -> None:
    plan = make_plan(stack(THREE.replace(", vram_gb: 8", "")), facts())
    assert dict(plan.services["a"].claims) == {0: None, 1: None}
    assert sorted(plan.services["a"].excludes) == ["b", "c"]


def test_an_on_demand_service_too_big_even_alone_is_refused_before_anything_starts() -> None:
    text = THREE.replace("  c: {kind: transformers, model: m/c, on_demand: true, gpus: 2, vram_gb: 8, port: 9003}",
                         "  c: {kind: transformers, model: m/c, on_demand: true, gpus: 2, vram_gb: 11, port: 9003}")
    with pytest.raises(PlanError) as info:
        make_plan(stack(text), facts())
    assert "s.yaml:5:" in str(info.value) and "does not fit on GPU 0 even alone" in str(info.value)


def test_each_must_fit_beside_the_always_on_services() -> None:
    text = """\
    name: od
    services:
      base: {kind: transformers, model: m/x, gpus: [0], vram_gb: 2, port: 9004, share_gpus: true}
      a: {kind: transformers, model: m/a, on_demand: true, gpus: [0], vram_gb: 9, port: 9001, share_gpus: true}
      b: {kind: transformers, model: m/b, on_demand: true, gpus: [0], vram_gb: 7, port: 9002, share_gpus: true}
    fronts:
      f: {port: 9000, models: [a, b]}
    """
    err = str(pytest.raises(PlanError, make_plan, stack(text), facts()).value)
    assert "services.a.gpus" in err and "beside the always-on services' 2.0 GiB" in err
    assert "services.b" not in err
    plan = make_plan(stack(text.replace("vram_gb: 9", "vram_gb: 8")), facts())
    assert plan.gpu_budget[0] == 8.0 and plan.fronts["f"].depends_on == ()


def test_on_demand_never_takes_an_always_on_gpu() -> None:
    text = """\
    name: od
    services:
      base: {kind: transformers, model: m/x, gpus: [0], port: 9004}
      a: {kind: transformers, model: m/a, on_demand: true, gpus: [0], port: 9001}
      b: {kind: transformers, model: m/b, on_demand: true, gpus: 1, port: 9002}
    fronts:
      f: {port: 9000, models: [a, b]}
    """
    err = str(pytest.raises(PlanError, make_plan, stack(text), facts()).value)
    assert "GPU 0 is used by always-on service 'base'" in err
    plan = make_plan(stack(text.replace("gpus: [0], port: 9001", "gpus: [1], port: 9001")), facts())
    assert plan.services["b"].gpus == (1,)  # the count avoids the always-on service's device


def test_sleep_adds_vllm_sleep_mode() -> None:
    text = f"""\
    name: od
    services:
      v: {{kind: vllm, python: {PY}, model: m/v, on_demand: true, sleep: 1, gpus: 1, port: 9001}}
    fronts:
      f: {{port: 9000, models: [v]}}
    """
    sp = make_plan(stack(text), facts()).services["v"]
    assert "--enable-sleep-mode" in sp.command and sp.env["VLLM_SERVER_DEV_MODE"] == "1" and sp.sleep == 1
    from h2ostack.backends import vllm

    command, env = vllm.without_sleep(sp.command, dict(sp.env))
    assert "--enable-sleep-mode" not in command and "VLLM_SERVER_DEV_MODE" not in env
    assert vllm.sleep_probe_says("noise\nsleep cpu False\n") is False
    assert vllm.sleep_probe_says("sleep cuda True") is True
    assert vllm.sleep_probe_says("Traceback ...") is None


@pytest.mark.parametrize(("text", "where", "says"), [
    ("  a: {kind: transformers, model: m, sleep: 1, on_demand: true}\n", ":3:", "only vLLM can sleep"),
    (f"  a: {{kind: vllm, python: {PY}, model: m, sleep: 1}}\n", ":3:", "add `on_demand: true`"),
    (f"  a: {{kind: vllm, python: {PY}, model: m, sleep: 3, on_demand: true}}\n", ":3:", "sleep"),
    (f"  a: {{kind: vllm, python: {PY}, model: m, sleep: true, on_demand: true}}\n", ":3:", "not a number"),
    ("  a: {kind: transformers, model: m, idle_timeout: 5}\n", ":3:", "`idle_timeout:` is for on-demand"),
    ("  a: {kind: transformers, model: m, idle_timeout: 0, on_demand: true}\n", ":3:", "greater than 0"),
    ("  a: {kind: vllm, url: 'http://x:1', model: m, on_demand: true}\n", ":3:", "only a service h2ostack starts"),
    ("  a: {kind: transformers, model: m, on_demand: true}\n  b: {kind: transformers, model: m, depends_on: [a]}\n",
     ":4:", "'a' is on demand"),
])
def test_loader_rules(text: str, where: str, says: str) -> None:
    err = load_error("name: od\nservices:\n" + text + "fronts:\n  f: {models: [a]}\n")
    assert where in err and says in err, err


def test_an_on_demand_service_no_gradio_front_serves_is_refused() -> None:
    err = load_error("name: od\nservices:\n  a: {kind: transformers, model: m, on_demand: true}\n")
    assert "s.yaml:3:" in err and "nothing would start it" in err
    err = load_error(f"name: od\nservices:\n  a: {{kind: transformers, model: m, on_demand: true}}\nfronts:\n"
                     f"  f: {{models: [a]}}\n  h: {{kind: h2ogpt, python: {PY}, models: [a]}}\n")
    assert "an h2oGPT front reaches its models directly" in err


def test_plan_and_check_say_what_is_on_demand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from h2ostack.cli import app

    monkeypatch.setenv("H2OSTACK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("H2OSTACK_GPUS", "0,1")
    monkeypatch.setenv("H2OSTACK_GPU_MEMORY", "10")
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(THREE))
    shown = CliRunner().invoke(app, ["plan", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "a: on demand (GPU 0: 8.0 GiB, GPU 1: 8.0 GiB; put away after 30 s idle); cannot be up beside b, c" \
        in shown.output
    # nothing of it runs, and `check` does not count that as a failure (the gateway starts them)
    checked = CliRunner().invoke(app, ["check", str(path)])
    assert checked.exit_code == 0, checked.output
    assert "a: on demand, not checked" in checked.output


def test_tables_show_values_that_look_like_markup_as_they_are(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A command's `[...]` (or a stray `[/]`) is shown as written: not swallowed as Rich markup, no traceback."""
    from typer.testing import CliRunner

    from h2ostack.cli import app

    monkeypatch.setenv("H2OSTACK_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        name: marks
        services:
          m:
            kind: transformers
            model: org/m
            args: {chat_template: "[bold]x[/bold] [/]"}
        """))
    shown = CliRunner().invoke(app, ["plan", str(path)], env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    assert "[bold]x[/bold] [/]" in shown.output.replace("'", "")
