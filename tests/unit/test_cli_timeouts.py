"""`--timeout` is a finite number of seconds: nan would wait forever, inf never kill, -1 mean nothing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from h2ostack.cli import app


@pytest.mark.parametrize("command", [["down", "lab"], ["up", "lab.yaml"], ["check", "lab.yaml"]])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e999"])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(command: list[str], value: str, tmp_path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H2OSTACK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    got = CliRunner().invoke(app, [*command, "--timeout", value])
    assert got.exit_code == 2, got.output
    assert "is not a number of seconds" in got.output and "Traceback" not in got.output
    assert not (tmp_path / "state").exists()  # refused before anything is read or written


def test_a_timeout_of_seconds_passes_on_to_the_command(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H2OSTACK_STATE_DIR", str(tmp_path / "state"))
    got = CliRunner().invoke(app, ["down", "lab", "--timeout", "0.5"])
    assert got.exit_code == 2 and "no stack file or known stack named 'lab'" in got.output
