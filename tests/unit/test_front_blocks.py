"""The front's page wiring, read from the Blocks config Gradio sends to the browser, and its
handlers (`app.Grid`) driving turns over fake answer streams on a fake clock (`FakeClock`)."""

from __future__ import annotations

import copy
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import gradio as gr
import pytest

from h2ostack.front import app, clients, turn
from h2ostack.front.app import Grid, build_blocks
from h2ostack.front.clients import Pane
from h2ostack.front.session import Session
from h2ostack.protocols import openai as openai_api
from h2ostack.protocols.endpoint import READ_TIMEOUT, Endpoint, client_for
from tests.unit.front_clock import FakeClock

Stream = Callable[[Pane, Any, str, int, float], Iterator[str]]


def backends() -> list[Pane]:
    return [Pane(Endpoint("a", "openai", "http://127.0.0.1:9", "a", "vllm")),
            Pane(Endpoint("b", "tgi", "http://127.0.0.1:9", "b", "tgi")),
            Pane(Endpoint("c", "openai", "http://127.0.0.1:9", "c", "transformers"))]


def test_no_event_makes_a_pane_or_header_a_progress_target() -> None:
    """Gradio's page refreshes the loading status of every progress target on each streamed
    update, deep-copying the target's value as it does: a chatbot (its whole history) or a header
    as a target made every update of the grid cost more as the grid and the conversation grew."""
    cfg = build_blocks(backends(), None, None).get_config_file()
    types = {c["id"]: c["type"] for c in cfg["components"]}
    streaming = 0
    for dep in cfg["dependencies"]:
        if not dep.get("backend_fn") or dep["api_name"] == "warm_page":  # (its chatbot is out of sight)
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
    openai_api._client.cache_clear()
    clients.warm(b)
    assert openai_api._client.cache_info().currsize == 1
    made = client_for(b.endpoint).sdk(READ_TIMEOUT)  # what stream_answer asks for
    assert openai_api._client.cache_info().hits == 1
    assert str(made.base_url).rstrip("/") == "http://127.0.0.1:9/v1"


def test_panes_follow_the_answer_by_css_not_by_gradios_autoscroll() -> None:
    """Gradio's autoscroll reads scrollHeight on each update of each pane (a forced layout of the
    page); the panes turn it off and stay at the end of the answer by their CSS: each pane's
    scroll box lays out its two chatbots from the bottom, the turn in progress below the
    finished turns."""
    cfg = build_blocks(backends(), None, None).get_config_file()
    comps = {c["id"]: c for c in cfg["components"]}
    bots = [c["props"] for c in comps.values() if c["type"] == "chatbot"]
    assert len(bots) == 2 * (3 + app.EXTRA_SLOTS) + 1 and all(p["autoscroll"] is False for p in bots)  # (+ warm-up)

    def boxes(node: dict[str, Any]) -> Iterator[list[str]]:
        comp = comps.get(node["id"], {"props": {}})  # (the root is not a component)
        if "h2o-bot" in (comp["props"].get("elem_classes") or []):
            (inner,) = node["children"]
            yield [comps[c["id"]]["props"]["elem_id"] for c in inner.get("children", [])]
        for c in node.get("children", []):
            yield from boxes(c)

    panes = list(boxes(cfg["layout"]))
    assert panes == [[f"h2o-past-{i}", f"h2o-live-{i}"] for i in range(3 + app.EXTRA_SLOTS)]
    assert "flex-direction: column-reverse !important" in app.CSS and "overflow-y: auto" in app.CSS


def plain(pane: Any) -> Any:
    """A pane as the page gets it (the Chatbot's serialized messages) read back as the role and
    text of each message; anything else as it is."""
    if not isinstance(pane, list):
        return pane
    return [{"role": m["role"], "content": "".join(c["text"] for c in m["content"])} for m in pane]


def session(bs: list[Pane], chats: list[list[dict[str, str]]] | None = None,
            settled: bool = True) -> Session:
    """A page's session with the panes of `bs` (and their conversations so far, in their
    finished-turns chatbots unless not `settled`), as the page has it."""
    sess = Session.fresh(bs, app.EXTRA_SLOTS, max_new_tokens=16)
    for i, c in enumerate(chats or []):
        sess.chats[i] = c
        sess.past[i] = len(c) if settled else 0
    return sess


def grid(bs: list[Pane], stream: Stream, clock: FakeClock) -> Grid:
    """The grid's handlers over `bs`, without Gradio: the panes go as plain messages."""
    return Grid(bs, None, stream=stream, clock=clock)


def run(frames: Iterator[list[Any]], clock: FakeClock) -> list[tuple[float, list[Any]]]:
    """Each frame of a turn as the page got it, with the time it went."""
    return [(clock.now(), copy.deepcopy(f)) for f in frames]


def test_the_chat_event_serializes_its_panes_itself() -> None:
    """Gradio postprocesses each output of an event in a worker thread of its own, a hand-over of
    the GIL each way per output and update; the chat events are not postprocessed by Gradio, and
    their frames carry each pane as the Chatbot's own postprocess serializes it."""
    def fake_stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        yield "  two\n  lines"

    bs = backends()[:1]
    demo = build_blocks(bs, None, None, stream=fake_stream, clock=FakeClock())
    fns = list(demo.fns.values())
    chat = [f for f in fns if f.name == "submit"]
    assert len(chat) == 3 and all(f.postprocess is False for f in chat)  # Submit, Enter, Regenerate
    # the rest as Gradio has them (the two `gr.api` functions have no components to postprocess)
    assert {f.name for f in fns if not f.postprocess} == {"submit", "system_info_dict", "submit_nochat_api"}
    live = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "h2o-live-0")
    frames = [copy.deepcopy(f) for f in chat[0].fn("hi", ["a"], session(bs))]
    want = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  two\n  lines"}]
    assert frames[-1][1] == live.postprocess(want).model_dump()
    assert frames[-1][1][1]["content"] == [{"text": "two\nlines", "type": "text"}]  # as Gradio shows it
    assert frames[-1][2] == []  # the pane of an empty slot
    assert plain(frames[-1][1]) == want[:1] + [{"role": "assistant", "content": "two\nlines"}]


def test_a_turn_shows_the_question_at_once_then_streams_the_answer() -> None:
    clock = FakeClock()

    def fake_stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        clock.sleep(0.3)  # after FIRST_FRAME_WAIT
        yield "Hel"
        yield "lo"

    bs = backends()[:1]
    frames = run(grid(bs, fake_stream, clock).submit("hi", ["a"], session(bs)), clock)
    at, first = frames[0]
    assert at == turn.FIRST_FRAME_WAIT  # the question alone, once no first piece came in time
    assert first[0] == "" and first[1][-2:] == [{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": ""}]
    assert all(f[0] == gr.skip() for _, f in frames[1:])  # only the first update clears the input box
    assert frames[-1][1][1][-1]["content"] == "Hello"
    sess = frames[-1][1][-1]  # the session, set once, at the end
    assert all(f[-1] == gr.skip() for _, f in frames[:-1])
    assert sess.chats[0] == frames[-1][1][1]  # the pane's conversation
    record = sess.log[0]  # the JSONL record, its times from the clock
    assert record["answer"] == "Hello" and record["tokens"] == 2 and record["max_new_tokens"] == 16
    assert record["ttft"] == pytest.approx(0.3) and record["first_token_at"] == clock.wall()
    assert sess.stats[0]["tokens"] == 2  # for the pane's header


def test_a_turn_times_each_answer_on_its_clock() -> None:
    """ttft from the question to the first piece, tokens/s over the pieces after it, and the
    seconds of the whole answer; a backend that fails says so in its pane and its record."""
    clock = FakeClock()

    def fake_stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        clock.sleep(0.2)
        yield "a"
        for _ in range(4):
            clock.sleep(0.5)
            yield "b"
        if b.name == "b":
            raise ConnectionError("cut")

    bs = backends()[:2]
    sess = session(bs)
    *_, last = grid(bs, fake_stream, clock).submit("hi", ["a", "b"], sess)
    a, b = sess.log if sess.log[0]["model"] == "a" else sess.log[::-1]
    assert (a["ttft"], a["tokens"], a["seconds"]) == (pytest.approx(0.2), 5, pytest.approx(2.2))
    assert a["tps"] == pytest.approx(4 / 2.0) and a["last_token_at"] - a["first_token_at"] == pytest.approx(2.0)
    assert b["answer"] == "abbbb\n\n⚠ error: ConnectionError: cut" and "ttft" not in b
    assert last[2][-1]["content"] == b["answer"] and clock.now() == pytest.approx(2.2)


def test_a_pane_with_no_first_piece_in_time_is_given_up_on() -> None:
    """REQUEST_TIMEOUT_FAST bounds each pane's first piece: past it the pane says so, and the
    others stream on."""
    clock = FakeClock()

    def fake_stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        clock.sleep(0.1 if b.name == "a" else 60)
        yield "one"
        clock.sleep(20)
        yield " two"

    bs = backends()[:2]
    sess = session(bs)
    frames = run(grid(bs, fake_stream, clock).submit("hi", ["a", "b"], sess), clock)
    given_up = next(t for t, f in frames if "no answer within" in f[2][-1]["content"])
    assert given_up == pytest.approx(clients.fast_timeout(), abs=turn.POLL)
    assert frames[-1][1][2][-1]["content"] == f"⚠ error: no answer within REQUEST_TIMEOUT_FAST ({clients.fast_timeout():g} s)"
    assert frames[-1][1][1][-1]["content"] == "one two" and [r["model"] for r in sess.log] == ["b", "a"]


def test_a_panes_first_piece_goes_to_the_page_at_once() -> None:
    """Later pieces are gathered for up to YIELD_EVERY; a first piece is not held back behind
    another pane's update."""
    clock = FakeClock()
    # after the question has gone to the page alone, b's first piece comes 20 ms after a's,
    # inside one YIELD_EVERY
    first_at = {"a": turn.FIRST_FRAME_WAIT + 0.05, "b": turn.FIRST_FRAME_WAIT + 0.07}

    def fake_stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        clock.sleep(first_at[b.name])
        yield "one"
        clock.sleep(0.6)
        yield " two"

    bs = backends()[:2]
    frames = run(grid(bs, fake_stream, clock).submit("hi", ["a", "b"], session(bs)), clock)
    answers = [(t, f[1][-1]["content"], f[2][-1]["content"]) for t, f in frames]
    # each first piece shown as it came: a's, then b's 20 ms later, before a's second one came
    assert (pytest.approx(first_at["a"]), "one", "") in answers, answers
    assert (pytest.approx(first_at["b"]), "one", "one") in answers, answers
    assert answers[-1][1:] == ("one two", "one two")


def test_the_question_goes_to_the_page_with_the_answers_first_pieces() -> None:
    """Where the backends answer within FIRST_FRAME_WAIT, the page gets one update that adds
    the question and the answers' first pieces, not one that adds the question and another
    right behind it with the first pieces."""
    clock = FakeClock()
    first_at = {"a": 0.02, "b": 0.06}

    def fake_stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        clock.sleep(first_at[b.name])
        yield "one"
        clock.sleep(0.3)
        yield " two"

    bs = backends()[:2]
    frames = grid(bs, fake_stream, clock).submit("hi", ["a", "b"], session(bs))
    first = copy.deepcopy(next(frames))
    assert first[0] == ""  # the input box cleared with it
    for pane in first[1:3]:
        assert pane == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "one"}], pane
    assert clock.now() == pytest.approx(0.06)  # it went as soon as both had started
    assert [f[1][-1]["content"] for f in frames][-1] == "one two"


def test_the_chat_event_reads_no_chatbot_and_no_slider_from_the_page() -> None:
    """Gradio's page copies each input of an event to send it, and refreshes each input's loading
    status, copying its value again, on every streamed update: the panes' conversations and
    settings are kept on the server, and the turn reads only the question and the shown models."""
    cfg = build_blocks(backends(), None, None).get_config_file()
    types = {c["id"]: c["type"] for c in cfg["components"]}
    chat = [d for d in cfg["dependencies"] if "chatbot" in [types[o] for o in d["outputs"]] and d.get("backend_fn")
            and len(d["inputs"]) > 2]
    assert len(chat) == 3  # submit by button, by enter, and after regenerate
    for dep in chat:
        assert sorted(types[i] for i in dep["inputs"]) == ["checkboxgroup", "state", "textbox"]
        assert "markdown" not in [types[o] for o in dep["outputs"]]  # the headers follow the turn
        # and no progress display, whose timer redraws on every animation frame while a turn runs
        assert dep["show_progress"] == "hidden"


def test_warm_streams_a_canned_answer_through_the_openai_client() -> None:
    """The openai package imports its resources and builds its response models on first use: warm
    does that at start, with no network."""
    openai_api._warm_openai.cache_clear()
    clients.warm(backends()[0])
    assert openai_api._warm_openai.cache_info().currsize == 1
    assert "openai.resources.chat.completions" in sys.modules


def test_a_page_holds_its_event_stream_open() -> None:
    """Gradio's page opens its event stream after a question's join returns and closes it when
    no event of the page runs: a first token that came before the stream was open waited for
    it. One event runs for as long as the page is open, so the stream stays open."""
    cfg = build_blocks(backends(), None, None).get_config_file()
    held = [d for d in cfg["dependencies"] if d["api_name"] == "hold_stream"]
    assert len(held) == 1
    dep = held[0]
    assert [t[1] for t in dep["targets"]] == ["load"] and dep["types"]["generator"]
    assert dep["inputs"] == [] and dep["outputs"] == []  # nothing for the page to copy or render
    assert dep["queue"] and dep["show_progress"] == "hidden" and dep["api_visibility"] == "private"


def test_the_held_stream_ends_when_its_page_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real Gradio server: the event runs while its page's stream is open, and Gradio ends it
    once the page has gone."""
    import httpx

    monkeypatch.setattr(app, "HOLD_STREAM_EVERY", 0.2)
    ended = threading.Event()
    held = app.hold_stream

    async def hold_stream() -> AsyncIterator[None]:  # the event's function, telling when it ends
        try:
            async for _ in held():
                yield
        finally:
            ended.set()

    monkeypatch.setattr(app, "hold_stream", hold_stream)
    demo = build_blocks(backends(), None, None)
    fn_index = next(i for i, f in demo.fns.items() if f.name == "hold_stream")
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    try:
        def running() -> int:
            return sum(1 for jobs in demo._queue.active_jobs if jobs for job in jobs
                       if job.session_hash == "page1" and job.alive)

        r = httpx.post(f"{url}gradio_api/queue/join",
                       json={"data": [], "fn_index": fn_index, "session_hash": "page1", "event_data": None})
        assert r.status_code == 200, r.text
        updates = 0
        seen_running = 0  # looks at the queue, between updates, that found the event running
        with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": "page1"},
                          timeout=30) as stream:
            for line in stream.iter_lines():
                assert '"process_completed"' not in line, line  # it does not end while its stream is open
                if '"process_generating"' in line:
                    updates += 1
                    seen_running += running()
                if updates == 6:
                    break
        assert seen_running >= 3, seen_running  # still going while its stream was open
        assert ended.wait(timeout=20), "the event outlived its page"
    finally:
        demo.close()


def test_updates_are_spaced_by_the_messages_they_carry() -> None:
    """Gradio's page renders every message of a chatbot again on each update of it: the streamed
    updates carry only the turn in progress, and are spaced by the messages they carry, so a
    long conversation's finished turns cost them nothing, and the page keeps up where they do
    carry more (a stopped turn not yet moved to the finished turns)."""
    clock = FakeClock()
    piece_every = 0.005

    def fake_stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        for _ in range(240):
            clock.sleep(piece_every)
            yield "x"

    bs = backends()[:2]
    handlers = grid(bs, fake_stream, clock)

    def gaps(prior_turns: int, settled: bool) -> list[float]:
        old = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}] * prior_turns
        sess = session(bs, [list(old), list(old)], settled)
        frames = run(handlers.submit("hi", ["a", "b"], sess), clock)
        assert all(len(f[1]) == (2 if settled else 2 * prior_turns + 2) for _, f in frames)  # what it carries
        times = [t for t, _ in frames]
        # between the updates while both panes stream (the last two: the answers' ends, the session)
        return [b - a for a, b in zip(times[:-3], times[1:-2], strict=True)]

    def spaced(got: list[float], messages: int) -> bool:
        every = turn.YIELD_EVERY + turn.YIELD_PER_MESSAGE * messages  # the next piece after that
        return bool(got) and all(every - 1e-9 <= g < every + piece_every + 1e-9 for g in got)

    short = gaps(1, True)  # 4 messages streamed
    assert spaced(short, 4) and len(short) >= 6, short
    long = gaps(50, True)  # 204 messages on the page, 4 of them streamed
    assert spaced(long, 4) and len(long) == len(short), long
    unsettled = gaps(50, False)  # all 204 streamed
    assert turn.YIELD_PER_MESSAGE * 204 > 2 * turn.YIELD_EVERY
    assert spaced(unsettled, 204) and len(unsettled) < len(short) / 2, (unsettled, short)


def test_a_turn_moves_to_the_finished_turns_once_it_is_over() -> None:
    """The streamed updates go to each pane's turn-in-progress chatbot alone; once the turn is
    over (or stopped), `settle` moves it to the pane's finished turns in one update, and leaves
    untouched (skipped) the panes that had no turn."""
    def fake_stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        yield f"answer to {message} after {len(history)}"

    bs = backends()[:2]
    cfg = build_blocks(bs, None, None).get_config_file()
    elem = {c["id"]: c["props"].get("elem_id") or "" for c in cfg["components"]}
    for dep in cfg["dependencies"]:  # no streamed event renders a pane's finished turns
        if dep["types"]["generator"] and dep["outputs"]:
            assert not [o for o in dep["outputs"] if elem[o].startswith("h2o-past")], dep["outputs"]
    handlers = grid(bs, fake_stream, FakeClock())
    n = 2 + app.EXTRA_SLOTS
    old = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    sess = session(bs, [list(old), list(old)])
    *_, last = handlers.submit("hi", ["a"], sess)  # pane b hidden
    assert last[1] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "answer to hi after 1"}]
    assert last[2] == [] and sess.past[:2] == [2, 2]

    out = handlers.settle(sess)  # heads, finished turns, turns in progress, session
    heads, past, live = out[:n], out[n:2 * n], out[2 * n:3 * n]
    assert "ttft" in heads[0] and "ttft" not in heads[1]
    assert past[0] == sess.chats[0] and len(past[0]) == 4 and live[0] == []
    assert past[1] == gr.skip() and live[1] == gr.skip() and sess.past[:2] == [4, 2]
    again = handlers.settle(sess)[n:3 * n]  # nothing left to move
    assert all(v == gr.skip() for v in again)

    # Regenerate takes the last turn back out of the finished turns of the shown panes
    popped = handlers.pop_last(["a"], sess)
    assert popped[0] == "hi" and popped[1] == old and popped[2] == gr.skip() and sess.past[:2] == [2, 2]
    assert popped[1 + n] == [] and sess.chats == [old, old, *([] for _ in range(app.EXTRA_SLOTS))]


def test_a_fresh_page_runs_its_message_code_out_of_sight() -> None:
    """A freshly loaded page ran the code that streams messages into a chatbot for the first time
    with a question's first frame: a chatbot out of sight gets a short streamed exchange as the
    page loads, and is left empty."""
    import asyncio

    demo = build_blocks(backends(), None, None)
    cfg = demo.get_config_file()
    comps = {c["id"]: c for c in cfg["components"]}
    (dep,) = [d for d in cfg["dependencies"] if d["api_name"] == "warm_page"]
    assert [t[1] for t in dep["targets"]] == ["load"] and dep["types"]["generator"]
    (out,) = dep["outputs"]
    assert comps[out]["type"] == "chatbot" and comps[out]["props"]["elem_id"] == "h2o-warm"
    assert dep["inputs"] == [] and dep["show_progress"] == "hidden" and dep["api_visibility"] == "private"
    rule = app.CSS.split(".h2o-warm {")[1].split("}")[0]  # off the page, and not drawn
    assert "position: fixed" in rule and "left: -5000px" in rule and "visibility: hidden" in rule

    async def frames() -> list[Any]:
        return [f async for f in app.warm_page()]

    got = asyncio.run(frames())
    assert [f[-1]["content"] for f in got[:-1]] == list(app.WARM_PAGE_ANSWER) and got[-1] == []


def test_regenerate_stop_and_clear_cancel_nothing() -> None:
    """Regenerate is one listener: pop_last, then the question asked again (also while a
    regenerated turn still ends), then the settling. It cancels nothing: the page sends a
    listener's cancels one at a time, each awaiting the server, and looks each submission up only
    when its turn comes, so a cancel could reach the turn asked again. The turn it takes back
    stops itself (`test_a_regenerated_turn_stops_itself_and_writes_nothing_into_the_next`).
    Stop is one listener, which marks the turn to stop, and cancels nothing either; nor does
    Clear."""
    demo = build_blocks(backends(), None, None)
    cfg = demo.get_config_file()
    deps = cfg["dependencies"]
    elem = {c["id"]: c["props"].get("elem_id") for c in cfg["components"]}
    name = {i: f.name for i, f in demo.fns.items()}
    by_id = {d["id"]: d for d in deps}
    chats = sorted(d["id"] for d in deps if name[d["id"]] == "submit")
    assert len(chats) == 3

    def chain(dep_id: int) -> list[str]:
        after = [d["id"] for d in deps if d.get("trigger_after") == dep_id]
        return [name[after[0]], *chain(after[0])] if after else []

    def clicks(button: str) -> list[dict[str, Any]]:  # in the order the page runs them
        return [d for d in deps if [(elem.get(t[0]), t[1]) for t in d["targets"]] == [(button, "click")]]

    (regen,) = clicks("h2o-regen")
    assert name[regen["id"]] == "pop_last" and not regen["cancels"] and chain(regen["id"]) == ["submit", "settle"]
    (again,) = [d for d in deps if d.get("trigger_after") == regen["id"]]
    assert again["trigger_mode"] == "multiple" and not again["cancels"]
    assert not any(by_id[c]["cancels"] for c in chats)

    (stop,) = clicks("h2o-stop")  # and the turn stops itself (`test_stop_ends_the_turn_...`)
    assert name[stop["id"]] == "stop_turn" and not stop["cancels"] and chain(stop["id"]) == []
    # nor does Clear, or anything else on the page: a turn stops itself when its panes are
    # replaced or Stop marks it
    assert not any(d["cancels"] for d in deps)


def counting(clock: FakeClock) -> Stream:
    """Backends that answer five numbered pieces, 10 ms apart."""
    def fake_stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        for k in range(5):
            clock.sleep(0.01)
            yield f"{message}{k} "
    return fake_stream


def uneven(clock: FakeClock) -> Stream:
    """Backend "a" answers three numbered pieces and the others 500, all 10 ms apart (so the
    others' answers take 5 s)."""
    def fake_stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        for k in range(3 if b.name == "a" else 500):
            clock.sleep(0.01)
            yield f"{message}{k} "
    return fake_stream


def test_a_regenerated_turn_stops_itself_and_writes_nothing_into_the_next() -> None:
    """Regenerate while a turn streams: the turn's own settle moves nothing, pop_last takes the
    turn back out, and the turn, seeing its panes replaced, stops at once by itself: its pane
    still streaming leaves no record and writes nothing into the turn asked again, while the
    answer that had ended before keeps the record it got as it ended."""
    clock = FakeClock()
    bs = backends()[:2]
    handlers = grid(bs, uneven(clock), clock)
    sess = session(bs)
    old = handlers.submit("one", ["a", "b"], sess)
    for _ in old:  # the turn streams until pane a's answer has ended
        if sess.log:
            break
    assert [r["model"] for r in sess.log] == ["a"] and sess.streaming == 1
    handlers.settle(sess)
    assert sess.past == [0, 0, *sess.past[2:]]  # not while a turn streams
    assert handlers.pop_last(["a", "b"], sess)[0] == "one" and sess.chats[:2] == [[], []]
    new = handlers.submit("one", ["a", "b"], sess)  # asked again
    next(new)
    t0 = clock.now()
    for _ in old:  # the old turn's last frames, and its end
        pass
    assert clock.now() - t0 <= turn.POLL  # it stopped itself, long before b's answer would end
    assert sess.streaming == 2  # the old turn's end leaves the new turn streaming
    assert [r["model"] for r in sess.log] == ["a"]  # no record of b's stopped answer
    handlers.settle(sess)
    assert sess.past[:2] == [0, 0]
    *_, last = new
    answer = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "one0 one1 one2 "}]
    assert sess.chats[0] == answer and last[1] == answer
    assert sess.chats[1][-1]["content"] == "".join(f"one{k} " for k in range(500))
    assert [r["model"] for r in sess.log] == ["a", "a", "b"]
    assert sess.streaming is None
    handlers.settle(sess)
    assert sess.past[:2] == [2, 2]


def test_a_turn_taken_back_before_its_first_update_leaves_the_input_box_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regenerate pressed before a turn's first update reached the page: pop_last puts the
    question back in the input box, and the turn taken back must not then empty it (the turn asked
    again reads the question from there)."""
    clock = FakeClock()

    def slow_stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        clock.sleep(2)
        yield "late"

    monkeypatch.setattr(turn, "FIRST_FRAME_WAIT", 1.0)
    bs = backends()[:1]
    handlers = grid(bs, slow_stream, clock)
    sess = session(bs)
    popped: list[Any] = []

    def press_regenerate() -> None:  # while the turn waits for a first piece to go with its question
        clock.sleep(0.3)
        popped.append(handlers.pop_last(["a"], sess))

    clock.spawn(press_regenerate)
    got = list(handlers.submit("one", ["a"], sess))
    assert popped[0][0] == "one"
    assert len(got) == 1 and clock.now() < 2  # it stopped, with one last frame, before the late piece
    assert got[0][0] == gr.skip() and sess.log == []


def test_stop_ends_the_turn_which_keeps_what_its_panes_show() -> None:
    """Stop while a turn streams: the turn stops at once by itself. The answer that had ended
    keeps its record; the one still streaming keeps the text it had, and leaves no record. The
    turn's own settle then moves both to the finished turns."""
    clock = FakeClock()
    bs = backends()[:2]
    handlers = grid(bs, uneven(clock), clock)
    sess = session(bs)
    frames = handlers.submit("one", ["a", "b"], sess)
    for _ in frames:  # the turn streams until pane a's answer has ended
        if sess.log:
            break
    assert app.stop_turn(sess) is None and sess.stop == 1
    t0 = clock.now()
    *_, last = frames
    assert clock.now() - t0 <= turn.POLL  # long before b's answer would end
    kept = sess.chats[1][-1]["content"]
    assert kept.startswith("one0 ") and len(kept) < len("".join(f"one{k} " for k in range(500)))
    assert last[2][-1]["content"] == kept  # the turn's last frame shows what b had
    assert [r["model"] for r in sess.log] == ["a"] and sess.streaming is None
    handlers.settle(sess)
    assert sess.past[:2] == [2, 2]
    # the next turn streams to its end
    *_, last = handlers.submit("two", ["a", "b"], sess)
    assert [r["model"] for r in sess.log] == ["a", "a", "b"]


def test_clear_stops_the_streaming_turn_and_empties_every_pane() -> None:
    """Clear while a turn streams: the turn sees its panes emptied and stops by itself at once,
    showing the empty panes, and its stopped answer leaves no record."""
    clock = FakeClock()
    bs = backends()[1:2]  # "b": an answer of 5 s
    handlers = grid(bs, uneven(clock), clock)
    old = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    sess = session(bs, [list(old)])
    frames = handlers.submit("one", ["b"], sess)
    next(frames)  # the turn streams
    out = handlers.clear_all(sess)
    assert out[0] == [] and sess.streaming is None
    t0 = clock.now()
    late = [f[1] for f in frames]  # what the turn still sends, to its end
    assert clock.now() - t0 <= turn.POLL
    assert late and all(v == [] for v in late) and sess.chats[0] == [] and sess.past[0] == 0
    assert sess.log == []


def test_a_panes_own_clear_button_stops_its_answer_alone() -> None:
    """A pane cleared by its own button while its answer streams: that answer stops, shows no
    more and leaves no record; the other pane answers to the end."""
    clock = FakeClock()
    bs = backends()[:2]
    handlers = grid(bs, counting(clock), clock)
    clear_one = app.on_pane_clear(0)
    sess = session(bs)
    frames = handlers.submit("one", ["a", "b"], sess)
    next(frames)  # the turn streams
    assert clear_one(sess)[:2] == [[], []] and sess.chats[0] == []
    rest = list(frames)
    assert rest and all(f[1] == [] for f in rest)  # pane a stays empty
    assert rest[-1][2][-1]["content"] == "one0 one1 one2 one3 one4 "  # pane b answered whole
    assert [r["model"] for r in sess.log] == ["b"] and sess.chats[0] == []
    assert sess.streaming is None


def test_the_settings_and_an_empty_question_reach_the_session() -> None:
    """A pane's sliders set its own settings, which its next answer is asked with; an empty
    question asks nothing and leaves the panes as they are."""
    clock = FakeClock()
    asked: list[tuple[str, int, float]] = []

    def fake_stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        asked.append((b.name, max_new_tokens, temperature))
        yield "x"

    bs = backends()[:2]
    handlers = grid(bs, fake_stream, clock)
    sess = session(bs)
    assert app.on_setting(1, "max_new_tokens")(99, sess) is sess
    app.on_setting(1, "temperature")(0.5, sess)
    (only,) = list(handlers.submit("  ", ["a", "b"], sess))
    assert only[0] == "" and only[-1] is sess and sess.turns == 0 and not asked
    list(handlers.submit("q", ["a", "b"], sess))
    assert sorted(asked) == [("a", 16, 0.0), ("b", 99, 0.5)]


def test_the_nochat_api_and_the_grid_hold_an_on_demand_model_while_it_answers() -> None:
    import ast

    held: list[str] = []

    def hold(name: str, tell: Any, given_up: Any) -> Any:
        if name == "down":
            raise RuntimeError("model down could not be started: exited while starting (503, retry after 10 s)")
        held.append(f"hold {name}")
        return lambda: held.append(f"release {name}")

    def fake_stream(b: Pane, history: Any, message: str, max_new_tokens: int, temperature: float) -> Any:
        held.append(f"stream {b.name}")
        yield "ok"

    bs = backends()[:1]
    handlers = Grid(bs, None, stream=fake_stream, clock=FakeClock(), hold=hold)
    out = ast.literal_eval(handlers.submit_nochat_api("hi"))
    assert out["response"] == "ok" and held == ["hold a", "stream a", "release a"]
    down = Grid([Pane(Endpoint("down", "openai", "http://127.0.0.1:9", "down", "vllm"))], None, stream=fake_stream,
                clock=FakeClock(), hold=hold)
    out = ast.literal_eval(down.submit_nochat_api("hi"))
    assert out["response"] == "" and "could not be started" in out["error"] and "stream down" not in held
