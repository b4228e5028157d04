"""The registry of service kinds: the built-ins registered like plugins, a kind's model and rules from its
backend, and an engine that lives outside the package, registered through its entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from h2ostack import backends, spec
from h2ostack.backends.base import Backend, ContainerSpec, ExternalSpec, ProcessSpec
from h2ostack.errors import StackError
from h2ostack.loader import load_text

BUILTIN_KINDS = ("tgi", "vllm", "transformers", "openai", "h2ogpt")


def test_the_built_in_kinds_are_registered_in_the_schema_s_order() -> None:
    assert backends.kinds()[:5] == BUILTIN_KINDS
    assert backends.kinds() == spec.KINDS
    assert backends.spec_models() == spec.SERVICE_MODELS
    for kind in BUILTIN_KINDS:
        backend = backends.get(kind)
        assert backend.kind == kind
        assert backend.spec_model.model_fields["kind"].annotation.__args__ == (kind,)  # type: ignore[union-attr]
        assert backend.protocol in ("openai", "tgi", "h2ogpt")


def test_an_unknown_kind_is_no_backend() -> None:
    assert backends.find("gradio") is None
    with pytest.raises(KeyError):
        backends.get("nope")


def test_a_second_backend_for_a_kind_and_an_object_that_is_none_are_refused() -> None:
    class Other(Backend):
        kind = "vllm"

    with pytest.raises(backends.RegistryError, match="registered twice"):
        backends.register(Other())
    with pytest.raises(backends.RegistryError, match="not an h2ostack Backend"):
        backends.register(object())  # type: ignore[arg-type]
    assert type(backends.get("vllm")).__module__ == "h2ostack.backends.vllm"


def test_a_kind_s_load_rules_run_where_the_loader_asks_and_name_their_field() -> None:
    model = backends.get("vllm").spec_model
    body = {"kind": "vllm", "url": "http://x:1", "python": "/p"}
    assert model.model_validate(body).url == "http://x:1"  # built in code: taken as given
    with pytest.raises(ValidationError) as info:
        model.model_validate(body, context={"rules": True})
    problems = info.value.errors()[0]["ctx"]["problems"]
    assert [p for p, _ in problems] == [("url",), ("model",)]
    text = "name: s\nservices:\n  a:\n    kind: vllm\n    url: http://x:1\n    python: /p\n"
    with pytest.raises(StackError) as err:
        load_text(text, "s.yaml", {}, Path("/stacks"))
    assert str(err.value).splitlines() == [
        "s.yaml:5:5: services.a.url: give either `url:` (an existing server) or `python:` (start one), not both",
        "s.yaml:3:3: services.a.model: this field is required"]


def test_each_kind_says_how_it_starts() -> None:
    from h2ostack.backends.base import Context

    ctx = Context("a", (), 8000, "127.0.0.1", "/py", "m", "m", {}, None, "/stacks", "/hf")
    tgi = backends.get("tgi")
    svc = tgi.spec_model.model_validate({"kind": "tgi", "model": "m", "image": "img:2.4", "port": 1})
    start = tgi.start_spec(svc, ctx)
    assert isinstance(start, ContainerSpec) and start.port == 80 and start.cache_volume == "/hf:/data"
    assert tgi.mode(svc) == "container"
    svc = tgi.spec_model.model_validate({"kind": "tgi", "model": "m", "launcher": "bin/tgi"})
    start = tgi.start_spec(svc, ctx)
    assert isinstance(start, ProcessSpec) and start.command[0] == "/stacks/bin/tgi"
    oa = backends.get("openai")
    svc = oa.spec_model.model_validate({"kind": "openai", "model": "gpt"})
    assert oa.start_spec(svc, ctx) == ExternalSpec("https://api.openai.com/v1") and oa.mode(svc) == "external"


PLUGIN = '''
from typing import Any, Literal

from h2ostack.backends.base import Backend, Context, ProcessSpec, Probe, StartSpec
from h2ostack.fields import ServiceBase


class EchoService(ServiceBase):
    kind: Literal["echo"]
    python: str | None = None

    @property
    def starts_something(self) -> bool:
        return self.url is None

    def load_rules(self):
        return [] if self.model else [("model", "an echo server needs `model:`")]


class Echo(Backend):
    kind = "echo"
    spec_model = EchoService
    protocol = "openai"
    default_port = 9100

    def start_spec(self, svc: Any, ctx: Context) -> StartSpec:
        if svc.external:
            return super().start_spec(svc, ctx)
        return ProcessSpec([ctx.python, "-m", "echo_server", "--model", ctx.model, "--port", str(ctx.port)],
                           {"ECHO": "1"})

    def probes(self, svc: Any, ctx: Context | None) -> list[Probe]:
        return [Probe("health", "GET", "/health")]


backend = Echo()
'''

SCRIPT = '''
import json, sys
from pathlib import Path
from h2ostack.errors import StackError
from h2ostack.facts import Facts
from h2ostack.loader import load_text
from h2ostack.plan import make_plan

stack = load_text("name: s\\nservices:\\n  e:\\n    kind: echo\\n    model: tiny\\n", "s.yaml", {}, Path("/stacks"))
sp = make_plan(stack, Facts((), "none", python="/py")).services["e"]
out = {"command": list(sp.command), "port": sp.port, "api": sp.api, "env": sp.env.get("ECHO"), "mode": sp.mode}
try:
    load_text("name: s\\nservices:\\n  e:\\n    kind: echo\\n", "s.yaml", {}, Path("/stacks"))
except StackError as exc:
    out["error"] = str(exc)
try:
    load_text("name: s\\nservices:\\n  e:\\n    kind: ech\\n", "s.yaml", {}, Path("/stacks"))
except StackError as exc:
    out["unknown"] = str(exc)
print(json.dumps(out))
'''


def _plugin_dist(root: Path, name: str, entry: str) -> None:
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[h2ostack.backends]\n{entry}\n")


def test_an_engine_outside_the_package_is_registered_from_its_entry_point(tmp_path: Path) -> None:
    (tmp_path / "echo_backend.py").write_text(PLUGIN)
    _plugin_dist(tmp_path, "echo_backend", "echo = echo_backend:backend")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["command"] == ["/py", "-m", "echo_server", "--model", "tiny", "--port", "9100"]
    assert (out["port"], out["api"], out["env"], out["mode"]) == (9100, "openai", "1", "process")
    assert out["error"] == "s.yaml:3:3: services.e.model: an echo server needs `model:`"
    kinds = ", ".join([*backends.kinds(), "echo"])  # plugins after the package's own kinds
    assert f"unknown kind 'ech' (did you mean 'echo'?); one of {kinds}" in out["unknown"]


def test_a_module_of_the_package_is_a_kind_without_a_line_in_the_registry(tmp_path: Path) -> None:
    import shutil

    root = Path(backends.__file__).resolve().parents[1]
    shutil.copytree(root, tmp_path / "h2ostack", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "h2ostack" / "backends" / "echo.py").write_text(PLUGIN)
    (tmp_path / "h2ostack" / "backends" / "helpers.py").write_text("SHARED = 1\n")  # no backend: no kind
    code = "from h2ostack import backends, spec; print(backends.kinds(), spec.KINDS == backends.kinds())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr
    others = sorted([*(k for k in backends.kinds() if k not in BUILTIN_KINDS), "echo"])  # by name, after BUILTIN
    assert done.stdout.strip() == f"{(*BUILTIN_KINDS, *others)} True"


@pytest.mark.parametrize(("module", "entry"), [("raise RuntimeError('no GPU library')", "bad = broken_backend:backend"),
                                               ("backend = 42", "bad = broken_backend:backend"),
                                               ("", "bad = broken_backend:missing")])
def test_a_broken_plugin_is_left_out_with_a_line_that_says_why(tmp_path: Path, module: str, entry: str) -> None:
    (tmp_path / "broken_backend.py").write_text(module + "\n")
    _plugin_dist(tmp_path, "broken_backend", entry)
    code = "from h2ostack import backends; print(backends.kinds())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(backends.kinds())
    assert done.stderr.startswith(f"h2ostack: the backend plugin `{entry}` (h2ostack.backends) is left out: ")
    assert "Traceback" not in done.stderr
