"""The built-in front: a Gradio grid of chatbots over every model of the front, with the
OpenAI-compatible gateway on the same port under `/v1`.

One question goes to every visible model at once and the answers stream into their panes
concurrently (one event drives all backends, each in its own thread, and yields all panes
together; the queue has no concurrency cap, so several users stream at once). Models can be
shown or hidden (kept in the page URL as `?models=a,b`), each pane has its own history and its
own max_new_tokens and temperature, and its header shows the backend kind, health, revision and
the last answer's time to first token and tokens/s. Models can be added from a server string.
Conversations export as JSONL. A page keeps its event stream open while it is open, and a
question goes to the page with its answers' first pieces, so the first tokens show at once. Each
pane shows its finished turns and the turn in progress in two chatbots, so that the streamed
updates re-render the turn in progress alone, however long the conversation.
`/system_info_dict` and `/submit_nochat_api` are Gradio APIs, so one front can serve as the
h2oGPT-style server of another.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import platform
import queue
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gradio as gr

from h2ostack import __version__
from h2ostack.front.clients import Backend, backend_for, fast_timeout, probe, stream_answer, warm
from h2ostack.front.prompts import PROMPT_TYPES

EXTRA_SLOTS = 4
HOLD_STREAM_EVERY = 10.0  # seconds: how often the page's stream-holding event looks up
FIRST_FRAME_WAIT = 0.15  # seconds a question waits for the first piece of an answer to go with it
YIELD_EVERY = 0.05  # seconds: coalesce token updates so the page never falls behind
# Gradio's page renders every message of a chatbot again on each update of it, so each pane is two
# chatbots in one scroll box: its finished turns, updated once a turn is over, and the turn in
# progress, which the streamed updates go to. Later pieces are still gathered for
# YIELD_PER_MESSAGE more per message in the streamed chatbots (normally two per pane).
YIELD_PER_MESSAGE = 0.0015
# The panes follow a streaming answer by CSS alone: a pane's scroll box lays out its content (the
# two chatbots, the finished turns above the turn in progress) from the bottom, so it stays
# scrolled to the end as the answer grows, and a short conversation still sits at the top. Gradio's own autoscroll (off on the panes) reads scrollHeight on every update, a forced
# layout of the whole page per pane: in a Chromium profile of a 4-pane answer it took 18% of the
# page's CPU and held each update back. The chatbots inside grow with their messages.
PANE_HEIGHT = 380
WARM_PAGE_ANSWER = ("a", "a b")  # the streamed exchange a page warms up on (`warm_page`)
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


def in_progress(chats: list[list[dict[str, str]]], past: list[int]) -> list[list[dict[str, str]]]:
    """Each pane's turn in progress: the messages of its conversation that its finished-turns
    chatbot does not show."""
    return [h[p:] for h, p in zip(chats, past, strict=True)]


def backends_from_plan(plan: Any, stack: Any, models: list[str]) -> list[Backend]:
    from h2ostack.api import auth_headers
    from h2ostack.front.prompts import completion_prompt_type

    out = []
    for name in models:
        sp = plan.services[name]
        svc = stack.services[name]
        # vLLM with a given or known prompt type: completions with h2oGPT's prompt, as /v1 asks it
        chat = completion_prompt_type(sp.kind, svc.prompt_type, sp.served_model) is None
        out.append(Backend(name, sp.kind, sp.api, sp.url or "", sp.served_model or name, auth_headers(sp, stack),
                           svc.prompt_type, svc.prompt_dict, chat=chat))
    return out


def probe_all(backends: list[Backend]) -> None:
    """Every endpoint at once, bounded by REQUEST_TIMEOUT for all of them together."""
    budget = float(os.environ.get("REQUEST_TIMEOUT", "60"))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(backends)))
    futures = {pool.submit(probe, b, budget): b for b in backends}
    done, pending = concurrent.futures.wait(futures, timeout=budget)
    for fut in done:
        ok, detail = fut.result()
        futures[fut].health = "healthy" if ok else detail
    for fut in pending:
        futures[fut].health = "unavailable (no answer within REQUEST_TIMEOUT)"
    pool.shutdown(wait=False, cancel_futures=True)
    for b in backends:  # the clients the first turn will use, made now rather than then
        if b.health == "healthy":
            with contextlib.suppress(Exception):  # the turn itself reports what is wrong
                warm(b)


def header(b: Backend | None, stats: dict[str, Any] | None = None) -> str:
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


def git_hash() -> str:
    try:
        return subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def system_info(backends: list[Backend]) -> dict[str, Any]:
    from h2ostack.facts import nvml_gpus

    return {
        "h2ostack_version": __version__, "hash": git_hash(), "base_model": backends[0].model if backends else "",
        "models": [{"name": b.name, "kind": b.kind, "model": b.model, "prompt_type": b.effective_prompt_type,
                    "health": b.health} for b in backends],
        "endpoints": {b.name: b.url for b in backends},
        "gpus": [{"index": g.index, "name": g.name, "total_gib": g.total_gib, "free_gib": g.free_gib}
                 for g in nvml_gpus()],
        "cpu": {"count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
    }


def build_blocks(backends: list[Backend], columns: int | None, admin_pass: str | None,
                 title: str = "h2ostack", arena: Any = None) -> gr.Blocks:
    n_fixed = len(backends)
    n = n_fixed + EXTRA_SLOTS
    columns = columns or min(max(n_fixed, 1), 3)
    names = [b.name for b in backends]

    with gr.Blocks(title=title, fill_width=True) as demo:
        # What a page's session holds, kept on the server in one State: the models of its panes
        # (`slots`, the stack's and those added), each pane's conversation and settings, each
        # pane's last timings (shown in its header) and the turns for the JSONL export. Not read
        # from the page: Gradio's page copies every input of an event (a chatbot: its whole
        # history) to send it, and refreshes the loading status of each input on every streamed
        # update, copying its value again, about 1 ms per input on this page. With the chatbots,
        # sliders and five States as inputs that was 30 copies per update; in a profile of a
        # 4-pane answer they took 16% of the page's time and the panes' updates waited behind them.
        session = gr.State({"slots": [asdict(b) for b in backends] + [None] * EXTRA_SLOTS,
                            "chats": [[] for _ in range(n)],
                            # how many messages of each conversation its finished-turns chatbot shows
                            "past": [0] * n,
                            # the turn streaming now (its number), if any: its panes' turn in
                            # progress is its own, and no `settle` moves it
                            "streaming": None, "turns": 0,
                            # the turn Stop was pressed for: it stops itself at its next pass
                            "stop": None,
                            "settings": [{"max_new_tokens": 256, "temperature": 0.0} for _ in range(n)],
                            "stats": {}, "log": []})
        gr.Markdown(f"## {title}: {', '.join(names) or 'no models yet'}")
        grid_tab = contextlib.ExitStack()  # with an Arena (front/arena.py), the grid is a tab beside it
        if arena is not None:
            grid_tab.enter_context(gr.Tab("Compare", id="compare", elem_id="compare-tab"))
        shown = gr.CheckboxGroup(names, value=names, label="Models shown", elem_id="h2o-shown")
        panes: list[gr.Column] = []
        heads: list[gr.Markdown] = []
        pasts: list[gr.Chatbot] = []  # each pane's finished turns
        lives: list[gr.Chatbot] = []  # and the turn in progress
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
                            # no copy button while the answer streams (the finished turns have
                            # them): each message's buttons are part of what the page mounts
                            # with a turn's first update
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

        # -- chat ----------------------------------------------------------------------------
        skip = gr.skip()

        def active(slot_list: list[Any], visible: list[str]) -> list[int]:
            return [i for i, s in enumerate(slot_list) if s is not None and (i >= n_fixed or s["name"] in visible)]

        def sent(panes: list[list[dict[str, str]]]) -> list[Any]:
            """The panes' turns in progress as the page gets them: serialized by the Chatbot's own
            postprocess here, in the turn's thread, so that Gradio does not postprocess the chat
            events' outputs (`postprocess=False`). It runs each output's postprocess in a worker
            thread of its own, one hand-over of the GIL there and one back per output, nine per
            update: with four answers streaming into the same process, the first update of a turn
            spent 7-42 ms there in a probe of four panes over the CPU vLLM, for 0.1 ms of work."""
            return [lives[0].postprocess(msgs).model_dump() for msgs in panes]

        def submit(message: str, visible: list[str], sess: dict[str, Any]) -> Iterator[list[Any]]:
            # the session's own lists: the turn updates them in place, so a turn stopped half way
            # keeps what its panes show
            slot_list, hists, shown_stats, past = sess["slots"], sess["chats"], sess["stats"], sess["past"]
            max_toks = [p["max_new_tokens"] for p in sess["settings"]]
            temperatures = [p["temperature"] for p in sess["settings"]]
            if not message or not message.strip():
                yield ["", *sent(in_progress(hists, past)), sess]
                return
            idx = active(slot_list, visible)
            events: queue.Queue[tuple[int, str, Any]] = queue.Queue()
            stopping = threading.Event()
            abandoned: set[int] = set()  # panes given up on: their thread stops at its next piece
            stats: dict[int, dict[str, Any]] = {}
            first_byte = fast_timeout()  # REQUEST_TIMEOUT_FAST bounds each pane's connection and first piece

            def work(i: int) -> None:
                b = Backend(**slot_list[i])
                turns = [(hists[i][k]["content"], hists[i][k + 1]["content"])
                         for k in range(0, len(hists[i]) - 2, 2)]
                t0 = time.perf_counter()
                first = None
                first_at = last_at = None
                count = 0
                try:
                    for piece in stream_answer(b, turns, message, int(max_toks[i]), float(temperatures[i])):
                        if stopping.is_set() or i in abandoned:
                            break
                        last_at = time.time()
                        if first is None:
                            first, first_at = time.perf_counter() - t0, last_at
                        count += 1
                        events.put((i, "piece", piece))
                    total = time.perf_counter() - t0
                    tps = (count - 1) / (total - first) if first is not None and count > 1 and total > first else None
                    # wall-clock times of the first and last piece from the backend, for the JSONL export
                    events.put((i, "done", {"ttft": first, "tps": tps, "tokens": count, "seconds": total,
                                            "first_token_at": first_at, "last_token_at": last_at}))
                except Exception as exc:  # a backend down or dying mid-answer: its pane says so
                    events.put((i, "error", f"{type(exc).__name__}: {exc}"))

            def record(i: int) -> None:
                """A pane's answer goes to the JSONL export as it ends, whatever then becomes of
                its turn (a pane stopped while it streams leaves no record)."""
                sess["log"].append({"time": time.time(), "model": slot_list[i]["name"], "backend": slot_list[i]["kind"],
                                    "prompt": message, "answer": mine[i][-1]["content"],
                                    "max_new_tokens": int(max_toks[i]), "temperature": float(temperatures[i]),
                                    **stats.get(i, {})})

            asked = False  # the question is in the page

            def frame(done: bool = False) -> list[Any]:
                """Every pane's turn in progress (the messages its finished-turns chatbot does not
                show) as a value, never `gr.skip()`: Gradio handles a skip as a component update,
                rebuilding the component and its config (its JSON schema) each time, about 6 ms
                apiece, which with a dozen skipped outputs held every update back by 100 ms. Values
                cost a postprocess of each, and Gradio sends only the difference from the last
                update. (Only the textbox is skipped: the user may be typing the next question;
                and the State, whose skip costs nothing.) The headers and the finished turns are
                not outputs: they follow once the turn is over (`settle`). The first update also
                clears the input box."""
                nonlocal asked
                box = skip if asked else ""
                asked = True
                return [box, *sent(in_progress(hists, past)), sess if done else skip]

            for i in idx:
                hists[i] = [*hists[i], {"role": "user", "content": message}, {"role": "assistant", "content": ""}]
            # this turn's conversations: pieces go to these lists, not to whatever the session
            # holds when they come, so a turn cancelled by Regenerate (which takes the turn back
            # out of the session) cannot write a late piece into the next one
            mine = {i: hists[i] for i in idx}
            sess["turns"] += 1
            sess["streaming"] = turn = sess["turns"]
            threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in idx]
            for t in threads:
                t.start()
            # the question goes to the page with the first pieces of the answers, or after
            # FIRST_FRAME_WAIT with those that came by then: one update, not two, where the
            # backends answer at once (the page takes longest over an update that adds messages)
            show_by = time.perf_counter() + FIRST_FRAME_WAIT
            every = YIELD_EVERY + YIELD_PER_MESSAGE * sum(len(hists[i]) - past[i] for i in idx)
            changed = False  # since the last update
            pending = set(idx)
            waiting = set(idx)  # no first piece yet
            deadline = time.perf_counter() + first_byte
            last = 0.0
            try:
                while pending:
                    for i in [i for i in pending if hists[i] is not mine[i]]:
                        # the pane's conversation was replaced: emptied by Clear or by its own
                        # clear button, or its turn taken back by Regenerate. Its answer stops
                        # there and leaves no record; the other panes go on (a turn taken back by
                        # Regenerate has had every pane replaced, so it ends here)
                        abandoned.add(i)
                        pending.discard(i)
                        waiting.discard(i)
                    if sess.get("stop") == turn:
                        # Stop: the panes keep what they show; an answer stopped while it
                        # streamed leaves no record
                        abandoned.update(pending)
                        pending.clear()
                    if not pending:
                        break
                    if not asked and (not waiting or time.perf_counter() >= show_by):
                        last = time.perf_counter()
                        yield frame()
                        changed = False
                        continue
                    if waiting and time.perf_counter() > deadline:
                        for i in waiting:  # given up on; the others keep streaming
                            abandoned.add(i)
                            pending.discard(i)
                            mine[i][-1] = {"role": "assistant", "content": "⚠ error: no answer within "
                                            f"REQUEST_TIMEOUT_FAST ({first_byte:g} s)"}
                            record(i)
                            changed = True
                        waiting.clear()
                        yield frame()
                        changed = False
                        continue
                    try:
                        got = [events.get(timeout=0.1 if asked else max(0.0, show_by - time.perf_counter()))]
                    except queue.Empty:
                        continue
                    while True:  # everything already queued, then one update
                        try:
                            got.append(events.get_nowait())
                        except queue.Empty:
                            break
                    started = False  # a pane's first piece is in this batch
                    for i, kind, value in got:
                        if i not in pending:  # a pane already given up on
                            continue
                        started |= i in waiting
                        waiting.discard(i)
                        changed = True
                        if kind == "piece":
                            mine[i][-1] = {"role": "assistant", "content": mine[i][-1]["content"] + value}
                        elif kind == "error":
                            text = mine[i][-1]["content"]
                            mine[i][-1] = {"role": "assistant", "content": (text + "\n\n" if text else "")
                                            + f"⚠ error: {value}"}
                            pending.discard(i)
                            record(i)
                        else:
                            stats[i] = shown_stats[i] = value
                            pending.discard(i)
                            record(i)
                    now = time.perf_counter()
                    # a first piece goes to the page at once; later ones at most every `every`
                    if changed and asked and (started or now - last >= every or not pending):
                        last = now
                        yield frame()
                        changed = False
            finally:
                stopping.set()
            if sess["streaming"] == turn:
                sess["streaming"] = None
            else:  # taken back by Regenerate or Clear: the input box is theirs (the question
                asked = True  # Regenerate put back), even where this turn never cleared it
            yield frame(done=True)

        def settle(sess: dict[str, Any]) -> list[Any]:
            """Once a turn is over (or stopped): the last answer's timings in the headers, and each
            pane's turn moved from the streamed chatbot to the finished turns, in one update. The
            finished turns render again only here, once a turn, not on each streamed update. Not
            while a turn streams: a turn cancelled by Regenerate settles as the next one starts."""
            heads_now = [header(Backend(**s), sess["stats"].get(i)) if s is not None else header(None)
                         for i, s in enumerate(sess["slots"])]
            moved = [] if sess["streaming"] else [i for i, h in enumerate(sess["chats"])
                                                  if sess["past"][i] != len(h)]
            for i in moved:
                sess["past"][i] = len(sess["chats"][i])
            return [*heads_now, *(list(sess["chats"][i]) if i in moved else skip for i in range(n)),
                    *([] if i in moved else skip for i in range(n)), sess]

        settle_outputs = [*heads, *pasts, *lives, session]
        chat_inputs = [box, shown, session]
        chat_outputs = [box, *lives, session]
        # progress is tracked on the input box alone: Gradio's page refreshes the loading status
        # of every progress target on each streamed update, taking a deep copy of each target's
        # value (every pane's whole history) as it does; with the panes as targets that cost
        # grew with the grid and the conversation and held the page back by hundreds of ms. And
        # it is not shown: Gradio's progress display redraws its timer on every animation frame
        # while the event runs, which on a busy core takes the page's time from the panes (the
        # question shows in its panes at once, and the answers stream there).
        busy = {"concurrency_limit": None, "show_progress_on": [box], "show_progress": "hidden",
                "postprocess": False}  # the turn serializes its panes itself (`sent`)
        quiet = {"show_progress": "hidden", "api_visibility": "private"}
        ev1 = send.click(submit, chat_inputs, chat_outputs, **busy)
        ev2 = box.submit(submit, chat_inputs, chat_outputs, **busy)

        def pop_last(visible: list[str], sess: dict[str, Any]) -> list[Any]:
            """The last question back in the input box, and each shown pane without its last turn
            (a hidden pane keeps its conversation: the question is asked again of the shown ones)."""
            sess["streaming"] = None  # a turn that streamed stops as it sees its panes replaced
            last = ""
            out_past: list[Any] = [skip] * n
            for i in active(sess["slots"], visible):
                h = sess["chats"][i]
                if len(h) >= 2 and h[-1]["role"] == "assistant":
                    last = h[-2]["content"]
                    sess["chats"][i] = h[:-2]
                    if sess["past"][i] > len(h) - 2:
                        sess["past"][i] = len(h) - 2
                        out_past[i] = list(sess["chats"][i])
            return [last, *out_past, *in_progress(sess["chats"], sess["past"]), sess]

        # Regenerate while a turn streams: pop_last takes the turn back out of the session, and
        # the turn, seeing its panes' conversations replaced, stops itself (within one pass of
        # its loop, 0.1 s at most) before the new turn's first piece. Not by Gradio's `cancels`:
        # the page sends a listener's cancels one at a time, each awaiting the server's answer,
        # and looks a submission up only when its turn comes; a cancel of the streaming turn that
        # took longer than pop_last's round trip went on to cancel the new turn, which had been
        # asked by then (a browser test lost the regenerated turn that way). "multiple": a
        # regenerated turn still ending does not hold back the one asked in its place.
        ev3 = regen.click(pop_last, [shown, session], [box, *pasts, *lives, session], show_progress_on=[box],
                          show_progress="hidden").then(
            submit, chat_inputs, chat_outputs, trigger_mode="multiple", **busy)
        for ev in (ev1, ev2, ev3):
            ev.then(settle, [session], settle_outputs, show_progress_on=[box], **quiet)

        def stop_turn(sess: dict[str, Any]) -> None:
            """Stop: the turn that streams stops itself at its next pass (0.1 s at most), its panes
            keeping what they show, and its own settle then moves them to the finished turns.
            Not by Gradio's `cancels`, which left the settling to race the turn's last pieces."""
            sess["stop"] = sess["streaming"]

        stop.click(stop_turn, [session], None, show_progress="hidden", api_visibility="private")

        def clear_all(sess: dict[str, Any]) -> list[Any]:
            """Every pane empty. In place: a turn that streams sees its panes replaced and stops
            by itself (as for Regenerate), its last update showing the empty panes too."""
            sess["chats"][:] = [[] for _ in range(n)]
            sess["past"][:] = [0] * n
            sess["streaming"] = None
            return [*sess["chats"], *sess["chats"], sess]

        clear.click(clear_all, [session], [*pasts, *lives, session], show_progress_on=[box])

        def on_setting(i: int, key: str) -> Any:
            def set_one(value: float, sess: dict[str, Any]) -> dict[str, Any]:
                sess["settings"][i] = {**sess["settings"][i], key: value}
                return sess
            return set_one

        def on_pane_clear(i: int) -> Any:
            def clear_one(sess: dict[str, Any]) -> list[Any]:
                sess["chats"][i] = []
                sess["past"][i] = 0
                return [[], [], sess]
            return clear_one

        for i in range(n):  # the settings, and a pane's own clear button, reach the session
            tokens[i].change(on_setting(i, "max_new_tokens"), [tokens[i], session], [session], queue=False, **quiet)
            temps[i].change(on_setting(i, "temperature"), [temps[i], session], [session], queue=False, **quiet)
            for bot in (pasts[i], lives[i]):
                bot.clear(on_pane_clear(i), [session], [pasts[i], lives[i], session], queue=False,
                          show_progress_on=[box], **quiet)

        # -- show / hide, kept in the URL -------------------------------------------------------
        def visibility(visible: list[str], sess: dict[str, Any]) -> list[Any]:
            return [gr.update(visible=s is not None and (i >= n_fixed or s["name"] in visible))
                    for i, s in enumerate(sess["slots"])]

        shown.change(visibility, [shown, session], panes, js=None, show_progress_on=[shown]).then(
            None, [shown], None,
            js="(v) => { const u = new URL(window.location); u.searchParams.set('models', v.join(','));"
               " window.history.replaceState(null, '', u); }")

        def on_load(request: gr.Request, sess: dict[str, Any]) -> list[Any]:
            wanted = request.query_params.get("models") if request else None
            visible = [x for x in wanted.split(",") if x in names] if wanted else names
            fresh = [header(b) for b in backends] + [gr.update()] * EXTRA_SLOTS
            for i, b in enumerate(backends):
                sess["slots"][i] = {**sess["slots"][i], "health": b.health, "revision": b.revision}
            return [visible, *visibility(visible, sess), *fresh, sess]

        demo.load(on_load, [session], [shown, *panes, *heads, session], show_progress_on=[shown])

        async def hold_stream() -> AsyncIterator[None]:
            """Runs as long as the page is open, so the page's event stream stays open. Gradio's
            page opens its stream (`/queue/data`) after a question's `/queue/join` returns, and
            closes it once no event of the page is running: every question waited for a new
            stream, and a first token that came before the stream was open waited for it (60 to
            120 ms here). With this event pending the stream stays open, and a question's frames
            go out as soon as they are made. It yields now and then: that is when Gradio sees
            that the page has gone and ends it."""
            while True:
                await asyncio.sleep(HOLD_STREAM_EVERY)
                yield

        demo.load(hold_stream, None, None, concurrency_limit=None, **quiet)

        # A freshly loaded page runs the code that streams messages into a chatbot for the first
        # time with a question's first frame, and that frame waits on it: in a probe page with
        # four panes, first piece to page 125-146 ms on a fresh page, 89-92 ms after this warm-up.
        # A chatbot out of sight gets a short streamed exchange as the page loads, so the page has
        # run that code before the first question.
        with gr.Column(elem_classes=["h2o-warm"]):
            warm_bot = gr.Chatbot(height=None, container=False, show_label=False, autoscroll=False,
                                  buttons=[], elem_id="h2o-warm")  # as the panes' turns in progress

        async def warm_page() -> AsyncIterator[list[dict[str, str]]]:
            for answer in WARM_PAGE_ANSWER:
                yield [{"role": "user", "content": "…"}, {"role": "assistant", "content": answer}]
                await asyncio.sleep(0.05)
            yield []

        demo.load(warm_page, None, [warm_bot], concurrency_limit=None, **quiet)

        # -- add a model ------------------------------------------------------------------------
        def add(name: str, server: str, prompt_type: str, sess: dict[str, Any]) -> list[Any]:
            no_change = [gr.update() for _ in range(n)]
            slot_list = sess["slots"]
            name = (name or "").strip()
            if not name:
                return ["give the model a name", sess, *no_change, *no_change]
            if any(s and s["name"] == name for s in slot_list):
                return [f"there is already a model named {name!r}", sess, *no_change, *no_change]
            free = [i for i in range(n_fixed, n) if slot_list[i] is None]
            if not free:
                return [f"all {EXTRA_SLOTS} extra panes are in use", sess, *no_change, *no_change]
            try:
                b = backend_for(name, server, prompt_type or None, timeout=fast_timeout())
            except ValueError as exc:
                return [f"⚠ {exc}", sess, *no_change, *no_change]
            ok, detail = probe(b, fast_timeout())
            b.health = "healthy" if ok else detail
            sess["slots"] = [*slot_list[:free[0]], asdict(b), *slot_list[free[0] + 1:]]
            heads_up = list(no_change)
            heads_up[free[0]] = header(b)
            panes_up = list(no_change)
            panes_up[free[0]] = gr.update(visible=True)
            return [f"added {name} ({b.kind}, {b.health})", sess, *heads_up, *panes_up]

        add_btn.click(add, [add_name, add_server, add_prompt, session], [add_status, session, *heads, *panes],
                      show_progress_on=[add_status])

        # -- export ---------------------------------------------------------------------------
        def export(sess: dict[str, Any]) -> str:
            fd, path = tempfile.mkstemp(prefix="h2ostack-chat-", suffix=".jsonl")
            with os.fdopen(fd, "w") as fh:
                for r in sess["log"]:
                    fh.write(json.dumps(r) + "\n")
            return path

        export_btn.click(export, [session], [export_file])

        # -- APIs -----------------------------------------------------------------------------
        def system_info_dict(admin_password: str) -> str:
            if admin_pass is None or admin_password != admin_pass:
                return json.dumps({})
            return json.dumps(system_info(backends))

        def submit_nochat_api(text: str) -> str:
            import ast

            try:
                args = ast.literal_eval(text) if text.strip().startswith("{") else {"instruction": text}
            except (ValueError, SyntaxError):
                args = {"instruction": text}
            if not backends:
                return str({"response": "", "error": "this front has no models"})
            b = backends[0]  # like h2oGPT's nochat API: the first model answers
            try:
                answer = "".join(stream_answer(b, [], str(args.get("instruction", "")),
                                               int(args.get("max_new_tokens", 256)),
                                               float(args.get("temperature", 0.0))))
                return str({"response": answer, "sources": [], "model": b.name})
            except Exception as exc:
                return str({"response": "", "error": f"{type(exc).__name__}: {exc}"})

        gr.api(system_info_dict, api_name="system_info_dict")
        gr.api(submit_nochat_api, api_name="submit_nochat_api")

    demo.queue(default_concurrency_limit=None)
    return demo


def build_app(stack_file: str, front: str) -> Any:
    """The front's whole app: health, the gateway under /v1, and the Gradio page at /."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from h2ostack.api import load_plan
    from h2ostack.front.prompts import gateway_prompt
    from h2ostack.gateway import Gateway, front_keys, routes_from_plan
    from h2ostack.spec import reveal

    stack, _, plan = load_plan(stack_file, check_ports=False)
    spec = stack.fronts[front]
    backends = backends_from_plan(plan, stack, spec.models)
    threading.Thread(target=probe_all, args=(backends,), daemon=True).start()
    # /v1 is closed whenever the page is: `api_keys`, or the front users' password as a bearer key
    gateway = Gateway(routes_from_plan(plan, stack, spec.models), front_keys(spec), gateway_prompt)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        return JSONResponse({"ok": True, "models": [b.name for b in backends]})

    auth = (spec.auth.user, reveal(spec.auth.password) or "") if spec.auth else None
    arena = None
    if spec.arena:
        from h2ostack.front.arena import Arena
        from h2ostack.front.arena_core import VoteStore, arena_path

        arena = Arena(backends, VoteStore(arena_path(stack.name)), front)
    blocks = build_blocks(backends, spec.columns, reveal(spec.admin_pass) if spec.admin_pass else None,
                          title=f"h2ostack · {stack.name}", arena=arena)
    # /v1 goes straight to the gateway, ahead of FastAPI's routing and middleware
    return gateway.mount(gr.mount_gradio_app(app, blocks, path="/", auth=auth, css=CSS))
