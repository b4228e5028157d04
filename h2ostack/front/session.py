"""What a page of the compare grid holds on the server (one `gr.State` per page)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from h2ostack.front.clients import Pane

Message = dict[str, str]  # {"role": ..., "content": ...}, as the Chatbot takes it


@dataclass
class Session:
    """A page's session, kept on the server in one State: the models of its panes (`slots`, the
    stack's and those added), each pane's conversation and settings, each pane's last timings
    (shown in its header) and the turns for the JSONL export. Not read from the page: Gradio's
    page copies every input of an event (a chatbot: its whole history) to send it, and refreshes
    the loading status of each input on every streamed update, copying its value again, about 1 ms
    per input on this page. With the chatbots, sliders and five States as inputs that was 30
    copies per update; in a profile of a 4-pane answer they took 16% of the page's time and the
    panes' updates waited behind them."""

    slots: list[dict[str, Any] | None]  # each pane's model (a Pane as a dict), None: a free pane
    chats: list[list[Message]]  # each pane's conversation
    past: list[int]  # how many messages of each conversation its finished-turns chatbot shows
    settings: list[dict[str, float]]  # each pane's max_new_tokens and temperature
    # the turn streaming now (its number), if any: its panes' turn in progress is its own, and no
    # `settle` moves it
    streaming: int | None = None
    turns: int = 0  # how many turns were asked
    stop: int | None = None  # the turn Stop was pressed for: it stops itself at its next pass
    stats: dict[int, dict[str, Any]] = field(default_factory=dict)  # each pane's last timings
    log: list[dict[str, Any]] = field(default_factory=list)  # the answers, for the JSONL export

    @classmethod
    def fresh(cls, backends: list[Pane], extra: int, max_new_tokens: int = 256,
              temperature: float = 0.0) -> Session:
        """A new page's session: a pane per model of the front, `extra` free panes."""
        n = len(backends) + extra
        return cls(slots=[b.slot() for b in backends] + [None] * extra, chats=[[] for _ in range(n)],
                   past=[0] * n,
                   settings=[{"max_new_tokens": max_new_tokens, "temperature": temperature} for _ in range(n)])


def in_progress(chats: list[list[Message]], past: list[int]) -> list[list[Message]]:
    """Each pane's turn in progress: the messages of its conversation that its finished-turns
    chatbot does not show."""
    return [h[p:] for h, p in zip(chats, past, strict=True)]


def active(slots: list[dict[str, Any] | None], n_fixed: int, visible: list[str]) -> list[int]:
    """The panes a question goes to: the front's models shown, and every model added."""
    return [i for i, s in enumerate(slots) if s is not None and (i >= n_fixed or s["name"] in visible)]
