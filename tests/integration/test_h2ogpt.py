"""h2oGPT itself (0.2.1, pip-installed, scripts/h2ogpt-env.sh): its generate.py started by `up` as a
service that loads a model, and as a front (`--model_lock`) over a real streaming server."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import openai
import pytest

from h2ostack.backends.h2ogpt import RUN_INSTALLED
from h2ostack.protocols.h2ogpt import h2ogpt_client
from h2ostack.spec import reveal
from tests.conftest import H2O, H2OGPTEnv, free_port, marked_processes

pytestmark = pytest.mark.integration


def nochat(url: str, question: str = "Hello, how are you?") -> dict:
    client = h2ogpt_client(url)
    try:
        out = client.predict(str({"instruction": question, "max_new_tokens": 8}), api_name="/submit_nochat_api")
    finally:
        client.close()
    parsed = ast.literal_eval(out)
    assert isinstance(parsed, dict), out
    return parsed


def started_commands(h2o: H2O, stack: str) -> dict[str, str]:
    """The command line of each live process `up` started, by the service it serves."""
    import psutil

    out = {}
    for pid, _ in marked_processes(h2o.state_dir, stack):
        proc = psutil.Process(pid)
        out[proc.environ()["H2OSTACK_SERVICE"]] = " ".join(proc.cmdline())
    return out


def test_h2ogpt_service_behind_the_builtin_front(h2o: H2O, write_stack, stack_name: str, tiny_model: Path,
                                                 h2ogpt_env: H2OGPTEnv) -> None:
    ports = {k: free_port() for k in ("own", "tiny", "chat")}
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  own:
    kind: h2ogpt
    python: {h2ogpt_env.python}
    model: {h2ogpt_env.model}
    prompt_type: plain
    port: {ports['own']}
    env: {h2ogpt_env.env}
  tiny: {{kind: transformers, model: {tiny_model}, port: {ports['tiny']}}}
fronts:
  chat: {{port: {ports['chat']}, models: [own, tiny]}}
""")
    up = h2o("up", str(path), timeout=900)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-4000:]
    rows = h2o.status(str(path))
    assert {n: (r["state"], r["health"]) for n, r in rows.items()} == {
        "own": ("running", "healthy"), "tiny": ("running", "healthy"), "chat": ("running", "healthy")}
    assert rows["own"]["kind"] == "h2ogpt"
    # every started server and the front listen only on the planned address
    assert listening(h2o, stack_name) == {"own": {"127.0.0.1"}, "tiny": {"127.0.0.1"}, "chat": {"127.0.0.1"}}
    # generate.py of the installed package, no checkout, with the flags h2oGPT needs here
    own = started_commands(h2o, stack_name)["own"]
    assert RUN_INSTALLED in own and f"--base_model={h2ogpt_env.model}" in own
    assert "--openai_server=False --function_server=False" in own

    # h2oGPT answers itself...
    direct = nochat(f"http://127.0.0.1:{ports['own']}")
    assert isinstance(direct["response"], str) and direct["response"].strip(), direct
    assert direct["error"] == ""
    # ...and through the front, whose nochat API the first model (own) answers
    via_front = nochat(f"http://127.0.0.1:{ports['chat']}")
    assert via_front["model"] == "own" and "error" not in via_front, via_front
    assert isinstance(via_front["response"], str) and via_front["response"].strip()
    # ...and through the front's OpenAI-compatible gateway (gradio_client behind it), streaming and not
    gateway = openai.OpenAI(base_url=f"http://127.0.0.1:{ports['chat']}/v1", api_key="x", max_retries=0, timeout=120)
    reply = gateway.chat.completions.create(model="own", messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
    assert reply.choices[0].message.content and reply.choices[0].message.content.strip(), reply
    pieces = [c.choices[0].delta.content or "" for c in gateway.chat.completions.create(
        model="own", messages=[{"role": "user", "content": "Hello"}], max_tokens=8, stream=True) if c.choices]
    assert "".join(pieces).strip()

    down = h2o("down", str(path), timeout=180)
    assert down.returncode == 0, down.stderr[-3000:]
    assert marked_processes(h2o.state_dir, stack_name) == []
    after = h2o.status(str(path))
    assert after and not any(r["state"] == "running" for r in after.values()), after


def test_h2ogpt_front_over_a_streaming_server(h2o: H2O, write_stack, stack_name: str,
                                              h2ogpt_env: H2OGPTEnv) -> None:
    # transformers serve (this project's transformers) of the tiny model h2oGPT's own transformers made:
    # h2oGPT reads the model folder named in --model_lock for its tokenizer, so both must read it
    ports = {k: free_port() for k in ("tiny", "h")}
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  tiny: {{kind: transformers, model: {h2ogpt_env.model}, port: {ports['tiny']}}}
fronts:
  h:
    kind: h2ogpt
    python: {h2ogpt_env.python}
    port: {ports['h']}
    models: [tiny]
    env: {h2ogpt_env.env}
""")
    up = h2o("up", str(path), timeout=900)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-4000:]
    rows = h2o.status(str(path))
    assert (rows["h"]["state"], rows["h"]["health"]) == ("running", "healthy"), rows
    assert listening(h2o, stack_name) == {"tiny": {"127.0.0.1"}, "h": {"127.0.0.1"}}
    assert f"--model_lock=[{{'inference_server':'vllm_chat:127.0.0.1:{ports['tiny']}'" in started_commands(
        h2o, stack_name)["h"]

    url = f"http://127.0.0.1:{ports['h']}"
    config = httpx.get(url + "/config", timeout=10, trust_env=False)
    assert config.status_code == 200
    assert "submit_nochat_api" in {d.get("api_name") for d in config.json()["dependencies"]}

    out = nochat(url)
    assert isinstance(out["response"], str) and out["response"].strip(), out
    assert out["error"] == ""
    # the answer came from the backend, over h2oGPT's streaming OpenAI client
    assert out["save_dict"]["where_from"] == "vllm_chat"
    assert out["save_dict"]["extra_dict"]["inference_server"] == f"vllm_chat:127.0.0.1:{ports['tiny']}"

    down = h2o("down", str(path), timeout=180)
    assert down.returncode == 0, down.stderr[-3000:]
    assert marked_processes(h2o.state_dir, stack_name) == []


def listening(h2o: H2O, stack: str) -> dict[str, set[str]]:
    """The addresses each started service's processes listen on (TCP), by service."""
    import psutil

    out: dict[str, set[str]] = {}
    for pid, _ in marked_processes(h2o.state_dir, stack):
        proc = psutil.Process(pid)
        service = proc.environ()["H2OSTACK_SERVICE"]
        for conn in proc.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                out.setdefault(service, set()).add(conn.laddr.ip)
    return out


def assert_no_secret_in_argv_or_logs(h2o: H2O, stack: str, secrets: list[str]) -> None:
    import psutil

    for pid, _ in marked_processes(h2o.state_dir, stack):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert not [s for s in secrets if s in argv], (psutil.Process(pid).environ()["H2OSTACK_SERVICE"], argv)
    for log in (h2o.state_dir / stack / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert not [s for s in secrets if s in text], log


def test_h2ogpt_front_options_auth_admin_and_keys(h2o: H2O, write_stack, stack_name: str,
                                                  h2ogpt_env: H2OGPTEnv) -> None:
    import json

    from gradio_client import Client

    ports = {k: free_port() for k in ("tiny", "h")}
    secrets = {"FRONT_PW": "pw-9f3a", "ADMIN_PW": "adm-77c1", "API_KEY1": "key-51d0"}
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  tiny: {{kind: transformers, model: {h2ogpt_env.model}, port: {ports['tiny']}}}
fronts:
  h:
    kind: h2ogpt
    python: {h2ogpt_env.python}
    port: {ports['h']}
    models: [tiny]
    env: {h2ogpt_env.env}
    args: {{max_new_tokens: 7, max_max_time: 77, height: 321, h2ocolors: false, score_model: None}}
    auth: {{user: admin, password: "${{FRONT_PW}}"}}
    admin_pass: "${{ADMIN_PW}}"
    api_keys: ["${{API_KEY1}}"]
""")
    up = h2o("up", str(path), timeout=900, env=secrets)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-4000:]
    url = f"http://127.0.0.1:{ports['h']}"
    # every started server and the front listen only on the planned address
    assert listening(h2o, stack_name) == {"tiny": {"127.0.0.1"}, "h": {"127.0.0.1"}}
    assert_no_secret_in_argv_or_logs(h2o, stack_name, list(secrets.values()))
    auth_db = h2o.state_dir / stack_name / "run" / "h.auth.db"
    assert auth_db.exists() and auth_db.stat().st_mode & 0o777 == 0o600

    # without login, Gradio refuses; a wrong password too
    with pytest.raises(Exception, match="(?i)login|401|auth|config"):
        Client(url, verbose=False)
    with pytest.raises(Exception, match="(?i)login|401|auth|credentials"):
        Client(url, verbose=False, auth=("admin", "wrong"))
    client = Client(url, verbose=False, auth=("admin", secrets["FRONT_PW"]))
    try:
        for dep in (client.config or {}).get("dependencies", []):
            if isinstance(dep, dict) and not isinstance(dep.get("api_name"), str):
                dep["api_name"] = str(dep.get("api_name"))
        # the API keys are enforced: without one, no answer
        refused = ast.literal_eval(client.predict(str({"instruction": "Hello", "max_new_tokens": 4}),
                                                  api_name="/submit_nochat_api"))
        assert "Invalid Access Key" in str(refused), refused
        answer = ast.literal_eval(client.predict(str({"instruction": "Hello", "max_new_tokens": 4,
                                                      "h2ogpt_key": secrets["API_KEY1"]}),
                                                 api_name="/submit_nochat_api"))
        assert answer["error"] == "" and answer["response"].strip(), answer
        # admin_pass gates /system_info_dict, which shows the args given to generate.py
        assert json.loads(client.predict("wrong", api_name="/system_info_dict")) == {}
        info = json.loads(client.predict(secrets["ADMIN_PW"], api_name="/system_info_dict"))
        assert (info["max_max_time"], info["height"], info["h2ocolors"]) == (77, 321, False), info
        assert (info["server_name"], info["auth_access"], info["enforce_h2ogpt_api_key"]) == (
            "127.0.0.1", "closed", True)
        assert info["auth_filename"] == str(auth_db)
        # (h2oGPT shows its admin its own settings, credentials included: admin_pass guards them all)
    finally:
        client.close()

    down = h2o("down", str(path), timeout=180)
    assert down.returncode == 0, down.stderr[-3000:]
    assert marked_processes(h2o.state_dir, stack_name) == []
    assert not auth_db.exists()


PARSE = """\
import json, os, sys
sys.path.insert(0, os.path.dirname(__import__('h2ogpt').__file__))
from src.utils import get_hf_server, set_openai
out = []
for e in json.load(sys.stdin):
    s = e['inference_server']
    if s.startswith(('vllm', 'openai')):
        client, _, inf_type, _, base_url, _, key = set_openai(s, model_name=e['base_model'])
        out.append({'type': inf_type, 'base_url': str(client.base_url).rstrip('/'), 'key': key})
    else:
        url, headers, user, password = get_hf_server(s)
        out.append({'url': url, 'headers': headers, 'user': user, 'password': password})
print(json.dumps(out))
"""


def test_model_lock_forms_as_h2ogpts_own_parsers_read_them(h2ogpt_env: H2OGPTEnv) -> None:
    """Every endpoint form an h2oGPT front is given, read back by h2oGPT's get_hf_server and set_openai
    with the environment the front gets: credentials arrive, and none was in argv."""
    import json
    import subprocess

    from tests.unit.test_h2ogpt_front import MIXED, SECRETS, lock_of, plan

    front = plan(MIXED).fronts["h"]
    assert not [s for s in SECRETS if s in " ".join(front.command)]
    entries = lock_of(front)
    env = {k: reveal(v) or "" for k, v in front.env.items() if k.startswith("OPENAI_")}
    out = subprocess.run([h2ogpt_env.python, "-c", PARSE], input=json.dumps(entries), capture_output=True, text=True,
                         timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), **env})
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1]) == [
        {"url": "https://tgi.example:6112", "headers": {"authorization": "me tgi-secret"}, "user": None,
         "password": None},
        {"url": "http://192.168.1.46:6114", "headers": None, "user": None, "password": None},
        {"url": "http://192.168.1.46:7860", "headers": None, "user": "jon", "password": "h-secret"},
        {"type": "vllm", "base_url": "http://10.0.0.2:5000/v1", "key": "EMPTY"},
        {"type": "vllm_chat", "base_url": "http://10.0.0.3:5001/v1", "key": "EMPTY"},
        {"type": "vllm", "base_url": "https://llm.example/api/v1", "key": "vllm-secret"},
        {"type": "vllm", "base_url": "http://10.0.0.4:5002/v1", "key": "EMPTY"},
        {"type": "openai_chat", "base_url": "https://proxy.example/v1", "key": "sk-secret"},
    ]


def test_h2ogpt_front_reaches_a_server_behind_a_key(h2o: H2O, write_stack, stack_name: str, tiny_model: Path,
                                                   vllm_python: str, h2ogpt_env: H2OGPTEnv) -> None:
    """vLLM behind an API key (VLLM_API_KEY): the front's model_lock carries the key in h2oGPT's own
    `vllm:HOST:PORT:/v1:KEY` form, from its environment; no started process has it in its argv. (The
    TGI forms are read back by h2oGPT's parser above: this h2oGPT environment has no TGI client.)"""
    ports = {k: free_port() for k in ("vllm", "h")}
    secrets = {"VLLM_KEY": "vllm-key-4e1f"}
    # served under the name of the tokenizer folder h2oGPT reads (offline) for the model
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  keyed:
    kind: vllm
    python: {vllm_python}
    model: {tiny_model}
    port: {ports['vllm']}
    api_key: "${{VLLM_KEY}}"
    prompt_type: plain
    args: {{served_model_name: {h2ogpt_env.model}, dtype: float32, max_model_len: 256, gpu_memory_utilization: 0.1}}
    env: {{VLLM_CPU_KVCACHE_SPACE: '1'}}
fronts:
  h:
    kind: h2ogpt
    python: {h2ogpt_env.python}
    port: {ports['h']}
    models: [keyed]
    env: {h2ogpt_env.env}
""")
    up = h2o("up", str(path), timeout=900, env=secrets)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-4000:]
    assert_no_secret_in_argv_or_logs(h2o, stack_name, list(secrets.values()))
    assert listening(h2o, stack_name) == {"keyed": {"127.0.0.1"}, "h": {"127.0.0.1"}}
    # the key is needed: without it vLLM refuses
    refused = httpx.post(f"http://127.0.0.1:{ports['vllm']}/v1/completions", trust_env=False, timeout=30,
                         json={"model": str(h2ogpt_env.model), "prompt": "Hi", "max_tokens": 2})
    assert refused.status_code == 401
    out = nochat(f"http://127.0.0.1:{ports['h']}")
    assert out["error"] == "" and out["response"].strip(), out
    assert out["save_dict"]["where_from"] == "vllm"
    down = h2o("down", str(path), timeout=180)
    assert down.returncode == 0, down.stderr[-3000:]
    assert marked_processes(h2o.state_dir, stack_name) == []
