"""The compare grid's page: its components, laid out, with no event wired (`app.build_blocks`
wires them to the handlers of `app.Grid`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import gradio as gr

from h2ostack.front.clients import Pane
from h2ostack.front.session import Session
from h2ostack.prompts import PROMPT_TYPES

EXTRA_SLOTS = 4  # free panes for models added from the page
# The panes follow a streaming answer by CSS alone: a pane's scroll box lays out its content (the
# two chatbots, the finished turns above the turn in progress) from the bottom, so it stays
# scrolled to the end as the answer grows, and a short conversation still sits at the top. Gradio's own autoscroll (off on the panes) reads scrollHeight on every update, a forced
# layout of the whole page per pane: in a Chromium profile of a 4-pane answer it took 18% of the
# page's CPU and held each update back. The chatbots inside grow with their messages.
PANE_HEIGHT = 380
CSS = f"""
.h2o-bot {{ height: {PANE_HEIGHT}px; overflow-y: auto; flex-direction: column-reverse !important;
  flex-wrap: nowrap !important; gap: 0 !important; border: 1px solid var(--block-border-color);
  border-radius: var(--block-radius); }}
.h2o-bot > .h2o-turns {{ flex-shrink: 0; margin-bottom: auto; gap: 0 !important; }}
.h2o-turns > .block {{ flex-shrink: 0; overflow: visible !important; border: none !important; }}
.h2o-bot .wrapper, .h2o-bot .bubble-wrap {{ height: auto !important; max-height: none !important;
  min-height: 0 !important; overflow: visible !important; }}
.h2o-bot .scroll-down-button-container {{ display: none; }}
.h2o-warm {{ position: fixed !important; left: -5000px; top: 0; width: 400px; visibility: hidden; }}
"""


def header(b: Pane | None, stats: dict[str, Any] | None = None) -> str:
    """A pane's header: its model, backend kind, health, revision and last answer's timings."""
    if b is None:
        return ""
    health = b.health if b.health == "healthy" else f"**{b.health}**"
    parts = [f"### {b.name}", f"{b.kind} · {health}"]
    if b.revision:
        parts.append(f"rev {b.revision}")
    if stats and stats.get("ttft") is not None:
        tps = f" · {stats['tps']:.1f} tok/s" if stats.get("tps") else ""
        parts.append(f"ttft {stats['ttft'] * 1000:.0f} ms{tps}")
    return parts[0] + "\n" + " · ".join(parts[1:])


@dataclass
class Layout:
    """The grid's components, pane by pane where there is one per pane."""

    session: gr.State
    shown: gr.CheckboxGroup
    panes: list[gr.Column]
    heads: list[gr.Markdown]
    pasts: list[gr.Chatbot]  # each pane's finished turns
    lives: list[gr.Chatbot]  # and the turn in progress
    tokens: list[gr.Slider]
    temps: list[gr.Slider]
    box: gr.Textbox
    send: gr.Button
    stop: gr.Button
    regen: gr.Button
    clear: gr.Button
    add_name: gr.Textbox
    add_server: gr.Textbox
    add_prompt: gr.Dropdown
    add_btn: gr.Button
    add_status: gr.Markdown
    export_btn: gr.Button
    export_file: gr.File
    warm_bot: gr.Chatbot  # out of sight: a fresh page warms its message code on it (`app.warm_page`)


def build_layout(demo: gr.Blocks, backends: list[Pane], columns: int | None, title: str,
                 arena: Any = None) -> Layout:
    """The page's components inside `demo` (with an Arena, the grid is a tab beside the Arena's,
    whose events `arena.build_tabs` wires)."""
    n_fixed = len(backends)
    n = n_fixed + EXTRA_SLOTS
    columns = columns or min(max(n_fixed, 1), 3)
    names = [b.name for b in backends]
    session = gr.State(Session.fresh(backends, EXTRA_SLOTS))
    gr.Markdown(f"## {title}: {', '.join(names) or 'no models yet'}")
    grid_tab = contextlib.ExitStack()  # with an Arena (front/arena.py), the grid is a tab beside it
    if arena is not None:
        grid_tab.enter_context(gr.Tab("Compare", id="compare", elem_id="compare-tab"))
    shown = gr.CheckboxGroup(names, value=names, label="Models shown", elem_id="h2o-shown")
    panes: list[gr.Column] = []
    heads: list[gr.Markdown] = []
    pasts: list[gr.Chatbot] = []
    lives: list[gr.Chatbot] = []
    tokens: list[gr.Slider] = []
    temps: list[gr.Slider] = []
    for row_start in range(0, n, columns):
        with gr.Row(equal_height=False):
            for i in range(row_start, min(row_start + columns, n)):
                b = backends[i] if i < n_fixed else None
                with gr.Column(visible=b is not None, min_width=240, elem_id=f"h2o-pane-{i}") as col:
                    heads.append(gr.Markdown(header(b), elem_id=f"h2o-head-{i}"))
                    with gr.Column(elem_id=f"h2o-bot-{i}", elem_classes=["h2o-bot"]), \
                            gr.Column(elem_classes=["h2o-turns"]):
                        pasts.append(gr.Chatbot(height=None, container=False, show_label=False,
                                                elem_id=f"h2o-past-{i}", elem_classes=["h2o-past"],
                                                autoscroll=False, buttons=["copy", "copy_all"]))
                        # no copy button while the answer streams (the finished turns have them):
                        # each message's buttons are part of what the page mounts with a turn's
                        # first update
                        lives.append(gr.Chatbot(height=None, container=False, show_label=False,
                                                elem_id=f"h2o-live-{i}", elem_classes=["h2o-live"],
                                                autoscroll=False, buttons=[]))
                    with gr.Accordion("settings", open=False):
                        tokens.append(gr.Slider(1, 4096, value=256, step=1, label="max_new_tokens",
                                                elem_id=f"h2o-tokens-{i}"))
                        temps.append(gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature",
                                               elem_id=f"h2o-temp-{i}"))
                panes.append(col)
    with gr.Row():
        box = gr.Textbox(placeholder="Ask every model at once", show_label=False, scale=6, elem_id="h2o-input")
        send = gr.Button("Submit", variant="primary", scale=1, elem_id="h2o-submit")
        stop = gr.Button("Stop", scale=1, elem_id="h2o-stop")
        regen = gr.Button("Regenerate", scale=1, elem_id="h2o-regen")
        clear = gr.Button("Clear", scale=1, elem_id="h2o-clear")
    with gr.Accordion("Add a model", open=False):
        with gr.Row():
            add_name = gr.Textbox(label="name", scale=1)
            add_server = gr.Textbox(label="server (http://host:port, vllm:host:port, vllm_chat:host:port, "
                                          "openai_chat, URL    USER    TOKEN)", scale=3)
            add_prompt = gr.Dropdown(["", *PROMPT_TYPES], value="", label="prompt type", scale=1)
            add_btn = gr.Button("Add", scale=1)
        add_status = gr.Markdown()
    with gr.Row():
        export_btn = gr.Button("Export conversations (JSONL)")
        export_file = gr.File(label="export", interactive=False)
    grid_tab.close()
    if arena is not None:
        from h2ostack.front.arena import build_tabs

        build_tabs(arena, demo)
    # A freshly loaded page runs the code that streams messages into a chatbot for the first time
    # with a question's first frame, and that frame waits on it: in a probe page with four panes,
    # first piece to page 125-146 ms on a fresh page, 89-92 ms after this warm-up. A chatbot out
    # of sight gets a short streamed exchange as the page loads, so the page has run that code
    # before the first question.
    with gr.Column(elem_classes=["h2o-warm"]):
        warm_bot = gr.Chatbot(height=None, container=False, show_label=False, autoscroll=False,
                              buttons=[], elem_id="h2o-warm")  # as the panes' turns in progress
    return Layout(session, shown, panes, heads, pasts, lives, tokens, temps, box, send, stop, regen, clear,
                  add_name, add_server, add_prompt, add_btn, add_status, export_btn, export_file, warm_bot)
