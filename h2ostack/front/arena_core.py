"""The Arena without Gradio: battles' pairs and sides, the vote record, its SQLite store and the
leaderboard (Bradley-Terry ratings with bootstrap confidence intervals, win rates, side bias).

Ratings are computed as Chatbot Arena computes them: a logistic regression on the pairwise
outcomes (a vote for A is a win of A over B; a tie, and "both bad", count half a win each way),
on an Elo-like scale (base 10, scale 400, the models' mean at 1000). A weak ridge keeps a model
that won (or lost) every vote at a finite rating. The 95% intervals come from a seeded bootstrap
over the votes. Votes live in `<state>/<stack>/arena.sqlite3` (WAL, one transaction per vote).
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import random
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

SCALE = 400.0
BASE = 10.0
INIT_RATING = 1000.0
RIDGE = 1e-3  # on the natural-log strengths: enough to keep an unbeaten model finite
VOTES = ("a", "b", "tie", "bothbad")
VOTE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "bothbad": "Both are bad"}
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")  # the stack file's identifiers (spec.NAME_RE)
DB_NAME = "arena.sqlite3"


class ArenaError(ValueError):
    """Bad input to the Arena (an unknown vote, too few models, a stack name that is no name)."""


# -- battles --------------------------------------------------------------------------------------

def pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def sample_pair(models: Sequence[str], rng: random.Random, counts: dict[tuple[str, str], int] | None = None
                ) -> tuple[str, str]:
    """Two different models for a battle, in random sides (the first is Model A). Uniform over the
    pairs, or, given each pair's vote count, favouring pairs with few votes (weight 1/(1+votes))."""
    names = list(dict.fromkeys(models))
    if len(names) < 2:
        raise ArenaError(f"an Arena needs two models or more; this front has {len(names)}")
    pairs = [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    if counts is None:
        a, b = rng.choice(pairs)
    else:
        weights = [1.0 / (1 + counts.get(pair_key(*p), 0)) for p in pairs]
        a, b = rng.choices(pairs, weights=weights)[0]
    return (a, b) if rng.random() < 0.5 else (b, a)


@dataclass
class Vote:
    """One vote: which model was on which side, the conversation each answered, and the verdict."""

    model_a: str
    model_b: str
    vote: str  # a | b | tie | bothbad
    prompt: str  # the battle's last question
    answer_a: str
    answer_b: str
    # every exchange of the battle: [{"prompt", "answer_a", "answer_b"}, ...]
    turns: list[dict[str, str]] = field(default_factory=list)
    # per side: ttft, seconds, tokens, as the panes measured them
    timings: dict[str, Any] = field(default_factory=dict)
    front: str = ""
    battle: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.vote not in VOTES:
            raise ArenaError(f"unknown vote {self.vote!r}; one of {', '.join(VOTES)}")
        if not self.model_a or not self.model_b or self.model_a == self.model_b:
            raise ArenaError("a vote is between two different models")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Side:
    """One side's answer as it streams, and its timings once it ends."""

    text: str = ""
    error: str | None = None
    ttft: float | None = None  # seconds to the first piece
    seconds: float | None = None  # to the last
    tokens: int = 0  # pieces
    done: bool = False

    def timings(self) -> dict[str, Any]:
        return {"ttft": self.ttft, "seconds": self.seconds, "tokens": self.tokens, "error": self.error}


def stream_pair(streams: Sequence[Callable[[], Iterator[str]]], every: float = 0.05,
                clock: Callable[[], float] = time.monotonic, stopped: Callable[[], bool] = lambda: False,
                poll: float = 0.1) -> Iterator[list[Side]]:
    """Both answers at once, each from its own thread: the sides as they stand, at most every
    `every` seconds of `clock` (a first piece at once), and always once more when both have ended.
    `stopped()` (looked at every `poll` seconds at most) abandons the turn: the threads stop at
    their next piece. An error ends its side with the error; the other side goes on."""
    sides = [Side() for _ in streams]
    events: queue.Queue[tuple[int, str, Any]] = queue.Queue()
    halt = threading.Event()

    def work(i: int, fn: Callable[[], Iterator[str]]) -> None:
        t0 = clock()
        first, count = None, 0
        try:
            for piece in fn():
                if halt.is_set():
                    return
                count += 1
                if first is None:
                    first = clock() - t0
                events.put((i, "piece", piece))
            events.put((i, "done", (first, clock() - t0, count)))
        except Exception as exc:  # a backend down or dying mid-answer: its side says so
            events.put((i, "error", f"{type(exc).__name__}: {exc}"))

    threads = [threading.Thread(target=work, args=(i, fn), daemon=True) for i, fn in enumerate(streams)]
    for t in threads:
        t.start()
    last = None
    try:
        while not all(s.done for s in sides):
            if stopped():
                return
            try:
                got = [events.get(timeout=poll)]
            except queue.Empty:
                continue
            while True:
                try:
                    got.append(events.get_nowait())
                except queue.Empty:
                    break
            started = False
            for i, kind, value in got:
                side = sides[i]
                if kind == "piece":
                    started |= not side.text
                    side.text += value
                elif kind == "done":
                    side.ttft, side.seconds, side.tokens = value
                    side.done = True
                else:
                    side.error, side.done = value, True
            now = clock()
            if started or last is None or now - last >= every or all(s.done for s in sides):
                last = now
                yield [Side(**asdict(s)) for s in sides]
    finally:
        halt.set()


# -- storage --------------------------------------------------------------------------------------

def arena_path(stack: str, root: Path | None = None) -> Path:
    """Where a stack's votes live: under the state dir, whatever the name says."""
    if not isinstance(stack, str) or not NAME_RE.fullmatch(stack):
        raise ArenaError(f"{stack!r} is not a stack name (letters, digits, '_' and '-')")
    if root is None:
        from h2ostack.state import state_root

        root = state_root()
    return root / stack / DB_NAME


SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  time REAL NOT NULL,
  front TEXT NOT NULL,
  battle TEXT NOT NULL,
  model_a TEXT NOT NULL,
  model_b TEXT NOT NULL,
  vote TEXT NOT NULL CHECK (vote IN ('a', 'b', 'tie', 'bothbad')),
  prompt TEXT NOT NULL,
  answer_a TEXT NOT NULL,
  answer_b TEXT NOT NULL,
  turns TEXT NOT NULL,
  timings TEXT NOT NULL
)
"""
COLUMNS = ("time", "front", "battle", "model_a", "model_b", "vote", "prompt", "answer_a", "answer_b", "turns",
           "timings")


class VoteStore:
    """The votes of one stack in SQLite: WAL (readers never block the writer), one short
    transaction per vote with synchronous=FULL (a vote acknowledged is on disk), a busy timeout so
    that several pages or processes voting at once wait for each other instead of failing. A
    connection per call: safe from any thread."""

    def __init__(self, path: str | Path, timeout: float = 30.0):
        self.path = Path(path)
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as db:
            db.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def add(self, vote: Vote) -> int:
        row = vote.to_json()
        values = [row[c] if c not in ("turns", "timings") else json.dumps(row[c]) for c in COLUMNS]
        with contextlib.closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.execute(f"INSERT INTO votes ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                                 values)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(cur.lastrowid or 0)

    def votes(self, front: str | None = None) -> list[Vote]:
        query = f"SELECT {', '.join(COLUMNS)} FROM votes" + (" WHERE front = ?" if front else "") + " ORDER BY id"
        with contextlib.closing(self._connect()) as db:
            rows = db.execute(query, (front,) if front else ()).fetchall()
        out = []
        for row in rows:
            data = dict(zip(COLUMNS, row, strict=True))
            data["turns"] = json.loads(data["turns"])
            data["timings"] = json.loads(data["timings"])
            out.append(Vote(**data))
        return out

    def count(self) -> int:
        with contextlib.closing(self._connect()) as db:
            return int(db.execute("SELECT COUNT(*) FROM votes").fetchone()[0])

    def pair_counts(self, front: str | None = None) -> dict[tuple[str, str], int]:
        query = "SELECT model_a, model_b, COUNT(*) FROM votes" + (" WHERE front = ?" if front else "") + \
            " GROUP BY model_a, model_b"
        out: dict[tuple[str, str], int] = {}
        with contextlib.closing(self._connect()) as db:
            for a, b, n in db.execute(query, (front,) if front else ()):
                key = pair_key(a, b)
                out[key] = out.get(key, 0) + int(n)
        return out

    def export_jsonl(self, out: IO[str], front: str | None = None) -> int:
        votes = self.votes(front)
        for v in votes:
            out.write(json.dumps(v.to_json(), ensure_ascii=False) + "\n")
        return len(votes)


# -- ratings --------------------------------------------------------------------------------------

def _outcomes(votes: Iterable[Vote]) -> list[tuple[str, str, float]]:
    """(A, B, A's score): 1 a win of A, 0 a win of B, 0.5 a tie or both bad."""
    score = {"a": 1.0, "b": 0.0, "tie": 0.5, "bothbad": 0.5}
    return [(v.model_a, v.model_b, score[v.vote]) for v in votes]


def bradley_terry(models: Sequence[str], wins: Any, ridge: float = RIDGE) -> Any:
    """Ratings from `wins[i, j]` (how often model i beat model j; a tie is half a win each way):
    the maximum-likelihood Bradley-Terry strengths (Newton's method on the logistic loss, with a
    ridge of `ridge` on the natural-log strengths), centred, on the Elo-like scale."""
    import numpy as np

    k = len(models)
    w = np.asarray(wins, dtype=float)
    games = w + w.T
    s = np.zeros(k)

    def loss(x: Any) -> float:
        d = x[:, None] - x[None, :]
        return float(np.sum(w * np.logaddexp(0.0, -d)) + ridge / 2 * x @ x)

    current = loss(s)
    for _ in range(200):
        p = 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :])))  # p[i, j]: i beats j
        grad = -np.sum(w - games * p, axis=1) + ridge * s
        c = games * p * (1 - p)
        hess = -c + np.diag(c.sum(axis=1) + ridge)
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        step -= step.mean()
        t = 1.0
        while t > 1e-6:  # backtracking: every step lowers the loss
            new = loss(s - t * step)
            if new <= current + 1e-12:
                break
            t /= 2
        s, current = s - t * step, new
        if np.max(np.abs(t * step)) < 1e-10:
            break
    s -= s.mean()
    return INIT_RATING + SCALE / math.log(BASE) * s


@dataclass
class Row:
    model: str
    rating: float
    lower: float  # the bootstrap's 95% interval
    upper: float
    votes: int
    wins: int
    losses: int
    ties: int  # ties and both-bad

    @property
    def win_rate(self) -> float:
        return self.wins / self.votes if self.votes else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "win_rate": self.win_rate}


@dataclass
class Leaderboard:
    rows: list[Row]
    votes: int
    a_wins: int  # side bias: of the decisive votes, how many went to Model A
    b_wins: int
    ties: int
    bothbad: int

    @property
    def a_win_rate(self) -> float | None:
        decisive = self.a_wins + self.b_wins
        return self.a_wins / decisive if decisive else None

    def to_json(self) -> dict[str, Any]:
        return {"votes": self.votes, "side_bias": {"a_wins": self.a_wins, "b_wins": self.b_wins, "ties": self.ties,
                                                   "bothbad": self.bothbad, "a_win_rate": self.a_win_rate},
                "models": [r.to_json() for r in self.rows]}


def leaderboard(votes: Sequence[Vote], rounds: int = 200, seed: int = 0, ridge: float = RIDGE) -> Leaderboard:
    """Ratings with seeded bootstrap 95% intervals (each round draws as many votes as there are,
    with replacement), and each model's votes, wins, losses and ties; best first."""
    import numpy as np

    outcomes = _outcomes(votes)
    models = sorted({m for a, b, _ in outcomes for m in (a, b)})
    index = {m: i for i, m in enumerate(models)}
    k = len(models)
    # the distinct outcomes and how often each came: a bootstrap round redraws these counts
    cells: dict[tuple[int, int, float], int] = {}
    for a, b, score in outcomes:
        key = (index[a], index[b], score)
        cells[key] = cells.get(key, 0) + 1
    keys = list(cells)
    counts = np.array([cells[c] for c in keys], dtype=float)

    def table(weights: Any) -> Any:
        wins = np.zeros((k, k))
        for (i, j, score), n in zip(keys, weights, strict=True):
            wins[i, j] += n * score
            wins[j, i] += n * (1 - score)
        return wins

    point = bradley_terry(models, table(counts), ridge) if k else np.zeros(0)
    lower, upper = point.copy(), point.copy()
    if k and rounds > 0:
        rng = np.random.default_rng(seed)
        n = int(counts.sum())
        samples = np.array([bradley_terry(models, table(rng.multinomial(n, counts / n)), ridge)
                            for _ in range(rounds)])
        lower, upper = np.percentile(samples, 2.5, axis=0), np.percentile(samples, 97.5, axis=0)
    tally = {m: [0, 0, 0, 0] for m in models}  # votes, wins, losses, ties
    for a, b, score in outcomes:
        for m, mine in ((a, score), (b, 1 - score)):
            t = tally[m]
            t[0] += 1
            t[1 if mine == 1 else 2 if mine == 0 else 3] += 1
    rows = [Row(m, float(point[i]), float(min(lower[i], point[i])), float(max(upper[i], point[i])), *tally[m])
            for i, m in enumerate(models)]
    rows.sort(key=lambda r: (-r.rating, r.model))
    kinds = [v.vote for v in votes]
    return Leaderboard(rows, len(kinds), kinds.count("a"), kinds.count("b"), kinds.count("tie"),
                       kinds.count("bothbad"))


def leaderboard_markdown(board: Leaderboard) -> str:
    """The leaderboard as a Markdown table, for the front's tab."""
    if not board.votes:
        return "No votes yet: battle a few questions in the Arena tab."
    lines = ["| rank | model | rating | 95% CI | votes | win rate |", "| --- | --- | --- | --- | --- | --- |"]
    for rank, r in enumerate(board.rows, 1):
        lines.append(f"| {rank} | {r.model} | {r.rating:.0f} | {r.lower:.0f} to {r.upper:.0f} | {r.votes} | "
                     f"{r.win_rate:.0%} |")
    rate = board.a_win_rate
    lines.append("")
    lines.append(f"{board.votes} vote(s). Side bias: Model A won {board.a_wins} and Model B {board.b_wins} of the "
                 f"decisive votes" + (f" (A {rate:.0%})" if rate is not None else "") +
                 f"; {board.ties} tie(s), {board.bothbad} both bad.")
    return "\n".join(lines)

