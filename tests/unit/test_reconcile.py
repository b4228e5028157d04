"""`up`'s decisions (`reconcile`, pure) and up / down / status carried out on a fake runtime: no
process, no container, no sleep."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from h2ostack import api
from h2ostack.errors import NotFound
from h2ostack.health import Answer
from h2ostack.plan_types import (
    BadPlan,
    ContainerPlan,
    ExternalPlan,
    FrontPlan,
    MultiNodePlan,
    Plan,
    ProcessPlan,
    ServicePlan,
)
from h2ostack.reconcile import Bring, Stop, StopReason, reconcile
from h2ostack.runtimes.base import Observed


def proc(name: str, h: str = "h1", deps: tuple[str, ...] = (), **kw: Any) -> ProcessPlan:
    return ProcessPlan(name=name, kind="vllm", api="openai", config_hash=h, depends_on=deps, command=("serve",), **kw)


def plan_of(*sps: ServicePlan) -> Plan:
    services = {sp.name: sp for sp in sps if not isinstance(sp, FrontPlan)}
    fronts = {sp.name: sp for sp in sps if isinstance(sp, FrontPlan)}
    return Plan("s", "s.yaml", "/x", "127.0.0.1", (), services, fronts)


def running(name: str, h: str = "h1", alive: bool = True, mode: str = "process") -> Observed:
    return Observed(name, mode, alive, h)


# -- reconcile: pure decisions ----------------------------------------------------------------------
def test_nothing_running_starts_everything_in_dependency_order() -> None:
    acts = reconcile(plan_of(proc("a"), proc("b", deps=("a",))), {})
    assert acts.start == ("a", "b") and acts.keep == () and acts.stop == ()
    assert acts.deps == {"a": (), "b": ("a",)}


def test_same_config_hash_is_kept() -> None:
    acts = reconcile(plan_of(proc("a"), proc("b")), {"a": running("a"), "b": running("b", "other")})
    assert acts.keep == ("a",) and acts.start == ("b",)
    assert acts.stop == (Stop("b", "process", StopReason.CHANGED),)


def test_changed_services_stop_dependents_first_on_their_own_runtime() -> None:
    sp = ContainerPlan(name="db", kind="tgi", api="tgi", config_hash="new", image="tgi", host="gpu2")
    plan = plan_of(sp, proc("app", "new", deps=("db",)))
    acts = reconcile(plan, {"db": running("db", "old", mode="container@gpu2"), "app": running("app", "old")})
    assert [(s.name, s.runtime, s.reason) for s in acts.stop] == [
        ("app", "process", StopReason.CHANGED), ("db", "container@gpu2", StopReason.CHANGED)]
    assert acts.start == ("db", "app")


def test_a_dead_process_is_started_not_stopped() -> None:
    acts = reconcile(plan_of(proc("a")), {"a": running("a", alive=False)})
    assert acts.start == ("a",) and acts.stop == ()


def test_a_service_removed_from_the_file_stops_and_its_record_goes() -> None:
    observed = {"a": running("a"), "old": running("old"), "<container>": running("<container>", alive=False),
                "dead": running("dead", alive=False)}
    acts = reconcile(plan_of(proc("a")), observed)
    assert acts.stop == (Stop("old", "process", StopReason.GONE),) and acts.keep == ("a",)


def test_only_brings_up_the_named_services_and_their_dependencies_and_stops_nothing_else() -> None:
    plan = plan_of(proc("a"), proc("b", deps=("a",)), proc("c"))
    acts = reconcile(plan, {"a": running("a"), "old": running("old"), "c": running("c", "other")}, only=["b"])
    assert acts.targets == ("a", "b") and acts.keep == ("a",) and acts.start == ("b",)
    assert acts.stop == ()  # neither `old` (gone) nor `c` (changed, not asked for)


def test_only_naming_an_unknown_service_says_which() -> None:
    with pytest.raises(NotFound, match="no service named 'bb' in stack 's'.*'b'"):
        reconcile(plan_of(proc("a"), proc("b")), {}, only=["bb"])


def test_on_demand_services_are_left_to_the_gateway_unless_running_with_the_same_config() -> None:
    plan = plan_of(proc("od", on_demand=True), proc("od2", on_demand=True))
    acts = reconcile(plan, {"od2": running("od2")})
    assert acts.on_demand == ("od",) and acts.keep == ("od2",) and acts.start == ()
    changed = reconcile(plan, {"od2": running("od2", "other")})
    assert changed.on_demand == ("od", "od2") and changed.stop == (Stop("od2", "process", StopReason.CHANGED),)


def test_external_endpoints_are_checked_and_a_process_of_the_same_name_stops() -> None:
    ext = ExternalPlan(name="e", kind="openai", api="openai", url="http://x", config_hash="u")
    acts = reconcile(plan_of(ext), {"e": running("e", "was-a-process")})
    assert acts.check == ("e",) and acts.stop == (Stop("e", "process", StopReason.CHANGED),)


def test_fronts_start_after_their_models() -> None:
    front = FrontPlan(name="chat", kind="gradio", api="gradio", depends_on=("a",), models=("a", "od"),
                      config_hash="f")
    acts = reconcile(plan_of(proc("a"), proc("od", on_demand=True), front), {"a": running("a")})
    assert acts.bring == {"a": Bring.KEEP, "od": Bring.ON_DEMAND, "chat": Bring.START}
    assert acts.deps["chat"] == ("a",)
    only = reconcile(plan_of(proc("a"), proc("od", on_demand=True), front), {}, only=["chat"])
    assert only.targets == ("a", "chat")


# -- the variants and the saved plan ----------------------------------------------------------------
def test_each_variant_has_its_tag_and_reads_the_others_fields_as_empty() -> None:
    c = ContainerPlan(name="t", kind="tgi", api="tgi", image="img", host="gpu2", docker_url="tcp://gpu2:2375")
    f = FrontPlan(name="f", kind="gradio", api="gradio", command=("py",), models=("t",))
    m = MultiNodePlan(name="m", kind="vllm", api="openai", command=("vllm",), nodes=(("h", "ssh", "10.0.0.1"),))
    assert [x.mode for x in (proc("p"), c, f, m)] == ["process", "container", "process", "external"]
    assert c.runtime_key == "container@gpu2" and proc("p").runtime_key == "process" and f.runtime_key == "process"
    assert c.command is None and f.image is None and proc("p").models == () and not c.is_front and f.is_front
    assert not m.started and m.on_demand is False and m.restart == "no"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = c.nope


def test_saved_plan_round_trips_through_the_types(monkeypatch: pytest.MonkeyPatch) -> None:
    from h2ostack.backends.base import Probe

    c = ContainerPlan(name="t", kind="tgi", api="tgi", image="img", host="gpu2", docker_url="tcp://gpu2:2375",
                      container={"command": ["--port", "80"]}, gpus=(1,), port=8080, url="http://gpu2:8080",
                      probes=(Probe("h", "GET", "/health"),), restart="on-failure", max_restarts=3,
                      liveness=Probe("h", "GET", "/health"), config_hash="c")
    od = proc("od", on_demand=True, sleep=1, claims=((0, 12.5), (1, None)), excludes=("a",), env={"K": "v"})
    ext = ExternalPlan(name="e", kind="openai", api="openai", url="http://x/v1", served_model="gpt")
    m = MultiNodePlan(name="m", kind="vllm", api="openai", command=("vllm",), nodes=(("h", "ssh", "10.0.0.1"),))
    f = FrontPlan(name="f", kind="h2ogpt", api="gradio", command=("py",), models=("t",), wiring=(("t", "tgi:x"),))
    plan = plan_of(c, od, ext, m, f)
    back = Plan.from_json(plan.to_json(), "/stacks/s.yaml")
    assert back.to_json() == plan.to_json() and back.base_dir == "/stacks"
    assert [type(sp) for sp in back.all().values()] == [ContainerPlan, ProcessPlan, ExternalPlan, MultiNodePlan,
                                                       FrontPlan]
    assert back.services["t"].runtime_key == "container@gpu2" and back.services["od"].claims == ((0, 12.5), (1, None))


@pytest.mark.parametrize("stack", sorted((Path(__file__).parents[2] / "stacks").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_stacks_plan_reads_back_as_it_was_saved(stack: Path) -> None:
    _, _, plan = api.load_plan(stack, gpus="0,1,2,3,4,5,6,7", gpu_memory=80, check_ports=False,
                               environ={"HF_TOKEN": "hf_x", "VLLM_KEY": "sk-v", "OPENAI_API_KEY": "sk-o"})
    saved = plan.to_json()
    back = Plan.from_json(json.loads(json.dumps(saved)), str(stack))
    assert back.to_json() == saved and list(back.all()) == list(plan.all())
    assert [type(sp) for sp in back.all().values()] == [type(sp) for sp in plan.all().values()]
    assert "hf_x" not in json.dumps(saved) and "sk-v" not in json.dumps(saved)


@pytest.mark.parametrize(("data", "says"), [
    ([], "not an object"),
    ({"stack": "s", "services": {"a": 1}}, "services: Input should be a valid list"),
    ({"stack": "s", "services": [{"name": "../../etc", "kind": "vllm", "mode": "process"}]}, "services.0.name"),
    ({"stack": "s", "services": [{"name": "a", "kind": "vllm", "mode": "shell"}]}, "services.0.mode"),
    ({"stack": "s", "services": [{"name": "a", "kind": "vllm", "mode": "process", "port": 70000}]}, "port"),
    ({"stack": "s", "fronts": [{"name": "f", "kind": "gradio", "mode": "container"}]}, "a front runs as a process"),
    ({"stack": "s", "services": [{"name": "a", "kind": "vllm", "mode": "process", "command": "rm -rf /"}]},
     "services.0.command"),
])
def test_a_hostile_saved_plan_is_a_clear_error(data: Any, says: str) -> None:
    with pytest.raises(BadPlan, match=says.replace(".", r"\.")):
        Plan.from_json(data)


# -- up / down / status on a fake runtime -----------------------------------------------------------
class FakeHandle:
    def exit_code(self) -> int | None:
        return None


class FakeRuntime:
    """One runtime key's share of a fake machine: what runs, and each call made."""

    def __init__(self, mode: str, machine: dict[str, Observed], calls: list[tuple[str, str]]) -> None:
        self.mode, self.machine, self.calls = mode, machine, calls

    def observe(self) -> dict[str, Observed]:
        return {n: o for n, o in self.machine.items() if o.mode == self.mode}

    def start(self, plan: ServicePlan) -> FakeHandle:
        self.calls.append(("start", plan.name))
        self.machine[plan.name] = Observed(plan.name, self.mode, True, plan.config_hash, plan.port, "1")
        return FakeHandle()

    def stop(self, name: str, timeout: float, force: bool = False) -> bool:
        self.calls.append(("stop", name))
        return self.machine.pop(name, None) is not None

    def log_tail(self, name: str, lines: int) -> str:
        return ""

    def log_path(self, name: str) -> str | None:
        return None


class Machine:
    def __init__(self) -> None:
        self.running: dict[str, Observed] = {}
        self.calls: list[tuple[str, str]] = []
        self.events: list[api.Event] = []

    def factory(self, key: str) -> FakeRuntime:
        return FakeRuntime(key, self.running, self.calls)

    def emit(self, ev: api.Event) -> None:
        self.events.append(ev)

    def said(self, kind: str) -> list[tuple[str, str]]:
        return [(e.service, e.detail) for e in self.events if e.kind == kind]

    def up(self, path: Path, only: tuple[str, ...] = ()) -> Plan:
        self.calls.clear()
        self.events.clear()
        return api.up(path, only, gpus="", emit=self.emit, runtime_factory=self.factory, requester=answers)


def answers(method: str, url: str, body: Any, timeout: float, headers: dict[str, str]) -> Answer:
    """Every server ready at once: 200, listing every model asked for."""
    return Answer(200, {"data": [{"id": "org/a"}, {"id": "org/b"}]})


def stack_file(tmp_path: Path, services: str, fronts: str = "") -> Path:
    path = tmp_path / "lab.yaml"
    path.write_text("name: lab\nservices:\n" + textwrap.indent(textwrap.dedent(services), "  ")
                    + ("fronts:\n" + textwrap.indent(textwrap.dedent(fronts), "  ") if fronts else ""))
    return path


SERVICES = """\
a:
  kind: vllm
  model: org/a
b:
  kind: vllm
  model: org/b
  depends_on: [a]
"""
FRONT = """\
chat:
  kind: gradio
  models: [a, b]
"""


@pytest.fixture()
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Machine:
    monkeypatch.setenv("H2OSTACK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(api, "docker_configured", lambda: False)
    return Machine()


def test_up_starts_in_order_then_keeps_then_restarts_what_changed(machine: Machine, tmp_path: Path) -> None:
    path = stack_file(tmp_path, SERVICES, FRONT)
    machine.up(path)
    assert machine.calls == [("start", "a"), ("start", "b"), ("start", "chat")]
    assert [n for n, _ in machine.said("ready")] == ["a", "b", "chat"]

    machine.up(path)
    assert machine.calls == [] and [n for n, _ in machine.said("keep")] == ["a", "b", "chat"]

    path.write_text(path.read_text().replace("model: org/b", "model: org/b\n    args: {max_model_len: 512}"))
    machine.up(path)
    assert machine.calls == [("stop", "b"), ("start", "b")]
    assert machine.said("stop") == [("b", "config changed")]


def test_up_stops_what_left_the_file_and_only_leaves_the_rest_alone(machine: Machine, tmp_path: Path) -> None:
    path = stack_file(tmp_path, SERVICES, FRONT)
    machine.up(path)
    path.write_text(path.read_text().replace("models: [a, b]", "models: [a]"))
    machine.up(path, only=("a",))
    assert machine.calls == [] and machine.said("keep") == [("a", "running with the same config")]
    path.write_text(stack_file(tmp_path, "a:\n  kind: vllm\n  model: org/a\n").read_text())
    machine.up(path)
    assert sorted(machine.calls) == [("stop", "b"), ("stop", "chat")]
    assert dict(machine.said("stop")) == {"b": "no longer in the stack file", "chat": "no longer in the stack file"}


def test_a_dead_service_is_started_again_and_an_on_demand_one_is_not(machine: Machine, tmp_path: Path) -> None:
    path = stack_file(tmp_path, SERVICES + "od:\n  kind: vllm\n  model: org/od\n  on_demand: true\n",
                      "chat:\n  kind: gradio\n  models: [a, b, od]\n")
    machine.up(path)
    assert ("start", "od") not in machine.calls and machine.said("skip")[0][0] == "od"
    machine.running["a"] = Observed("a", "process", False, machine.running["a"].config_hash, exit_code=1)
    machine.up(path)
    assert machine.calls == [("start", "a")]


def test_down_stops_dependents_first_and_status_reports_the_fake_machine(machine: Machine, tmp_path: Path) -> None:
    path = stack_file(tmp_path, SERVICES, FRONT)
    machine.up(path)
    rows = {r.service: r for r in api.status(path, probe=True, runtime_factory=machine.factory, requester=answers)}
    assert {n: (r.state, r.health, r.mode) for n, r in rows.items()} == {
        "a": ("running", "healthy", "process"), "b": ("running", "healthy", "process"),
        "chat": ("running", "healthy", "process")}
    assert rows["chat"].gateway == rows["chat"].url + "/v1" and rows["a"].gateway is None

    machine.calls.clear()
    assert sorted(api.down("lab", runtime_factory=machine.factory)) == ["a", "b", "chat"]
    assert machine.calls == [("stop", "chat"), ("stop", "b"), ("stop", "a")]
    rows = {r.service: r for r in api.status("lab", probe=False, runtime_factory=machine.factory)}
    assert {n: r.state for n, r in rows.items()} == {"a": "not started", "b": "not started", "chat": "not started"}


def test_a_hostile_saved_plan_is_ignored_with_a_warning_and_everything_still_stops(
        machine: Machine, tmp_path: Path) -> None:
    path = stack_file(tmp_path, SERVICES)
    machine.up(path)
    saved = tmp_path / "state" / "lab" / "plan.json"
    saved.write_text(json.dumps({"plan": {"stack": "lab", "services": [{"name": "a", "mode": 3}]}, "source": "x"}))
    rows = api.status("lab", probe=False, runtime_factory=machine.factory)
    assert rows[0].service == "<plan>" and "services.0" in rows[0].detail and str(saved) in rows[0].detail
    assert {r.service: r.state for r in rows[1:]} == {"a": "running", "b": "running"}
    events: list[api.Event] = []
    assert sorted(api.down("lab", emit=events.append, runtime_factory=machine.factory)) == ["a", "b"]
    assert any(e.kind == api.EventKind.WARN and "plan.json is ignored" in e.detail for e in events)


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: p.write_text("{not json"), "not JSON"),
    (lambda p: os.mkfifo(p), "not a regular file"),  # read as a file, it would hang
    (lambda p: p.symlink_to("/etc/passwd"), "cannot be opened"),
    (lambda p: p.write_text(json.dumps({"plan": {"stack": "lab"}, "source": 3})), "not an object with the saved"),
])
def test_a_saved_plan_that_is_no_plan_file_is_ignored_and_said(
        machine: Machine, tmp_path: Path, make: Callable[[Path], Any], says: str) -> None:
    machine.up(stack_file(tmp_path, SERVICES))
    saved = tmp_path / "state" / "lab" / "plan.json"
    saved.unlink()
    make(saved)
    rows = api.status("lab", probe=False, runtime_factory=machine.factory)
    assert rows[0].service == "<plan>" and says in rows[0].detail
    assert sorted(api.down("lab", runtime_factory=machine.factory)) == ["a", "b"]


def test_event_kinds_are_typed() -> None:
    assert api.Event("a", "ready").kind is api.EventKind.READY
    with pytest.raises(ValueError, match="'readyy' is not a valid EventKind"):
        api.Event("a", "readyy")
