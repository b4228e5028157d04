"""Prompt types, stop lists, partial-stop trimming, model-name inference, server strings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from h2ostack.front.servers import Server, parse_server
from h2ostack.prompts import (
    PROMPT_TYPES,
    build_prompt,
    gateway_prompt,
    infer_prompt_type,
    messages_to_turns,
    trim_partial_stop,
)
from h2ostack.protocols.endpoint import Endpoint
from h2ostack.protocols.endpoint import trimmed as _trimmed

EXPECTED = {
    "plain": ("hi hello\nhow are you?", []),
    "human_bot": ("<human>: hi\n<bot>: hello\n<human>: how are you?\n<bot>:",
                  ["\n<human>:", "\n<bot>:", "<human>:", "<bot>:"]),
    "prompt_answer": ("<|prompt|>hi<|endoftext|><|answer|> hello<|endoftext|><|prompt|>how are you?"
                      "<|endoftext|><|answer|>",
                      ["<|prompt|>", "<|answer|>", "<|endoftext|>", "<|endoftext|><|answer|>"]),
    "mptchat": ("<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. The assistant "
                "gives helpful and honest answers.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>"
                "assistant\n hello<|im_end|>\n<|im_start|>user\nhow are you?<|im_end|>\n<|im_start|>assistant\n",
                ["<|im_end|>", "<|im_end|>\n<|im_start|>assistant\n"]),
    "falcon": ("User: hi\nAssistant: hello\n\nUser: how are you?\nAssistant:",
               ["\nUser:", "<|endoftext|>", "\nAssistant:"]),
    "vicuna11": ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions. USER: hi ASSISTANT: hello</s>"
                 "USER: how are you? ASSISTANT:", ["USER:", "ASSISTANT:", " ASSISTANT:"]),
    "llama2": ("<s>[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant. Always answer as helpfully "
               "as possible, while being safe.\n<</SYS>>\n\nhi [/INST] hello </s><s>[INST] how are you? [/INST]",
               ["[INST]", "</s>", " [/INST]"]),
    "instruct_vicuna": ("A chat between a curious human and an artificial intelligence assistant. The assistant "
                        "gives helpful, detailed, and polite answers to the human's questions.\n### Human: hi\n"
                        "### Assistant: hello\n### Human: how are you?\n### Assistant:",
                        ["### Human:", "### Assistant:", "\n### Assistant:"]),
    "wizard2": ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                "request.\n\n### Instruction:\nhi\n### Response:\n hello\n\n### Instruction:\nhow are you?\n"
                "### Response:\n", ["\n### Instruction:", "\n### Response:", "\n### Response:\n"]),
}


@pytest.mark.parametrize("prompt_type", list(EXPECTED))
def test_prompt_types_exact(prompt_type: str) -> None:
    assert build_prompt([("hi", "hello")], "how are you?", prompt_type) == EXPECTED[prompt_type]


def test_every_prompt_type_is_tested() -> None:
    assert set(PROMPT_TYPES) == set(EXPECTED)


def test_custom_prompt_dict() -> None:
    custom = {"PreInstruct": "Q: ", "PreResponse": "\nA:", "terminate_response": ["\nQ:"], "chat_turn_sep": "\n"}
    assert build_prompt([], "2+2?", None, custom) == ("Q: 2+2?\nA:", ["\nQ:", "\nA:"])


def test_unknown_prompt_type() -> None:
    with pytest.raises(ValueError, match="unknown prompt type 'nope'"):
        build_prompt([], "x", "nope")


@pytest.mark.parametrize(("model", "expected"), [
    ("h2oai/h2ogpt-oasst1-512-12b", "human_bot"), ("h2oai/h2ogpt-oasst1-512-20b", "human_bot"),
    ("h2oai/h2ogpt-research-oasst1-llama-65b", "human_bot"), ("h2oai/h2ogpt-oasst1-falcon-40b", "human_bot"),
    ("h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v2", "prompt_answer"),
    ("h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v2", "prompt_answer"), ("mosaicml/mpt-30b-chat", "mptchat"),
    ("tiiuae/falcon-40b-instruct", "falcon"), ("lmsys/vicuna-33b-v1.3", "vicuna11"),
    ("meta-llama/Llama-2-70b-chat-hf", "llama2"), ("some/unknown-model", None)])
def test_inferred_from_model_names(model: str, expected: str | None) -> None:
    assert infer_prompt_type(model) == expected


def test_trailing_partial_stops_are_trimmed() -> None:
    stops = EXPECTED["human_bot"][1]
    assert trim_partial_stop("The answer is 4.\n<hum", stops) == "The answer is 4."
    assert trim_partial_stop("The answer is 4.\n<human>: and more", stops) == "The answer is 4."
    assert trim_partial_stop("The answer is 4.", stops) == "The answer is 4."
    assert "".join(_trimmed(iter(["The ans", "wer.\n<hu", "man>: next"]), stops)) == "The answer."


def test_messages_to_turns_and_gateway_prompt() -> None:
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "how are you?"}]
    assert messages_to_turns(msgs) == ([("hi", "hello")], "how are you?")

    route = Endpoint("r", "tgi", "http://127.0.0.1:9", "h2oai/h2ogpt-oasst1-512-12b")
    assert gateway_prompt(msgs, route) == EXPECTED["human_bot"]


@pytest.mark.parametrize(("text", "expected"), [
    ("http://gpu-box:7680", Server("http", "http://gpu-box:7680")),
    ("https://tgi.example.com/", Server("http", "https://tgi.example.com")),
    ("vllm:10.0.0.5:5000", Server("vllm", "http://10.0.0.5:5000")),
    ("vllm_chat:localhost:8000", Server("vllm_chat", "http://localhost:8000")),
    ("openai_chat", Server("openai_chat", "https://api.openai.com/v1")),
    ("https://host:443    alice    tok123", Server("http", "https://host:443", "alice", "tok123")),
])
def test_server_strings(text: str, expected: Server) -> None:
    assert parse_server(text) == expected


def test_server_auth_header() -> None:
    assert parse_server("http://h:1    u    t").headers == {"authorization": "u t"}


@pytest.mark.parametrize("text", ["", "ftp://x", "vllm:host", "vllm:host:99999", "http://h:1    onlyuser",
                                  "gpu-box:7680", "http://bad host:1"])
def test_bad_server_strings(text: str) -> None:
    with pytest.raises(ValueError):
        parse_server(text)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60))
def test_server_parser_fuzz(text: str) -> None:
    try:
        parse_server(text)
    except ValueError as exc:
        assert str(exc)


@pytest.mark.parametrize("pieces", [["The ans", "wer.\n<hu", "man>: next"], list("The answer.\n<human>: next"),
                                    ["The answer.\n<human>: next"], ["The answer.\n<hu"]])
def test_the_gateways_trimmer_cuts_as_the_pane_does(pieces: list[str]) -> None:
    from h2ostack.prompts import StopTrimmer

    stops = ["\n<human>:", "\n<bot>:"]
    trim = StopTrimmer(stops)
    shown = "".join(trim.push(p) for p in pieces) + trim.end()
    assert shown == "".join(_trimmed(iter(pieces), stops)) == "The answer."
    assert trim.push("more") == "" and trim.end() == ""
