"""The h2oGPT front as planned: where it listens, its generate.py options, its credentials (environment
only), and every `--model_lock` endpoint form of the guide."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from h2ostack.backends import h2ogpt
from h2ostack.facts import Facts
from h2ostack.loader import StackError, load_text
from h2ostack.plan import PlanError, make_plan
from h2ostack.spec import SecretStr, reveal

ENV = {"TGI_TOKEN": "tgi-secret", "H_PASS": "h-secret", "OPENAI_KEY": "sk-secret", "FRONT_PW": "pw-secret",
       "ADMIN": "admin-secret", "API1": "key-one", "VKEY": "vllm-secret"}
SECRETS = [v for k, v in ENV.items()]


def plan(text: str, bind: str = "127.0.0.1"):
    s = load_text(textwrap.dedent(text).replace("BIND", bind), "s.yaml", ENV, Path("/stacks"))
    return make_plan(s, Facts((), "none", frozenset(), "/py", {}))


def lock_of(front) -> list[dict]:
    """The model_lock as h2oGPT reads it: argv, else its `model_lock` environment variable."""
    for arg in front.command:
        if arg.startswith("--model_lock="):
            return ast.literal_eval(arg.split("=", 1)[1])
    return ast.literal_eval(reveal(front.env["model_lock"]))


MIXED = """\
    name: g
    defaults: {bind: BIND}
    services:
      tgi_auth: {kind: tgi, url: "https://tgi.example:6112", model: h2oai/h2ogpt-oasst1-512-12b,
                 auth: {user: me, token: "${TGI_TOKEN}"}}
      tgi_plain: {kind: tgi, url: "http://192.168.1.46:6114", model: h2oai/h2ogpt-oasst1-512-20b}
      remote_h2o: {kind: h2ogpt, url: "http://192.168.1.46:7860", model: h2oai/h2ogpt-oasst1-512-12b,
                   auth: {user: jon, token: "${H_PASS}"}}
      vllm_known: {kind: vllm, url: "http://10.0.0.2:5000", model: h2oai/h2ogpt-research-oasst1-llama-65b}
      vllm_chat: {kind: vllm, url: "http://10.0.0.3:5001", model: Qwen/Qwen2.5-7B-Instruct}
      vllm_key: {kind: vllm, url: "https://llm.example/api", model: m/x, api_key: "${VKEY}",
                 prompt_type: plain}
      custom: {kind: vllm, url: "http://10.0.0.4:5002", model: foo_model, prompt_type: custom,
               prompt_dict: {PreInput: null, PreInstruct: "", PreResponse: "<bot>:", botstr: "<bot>:",
                             chat_sep: "\\n", humanstr: "<human>:", promptA: "<human>: ", promptB: "<human>: ",
                             terminate_response: ["<human>:", "<bot>:"]}}
      gpt: {kind: openai, model: gpt-3.5-turbo, url: "https://proxy.example/v1", api_key: "${OPENAI_KEY}"}
    fronts:
      h:
        kind: h2ogpt
        python: /h/py
        port: 7861
        models: [tgi_auth, tgi_plain, remote_h2o, vllm_known, vllm_chat, vllm_key, custom, gpt]
        columns: 4
        args: {max_new_tokens: 512, max_max_new_tokens: 4096, langchain_mode: UserData, height: 500,
               score_model: None, h2ocolors: false}
        auth: {user: admin, password: "${FRONT_PW}"}
        admin_pass: "${ADMIN}"
        api_keys: ["${API1}"]
    """


def test_every_endpoint_form_with_its_credentials() -> None:
    front = plan(MIXED).fronts["h"]
    lock = lock_of(front)
    assert [e["inference_server"] for e in lock] == [
        "https://tgi.example:6112    me    tgi-secret",          # the guide's `URL    USER    AUTH`
        "http://192.168.1.46:6114",
        "http://192.168.1.46:7860:jon:h-secret",                # gradio: URL:PORT:USER:PASSWORD
        "vllm:10.0.0.2:5000",                                   # a known prompt type: completions
        "vllm_chat:10.0.0.3:5001",                              # unknown: the server's chat template
        "vllm:https://llm.example:None:/api/v1:vllm-secret",    # scheme, path and key (set_openai's form)
        "vllm:10.0.0.4:5002",
        "openai_chat"]
    assert lock[3]["prompt_type"] == "human_bot" and "prompt_type" not in lock[4]
    assert lock[6]["prompt_type"] == "custom"
    assert lock[6]["prompt_dict"] == {"PreInput": None, "PreInstruct": "", "PreResponse": "<bot>:",
                                      "botstr": "<bot>:", "chat_sep": "\n", "humanstr": "<human>:",
                                      "promptA": "<human>: ", "promptB": "<human>: ",
                                      "terminate_response": ["<human>:", "<bot>:"]}
    # the secrets are in the environment h2oGPT reads, never in argv or the printed plan
    argv = " ".join(front.command)
    assert not any(s in argv for s in SECRETS), argv
    assert isinstance(front.env["model_lock"], SecretStr)
    assert reveal(front.env["OPENAI_API_KEY"]) == "sk-secret"
    assert front.env["OPENAI_BASE_URL"] == "https://proxy.example/v1"
    assert ast.literal_eval(reveal(front.env["H2OGPT_AUTH"])) == [("admin", "pw-secret")]
    assert reveal(front.env["ADMIN_PASS"]) == "admin-secret"
    assert ast.literal_eval(reveal(front.env["H2OGPT_H2OGPT_API_KEYS"])) == ["key-one"]
    printed = str(plan(MIXED).to_json())
    assert not any(s in printed for s in SECRETS)
    # options: where it listens, auth closed to the listed user, the admin API, keys enforced, args
    for flag in ("--server_name=127.0.0.1", "--auth_access=closed", "--guest_name=", "--system_api_open=True",
                 "--enforce_h2ogpt_api_key=True", "--max_new_tokens=512", "--max_max_new_tokens=4096",
                 "--langchain_mode=UserData", "--height=500", "--score_model=None", "--h2ocolors=False",
                 "--model_lock_columns=4"):
        assert flag in front.command, flag


def test_server_name_follows_bind() -> None:
    assert "--server_name=0.0.0.0" in plan(MIXED, bind="0.0.0.0").fronts["h"].command


def test_the_guides_model_lock_is_kept_byte_for_byte_in_argv_without_secrets() -> None:
    front = plan("""\
        name: g
        services:
          a: {kind: tgi, url: "http://192.168.1.46:6112", model: h2oai/h2ogpt-oasst1-512-12b}
          b: {kind: tgi, url: "http://192.168.0.1:7000", model: h2oai/h2ogpt-research-oasst1-llama-65b,
              prompt_type: human_bot}
          c: {kind: openai, model: gpt-3.5-turbo}
        fronts:
          h: {kind: h2ogpt, python: /h/py, models: [a, b, c], columns: 4}
        """).fronts["h"]
    assert [a for a in front.command if a.startswith("--model_lock=")] == [
        "--model_lock=[{'inference_server':'http://192.168.1.46:6112','base_model':'h2oai/h2ogpt-oasst1-512-12b'},"
        "{'inference_server':'http://192.168.0.1:7000','base_model':'h2oai/h2ogpt-research-oasst1-llama-65b',"
        "'prompt_type':'human_bot'},{'inference_server':'openai_chat','base_model':'gpt-3.5-turbo'}]"]
    assert "model_lock" not in front.env and "OPENAI_BASE_URL" not in front.env


@pytest.mark.parametrize("key", ["server_name", "auth", "model_lock", "h2ogpt_api_keys", "server_port"])
def test_args_cannot_bypass_the_fronts_own_fields(key: str) -> None:
    with pytest.raises(StackError) as info:  # a secret's name is refused at load, the others when planned
        plan(f"""\
            name: g
            services: {{a: {{kind: tgi, url: "http://h:1", model: m}}}}
            fronts: {{h: {{kind: h2ogpt, python: /h/py, models: [a], args: {{{key}: x}}}}}}
            """)
    said = str(info.value)
    assert "s.yaml:3:" in said
    assert f"`{key}` is set by the front's" in said or ("carries a secret" in said and "set `" in said)


def test_two_openai_endpoints_with_different_keys_are_refused() -> None:
    with pytest.raises(PlanError) as info:
        plan("""\
            name: g
            services:
              a: {kind: openai, model: gpt-4, api_key: "${OPENAI_KEY}"}
              b: {kind: openai, model: m, url: "http://other/v1", api_key: "${VKEY}"}
            fronts: {h: {kind: h2ogpt, python: /h/py, models: [a, b]}}
            """)
    assert "one OpenAI URL and api_key" in str(info.value)
    assert "sk-secret" not in str(info.value)


def test_args_on_the_builtin_front_are_refused() -> None:
    with pytest.raises(StackError) as info:
        load_text("name: g\nservices: {a: {kind: openai, model: m}}\nfronts: {c: {models: [a], args: {x: 1}}}\n",
                  "s.yaml", {}, Path("/s"))
    assert "generate.py options of an h2ogpt front" in str(info.value)


@pytest.mark.parametrize(("text", "expect"), [
    ("prompt_type: human_bott", "unknown prompt type 'human_bott' (did you mean 'human_bot'?)"),
    ("prompt_type: custom", "prompt_type custom needs a `prompt_dict:`"),
    ("prompt_dict: {PreInstrct: x}", "unknown prompt_dict key 'PreInstrct' (did you mean 'PreInstruct'?)"),
])
def test_prompt_type_and_dict_are_checked_at_load(text: str, expect: str) -> None:
    with pytest.raises(StackError) as info:
        load_text(f"name: g\nservices:\n  a: {{kind: vllm, model: m, {text}}}\n", "s.yaml", {}, Path("/s"))
    assert expect in str(info.value) and "s.yaml:3:" in str(info.value)


def test_literal_round_trips() -> None:
    value = [{"a": "it's \\ \"q\"\nx", "b": None, "c": ["x", "y"], "d": ("u", "p")}]
    assert ast.literal_eval(h2ogpt.literal(value)) == value


def test_plan_says_how_each_model_is_wired_without_secrets() -> None:
    wiring = plan(MIXED).to_json()["fronts"][0]["wiring"]
    assert wiring["vllm_known"] == "vllm:10.0.0.2:5000 (completions, prompt built by h2oGPT as human_bot)"
    assert wiring["vllm_chat"] == "vllm_chat:10.0.0.3:5001 (chat completions, the server's chat template)"
    assert wiring["tgi_auth"].startswith("https://tgi.example:6112    me    ***")
    assert not any(s in str(wiring) for s in SECRETS)
