"""The Arena's core without Gradio: pairs and sides, the vote store, the ratings."""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import random
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from h2ostack.front.arena_core import (
    ArenaError,
    Vote,
    VoteStore,
    arena_path,
    bradley_terry,
    leaderboard,
    leaderboard_markdown,
    sample_pair,
)

ELO = 400 / math.log(10)  # rating points per natural-log unit of strength


def votes_for(table: dict[tuple[str, str, str], int]) -> list[Vote]:
    """(model_a, model_b, vote) -> how many such votes."""
    return [Vote(a, b, v, "q", "x", "y") for (a, b, v), n in table.items() for _ in range(n)]


# -- ratings --------------------------------------------------------------------------------------

def test_two_models_rating_gap_is_400_log10_of_the_odds() -> None:
    # 3 wins of x over y, 1 of y over x: P(x beats y) = 3/4 = 1 / (1 + 10^(-gap/400))
    board = leaderboard(votes_for({("x", "y", "a"): 2, ("y", "x", "b"): 1, ("y", "x", "a"): 1}), rounds=0,
                        ridge=0)
    r = {row.model: row.rating for row in board.rows}
    assert r["x"] - r["y"] == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert (r["x"] + r["y"]) / 2 == pytest.approx(1000, abs=1e-6)


def test_three_models_recover_known_strengths() -> None:
    """Counts that a Bradley-Terry model with strengths 1, 2, 4 predicts exactly (p = pi/(pi+pj)):
    the maximum-likelihood ratings are 400*log10(strength), centred on 1000."""
    table = {("p1", "p2", "a"): 1, ("p1", "p2", "b"): 2,   # 1/3
             ("p2", "p4", "a"): 1, ("p4", "p2", "a"): 2,   # p4 on side A this time: 1/3
             ("p1", "p4", "a"): 1, ("p1", "p4", "b"): 4}   # 1/5
    board = leaderboard(votes_for(table), rounds=0, ridge=0)
    r = {row.model: row.rating for row in board.rows}
    step = 400 * math.log10(2)  # 120.41
    assert r["p1"] == pytest.approx(1000 - step, abs=1e-4)
    assert r["p2"] == pytest.approx(1000, abs=1e-4)
    assert r["p4"] == pytest.approx(1000 + step, abs=1e-4)
    assert [row.model for row in board.rows] == ["p4", "p2", "p1"]
    # the default ridge moves them by less than a point
    default = {row.model: row.rating for row in leaderboard(votes_for(table), rounds=0).rows}
    assert all(abs(default[m] - r[m]) < 1 for m in r)


def test_ties_count_half_each_way() -> None:
    # 1 win each and 2 ties: even; a win and a tie against nothing else: P = 0.75
    even = leaderboard(votes_for({("x", "y", "a"): 1, ("x", "y", "b"): 1, ("x", "y", "tie"): 2}), rounds=0, ridge=0)
    assert even.rows[0].rating == pytest.approx(1000, abs=1e-6)
    tilted = leaderboard(votes_for({("x", "y", "a"): 1, ("x", "y", "bothbad"): 1}), rounds=0, ridge=0)
    r = {row.model: row.rating for row in tilted.rows}
    assert r["x"] - r["y"] == pytest.approx(400 * math.log10(3), abs=1e-6)


def test_unbeaten_model_stays_finite() -> None:
    board = leaderboard(votes_for({("x", "y", "a"): 5}), rounds=20)
    r = {row.model: row.rating for row in board.rows}
    assert 0 < r["x"] - r["y"] < 3000 and all(math.isfinite(v) for v in r.values())


def test_bradley_terry_matches_the_logistic_regression_gradient() -> None:
    """At the estimate, each model's expected wins equal its actual wins (the likelihood's
    stationary point), for a random table."""
    import numpy as np

    rng = np.random.default_rng(3)
    wins = rng.integers(1, 9, size=(4, 4)).astype(float)
    np.fill_diagonal(wins, 0)
    ratings = bradley_terry(["a", "b", "c", "d"], wins, ridge=0)
    s = (ratings - 1000) / ELO
    p = 1 / (1 + np.exp(-(s[:, None] - s[None, :])))
    np.testing.assert_allclose(((wins + wins.T) * p).sum(axis=1), wins.sum(axis=1), atol=1e-6)


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded() -> None:
    table = {("x", "y", "a"): 30, ("x", "y", "b"): 20, ("y", "z", "a"): 25, ("z", "y", "a"): 15,
             ("x", "z", "tie"): 10, ("x", "z", "a"): 12, ("z", "x", "a"): 8}
    votes = votes_for(table)
    board = leaderboard(votes, rounds=100, seed=7)
    for row in board.rows:
        assert row.lower < row.rating < row.upper, row
        assert row.upper - row.lower < 400, row  # a real interval, not the whole scale
    again = leaderboard(votes, rounds=100, seed=7)
    assert [(r.lower, r.upper) for r in again.rows] == [(r.lower, r.upper) for r in board.rows]
    other = leaderboard(votes, rounds=100, seed=8)
    assert [(r.lower, r.upper) for r in other.rows] != [(r.lower, r.upper) for r in board.rows]
    # more votes of the same proportions: a narrower interval
    wide = {r.model: r.upper - r.lower for r in board.rows}
    narrow = leaderboard(votes_for({k: 4 * n for k, n in table.items()}), rounds=100, seed=7)
    assert all(r.upper - r.lower < wide[r.model] for r in narrow.rows)


def test_tally_win_rate_and_side_bias() -> None:
    votes = votes_for({("x", "y", "a"): 3, ("y", "x", "a"): 1, ("x", "y", "b"): 1, ("x", "y", "tie"): 1,
                       ("y", "x", "bothbad"): 2})
    board = leaderboard(votes, rounds=0)
    rows = {r.model: r for r in board.rows}
    assert (rows["x"].votes, rows["x"].wins, rows["x"].losses, rows["x"].ties) == (8, 3, 2, 3)
    assert (rows["y"].votes, rows["y"].wins, rows["y"].losses, rows["y"].ties) == (8, 2, 3, 3)
    assert rows["x"].win_rate == pytest.approx(3 / 8)
    assert (board.votes, board.a_wins, board.b_wins, board.ties, board.bothbad) == (8, 4, 1, 1, 2)
    assert board.a_win_rate == pytest.approx(0.8)
    data = board.to_json()
    assert data["side_bias"]["a_win_rate"] == pytest.approx(0.8) and data["models"][0]["model"] == "x"
    md = leaderboard_markdown(board)
    assert "| 1 | x |" in md and "Model A won 4" in md
    assert leaderboard([], rounds=10).rows == [] and "No votes yet" in leaderboard_markdown(leaderboard([]))


# -- battles --------------------------------------------------------------------------------------

def test_pairs_uniform_with_random_sides() -> None:
    rng = random.Random(1)
    draws = [sample_pair(["a", "b", "c"], rng) for _ in range(3000)]
    assert all(x != y for x, y in draws)
    pairs = Counter(frozenset(d) for d in draws)
    assert len(pairs) == 3 and all(800 < n < 1200 for n in pairs.values()), pairs
    firsts = Counter(d[0] for d in draws if set(d) == {"a", "b"})
    assert abs(firsts["a"] - firsts["b"]) < 0.2 * sum(firsts.values()), firsts


def test_pairs_favour_few_votes() -> None:
    rng = random.Random(2)
    counts = {("a", "b"): 99, ("a", "c"): 0, ("b", "c"): 0}
    pairs = Counter(frozenset(sample_pair(["a", "b", "c"], rng, counts)) for _ in range(2000))
    assert pairs[frozenset("ab")] < 60 and pairs[frozenset("ac")] > 800 and pairs[frozenset("bc")] > 800


def test_bad_battles_and_votes_are_refused() -> None:
    with pytest.raises(ArenaError, match="two models"):
        sample_pair(["only"], random.Random(0))
    with pytest.raises(ArenaError, match="unknown vote"):
        Vote("a", "b", "maybe", "q", "x", "y")
    with pytest.raises(ArenaError, match="two different"):
        Vote("a", "a", "a", "q", "x", "y")


# -- storage --------------------------------------------------------------------------------------

def test_arena_path_is_under_the_state_dir_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H2OSTACK_STATE_DIR", str(tmp_path))
    assert arena_path("lab") == tmp_path / "lab" / "arena.sqlite3"
    for bad in ("../etc", "/tmp/x", "a/b", "", ".hidden", "x" * 80, "lab\n"):
        with pytest.raises(ArenaError, match="not a stack name"):
            arena_path(bad)


def test_store_roundtrip_and_jsonl_export(tmp_path: Path) -> None:
    store = VoteStore(tmp_path / "s" / "arena.sqlite3")
    v = Vote("x", "y", "tie", "why?", "because", "dunno", turns=[{"prompt": "why?", "answer_a": "because",
                                                                 "answer_b": "dunno"}],
             timings={"a": {"ttft": 0.1}, "b": {"ttft": 0.2}}, front="chat")
    store.add(v)
    store.add(Vote("y", "x", "a", "ünï", "1", "2", front="other"))
    got = store.votes()
    assert got[0] == v and got[1].prompt == "ünï"
    assert [x.front for x in store.votes("other")] == ["other"]
    assert store.pair_counts() == {("x", "y"): 2}
    buf = io.StringIO()
    assert store.export_jsonl(buf) == 2
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert lines[0]["vote"] == "tie" and lines[0]["timings"]["b"]["ttft"] == 0.2 and lines[1]["prompt"] == "ünï"
    # WAL: readers go on while a writer writes
    import sqlite3

    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_writers_threads_lose_no_vote(tmp_path: Path) -> None:
    store = VoteStore(tmp_path / "arena.sqlite3")
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            barrier.wait()
            for j in range(25):
                store.add(Vote("x", "y", "a", f"{k}-{j}", "1", "2"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    prompts = [v.prompt for v in store.votes()]
    assert sorted(prompts) == sorted(f"{k}-{j}" for k in range(8) for j in range(25))


def _write_many(path: str, k: int, n: int) -> None:
    store = VoteStore(path)
    for j in range(n):
        store.add(Vote("x", "y", "b", f"p{k}-{j}", "1", "2"))


def test_concurrent_writers_processes_lose_no_vote(tmp_path: Path) -> None:
    path = str(tmp_path / "arena.sqlite3")
    VoteStore(path)
    ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "fork")
    procs = [ctx.Process(target=_write_many, args=(path, k, 20)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert VoteStore(path).count() == 80
    assert {v.prompt for v in VoteStore(path).votes()} == {f"p{k}-{j}" for k in range(4) for j in range(20)}
