"""The front's page wiring, read from the Blocks config Gradio sends to the browser."""

from __future__ import annotations

from h2ostack.front import clients
from h2ostack.front.app import build_blocks
from h2ostack.front.clients import Backend


def backends() -> list[Backend]:
    return [Backend("a", "vllm", "openai", "http://127.0.0.1:9", "a"),
            Backend("b", "tgi", "tgi", "http://127.0.0.1:9", "b"),
            Backend("c", "transformers", "openai", "http://127.0.0.1:9", "c")]


def test_no_event_makes_a_pane_or_header_a_progress_target() -> None:
    """Gradio's page refreshes the loading status of every progress target on each streamed
    update, deep-copying the target's value as it does: a chatbot (its whole history) or a header
    as a target made every update of the grid cost more as the grid and the conversation grew."""
    cfg = build_blocks(backends(), None, None).get_config_file()
    types = {c["id"]: c["type"] for c in cfg["components"]}
    streaming = 0
    for dep in cfg["dependencies"]:
        if not dep.get("backend_fn"):
            continue
        targets = dep.get("show_progress_on") or dep["outputs"]
        heavy = [types[t] for t in targets if types[t] in ("chatbot", "markdown")]
        # (the add-model event shows its progress on its own status line, a markdown)
        assert heavy in ([], ["markdown"]), (dep["outputs"], targets)
        if "chatbot" in [types[o] for o in dep["outputs"]]:
            assert targets and all(types[t] in ("textbox",) for t in targets)
            streaming += 1
    assert streaming >= 4  # submit by button, by enter, regenerate (its two steps), clear


def test_warm_makes_the_client_a_turn_uses() -> None:
    b = backends()[0]
    clients._openai_client.cache_clear()
    clients.warm(b)
    assert clients._openai_client.cache_info().currsize == 1
    made = clients._openai(b, clients.READ_TIMEOUT)  # what stream_answer asks for
    assert clients._openai_client.cache_info().hits == 1
    assert str(made.base_url).rstrip("/") == "http://127.0.0.1:9/v1"
