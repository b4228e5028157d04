"""Lock files, pure parts: the difference listing, the local model digest, and what a kind records itself
(with doctor's own checks of a kind)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from h2ostack import backends
from h2ostack.backends.base import Backend, Finding
from h2ostack.lock import compute, diff, local_model_digest


def test_diff_lists_every_difference_by_path() -> None:
    locked = {"h2ostack": "0.1.0", "services": {"a": {"gpus": [0], "packages": {"vllm": "0.6.3", "torch": "2.4"}},
                                                "b": {"image_id": "sha256:1"}}}
    now = {"h2ostack": "0.1.0", "services": {"a": {"gpus": [1], "packages": {"vllm": "0.6.4", "torch": "2.4"}},
                                             "c": {"image_id": "sha256:2"}}}
    assert diff(locked, now) == [
        "services.a.gpus: locked [0], now [1]",
        "services.a.packages.vllm: locked 0.6.3, now 0.6.4",
        'services.b: locked {"image_id": "sha256:1"}, now absent',
        'services.c: not in the lock, now {"image_id": "sha256:2"}',
    ]
    assert diff(locked, locked) == []


def test_local_model_digest_follows_content(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 100)
    first = local_model_digest(tmp_path)
    assert first == local_model_digest(tmp_path) and first.startswith("sha256:")
    (tmp_path / "config.json").write_text('{"a": 2}')
    assert local_model_digest(tmp_path) != first


class _Planned(SimpleNamespace):
    is_front = False
    mode = "process"
    url = None


class _OwnRecord(Backend):
    """A kind that records its model itself and runs a Python server (`server_module`)."""

    kind = "ownrecord"
    server_module = "json"
    lock_packages = ("pytest",)

    def lock_entry(self, sp: Any) -> dict[str, Any] | None:
        return {"model": {"file": "m.bin", "size": 3}, "extra": True}

    def doctor(self, name: str, sp: Any, svc: Any) -> Finding | None:
        return Finding(f"model file of {name}", False, "/nowhere/m.bin", "put it there")


class _Launcher(_OwnRecord):
    """A kind with its own install instead of a Python environment (TGI's launcher)."""

    kind = "launcher"
    server_module = None

    def lock_entry(self, sp: Any) -> dict[str, Any] | None:
        return {"launcher": sp.command[0]}


@pytest.fixture
def kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    import h2ostack.doctor  # noqa: F401  (the stack's models are built from the registry before these join it)
    import h2ostack.facts  # noqa: F401

    monkeypatch.setitem(backends._registry, "ownrecord", _OwnRecord())
    monkeypatch.setitem(backends._registry, "launcher", _Launcher())


def test_a_kinds_own_record_adds_to_its_packages_and_replaces_the_hub_lookup(kinds: None) -> None:
    services = {"own": SimpleNamespace(model="models/m.bin", revision=None, python=None),
                "tgi": SimpleNamespace(model="org/model", revision=None, python=None)}
    stack = SimpleNamespace(services=services, base_dir="/nowhere")
    planned = {"own": _Planned(kind="ownrecord", gpus=(), command=[sys.executable, "-m", "x"]),
               "tgi": _Planned(kind="launcher", gpus=(), command=["/opt/tgi/launcher"])}
    plan = SimpleNamespace(stack="s", all=lambda: planned)
    asked: list[str] = []
    out = compute(stack, plan, resolve_hub=lambda model, rev: asked.append(model) or "abc")["services"]
    assert asked == ["org/model"]  # the kind's own record of its model: no hub lookup for it
    assert out["own"]["model"] == {"file": "m.bin", "size": 3} and out["own"]["extra"] is True
    assert set(out["own"]["packages"]) == {"python", "pytest"}
    assert out["tgi"] == {"kind": "launcher", "gpus": [], "model": {"name": "org/model", "revision": "abc"},
                          "launcher": "/opt/tgi/launcher"}


def test_doctor_runs_a_kinds_own_check_beside_the_import_check(kinds: None) -> None:
    from h2ostack.doctor import check_environments

    services = {"own": SimpleNamespace(python=None), "tgi": SimpleNamespace(python=None)}
    planned = {"own": _Planned(kind="ownrecord", command=[sys.executable, "-m", "x"]),
               "tgi": _Planned(kind="launcher", command=["/opt/tgi/launcher"])}
    checks = check_environments(SimpleNamespace(services=planned), SimpleNamespace(services=services))
    assert [(c.name, c.ok) for c in checks] == [("model file of own", False), ("python of own", True),
                                                ("model file of tgi", False)]
