"""h2oGPT's prompt types: how a conversation becomes one prompt string, and where to stop.

For servers with no chat template of their own (TGI's native API, vLLM's completions): the
prompt is built here from the prompt type, the stop sequences sent are its terminate_response
plus PreResponse, and a trailing partial stop string is trimmed from the answer (h2oGPT's
fix_text). A custom `prompt_dict` takes the same keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

KEYS = ("promptA", "promptB", "PreInstruct", "PreInput", "PreResponse", "terminate_response", "chat_sep",
        "chat_turn_sep", "humanstr", "botstr")

MPT_SYSTEM = ("<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. The assistant gives "
              "helpful and honest answers.<|im_end|>\n")
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions. ")
LLAMA2_SYSTEM = ("You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
                 "while being safe.")

PROMPT_TYPES: dict[str, dict[str, Any]] = {
    "plain": dict(promptA="", promptB="", PreInstruct="", PreInput=None, PreResponse="", terminate_response=[],
                  chat_sep="\n", chat_turn_sep="\n", humanstr="", botstr=""),
    "human_bot": dict(promptA="", promptB="", PreInstruct="<human>: ", PreInput=None, PreResponse="\n<bot>:",
                      terminate_response=["\n<human>:", "\n<bot>:", "<human>:", "<bot>:"], chat_sep="\n",
                      chat_turn_sep="\n", humanstr="<human>:", botstr="<bot>:"),
    "prompt_answer": dict(promptA="", promptB="", PreInstruct="<|prompt|>", PreInput=None,
                          PreResponse="<|endoftext|><|answer|>",
                          terminate_response=["<|prompt|>", "<|answer|>", "<|endoftext|>"],
                          chat_sep="<|endoftext|>", chat_turn_sep="<|endoftext|>", humanstr="<|prompt|>",
                          botstr="<|answer|>"),
    "mptchat": dict(promptA=MPT_SYSTEM, promptB=MPT_SYSTEM, PreInstruct="<|im_start|>user\n", PreInput=None,
                    PreResponse="<|im_end|>\n<|im_start|>assistant\n", terminate_response=["<|im_end|>"],
                    chat_sep="<|im_end|>\n", chat_turn_sep="<|im_end|>\n", humanstr="<|im_start|>user",
                    botstr="<|im_start|>assistant"),
    "falcon": dict(promptA="", promptB="", PreInstruct="User: ", PreInput=None, PreResponse="\nAssistant:",
                   terminate_response=["\nUser:", "<|endoftext|>"], chat_sep="\n\n", chat_turn_sep="\n\n",
                   humanstr="User:", botstr="Assistant:"),
    "vicuna11": dict(promptA=VICUNA_SYSTEM, promptB=VICUNA_SYSTEM, PreInstruct="USER: ", PreInput=None,
                     PreResponse=" ASSISTANT:", terminate_response=["USER:", "ASSISTANT:"], chat_sep=" ",
                     chat_turn_sep="</s>", humanstr="USER:", botstr="ASSISTANT:"),
    "llama2": dict(promptA=f"<s>[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\n", promptB="<s>[INST] ",
                   PreInstruct="", PreInput=None, PreResponse=" [/INST]", terminate_response=["[INST]", "</s>"],
                   chat_sep=" ", chat_turn_sep=" </s><s>[INST] ", humanstr="[INST]", botstr="[/INST]"),
    "instruct_vicuna": dict(promptA="A chat between a curious human and an artificial intelligence assistant. "
                                    "The assistant gives helpful, detailed, and polite answers to the human's "
                                    "questions.\n", promptB="", PreInstruct="### Human: ", PreInput=None,
                            PreResponse="\n### Assistant:", terminate_response=["### Human:", "### Assistant:"],
                            chat_sep="\n", chat_turn_sep="\n", humanstr="### Human:", botstr="### Assistant:"),
    "wizard2": dict(promptA="Below is an instruction that describes a task. Write a response that appropriately "
                            "completes the request.\n", promptB="", PreInstruct="\n### Instruction:\n",
                    PreInput=None, PreResponse="\n### Response:\n",
                    terminate_response=["\n### Instruction:", "\n### Response:"], chat_sep="\n",
                    chat_turn_sep="\n", humanstr="### Instruction:", botstr="### Response:"),
}

# model names from the guide -> prompt type (h2oGPT's own table for these models)
KNOWN_MODELS = {
    "h2oai/h2ogpt-oasst1-512-12b": "human_bot", "h2oai/h2ogpt-oasst1-512-20b": "human_bot",
    "h2oai/h2ogpt-oig-oasst1-512-6_9b": "human_bot", "h2oai/h2ogpt-research-oasst1-llama-65b": "human_bot",
    "h2oai/h2ogpt-oasst1-falcon-40b": "human_bot",
    "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v2": "prompt_answer",
    "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v2": "prompt_answer",
    "mosaicml/mpt-30b-chat": "mptchat", "tiiuae/falcon-40b-instruct": "falcon",
    "tiiuae/falcon-7b-instruct": "falcon", "lmsys/vicuna-33b-v1.3": "vicuna11",
    "meta-llama/Llama-2-70b-chat-hf": "llama2", "meta-llama/Llama-2-13b-chat-hf": "llama2",
    "meta-llama/Llama-2-7b-chat-hf": "llama2",
}


def infer_prompt_type(model: str | None) -> str | None:
    """The prompt type for a known model name, else None (use the server's chat template, or plain)."""
    if not model:
        return None
    if model in KNOWN_MODELS:
        return KNOWN_MODELS[model]
    low = model.lower()
    if "llama-2" in low and "chat" in low:
        return "llama2"
    if "vicuna" in low:
        return "vicuna11"
    if "mpt" in low and "chat" in low:
        return "mptchat"
    if "falcon" in low and "instruct" in low:
        return "falcon"
    return None


def prompt_dict_for(prompt_type: str | None, prompt_dict: Mapping[str, Any] | None = None) -> dict[str, Any]:
    if prompt_dict:
        base = dict(PROMPT_TYPES["plain"])
        base.update(prompt_dict)
        if isinstance(base.get("terminate_response"), str):
            base["terminate_response"] = [base["terminate_response"]]
        return base
    if prompt_type not in PROMPT_TYPES:
        raise ValueError(f"unknown prompt type {prompt_type!r}; one of {', '.join(PROMPT_TYPES)} or a prompt_dict")
    return dict(PROMPT_TYPES[prompt_type])


def build_prompt(history: Sequence[tuple[str, str]], message: str, prompt_type: str | None = "plain",
                 prompt_dict: Mapping[str, Any] | None = None) -> tuple[str, list[str]]:
    """(earlier turns as (user, bot), the new message) -> (prompt, stop sequences)."""
    d = prompt_dict_for(prompt_type, prompt_dict)
    pre, response, turn_sep = (d.get(k) or "" for k in ("PreInstruct", "PreResponse", "chat_turn_sep"))
    parts = [d.get("promptA") or ""]
    for user, bot in history:
        parts.append(f"{pre}{user}{response} {bot}{turn_sep}")
    parts.append(f"{pre}{message}{response}")
    return "".join(parts), stops_for(d)


def stops_for(d: Mapping[str, Any]) -> list[str]:
    stops = [*(d.get("terminate_response") or []), d.get("PreResponse") or ""]
    return [s for s in dict.fromkeys(stops) if s.strip()]


def trim_partial_stop(text: str, stops: Sequence[str]) -> str:
    """Cut a stop string, or a trailing start of one, from the end of an answer."""
    for stop in stops:
        at = text.find(stop)
        if at >= 0:
            text = text[:at]
    for stop in stops:
        for n in range(min(len(stop), len(text)), 0, -1):
            if text.endswith(stop[:n]) and stop[:n].strip():
                text = text[: -n]
                break
    return text.rstrip() if stops else text


def messages_to_turns(messages: Sequence[Mapping[str, Any]]) -> tuple[list[tuple[str, str]], str]:
    """OpenAI-style messages -> (completed (user, assistant) turns, the last user message)."""
    turns: list[tuple[str, str]] = []
    pending: str | None = None
    last = ""
    for m in messages:
        role, content = m.get("role"), str(m.get("content") or "")
        if role == "user":
            if pending is not None:
                turns.append((pending, ""))
            pending, last = content, content
        elif role == "assistant" and pending is not None:
            turns.append((pending, content))
            pending = None
    if pending is None and turns:
        last = ""
    return turns, last if pending is not None else ""


def gateway_prompt(messages: Sequence[Mapping[str, Any]], route: Any) -> tuple[str, list[str]]:
    """For the gateway's TGI translation: a chat request as one prompt by the route's prompt type."""
    turns, message = messages_to_turns(messages)
    prompt_type = route.prompt_type or infer_prompt_type(route.served_model) or "plain"
    return build_prompt(turns, message, prompt_type, route.prompt_dict)


def known_prompt_type(prompt_type: str | None, model: str | None) -> str | None:
    """The prompt type given, or the one known for the model (None: neither). Which kinds are asked
    with it through completions is their backend's say: `h2ostack.backends.completion_prompt_type`."""
    return prompt_type or infer_prompt_type(model)


class StopTrimmer:
    """A stream's pieces with the stop strings cut as the panes show them: a piece is held back while
    its tail could be the start of a stop string; after a stop string, nothing more."""

    def __init__(self, stops: Sequence[str]):
        self.stops = list(stops)
        self.hold = max((len(s) for s in self.stops), default=0)
        self.text, self.sent, self.done = "", 0, False

    def push(self, piece: str) -> str:
        """What may be shown now of the text so far (`done` turns true at a stop string)."""
        if self.done:
            return ""
        if not self.stops:
            return piece
        self.text += piece
        if any(s in self.text for s in self.stops):
            self.done = True
            return self._upto(trim_partial_stop(self.text, self.stops))
        return self._upto(self.text[: max(0, len(self.text) - self.hold)])

    def end(self) -> str:
        """The rest, once the stream ended."""
        if self.done or not self.stops:
            return ""
        self.done = True
        return self._upto(trim_partial_stop(self.text, self.stops))

    def _upto(self, shown: str) -> str:
        out = shown[self.sent:] if len(shown) > self.sent else ""
        self.sent = max(self.sent, len(shown))
        return out
