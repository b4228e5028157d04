"""A real front over a real `transformers serve` and the TGI stand-in: `up` tells each server's
phases, `status` and `/v1/models` tell them ready, and `/metrics` (behind the front's key), parsed
with prometheus-client's own parser, counts exactly the requests made."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import H2O, ROOT, free_port, marked_processes, tgi_standin, wait_for

pytestmark = pytest.mark.integration
KEY = "sk-metrics-key"
ASK = [{"role": "user", "content": "Who are you?"}]


def scrape(url: str, key: str | None) -> tuple[int, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    resp = httpx.get(url, headers={"authorization": f"Bearer {key}"} if key else {}, timeout=30, trust_env=False)
    if resp.status_code != 200:
        return resp.status_code, {}
    assert resp.headers["content-type"].startswith("text/plain")
    return 200, {(s.name, tuple(sorted(s.labels.items()))): s.value
                 for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


def test_phases_and_metrics_of_a_real_front(h2o: H2O, write_stack, stack_name: str, tiny_model: Path) -> None:
    ports = {k: free_port() for k in ("tiny", "tgi", "chat")}
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  tiny: {{kind: transformers, model: {tiny_model}, port: {ports['tiny']}}}
  tgi: {tgi_standin(ports['tgi'])}
fronts:
  chat: {{port: {ports['chat']}, models: [tiny, tgi], api_keys: ["{KEY}"]}}
""")
    up = h2o("up", str(path), timeout=900)
    try:
        said = up.stdout + up.stderr
        assert up.returncode == 0, said[-4000:]
        # each server was seen loading (port not answering yet), then warming (answering, warm-up pending)
        for name in ("tiny", "tgi"):
            assert f"phase    {name}: loading" in said, said
            assert f"phase    {name}: warming" in said, said
        rows = h2o.status(str(path))
        assert {n: r["phase"] for n, r in rows.items()} == {"tiny": "ready", "tgi": "ready", "chat": "ready"}
        assert "phase" in h2o("status", str(path)).stdout

        base = f"http://127.0.0.1:{ports['chat']}"
        assert scrape(base + "/metrics", None)[0] == 401
        assert scrape(base + "/metrics", "sk-wrong")[0] == 401
        client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)
        listed = {m.id: m.model_extra for m in client.models.list().data}
        assert {n: x["phase"] for n, x in listed.items()} == {"tiny": "ready", "tgi": "ready"}

        tokens = {"tiny": 0, "tgi": 0}
        for name, whole, streamed in (("tiny", 2, 1), ("tgi", 1, 2)):
            for _ in range(whole):
                out = client.chat.completions.create(model=name, messages=ASK, max_tokens=6, temperature=0)
                assert out.usage is not None and out.usage.completion_tokens > 0, out
                tokens[name] += out.usage.completion_tokens
            for _ in range(streamed):
                pieces = [c.choices[0].delta.content for c in client.chat.completions.create(
                    model=name, messages=ASK, max_tokens=6, temperature=0, stream=True) if c.choices]
                assert any(pieces), name
                tokens[name] += sum(1 for p in pieces if p)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=ASK, max_tokens=2)

        status, got = scrape(base + "/metrics", KEY)
        assert status == 200

        def v(name: str, **labels: str) -> float | None:
            return got.get((name, tuple(sorted(labels.items()))))

        for name, whole, streamed in (("tiny", 2, 1), ("tgi", 1, 2)):
            assert v("h2ostack_requests_total", model=name, status="200") == whole + streamed, name
            assert v("h2ostack_request_duration_seconds_count", model=name) == whole + streamed
            assert v("h2ostack_request_duration_seconds_bucket", model=name, le="+Inf") == whole + streamed
            assert v("h2ostack_request_duration_seconds_sum", model=name) > 0
            assert v("h2ostack_time_to_first_token_seconds_count", model=name) == streamed
            assert (v("h2ostack_time_to_first_token_seconds_sum", model=name)
                    <= v("h2ostack_request_duration_seconds_sum", model=name))
            assert v("h2ostack_tokens_out_total", model=name) == tokens[name], name
            assert v("h2ostack_requests_in_flight", model=name) == 0
            assert v("h2ostack_requests_waiting", model=name) == 0
            assert v("h2ostack_model_phase", model=name, h2ostack_model_phase="ready") == 1
            assert v("h2ostack_starts_total", model=name) is None  # nothing was started on demand
        assert v("h2ostack_requests_total", model="-", status="404") == 1
        assert not [k for k in got if ("model", "nope") in k[1]]
    finally:
        h2o("down", str(path), timeout=180)
    assert marked_processes(h2o.state_dir, stack_name) == []
    rows = h2o.status(str(path))
    assert {n: r["phase"] for n, r in rows.items()} == {"tiny": "stopped", "tgi": "stopped", "chat": "stopped"}


def test_a_download_is_never_cut_by_the_readiness_timeout(h2o: H2O, write_stack, stack_name: str,
                                                          tmp_path: Path) -> None:
    hf, port = tmp_path / "hf", free_port()

    def stack(env: str) -> Path:
        return write_stack(f"""\
version: 1
name: {stack_name}
services:
  fetch:
    kind: vllm
    python: {ROOT / 'tests' / 'standin-python'}
    model: org/standin-model
    port: {port}
    health: {{timeout: 3}}
    env: {{HF_HOME: "{hf}", {env}}}
""")

    # a server that loads for longer than its readiness timeout is given up on
    slow = h2o("up", str(stack('START_DELAY: "8"')), timeout=120)
    assert slow.returncode == 1 and "not ready after 3 s" in slow.stdout + slow.stderr, slow.stderr
    assert marked_processes(h2o.state_dir, stack_name) == []
    # a download has a limit of its own
    path = stack('STANDIN_DOWNLOAD_S: "8"')
    cut = h2o("up", str(path), timeout=120, env={"H2OSTACK_DOWNLOAD_TIMEOUT": "2"})
    assert cut.returncode == 1 and "still downloading after 2 s" in cut.stdout + cut.stderr, cut.stderr
    assert marked_processes(h2o.state_dir, stack_name) == []
    # without it, one that downloads for longer than its readiness timeout is not cut, and says what it does
    up = h2o.popen("up", str(path))
    try:
        seen = wait_for(lambda: (p := h2o.status(str(path)).get("fetch", {}).get("phase", "")).startswith(
            "downloading (") and p, 30, "status to tell the download")
        assert str(seen).endswith("iB)"), seen  # its bytes so far
        said, _ = up.communicate(timeout=120)
        assert up.returncode == 0, said
        assert "phase    fetch: downloading (" in said and "ready    fetch" in said, said
        assert h2o.status(str(path))["fetch"]["phase"] == "ready"
        assert [p.name for p in (hf / "hub" / "models--org--standin-model" / "blobs").iterdir()] == ["0123abcd"]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        h2o("down", str(path), timeout=120)
    assert marked_processes(h2o.state_dir, stack_name) == []
