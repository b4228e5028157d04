"""Exposure warnings: every server or front that others can reach without a key or password."""

from __future__ import annotations

from pathlib import Path

from h2ostack.api import exposure_warnings
from h2ostack.loader import load


def _stack(tmp_path: Path, fronts: str, bind: str = "0.0.0.0") -> dict[str, str]:
    path = tmp_path / "s.yaml"
    path.write_text(f"""\
version: 1
name: s
defaults: {{bind: "{bind}"}}
services:
  ext: {{kind: vllm, url: "http://10.0.0.1:8000", model: m}}
fronts:
{fronts}
""")
    return dict(exposure_warnings(load(path, {})))


def test_fronts_are_warned_about_by_what_they_leave_open(tmp_path: Path) -> None:
    got = _stack(tmp_path, """\
  open: {port: 7001, models: [ext]}
  keyed: {port: 7002, models: [ext], api_keys: [k1]}
  paged: {port: 7003, models: [ext], auth: {user: u, password: p}}
""")
    assert "page and its /v1 gateway" in got["open"]
    assert "its page" in got["keyed"] and "needs one of the `api_keys`" in got["keyed"]
    assert "paged" not in got  # the password also closes /v1
    assert "ext" not in got  # an external endpoint is not served from here


def test_nothing_is_exposed_on_loopback(tmp_path: Path) -> None:
    assert _stack(tmp_path, "  open: {port: 7001, models: [ext]}", bind="127.0.0.1") == {}
