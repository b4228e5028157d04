"""`h2ostack init` and `h2ostack schema`: every template writes a stack file that validates and
plans, the flags fill their blanks, bad flags are refused, and the schema is the loader's."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from h2ostack import init as tpl
from h2ostack.cli import app
from h2ostack.errors import StackError
from h2ostack.facts import GPU, Facts
from h2ostack.loader import load_text
from h2ostack.plan import make_plan

ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(tpl.templates())


def plan_of(text: str, n_gpus: int = 4) -> object:
    s = load_text(text, "stack.yaml", tpl.with_unset_as_placeholders(text, {}), Path("/work/stacks"))
    facts = Facts(tuple(GPU(i, 80.0, 80.0) for i in range(n_gpus)), "stated", frozenset(), "/opt/py/bin/python", {})
    return make_plan(s, facts)


def test_the_templates_the_guide_needs_are_there() -> None:
    assert tpl.templates_dir() == ROOT / "templates"
    assert {"cpu-demo", "tgi", "tgi-sharded", "vllm-tp", "compare", "two-hosts"} <= set(NAMES)
    assert sorted(p.stem for p in (ROOT / "templates").glob("*.yaml")) == NAMES  # each has its head line


@pytest.mark.parametrize("name", NAMES)
def test_each_template_inits_validates_and_plans(name: str) -> None:
    text = tpl.render(name)
    assert text.splitlines()[0] == f"# yaml-language-server: $schema={tpl.schema_path()}"
    assert tpl.schema_path().is_file()
    p = plan_of(text)
    assert p.services  # type: ignore[attr-defined]
    # the template in the repository carries the schema line relative to itself
    first = (ROOT / "templates" / f"{name}.yaml").read_text().splitlines()[0]
    assert (ROOT / "templates" / first.split("$schema=", 1)[1]).resolve() == tpl.schema_path()


@pytest.mark.parametrize("name", NAMES)
def test_each_template_is_valid_against_the_schema(name: str) -> None:
    doc = yaml.safe_load(tpl.render(name))
    jsonschema.validate(doc, tpl.stack_schema())


def test_without_a_template_init_writes_the_cpu_demo() -> None:
    p = plan_of(tpl.render(), n_gpus=0)
    assert {s.kind for s in p.services.values()} == {"transformers"}  # type: ignore[attr-defined]
    assert not any(s.gpus for s in p.services.values())  # type: ignore[attr-defined]


def test_flags_fill_the_blanks() -> None:
    text = tpl.render("tgi", name="mine", model="org/some-model", gpus="2,3", port=9000)
    p = plan_of(text)
    svc = p.services["falcon7b"]  # type: ignore[attr-defined]
    assert p.stack == "mine" and svc.gpus == (2, 3) and svc.port == 9000  # type: ignore[attr-defined]
    assert "org/some-model" in json.dumps(p.to_json())  # type: ignore[attr-defined]  # the launcher's --model-id
    # the comments stay
    assert "# --gpus: device ids" in text and "# --model" in text


def test_ports_count_up_from_the_one_given_and_a_count_of_gpus_is_kept() -> None:
    p = plan_of(tpl.render("cpu-demo", port=9100))
    ports = {s.name: s.port for s in p.all().values()}  # type: ignore[attr-defined]
    assert ports == {"left": 9100, "right": 9101, "chat": 9102}
    text = tpl.render("vllm-tp", gpus="4")
    assert len(plan_of(text, n_gpus=8).services["llama65b"].gpus) == 4  # type: ignore[attr-defined]


def test_a_model_that_needs_quoting_reads_back_as_given() -> None:
    odd = "weird: model # name"
    s = load_text(tpl.render("cpu-demo", model=odd), "s.yaml", {}, Path("/x"))
    assert s.services["left"].model == odd and s.services["right"].model == odd


@pytest.mark.parametrize("kwargs, words", [
    ({"template": "nope"}, "no template 'nope'"),
    ({"template": "tgi-shard"}, "did you mean"),
    ({"gpus": "1,1"}, "distinct device ids"),
    ({"gpus": "a"}, "--gpus takes"),
    ({"port": 0}, "--port must be"),
    ({"port": 65535}, "leaves no room"),
    ({"model": "a\nb"}, "on one line"),
    ({"model": " "}, "non-empty"),
    ({"name": "../etc"}, "name"),
])
def test_bad_flags_are_refused_with_a_message(kwargs: dict, words: str) -> None:
    with pytest.raises(StackError) as info:
        tpl.render(**kwargs)
    assert words in str(info.value)


def test_the_shipped_schema_is_the_loaders() -> None:
    assert (ROOT / "h2ostack" / "stack.schema.json").read_text() == tpl.schema_text(), \
        "regenerate it: h2ostack schema > h2ostack/stack.schema.json"
    schema = tpl.stack_schema()
    assert set(schema["properties"]) == {"version", "name", "env_file", "defaults", "hosts", "services", "fronts"}
    jsonschema.validate(yaml.safe_load((ROOT / "stacks" / "demo.yaml").read_text()), schema)  # ${VAR} ports
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "services": {"a": {"kind": "tgi", "modle": "m"}}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "services": {"a": {"kind": "tgi", "port": "eighty"}}}, schema)


def test_pyproject_ships_every_package_and_the_templates() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "h2ostack").rglob("__init__.py")}
    assert packages | {"h2ostack.templates"} == set(conf["packages"])
    assert conf["package-dir"]["h2ostack.templates"] == "templates"
    assert "stack.schema.json" in conf["package-data"]["h2ostack"]


def test_cli_init_list_write_refuse_and_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke
    listed = run(app, ["init", "--list"])
    assert listed.exit_code == 0 and all(n in listed.output for n in NAMES)
    wrote = run(app, ["init"])
    assert wrote.exit_code == 0, wrote.output
    assert "name: demo" in (tmp_path / "stack.yaml").read_text()
    again = run(app, ["init"])
    assert again.exit_code == 2 and "exists" in again.output
    forced = run(app, ["init", "--force", "-t", "tgi-sharded", "--port", "7000"])
    assert forced.exit_code == 0 and "port: 7000" in (tmp_path / "stack.yaml").read_text()
    bad = run(app, ["init", "other.yaml", "-t", "nope"])
    assert bad.exit_code == 2 and "no template" in bad.output and not (tmp_path / "other.yaml").exists()
    assert run(app, ["validate", "stack.yaml"]).exit_code == 0
    out = run(app, ["schema"])
    assert out.exit_code == 0 and json.loads(out.output)["title"] == "h2ostack stack file"
