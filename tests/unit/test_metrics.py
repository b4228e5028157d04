"""The metrics recorder and the gateway's /metrics, parsed with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from h2ostack.gateway import Gateway
from h2ostack.metrics import PHASES, Metrics, stream_text, tokens_in
from h2ostack.protocols.endpoint import Endpoint


def samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    raw = text.decode() if isinstance(text, bytes) else text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(raw) for s in fam.samples}


def value(text: bytes, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def test_a_request_counts_by_status_with_its_times_and_tokens() -> None:
    m = Metrics(["a", "b"])
    rec = m.model("a")
    t0 = time.perf_counter()
    rec.begin()
    assert value(m.text(), "h2ostack_requests_in_flight", model="a") == 1
    rec.first(t0)
    rec.end(200, t0, 7)
    rec.begin()
    rec.end(503, t0, None)
    text = m.text()
    assert value(text, "h2ostack_requests_total", model="a", status="200") == 1
    assert value(text, "h2ostack_requests_total", model="a", status="503") == 1
    assert value(text, "h2ostack_requests_total", model="b", status="200") is None
    assert value(text, "h2ostack_requests_in_flight", model="a") == 0
    assert value(text, "h2ostack_time_to_first_token_seconds_count", model="a") == 1
    assert value(text, "h2ostack_request_duration_seconds_count", model="a") == 2
    assert value(text, "h2ostack_tokens_out_total", model="a") == 7
    assert value(text, "h2ostack_tokens_out_total", model="b") == 0
    assert value(text, "h2ostack_requests_waiting", model="b") == 0


def test_each_app_has_its_own_registry() -> None:
    one, two = Metrics(["a"]), Metrics(["a"])
    one.model("a").begin()
    one.model("a").end(200, time.perf_counter(), 1)
    assert value(one.text(), "h2ostack_requests_total", model="a", status="200") == 1
    assert value(two.text(), "h2ostack_requests_total", model="a", status="200") is None


def test_the_on_demand_lifecycle_and_the_phase() -> None:
    m = Metrics(["a"])
    assert value(m.text(), "h2ostack_model_phase", model="a", h2ostack_model_phase="ready") == 1
    m.set_phase("a", "stopped (on demand)")
    m.set_waiting("a", 3)
    m.on_start("a", 12.5)
    m.on_put_away("a", 0.7)
    m.on_wake("a", 1.5)
    m.on_wake("a", 2.5)
    text = m.text()
    assert value(text, "h2ostack_model_phase", model="a", h2ostack_model_phase="stopped (on demand)") == 1
    assert value(text, "h2ostack_model_phase", model="a", h2ostack_model_phase="ready") == 0
    assert value(text, "h2ostack_requests_waiting", model="a") == 3
    assert value(text, "h2ostack_starts_total", model="a") == 1
    assert value(text, "h2ostack_start_duration_seconds_sum", model="a") == 12.5
    assert value(text, "h2ostack_wakes_total", model="a") == 2
    assert value(text, "h2ostack_wake_duration_seconds_sum", model="a") == 4.0
    assert value(text, "h2ostack_put_aways_total", model="a") == 1
    assert m.phase("a") == "stopped (on demand)"
    assert set(PHASES) >= {"downloading", "loading", "warming", "ready", "asleep", "stopped (on demand)"}
    with pytest.raises(ValueError, match="unknown phase"):
        m.set_phase("a", "sleepy")


def test_tokens_from_usage_and_from_stream_pieces() -> None:
    whole = json.dumps({"choices": [{"message": {"content": "hi"}}], "usage": {"completion_tokens": 5}}).encode()
    assert tokens_in(whole) == 5
    assert tokens_in(b'{"choices": []}') is None
    # vLLM's compact JSON and the gateway's own (json.dumps), an empty role piece not counted
    pieces = (b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
              b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
              b'data: {"choices": [{"index": 0, "text": "b", "finish_reason": null}]}\n\n'
              b"data: [DONE]\n\n")
    assert stream_text(pieces) == (2, None)
    assert stream_text(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}\n\n') == (0, 9)


def call(gw: Gateway, method: str, path: str, body: bytes = b"",
         headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, bytes, dict[bytes, bytes]]:
    """One request through the gateway's ASGI interface (no network: these never reach a backend)."""
    out: list[dict[str, Any]] = []
    sent = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if sent:
            return sent.pop()
        await asyncio.Event().wait()  # the client stays: no disconnect comes
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers or []}
    asyncio.run(gw(scope, receive, send))
    start = out[0]
    return start["status"], b"".join(m.get("body", b"") for m in out[1:]), dict(start["headers"])


def gateway(keys: tuple[str, ...] = ()) -> Gateway:
    return Gateway([Endpoint("a", "openai", "http://127.0.0.1:9", "a-served", "vllm")], api_keys=keys)


def test_the_gateway_serves_metrics_and_counts_refusals_under_no_model() -> None:
    gw = gateway()
    assert call(gw, "POST", "/v1/chat/completions", b'{"model": "nope"}')[0] == 404
    assert call(gw, "POST", "/v1/completions", b"not json")[0] == 400
    status, text, headers = call(gw, "GET", "/metrics")
    assert status == 200 and headers[b"content-type"].startswith(b"text/plain")
    assert value(text, "h2ostack_requests_total", model="-", status="404") == 1
    assert value(text, "h2ostack_requests_total", model="-", status="400") == 1
    assert value(text, "h2ostack_requests_in_flight", model="-") == 0
    assert value(text, "h2ostack_requests_in_flight", model="a") == 0
    # what clients name never becomes a label
    assert not any(("model", "nope") in labels for _, labels in samples(text))
    models = json.loads(call(gw, "GET", "/v1/models")[1])
    assert models["data"][0]["phase"] == "ready"
    gw.metrics.set_phase("a", "asleep")
    assert json.loads(call(gw, "GET", "/v1/models")[1])["data"][0]["phase"] == "asleep"
    assert call(gw, "POST", "/metrics")[0] == 405


def test_a_closed_gateway_asks_its_key_for_metrics() -> None:
    gw = gateway(("k1",))
    assert call(gw, "GET", "/metrics")[0] == 401
    assert call(gw, "GET", "/metrics", headers=[(b"authorization", b"Bearer k2")])[0] == 401
    status, text, _ = call(gw, "GET", "/metrics", headers=[(b"authorization", b"Bearer k1")])
    assert status == 200 and b"h2ostack_requests_in_flight" in text


def test_a_backend_down_counts_503_under_its_model() -> None:
    gw = gateway()
    body = json.dumps({"model": "a-served", "messages": [{"role": "user", "content": "x"}]}).encode()
    assert call(gw, "POST", "/v1/chat/completions", body)[0] == 503  # nothing listens on port 9
    text = call(gw, "GET", "/metrics")[1]
    assert value(text, "h2ostack_requests_total", model="a", status="503") == 1
    assert value(text, "h2ostack_request_duration_seconds_count", model="a") == 1
    assert value(text, "h2ostack_requests_in_flight", model="a") == 0


def test_mount_sends_metrics_to_the_gateway() -> None:
    gw = gateway()
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["path"])

    both = gw.mount(app)

    async def go() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        for path in ("/metrics", "/", "/metricsx"):
            await both({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send)
        assert sent[0]["status"] == 200

    asyncio.run(go())
    assert seen == ["/", "/metricsx"]


def test_the_on_demand_managers_events_reach_metrics() -> None:
    """A manager's starts, wakes and put-aways, phases and waiting requests, as /metrics tells them
    (the manager on a fake clock, its servers injected: nothing runs)."""
    from h2ostack.gateway import ON_DEMAND_PHASE, metrics_listener
    from h2ostack.ondemand import PHASES as OD_PHASES
    from h2ostack.ondemand import OnDemandEvent

    assert set(OD_PHASES) == set(ON_DEMAND_PHASE) and set(ON_DEMAND_PHASE.values()) <= set(PHASES)

    class Model_:
        waiters = 0

    class Manager_:
        models = {"od": Model_()}
        now = "starting"

        def phase(self, name: str) -> str:
            return self.now

    m, mgr = Metrics(["od"]), Manager_()
    listen = metrics_listener(m, mgr)
    mgr.models["od"].waiters = 3
    listen(OnDemandEvent("od", "starting"))
    text = m.text()
    assert value(text, "h2ostack_model_phase", model="od", h2ostack_model_phase="loading") == 1
    assert value(text, "h2ostack_requests_waiting", model="od") == 3
    mgr.now, mgr.models["od"].waiters = "ready", 0
    listen(OnDemandEvent("od", "ready", 2.5))
    mgr.now = "asleep"
    listen(OnDemandEvent("od", "put away", 0.25))
    mgr.now = "ready"
    listen(OnDemandEvent("od", "woken", 0.5))
    text = m.text()
    assert value(text, "h2ostack_model_phase", model="od", h2ostack_model_phase="ready") == 1
    assert value(text, "h2ostack_requests_waiting", model="od") == 0
    for kind in ("starts", "wakes", "put_aways"):
        assert value(text, f"h2ostack_{kind}_total", model="od") == 1, kind
