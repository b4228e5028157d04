"""`arena: true` on a front, and `h2ostack arena STACK [--json]` over the votes in the state dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from h2ostack.front.arena_core import Vote, VoteStore, arena_path
from h2ostack.loader import StackError, load_text

STACK = """\
version: 1
name: lab
services:
  a: {kind: openai, url: "http://127.0.0.1:9/v1", model: m1}
  b: {kind: openai, url: "http://127.0.0.1:9/v1", model: m2}
fronts:
  chat:
    port: 7860
    models: [a, b]
    arena: true
"""


def test_arena_field_loads_and_defaults_off() -> None:
    assert load_text(STACK, "s.yaml", {}, Path("/tmp")).fronts["chat"].arena is True
    assert load_text(STACK.replace("    arena: true\n", ""), "s.yaml", {}, Path("/tmp")).fronts["chat"].arena is False


@pytest.mark.parametrize(("text", "message"), [
    (STACK.replace("models: [a, b]", "models: [a]"), "s.yaml:10:5: fronts.chat.arena: an Arena is a tab of the "
     "built-in front and needs two models or more"),
    (STACK.replace("arena: true", "arena: maybe"), "s.yaml:10:5: fronts.chat.arena: input should be a valid boolean"),
    (STACK.replace("arena: true", "arnea: true"), "did you mean 'arena'?"),
])
def test_bad_arena_fields_name_the_line(text: str, message: str) -> None:
    with pytest.raises(StackError) as info:
        load_text(text, "s.yaml", {}, Path("/tmp"))
    assert message in str(info.value)


def cli(*args: str, state: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "h2ostack.cli", "arena", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={"H2OSTACK_STATE_DIR": str(state), "COLUMNS": "200",
                                                     "PATH": "/usr/bin:/bin"})


def test_leaderboard_from_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = VoteStore(arena_path("lab", state))
    for a, b, v in [("a", "b", "a")] * 3 + [("b", "a", "a"), ("a", "b", "tie")]:
        store.add(Vote(a, b, v, "q", "x", "y", front="chat"))
    (tmp_path / "s.yaml").write_text(STACK)
    by_file = cli("s.yaml", "--json", state=state, cwd=tmp_path)
    assert by_file.returncode == 0, by_file.stderr
    data = json.loads(by_file.stdout)
    assert data["stack"] == "lab" and data["votes"] == 5
    assert [m["model"] for m in data["models"]] == ["a", "b"]
    assert data["models"][0]["wins"] == 3 and data["side_bias"]["a_wins"] == 4
    top = data["models"][0]
    assert top["lower"] < top["rating"] < top["upper"]
    by_name = cli("lab", state=state, cwd=tmp_path)
    assert by_name.returncode == 0, by_name.stderr
    assert "Arena of stack lab" in by_name.stdout and "Model A won 4" in by_name.stdout
    lines = cli("lab", "--jsonl", state=state, cwd=tmp_path).stdout.splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["model_a"] == "a"
    assert json.loads(cli("lab", "--json", "--front", "other", state=state, cwd=tmp_path).stdout)["votes"] == 0


def test_no_votes_and_bad_names(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (tmp_path / "s.yaml").write_text(STACK)
    empty = cli("s.yaml", state=state, cwd=tmp_path)
    assert empty.returncode == 0 and "no Arena votes yet" in empty.stdout
    assert not (state / "lab" / "arena.sqlite3").exists()  # reading creates nothing
    # a path that is no stack file is never opened as a database, nor a name outside the state dir
    (tmp_path / "elsewhere").mkdir()
    VoteStore(tmp_path / "elsewhere" / "arena.sqlite3")
    for bad in ("nosuch", "../elsewhere", str(tmp_path / "elsewhere"), "a\nb"):
        out = cli(bad, state=state, cwd=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr, (bad, out.stderr)
        assert "error:" in out.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nname: [x]\n")
    out = cli(str(broken), state=state, cwd=tmp_path)
    assert out.returncode == 2 and "broken.yaml:2" in out.stderr and "Traceback" not in out.stderr
