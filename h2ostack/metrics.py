"""A front's Prometheus metrics: `GET /metrics` on every built-in front port (and on the gateway
served alone), in Prometheus' text format through prometheus-client, from a registry of the app's
own (never the process-global one, so two apps in one process never mix their counts).

Per model (the stack's service name; requests that name no model the front serves count under
`model="-"`, so that what clients send never becomes a label):

- `h2ostack_requests_total{model,status}`: answered requests by HTTP status (a stream counts by the
  status it began with);
- `h2ostack_time_to_first_token_seconds{model}`: streamed answers, from the request's first byte
  to the first piece of the answer sent back;
- `h2ostack_request_duration_seconds{model}`: every answer, to its last byte;
- `h2ostack_tokens_out_total{model}`: the `completion_tokens` of the server's usage where it reports
  them, else the stream's pieces that carry text (one per token for the servers h2ostack runs);
- `h2ostack_requests_in_flight{model}` and `h2ostack_requests_waiting{model}` (on-demand models: the
  requests queued while the model starts or wakes);
- `h2ostack_starts_total`, `h2ostack_wakes_total`, `h2ostack_put_aways_total{model}` with the
  `..._duration_seconds` histograms of each;
- `h2ostack_model_phase{model,phase}`: 1 for the model's phase (`PHASES`), 0 for the others.

The gateway's cost per request is a few increments on children bound once per model (`Model`); the
on-demand manager reports through `on_start`, `on_wake`, `on_put_away`, `set_phase` and `waiting`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# downloading: fetching weights; loading: process alive, port not answering; warming: port answering,
# warm-up request not answered yet; asleep: put to sleep (vLLM sleep mode); stopped (on demand): put
# away or not started yet, started by the next request; stopped: not running
PHASES = ("downloading", "loading", "warming", "ready", "asleep", "stopped (on demand)", "stopped")
UNKNOWN_MODEL = "-"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# seconds: a token's time on a fast GPU up to a cold start on a CPU
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
LIFECYCLE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# a piece of a stream that carries text: `"content": "x"` or `"text": "x"` (not an empty string)
_TEXT = re.compile(rb'"(?:content|text)"\s*:\s*"(?!")')
_USAGE = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


def tokens_in(body: bytes) -> int | None:
    """The `completion_tokens` a whole (non-streamed) answer reports, if it does."""
    at = body.rfind(b'"completion_tokens"')
    m = _USAGE.match(body, at) if at >= 0 else None
    return int(m.group(1)) if m else None


class Metrics:
    """The metric families of one app, in a registry of its own."""

    def __init__(self, models: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("h2ostack_requests", "Requests answered, by model and HTTP status",
                                ["model", "status"], registry=r)
        self.ttft = Histogram("h2ostack_time_to_first_token_seconds",
                              "Streamed answers: seconds from the request to the first piece of the answer",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.duration = Histogram("h2ostack_request_duration_seconds", "Seconds from the request to its last byte",
                                  ["model"], buckets=DURATION_BUCKETS, registry=r)
        self.tokens = Counter("h2ostack_tokens_out", "Tokens answered (the server's usage, else stream pieces)",
                              ["model"], registry=r)
        self.in_flight = Gauge("h2ostack_requests_in_flight", "Requests being answered now", ["model"], registry=r)
        self.waiting = Gauge("h2ostack_requests_waiting",
                             "Requests queued while an on-demand model starts or wakes", ["model"], registry=r)
        self.starts = Counter("h2ostack_starts", "On-demand starts", ["model"], registry=r)
        self.wakes = Counter("h2ostack_wakes", "Wakes from sleep mode", ["model"], registry=r)
        self.put_aways = Counter("h2ostack_put_aways", "Put-aways (stopped or put to sleep)", ["model"], registry=r)
        self.start_seconds = Histogram("h2ostack_start_duration_seconds", "Seconds from start to ready", ["model"],
                                       buckets=LIFECYCLE_BUCKETS, registry=r)
        self.wake_seconds = Histogram("h2ostack_wake_duration_seconds", "Seconds from wake to ready", ["model"],
                                      buckets=LIFECYCLE_BUCKETS, registry=r)
        self.put_away_seconds = Histogram("h2ostack_put_away_duration_seconds",
                                          "Seconds to put a model away (memory released included)", ["model"],
                                          buckets=LIFECYCLE_BUCKETS, registry=r)
        self.phase_enum = Enum("h2ostack_model_phase", "The model's readiness phase", ["model"], states=list(PHASES),
                               registry=r)
        self.phases: dict[str, str] = {}
        self.models: dict[str, Model] = {}
        self.lock = threading.Lock()
        for name in models:
            self.model(name)

    def model(self, name: str, phase: str = "ready") -> Model:
        """The recorder of one model (made once; its label children bound then)."""
        m = self.models.get(name)
        if m is None:
            with self.lock:
                m = self.models.get(name)
                if m is None:
                    m = self.models[name] = Model(self, name)
                    if name != UNKNOWN_MODEL:
                        self.set_phase(name, phase)
        return m

    # -- what the on-demand manager reports ---------------------------------------------
    def set_phase(self, name: str, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")
        self.phases[name] = phase
        self.phase_enum.labels(name).state(phase)

    def phase(self, name: str) -> str:
        return self.phases.get(name, "ready")

    def on_start(self, name: str, seconds: float) -> None:
        self.starts.labels(name).inc()
        self.start_seconds.labels(name).observe(seconds)

    def on_wake(self, name: str, seconds: float) -> None:
        self.wakes.labels(name).inc()
        self.wake_seconds.labels(name).observe(seconds)

    def on_put_away(self, name: str, seconds: float) -> None:
        self.put_aways.labels(name).inc()
        self.put_away_seconds.labels(name).observe(seconds)

    def set_waiting(self, name: str, count: int) -> None:
        self.waiting.labels(name).set(count)

    # -- exposition ---------------------------------------------------------------------
    def text(self) -> bytes:
        return generate_latest(self.registry)


class Model:
    """One model's children, bound once: what a request costs is a few increments on them."""

    __slots__ = ("name", "status", "requests", "ttft", "duration", "tokens", "in_flight")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.name = name
        self.requests = metrics.requests
        self.status: dict[int, Counter] = {}
        self.ttft = metrics.ttft.labels(name)
        self.duration = metrics.duration.labels(name)
        self.tokens = metrics.tokens.labels(name)
        self.in_flight = metrics.in_flight.labels(name)
        metrics.waiting.labels(name)  # shown at 0 from the start
        self.in_flight.set(0)

    def begin(self) -> None:
        self.in_flight.inc()

    def first(self, t0: float) -> None:
        """The first piece of a streamed answer goes out now (`t0`: the request's perf_counter)."""
        self.ttft.observe(time.perf_counter() - t0)

    def retract(self) -> None:
        """A request begun here is handed on, to be counted again from its start."""
        self.in_flight.dec()

    def end(self, status: int, t0: float, tokens: int | None, began: bool = True) -> None:
        child = self.status.get(status)
        if child is None:
            child = self.status[status] = self.requests.labels(self.name, str(status))
        child.inc()
        self.duration.observe(time.perf_counter() - t0)
        if tokens:
            self.tokens.inc(tokens)
        if began:
            self.in_flight.dec()


def stream_text(chunk: bytes) -> tuple[int, int | None]:
    """A piece of a stream: how many of its events carry text, and the `completion_tokens` it
    reports (the usage event at a stream's end, where the client asked for it), if any."""
    return len(_TEXT.findall(chunk)), (tokens_in(chunk) if b"completion_tokens" in chunk else None)


class Tally:
    """One answer counted for its model's metrics as it is sent: its first piece with text (time to
    first token), the pieces with text, the tokens it reports; `end` records it."""

    __slots__ = ("rec", "t0", "pieces", "usage", "streamed")

    def __init__(self, rec: Model, t0: float) -> None:
        self.rec, self.t0, self.pieces, self.usage, self.streamed = rec, t0, 0, None, False

    def whole(self, status: int, body: bytes) -> None:
        """A whole answer: the tokens it reports, when it is not an error."""
        if status < 400:
            self.usage = tokens_in(body)

    def piece(self, chunk: bytes) -> None:
        """A piece of a streamed answer."""
        self.streamed = True
        n, usage = stream_text(chunk)
        if n and not self.pieces:
            self.rec.first(self.t0)
        self.pieces += n
        if usage is not None:
            self.usage = usage

    def end(self, status: int) -> None:
        self.rec.end(status, self.t0, self.usage if self.usage is not None or not self.streamed else self.pieces)
