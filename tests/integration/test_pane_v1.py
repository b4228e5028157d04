"""One model, one behaviour: the built-in front's pane (its client code) and its /v1 gateway give the same
greedy answer, per backend kind, streaming and not. vLLM with a prompt type is asked through completions
with h2oGPT's prompt by both; TGI's stop strings are cut the same way by both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import H2O, free_port, marked_processes, tgi_standin, wait_for

pytestmark = pytest.mark.integration
QUESTION = "Who are you?"


# the TGI stand-in's prompt, as h2oGPT's prompt_dict
TGI_PROMPT = (', prompt_type: custom, prompt_dict: {PreInput: null, PreInstruct: "<human>: ", '
              'PreResponse: "<bot>:", terminate_response: [" text gen"]}')

def test_pane_and_v1_answer_alike(h2o: H2O, write_stack, stack_name: str, tiny_model: Path,
                                  vllm_python: str) -> None:
    from h2ostack.api import load_plan
    from h2ostack.front.app import backends_from_plan
    from h2ostack.front.clients import stream_answer

    ports = {k: free_port() for k in ("tiny", "tgi", "vllm", "gw")}
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  tiny: {{kind: transformers, model: {tiny_model}, port: {ports['tiny']}}}
  tgi: {tgi_standin(ports['tgi'], extra=TGI_PROMPT)}
  vllm:
    kind: vllm
    python: {vllm_python}
    model: {tiny_model}
    port: {ports['vllm']}
    prompt_type: human_bot
    args: {{served_model_name: tiny-vllm, dtype: float32, max_model_len: 256, gpu_memory_utilization: 0.1}}
    env: {{VLLM_CPU_KVCACHE_SPACE: '1'}}
fronts:
  chat: {{models: [tiny, tgi, vllm]}}
""")
    up = h2o("up", str(path), "tiny", "tgi", "vllm", timeout=900)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-4000:]
    gw = subprocess.Popen([sys.executable, "-m", "h2ostack.gateway", str(path), "--front", "chat", "--port",
                           str(ports["gw"])], env=h2o.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{ports['gw']}/v1"
        wait_for(lambda: _answers(base + "/models"), 60, "the gateway")
        stack, _, plan = load_plan(str(path), check_ports=False)
        panes = {b.name: b for b in backends_from_plan(plan, stack, ["tiny", "tgi", "vllm"])}
        assert (panes["tiny"].endpoint.chat, panes["vllm"].endpoint.chat) == (True, False)  # the rule, as the pane applies it
        client = openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=120)
        for name, pane in panes.items():
            in_pane = "".join(stream_answer(pane, [], QUESTION, 8, 0.0))
            whole = client.chat.completions.create(model=name, messages=[{"role": "user", "content": QUESTION}],
                                                   max_tokens=8, temperature=0).choices[0].message.content
            streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": QUESTION}], max_tokens=8, temperature=0,
                stream=True) if c.choices)
            assert in_pane.strip(), name
            assert (whole, streamed) == (in_pane, in_pane), name
        # the TGI stop string was cut by both (the stand-in stops after it, as TGI does, and returns it)
        assert "".join(stream_answer(panes["tgi"], [], QUESTION, 8, 0.0)) == "Hello from the stand-in of"
    finally:
        gw.terminate()
        gw.wait(10)
        h2o("down", str(path), timeout=180)
    assert marked_processes(h2o.state_dir, stack_name) == []


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, trust_env=False).status_code in (200, 401)
    except httpx.HTTPError:
        return False
