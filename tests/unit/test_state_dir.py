"""The state dir is private and a stack's name is never a path: dirs 0700, files 0600, no write
through a symlink, another user's state dir refused, `kill /some/dir` reads nothing there."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from h2ostack.cli import app
from h2ostack.errors import NotFound
from h2ostack.state import ProcRecord, StackState, UnsafeState, known_stacks

NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def record(service: str, pid: int) -> ProcRecord:
    return ProcRecord(service, pid, pid, psutil.Process(pid).create_time(), "h", time.time(), None, "vllm")


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("H2OSTACK_STATE_DIR", str(state))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    old = os.umask(0o022)
    yield state
    os.umask(old)


def test_dirs_are_0700_and_files_0600_under_a_loose_umask(root: Path) -> None:
    st = StackState("lab")
    st.save_plan({"services": []}, "s.yaml")
    st.save_record(record("a", os.getpid()))
    with st.open_log("a") as log:
        log.write(b"x")
    with st.lock():
        pass
    assert [mode(p) for p in (root, root / "lab", root / "lab" / "run", root / "lab" / "logs")] == [0o700] * 4
    assert [mode(p) for p in (root / "lab" / "plan.json", root / "lab" / "run" / "a.json",
                              root / "lab" / "logs" / "a.log", root / "lab" / "lock")] == [0o600] * 4


def test_an_existing_loose_dir_and_files_are_tightened(root: Path) -> None:
    (root / "lab" / "logs").mkdir(parents=True, mode=0o755)
    os.chmod(root, 0o755)
    (root / "lab" / "lock").write_text("")
    (root / "lab" / "logs" / "a.log").write_text("")
    os.chmod(root / "lab" / "lock", 0o644)
    os.chmod(root / "lab" / "logs" / "a.log", 0o644)
    st = StackState("lab")
    with st.lock(), st.open_log("a"):
        pass
    assert [mode(p) for p in (root, root / "lab", root / "lab" / "logs")] == [0o700] * 3
    assert mode(root / "lab" / "lock") == 0o600 and mode(root / "lab" / "logs" / "a.log") == 0o600


@pytest.mark.parametrize("where", ["logs", "run", "stack", "root"])
def test_a_symlinked_dir_is_refused(root: Path, tmp_path: Path, where: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = {"logs": root / "lab" / "logs", "run": root / "lab" / "run", "stack": root / "lab", "root": root}[where]
    link.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(link.parent, 0o700)
    link.symlink_to(elsewhere)
    with pytest.raises(UnsafeState, match="is a symlink"):
        st = StackState("lab")
        with st.open_log("a"):
            pass
        st.save_record(record("a", os.getpid()))
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name", ["logs/a.log", "lock"])
def test_a_symlinked_file_is_refused(root: Path, tmp_path: Path, name: str) -> None:
    target = tmp_path / "victim"
    target.write_text("keep")
    st = StackState("lab")
    st.ensure("logs")
    (root / "lab" / name).symlink_to(target)
    with pytest.raises(UnsafeState, match="symlink"):
        if name == "lock":
            with st.lock():
                pass
        else:
            with st.open_log("a"):
                pass
    assert target.read_text() == "keep"


def test_a_state_dir_of_another_user_is_refused(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root.mkdir(mode=0o700)
    (root / "lab").mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(root, NOBODY, NOBODY)
    else:  # not root: this user stands for the other one
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    with pytest.raises(UnsafeState, match="belongs to another user"):
        StackState("lab")
    res = CliRunner().invoke(app, ["status"])
    assert res.exit_code == 2 and "belongs to another user" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("name", ["../x", "/abs/dir", "a/b", ".", "..", ""])
def test_a_stack_name_is_never_a_path(root: Path, name: str) -> None:
    with pytest.raises(NotFound, match="is not a stack name"):
        StackState(name)


def test_known_stacks_are_real_dirs_with_names(root: Path, tmp_path: Path) -> None:
    StackState("lab").ensure()
    (tmp_path / "other").mkdir()
    (root / "linked").symlink_to(tmp_path / "other")
    (root / ".hidden").mkdir()
    (root / "file").write_text("")
    assert known_stacks() == ["lab"]


@pytest.mark.parametrize("command", ["kill", "down", "status", "logs"])
def test_a_directory_argument_is_not_a_stack(root: Path, tmp_path: Path, command: str) -> None:
    """A pidfile in a directory named on the command line is never read, and its pid never signalled."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        outside = tmp_path / "some" / "dir"
        (outside / "run").mkdir(parents=True)
        (outside / "run" / "a.json").write_text(__import__("json").dumps(record("a", victim.pid).__dict__))
        res = CliRunner().invoke(app, [command, str(outside)])
        assert res.exit_code == 2, res.output
        assert "is not a stack name" in res.output and "Traceback" not in res.output
        assert victim.poll() is None
        assert sorted(p.name for p in outside.rglob("*")) == ["a.json", "run"]
    finally:
        victim.kill()
        victim.wait()


def test_down_of_a_file_whose_name_is_a_path_writes_nothing(root: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    (work / "s.yaml").write_text("name: ../../x\nservices: {a: {kind: openai, url: 'http://127.0.0.1:9'}}\n")
    res = CliRunner().invoke(app, ["down", "s.yaml"])
    assert res.exit_code == 2 and "s.yaml:1:1: name: a name must start with a letter" in res.output
    assert not (tmp_path / "x").exists() and not root.exists()


def test_the_shims_exit_record_is_0600_and_never_written_through_a_link(root: Path, tmp_path: Path) -> None:
    from h2ostack.shim import Shim

    run = StackState("lab").ensure("run")
    shim = Shim(str(run / "a.exit"), ["true"], {})
    shim.record(0, False)
    assert mode(run / "a.exit") == 0o600 and __import__("json").loads((run / "a.exit").read_text())["code"] == 0
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (run / f"a.exit.tmp{os.getpid()}").symlink_to(victim)
    shim.record(1, False)  # the link is not followed; the record is simply not kept
    assert victim.read_text() == "keep"
