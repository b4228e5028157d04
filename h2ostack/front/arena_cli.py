"""`h2ostack arena STACK`: the leaderboard of a stack's Arena votes, read from the state dir."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from h2ostack.errors import NotFound
from h2ostack.front.arena_core import NAME_RE, ArenaError, VoteStore, arena_path, leaderboard


def stack_of(target: str) -> str:
    """The stack's name: from a stack file, or the name itself. A name is looked up only under the
    state dir, never as a path of its own."""
    p = Path(target)
    if p.is_file():
        from h2ostack.loader import stack_name

        return stack_name(p)
    if not NAME_RE.fullmatch(target):
        raise NotFound(f"no stack file {target!r}, and it is not a stack name either")
    return target


def run(target: str, json_out: bool, jsonl: bool, front: str | None, console: Any) -> None:
    name = stack_of(target)
    try:
        path = arena_path(name)
    except ArenaError as exc:
        raise NotFound(str(exc)) from None
    if not path.is_file():
        if not Path(target).is_file() and not path.parent.is_dir():
            from h2ostack.state import state_root

            raise NotFound(f"no stack file or known stack named {target!r} (state dir: {state_root()})")
        votes = []
    else:
        votes = VoteStore(path).votes(front)
    if jsonl:
        for v in votes:
            sys.stdout.write(json.dumps(v.to_json(), ensure_ascii=False) + "\n")
        return
    board = leaderboard(votes)
    if json_out:
        sys.stdout.write(json.dumps({"stack": name, "front": front, **board.to_json()}, indent=2) + "\n")
        return
    if not votes:
        console.print(f"stack {name}: no Arena votes yet", markup=False)
        return
    from rich.table import Table

    table = Table("rank", "model", "rating", "95% CI", "votes", "wins", "losses", "ties", "win rate",
                  title=f"Arena of stack {name}" + (f", front {front}" if front else ""))
    for rank, r in enumerate(board.rows, 1):
        table.add_row(str(rank), r.model, f"{r.rating:.0f}", f"{r.lower:.0f} to {r.upper:.0f}", str(r.votes),
                      str(r.wins), str(r.losses), str(r.ties), f"{r.win_rate:.0%}")
    console.print(table)
    rate = board.a_win_rate
    console.print(f"{board.votes} vote(s); side bias: Model A won {board.a_wins}, Model B {board.b_wins}"
                  + (f" (A {rate:.0%} of decisive votes)" if rate is not None else "")
                  + f"; {board.ties} tie(s), {board.bothbad} both bad", markup=False)
