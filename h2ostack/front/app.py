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

The parts: a page's `Session` (front/session.py); the page's components (`layout.build_layout`);
the handlers of its events (`Grid` here, and the functions beside it), which `wire` connects to
the components; and each question's `Turn` (front/turn.py), which runs without Gradio on the clock
and answer streams it is given. With `arena: true`, the Arena's tabs (front/arena.py) sit beside
the grid.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import platform
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gradio as gr

from h2ostack import __version__
from h2ostack.front.clients import Backend, backend_for, fast_timeout, probe, stream_answer, warm
from h2ostack.front.layout import CSS, EXTRA_SLOTS, Layout, build_layout, header
from h2ostack.front.session import Message, Session, active, in_progress
from h2ostack.front.turn import Clock, Frame, HoldFn, StreamFn, SystemClock, Turn

HOLD_STREAM_EVERY = 10.0  # seconds: how often the page's stream-holding event looks up
WARM_PAGE_ANSWER = ("a", "a b")  # the streamed exchange a page warms up on (`warm_page`)


def backends_from_plan(plan: Any, stack: Any, models: list[str]) -> list[Backend]:
    from h2ostack.api import auth_headers
    from h2ostack.backends import completion_prompt_type

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


def stop_turn(sess: Session) -> None:
    """Stop: the turn that streams stops itself at its next pass (0.1 s at most), its panes keeping
    what they show, and its own settle then moves them to the finished turns. Not by Gradio's
    `cancels`, which left the settling to race the turn's last pieces."""
    sess.stop = sess.streaming


def on_setting(i: int, key: str) -> Callable[[float, Session], Session]:
    """Pane i's slider `key` (max_new_tokens or temperature), into the session."""
    def set_one(value: float, sess: Session) -> Session:
        sess.settings[i] = {**sess.settings[i], key: value}
        return sess
    return set_one


def on_pane_clear(i: int) -> Callable[[Session], list[Any]]:
    """Pane i's own clear button: its conversation emptied (its answer streaming now stops)."""
    def clear_one(sess: Session) -> list[Any]:
        sess.chats[i] = []
        sess.past[i] = 0
        return [[], [], sess]
    return clear_one


async def hold_stream() -> AsyncIterator[None]:
    """Runs as long as the page is open, so the page's event stream stays open. Gradio's page
    opens its stream (`/queue/data`) after a question's `/queue/join` returns, and closes it once
    no event of the page is running: every question waited for a new stream, and a first token
    that came before the stream was open waited for it (60 to 120 ms here). With this event
    pending the stream stays open, and a question's frames go out as soon as they are made. It
    yields now and then: that is when Gradio sees that the page has gone and ends it."""
    while True:
        await asyncio.sleep(HOLD_STREAM_EVERY)
        yield


async def warm_page() -> AsyncIterator[list[dict[str, str]]]:
    """A short streamed exchange into the chatbot out of sight (`Layout.warm_bot`), then empty."""
    for answer in WARM_PAGE_ANSWER:
        yield [{"role": "user", "content": "…"}, {"role": "assistant", "content": answer}]
        await asyncio.sleep(0.05)
    yield []


def export(sess: Session) -> str:
    """The session's answers as a JSONL file."""
    fd, path = tempfile.mkstemp(prefix="h2ostack-chat-", suffix=".jsonl")
    with os.fdopen(fd, "w") as fh:
        for r in sess.log:
            fh.write(json.dumps(r) + "\n")
    return path


class Grid:
    """The compare grid's handlers over one front's models, the session of the page passed in.
    `serialize` turns a pane's messages into what the page gets (the Chatbot's own postprocess);
    `stream` answers (`clients.stream_answer`); `clock` times the turns; `hold` holds an on-demand
    model up (starting it first) while a pane's answer streams."""

    def __init__(self, backends: list[Backend], admin_pass: str | None,
                 serialize: Callable[[list[Message]], Any] | None = None, stream: StreamFn | None = None,
                 clock: Clock | None = None, hold: HoldFn | None = None) -> None:
        self.backends = backends
        self.admin_pass = admin_pass
        self.n_fixed = len(backends)
        self.n = self.n_fixed + EXTRA_SLOTS
        self.names = [b.name for b in backends]
        self.serialize = serialize or (lambda msgs: msgs)
        self.stream = stream or stream_answer
        self.clock = clock or SystemClock()
        self.hold = hold
        self.skip = gr.skip()

    def sent(self, frame: Frame, sess: Session) -> list[Any]:
        """A turn's frame as the chat events' outputs: the input box, each pane's turn in progress
        and the session. The panes go as values, never `gr.skip()`: Gradio handles a skip as a
        component update, rebuilding the component and its config (its JSON schema) each time,
        about 6 ms apiece, which with a dozen skipped outputs held every update back by 100 ms.
        Values cost a postprocess of each, and Gradio sends only the difference from the last
        update. (Only the textbox is skipped: the user may be typing the next question; and the
        State, whose skip costs nothing.) The panes are serialized by the Chatbot's own
        postprocess here, in the turn's thread, so that Gradio does not postprocess the chat
        events' outputs (`postprocess=False`). It runs each output's postprocess in a worker
        thread of its own, one hand-over of the GIL there and one back per output, nine per
        update: with four answers streaming into the same process, the first update of a turn
        spent 7-42 ms there in a probe of four panes over the CPU vLLM, for 0.1 ms of work."""
        return [self.skip if frame.box is None else frame.box, *(self.serialize(p) for p in frame.panes),
                sess if frame.done else self.skip]

    def submit(self, message: str, visible: list[str], sess: Session) -> Iterator[list[Any]]:
        """The question asked of every shown pane (`Turn`), its frames as the chat events' outputs."""
        if not message or not message.strip():
            yield self.sent(Frame("", in_progress(sess.chats, sess.past), True), sess)
            return
        turn = Turn(sess, message, active(sess.slots, self.n_fixed, visible), self.stream, self.clock,
                    fast_timeout(), self.hold)
        for frame in turn.frames():
            yield self.sent(frame, sess)

    def settle(self, sess: Session) -> list[Any]:
        """Once a turn is over (or stopped): the last answer's timings in the headers, and each
        pane's turn moved from the streamed chatbot to the finished turns, in one update. The
        finished turns render again only here, once a turn, not on each streamed update. Not while
        a turn streams: a turn cancelled by Regenerate settles as the next one starts."""
        skip = self.skip
        heads_now = [header(Backend(**s), sess.stats.get(i)) if s is not None else header(None)
                     for i, s in enumerate(sess.slots)]
        moved = [] if sess.streaming else [i for i, h in enumerate(sess.chats) if sess.past[i] != len(h)]
        for i in moved:
            sess.past[i] = len(sess.chats[i])
        return [*heads_now, *(list(sess.chats[i]) if i in moved else skip for i in range(self.n)),
                *([] if i in moved else skip for i in range(self.n)), sess]

    def pop_last(self, visible: list[str], sess: Session) -> list[Any]:
        """The last question back in the input box, and each shown pane without its last turn (a
        hidden pane keeps its conversation: the question is asked again of the shown ones)."""
        sess.streaming = None  # a turn that streamed stops as it sees its panes replaced
        last = ""
        out_past: list[Any] = [self.skip] * self.n
        for i in active(sess.slots, self.n_fixed, visible):
            h = sess.chats[i]
            if len(h) >= 2 and h[-1]["role"] == "assistant":
                last = h[-2]["content"]
                sess.chats[i] = h[:-2]
                if sess.past[i] > len(h) - 2:
                    sess.past[i] = len(h) - 2
                    out_past[i] = list(sess.chats[i])
        return [last, *out_past, *in_progress(sess.chats, sess.past), sess]

    def clear_all(self, sess: Session) -> list[Any]:
        """Every pane empty. In place: a turn that streams sees its panes replaced and stops by
        itself (as for Regenerate), its last update showing the empty panes too."""
        sess.chats[:] = [[] for _ in range(self.n)]
        sess.past[:] = [0] * self.n
        sess.streaming = None
        return [*sess.chats, *sess.chats, sess]

    def visibility(self, visible: list[str], sess: Session) -> list[Any]:
        return [gr.update(visible=s is not None and (i >= self.n_fixed or s["name"] in visible))
                for i, s in enumerate(sess.slots)]

    def on_load(self, request: gr.Request, sess: Session) -> list[Any]:
        wanted = request.query_params.get("models") if request else None
        visible = [x for x in wanted.split(",") if x in self.names] if wanted else self.names
        fresh = [header(b) for b in self.backends] + [gr.update()] * EXTRA_SLOTS
        for i, b in enumerate(self.backends):
            slot = sess.slots[i]
            assert slot is not None  # (the front's own panes)
            sess.slots[i] = {**slot, "health": b.health, "revision": b.revision}
        return [visible, *self.visibility(visible, sess), *fresh, sess]

    def add(self, name: str, server: str, prompt_type: str, sess: Session) -> list[Any]:
        """A model from a server string into the first free pane."""
        n, n_fixed = self.n, self.n_fixed
        no_change = [gr.update() for _ in range(n)]
        slot_list = sess.slots
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
        sess.slots = [*slot_list[:free[0]], asdict(b), *slot_list[free[0] + 1:]]
        heads_up = list(no_change)
        heads_up[free[0]] = header(b)
        panes_up = list(no_change)
        panes_up[free[0]] = gr.update(visible=True)
        return [f"added {name} ({b.kind}, {b.health})", sess, *heads_up, *panes_up]

    def system_info_dict(self, admin_password: str) -> str:
        if self.admin_pass is None or admin_password != self.admin_pass:
            return json.dumps({})
        return json.dumps(system_info(self.backends))

    def submit_nochat_api(self, text: str) -> str:
        import ast

        try:
            args = ast.literal_eval(text) if text.strip().startswith("{") else {"instruction": text}
        except (ValueError, SyntaxError):
            args = {"instruction": text}
        if not self.backends:
            return str({"response": "", "error": "this front has no models"})
        b = self.backends[0]  # like h2oGPT's nochat API: the first model answers
        release = None
        try:
            if self.hold is not None:  # an on-demand model: started first, held up while it answers
                release = self.hold(b.name, lambda _: None, lambda: False)
            answer = "".join(self.stream(b, [], str(args.get("instruction", "")), int(args.get("max_new_tokens", 256)),
                                         float(args.get("temperature", 0.0))))
            return str({"response": answer, "sources": [], "model": b.name})
        except Exception as exc:
            return str({"response": "", "error": f"{type(exc).__name__}: {exc}"})
        finally:
            if release is not None:
                release()


def wire(demo: gr.Blocks, ui: Layout, grid: Grid) -> None:
    """The page's events, each to its handler."""
    session, box, shown = ui.session, ui.box, ui.shown
    settle_outputs = [*ui.heads, *ui.pasts, *ui.lives, session]
    chat_inputs = [box, shown, session]
    chat_outputs = [box, *ui.lives, session]
    # progress is tracked on the input box alone: Gradio's page refreshes the loading status of
    # every progress target on each streamed update, taking a deep copy of each target's value
    # (every pane's whole history) as it does; with the panes as targets that cost grew with the
    # grid and the conversation and held the page back by hundreds of ms. And it is not shown:
    # Gradio's progress display redraws its timer on every animation frame while the event runs,
    # which on a busy core takes the page's time from the panes (the question shows in its panes
    # at once, and the answers stream there).
    busy: dict[str, Any] = {"concurrency_limit": None, "show_progress_on": [box], "show_progress": "hidden",
                            "postprocess": False}  # the turn serializes its panes itself (`Grid.sent`)
    quiet: dict[str, Any] = {"show_progress": "hidden", "api_visibility": "private"}
    ev1 = ui.send.click(grid.submit, chat_inputs, chat_outputs, **busy)
    ev2 = box.submit(grid.submit, chat_inputs, chat_outputs, **busy)
    # Regenerate while a turn streams: pop_last takes the turn back out of the session, and the
    # turn, seeing its panes' conversations replaced, stops itself (within one pass of its loop,
    # 0.1 s at most) before the new turn's first piece. Not by Gradio's `cancels`: the page sends a
    # listener's cancels one at a time, each awaiting the server's answer, and looks a submission
    # up only when its turn comes; a cancel of the streaming turn that took longer than pop_last's
    # round trip went on to cancel the new turn, which had been asked by then (a browser test lost
    # the regenerated turn that way). "multiple": a regenerated turn still ending does not hold
    # back the one asked in its place.
    ev3 = ui.regen.click(grid.pop_last, [shown, session], [box, *ui.pasts, *ui.lives, session],
                         show_progress_on=[box], show_progress="hidden").then(
        grid.submit, chat_inputs, chat_outputs, trigger_mode="multiple", **busy)
    for ev in (ev1, ev2, ev3):
        ev.then(grid.settle, [session], settle_outputs, show_progress_on=[box], **quiet)
    ui.stop.click(stop_turn, [session], None, show_progress="hidden", api_visibility="private")
    ui.clear.click(grid.clear_all, [session], [*ui.pasts, *ui.lives, session], show_progress_on=[box])
    for i in range(grid.n):  # the settings, and a pane's own clear button, reach the session
        ui.tokens[i].change(on_setting(i, "max_new_tokens"), [ui.tokens[i], session], [session], queue=False,
                            **quiet)
        ui.temps[i].change(on_setting(i, "temperature"), [ui.temps[i], session], [session], queue=False, **quiet)
        for bot in (ui.pasts[i], ui.lives[i]):
            bot.clear(on_pane_clear(i), [session], [ui.pasts[i], ui.lives[i], session], queue=False,
                      show_progress_on=[box], **quiet)

    # show / hide, kept in the URL
    shown.change(grid.visibility, [shown, session], ui.panes, js=None, show_progress_on=[shown]).then(
        None, [shown], None,
        js="(v) => { const u = new URL(window.location); u.searchParams.set('models', v.join(','));"
           " window.history.replaceState(null, '', u); }")
    demo.load(grid.on_load, [session], [shown, *ui.panes, *ui.heads, session], show_progress_on=[shown])
    demo.load(hold_stream, None, None, concurrency_limit=None, **quiet)
    demo.load(warm_page, None, [ui.warm_bot], concurrency_limit=None, **quiet)

    ui.add_btn.click(grid.add, [ui.add_name, ui.add_server, ui.add_prompt, session],
                     [ui.add_status, session, *ui.heads, *ui.panes], show_progress_on=[ui.add_status])
    ui.export_btn.click(export, [session], [ui.export_file])
    gr.api(grid.system_info_dict, api_name="system_info_dict")
    gr.api(grid.submit_nochat_api, api_name="submit_nochat_api")


def build_blocks(backends: list[Backend], columns: int | None, admin_pass: str | None,
                 title: str = "h2ostack", arena: Any = None, stream: StreamFn | None = None,
                 clock: Clock | None = None, hold: HoldFn | None = None) -> gr.Blocks:
    """The page (`layout.build_layout`) wired to the handlers of a `Grid` over `backends`
    (answering from `stream`, timed by `clock`: the real ones unless given; on-demand models held
    up by `hold`)."""
    with gr.Blocks(title=title, fill_width=True) as demo:
        ui = build_layout(demo, backends, columns, title, arena)
        live = ui.lives[0]
        wire(demo, ui, Grid(backends, admin_pass, lambda msgs: live.postprocess(msgs).model_dump(), stream, clock,
                            hold))
    demo.queue(default_concurrency_limit=None)
    return demo


def pane_hold(manager: Any) -> HoldFn:
    """A pane's hold on its model through the gateway's on-demand manager (the one /v1 uses): an
    on-demand model is started (or woken) before the pane streams and held up until its answer
    ends; any other model goes straight through."""
    def hold(name: str, tell: Callable[[str], None], given_up: Callable[[], bool]) -> Callable[[], None]:
        if name not in manager:
            return lambda: None
        return manager.hold_from_thread(name, tell, given_up)  # type: ignore[no-any-return]
    return hold


def bound_to_loop(asgi: Any, manager: Any) -> Any:
    """`asgi`, telling the on-demand manager the server's event loop on its first call (the panes
    reach the manager from Gradio's threads, through that loop)."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if manager.loop is None:
            manager.bind(asyncio.get_running_loop())
        await asgi(scope, receive, send)
    return app


def build_app(stack_file: str, front: str) -> Any:
    """The front's whole app: health, the gateway under /v1, and the Gradio page at /."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from h2ostack.api import load_plan
    from h2ostack.gateway import Gateway, attach_on_demand, front_keys, routes_from_plan
    from h2ostack.prompts import gateway_prompt
    from h2ostack.spec import reveal

    stack, _, plan = load_plan(stack_file, check_ports=False)
    spec = stack.fronts[front]
    backends = backends_from_plan(plan, stack, spec.models)
    # /v1 is closed whenever the page is: `api_keys`, or the front users' password as a bearer key
    gateway = Gateway(routes_from_plan(plan, stack, spec.models), front_keys(spec), gateway_prompt)
    attach_on_demand(gateway, plan, stack, spec.models)
    manager = gateway.ondemand
    put_away = [b for b in backends if manager is not None and b.name in manager and manager.phase(b.name) != "ready"]
    for b in put_away:  # not probed: its pane's first question starts it
        b.health = f"{manager.phase(b.name)} (on demand: a question starts it)"
    threading.Thread(target=probe_all, args=([b for b in backends if b not in put_away],), daemon=True).start()
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        return JSONResponse({"ok": True, "models": [b.name for b in backends]})

    auth = (spec.auth.user, reveal(spec.auth.password) or "") if spec.auth else None
    arena = None
    if spec.arena:
        from h2ostack.front.arena import Arena
        from h2ostack.front.arena_core import VoteStore, arena_path

        arena = Arena(backends, VoteStore(arena_path(stack.name)), front,
                      hold=pane_hold(manager) if manager is not None else None)
    blocks = build_blocks(backends, spec.columns, reveal(spec.admin_pass) if spec.admin_pass else None,
                          title=f"h2ostack · {stack.name}", arena=arena,
                          hold=pane_hold(manager) if manager is not None else None)
    # /v1 goes straight to the gateway, ahead of FastAPI's routing and middleware
    asgi = gateway.mount(gr.mount_gradio_app(app, blocks, path="/", auth=auth, css=CSS))
    return asgi if manager is None else bound_to_loop(asgi, manager)
