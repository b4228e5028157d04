"""The llama.cpp and Ollama kinds: argv and environment from the spec, flags from `args:`, probes,
load rules with file:line:col, lock facts and doctor's check (the servers run in
tests/integration/test_llamacpp.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import SecretStr

from h2ostack import backends
from h2ostack.backends import llamacpp, ollama
from h2ostack.backends.base import Context, ExternalSpec, ProcessSpec
from h2ostack.loader import StackError, load_text

PY = "/envs/llama/bin/python"


def load(text: str, base: Path = Path("/stacks")) -> dict:
    return dict(load_text(textwrap.dedent(text), "s.yaml", {}, base).services)


def err(text: str) -> str:
    with pytest.raises(StackError) as info:
        load_text(textwrap.dedent(text), "s.yaml", {}, Path("/stacks"))
    return str(info.value)


def ctx(svc: object, gpus: tuple[int, ...] = (), port: int = 8000) -> Context:
    b = backends.get("llamacpp")
    return Context(name="smol", gpus=gpus, port=port, host="127.0.0.1", python=PY, model=svc.model,  # type: ignore[attr-defined]
                   served_model=b.served_model(svc, svc.model), args=svc.args,  # type: ignore[attr-defined]
                   base_dir="/stacks")


def test_both_kinds_are_registered_and_in_the_schema() -> None:
    assert {"llamacpp", "ollama"} <= set(backends.kinds())
    assert backends.get("llamacpp").protocol == "openai" and backends.get("ollama").protocol == "openai"
    from h2ostack.spec import SERVICE_MODELS

    assert SERVICE_MODELS["llamacpp"] is llamacpp.LlamaCppService
    assert SERVICE_MODELS["ollama"] is ollama.OllamaService


def test_argv_from_the_spec() -> None:
    svc = load("""\
        name: s
        services:
          smol:
            kind: llamacpp
            python: /envs/llama/bin/python
            model: models/SmolLM2.Q4_1.gguf
            args: {n_ctx: 512, n_threads: 2, flash_attn: true, use_mmap: false, tensor_split: [0.5, 0.5]}
        """)["smol"]
    spec = backends.get("llamacpp").start_spec(svc, ctx(svc))
    assert isinstance(spec, ProcessSpec)
    assert spec.command == [PY, "-c", llamacpp.RUN, "--model", "/stacks/models/SmolLM2.Q4_1.gguf",
                            "--model_alias", "SmolLM2.Q4_1", "--host", "127.0.0.1", "--port", "8000",
                            "--interrupt_requests", "false", "--n_ctx", "512", "--n_threads", "2",
                            "--flash_attn", "true", "--use_mmap", "false", "--tensor_split", "0.5", "0.5"]
    assert spec.env == {"PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize(("model", "expected"), [
    ("/abs/m.gguf", "/abs/m.gguf"),
    ("m.gguf", "/stacks/m.gguf"),
    ("../up/m.gguf", "/up/m.gguf"),
    ("~/m.gguf", os.path.expanduser("~/m.gguf")),
])
def test_the_model_path_is_relative_to_the_stack_file(model: str, expected: str) -> None:
    assert llamacpp.gguf_path(model, "/stacks") == expected


def test_alias_gpus_and_the_users_own_defaults() -> None:
    svc = load("""\
        name: s
        services:
          smol: {kind: llamacpp, model: /m/x.GGUF, gpus: [0, 1],
                 args: {model_alias: smol-chat, interrupt_requests: true}}
          own: {kind: llamacpp, model: /m/x.gguf, gpus: 1, args: {n_gpu_layers: 10}}
        """)
    b = backends.get("llamacpp")
    argv = b.start_spec(svc["smol"], ctx(svc["smol"], gpus=(0, 1))).command  # type: ignore[union-attr]
    assert argv[argv.index("--model_alias") + 1] == "smol-chat" and argv.count("--model_alias") == 1
    # on GPUs every layer is offloaded; a given value stays, once
    assert argv[argv.index("--n_gpu_layers") + 1] == "-1"
    assert argv[argv.index("--interrupt_requests") + 1] == "true" and argv.count("--interrupt_requests") == 1
    own = b.start_spec(svc["own"], ctx(svc["own"], gpus=(3,))).command  # type: ignore[union-attr]
    assert own[own.index("--n_gpu_layers") + 1] == "10" and own.count("--n_gpu_layers") == 1
    assert b.served_model(svc["smol"], "/m/x.GGUF") == "smol-chat"
    assert b.served_model(svc["own"], "/m/x.gguf") == "x"


def test_the_api_key_reaches_the_server_through_its_environment_only() -> None:
    svc = load("""\
        name: s
        services:
          smol: {kind: llamacpp, model: /m/x.gguf, api_key: sk-llama-secret}
        """)["smol"]
    spec = backends.get("llamacpp").start_spec(svc, ctx(svc))
    assert isinstance(spec, ProcessSpec)
    assert "sk-llama-secret" not in json.dumps(spec.command)
    assert isinstance(spec.env[llamacpp.KEY_ENV], SecretStr)
    assert spec.env[llamacpp.KEY_ENV].get_secret_value() == "sk-llama-secret"  # type: ignore[union-attr]


def _fake_server(root: Path) -> None:
    """A `llama_cpp.server` package that prints the environment and argv it was run with."""
    pkg = root / "llama_cpp" / "server"
    pkg.mkdir(parents=True)
    (root / "llama_cpp" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "settings.py").write_text("class Settings:\n    model_fields = {'model': 0, 'host': 0, 'port': 0, "
                                     "'api_key': 0, 'n_ctx': 0}\n")
    (pkg / "__main__.py").write_text("import json, os, sys\nprint(json.dumps({'env': dict(os.environ), "
                                     "'argv': sys.argv[1:]}))\n")


def test_the_launcher_clears_the_servers_own_variables_and_passes_the_key(tmp_path: Path) -> None:
    _fake_server(tmp_path)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(tmp_path), "PORT": "1", "host": "0.0.0.0",
           "API_KEY": "from-the-shell", "N_CTX": "9", "CONFIG_FILE": "/nowhere.yaml", "KEEP": "me"}
    out = subprocess.run([sys.executable, "-c", llamacpp.RUN, "--port", "8000"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["argv"] == ["--port", "8000"]
    assert got["env"]["KEEP"] == "me"
    assert not {"PORT", "host", "API_KEY", "N_CTX", "CONFIG_FILE"} & set(got["env"])
    env[llamacpp.KEY_ENV] = "sk-planned"
    got = json.loads(subprocess.run([sys.executable, "-c", llamacpp.RUN], env=env, capture_output=True, text=True,
                                    timeout=60).stdout)
    assert got["env"]["API_KEY"] == "sk-planned" and llamacpp.KEY_ENV not in got["env"]


def test_probes_started_and_at_a_url() -> None:
    svc = load("""\
        name: s
        services:
          smol: {kind: llamacpp, model: /m/smol.gguf}
          far: {kind: llamacpp, url: "http://gpu-box:8000", model: served-name}
        """)
    b = backends.get("llamacpp")
    started = b.probes(svc["smol"], ctx(svc["smol"]))
    assert [(p.method, p.path, p.expect_model) for p in started] == [
        ("GET", "/docs", None), ("GET", "/v1/models", "smol"), ("POST", "/v1/completions", None)]
    assert started[2].body == {"model": "smol", "prompt": "Hello", "max_tokens": 1, "temperature": 0}
    assert [(p.path, p.expect_model) for p in b.probes(svc["far"], None)] == [
        ("/docs", None), ("/v1/models", "served-name")]
    assert b.start_spec(svc["far"], ctx(svc["far"])) == ExternalSpec("http://gpu-box:8000")
    assert b.mode(svc["far"]) == "external" and b.mode(svc["smol"]) == "process"


@pytest.mark.parametrize(("entry", "message"), [
    ("{kind: llamacpp, python: /p}", "s.yaml:4:3: services.smol.model: this field is required"),
    ("{kind: llamacpp, model: org/some-model}",
     "s.yaml:4:26: services.smol.model: a llama.cpp server loads one GGUF file: give its path, absolute or "
     "relative to the stack file (model: models/llama-3-8b.Q4_K_M.gguf)"),
    ("{kind: llamacpp, model: m.gguf, url: 'http://h:1', python: /p}",
     "s.yaml:4:41: services.smol.url: give either `url:` (an existing server) or `python:` (start one), not both"),
    ("{kind: llamacpp, model: m.gguf, args: {port: 1}}",
     "s.yaml:4:48: services.smol.args.port: 'port' is set by h2ostack from the service's `port`: set that instead"),
    ("{kind: llamacpp, model: m.gguf, args: {host: 0.0.0.0}}",
     "s.yaml:4:48: services.smol.args.host: 'host' is set by h2ostack from the service's `defaults.bind`: set "
     "that instead"),
    ("{kind: llamacpp, model: m.gguf, args: {config_file: c.yaml}}",
     "s.yaml:4:48: services.smol.args.config_file: 'config_file' is set by h2ostack from the service's `model`: "
     "set that instead"),
    ("{kind: llamacpp, model: m.gguf, args: {n.ctx: 1}}",
     "s.yaml:4:48: services.smol.args.n.ctx: 'n.ctx' is no setting of the llama.cpp server: its flags are its "
     "settings' names as written (n_ctx, n_gpu_layers, chat_format)"),
    ("{kind: llamacpp, model: m.gguf, args: {model_alias: ''}}",
     "s.yaml:4:48: services.smol.args.model_alias: model_alias is the name requests use: a non-empty name"),
    ("{kind: llamacpp, model: m.gguf, args: {model_alias: [a, b]}}",
     "s.yaml:4:48: services.smol.args.model_alias: model_alias is the name requests use: a non-empty name"),
    ("{kind: llamacpp, model: m.gguf, prot: 1}", "s.yaml:4:41: services.smol.prot: unknown field 'prot' "
     "(did you mean 'port'?)"),
    ("{kind: llamacpp, model: m.gguf, port: true}", "s.yaml:4:41: services.smol.port: true is not a number: "
     "give a number"),
])
def test_bad_llamacpp_entries_name_their_line(entry: str, message: str) -> None:
    assert err(f"version: 1\nname: s\nservices:\n  smol: {entry}\n") == message


def test_lock_records_the_gguf_files_name_size_and_digest_and_doctor_checks_it(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 5000)
    svc = load("name: s\nservices:\n  smol: {kind: llamacpp, model: m.gguf}\n", tmp_path)["smol"]
    b = backends.get("llamacpp")
    c = Context(name="smol", gpus=(), port=8000, host="127.0.0.1", python=PY, model="m.gguf", served_model="m",
                args={}, base_dir=str(tmp_path))
    spec = b.start_spec(svc, c)

    class Planned:
        command = spec.command  # type: ignore[union-attr]

    assert b.lock_entry(Planned()) == {"model": {"gguf": "m.gguf", "size": gguf.stat().st_size,
                                                 "sha256": hashlib.sha256(gguf.read_bytes()).hexdigest()}}
    found = b.doctor("smol", Planned(), svc)
    assert found is not None and found.ok and found.detail.startswith(str(gguf))
    gguf.unlink()
    assert "cannot read" in b.lock_entry(Planned())["model"]["error"]  # type: ignore[index]
    found = b.doctor("smol", Planned(), svc)
    assert found is not None and not found.ok and found.detail == f"{gguf}: no such file"


def test_planned_with_the_stack_s_port_bind_gpus_and_secrets_masked(tmp_path: Path) -> None:
    from h2ostack.facts import GPU, Facts
    from h2ostack.plan import make_plan

    stack = load_text(textwrap.dedent("""\
        name: s
        defaults: {bind: 0.0.0.0}
        services:
          smol: {kind: llamacpp, python: /envs/llama/bin/python, model: m/smol.gguf, gpus: [1],
                 api_key: sk-llama-secret}
          far: {kind: ollama, model: llama3}
        fronts:
          chat: {models: [smol, far]}
        """), "s.yaml", {}, tmp_path)
    plan = make_plan(stack, Facts((GPU(0, 80.0, 80.0), GPU(1, 80.0, 80.0)), "stated", frozenset(), PY, {}))
    smol, far = plan.services["smol"], plan.services["far"]
    assert (smol.mode, smol.api, smol.port, smol.served_model, smol.gpus) == ("process", "openai", 8000, "smol", (1,))
    assert smol.command is not None and smol.command[smol.command.index("--model") + 1] == str(tmp_path / "m/smol.gguf")
    assert smol.command[smol.command.index("--host") + 1] == "0.0.0.0"
    assert smol.env["CUDA_VISIBLE_DEVICES"] == "1" and "--n_gpu_layers" in smol.command
    assert smol.health_timeout == llamacpp.DEFAULT_HEALTH_TIMEOUT
    assert (far.mode, far.api, far.url, far.served_model) == ("external", "openai", "http://127.0.0.1:11434", "llama3")
    shown = json.dumps(plan.to_json())
    assert "sk-llama-secret" not in shown and "***" in shown


# Ollama ----------------------------------------------------------------------------------------------------


def test_ollama_is_external_at_its_own_address() -> None:
    svc = load("""\
        name: s
        services:
          here: {kind: ollama, model: "smollm:135m"}
          there: {kind: ollama, url: "http://gpu-box:11434/", model: llama3, api_key: sk-ollama}
        """)
    b = backends.get("ollama")
    assert b.mode(svc["here"]) == "external" and svc["here"].external
    assert b.start_spec(svc["here"], None) == ExternalSpec("http://127.0.0.1:11434")  # type: ignore[arg-type]
    assert b.start_spec(svc["there"], None) == ExternalSpec("http://gpu-box:11434")  # type: ignore[arg-type]
    assert [(p.method, p.path, p.expect_model) for p in b.probes(svc["here"], None)] == [
        ("GET", "/api/tags", "smollm:135m")]
    # a model named without a tag is Ollama's NAME:latest
    assert b.probes(svc["there"], None)[0].expect_model == "llama3:latest"
    assert ollama.tagged("registry.example/ns/model") == "registry.example/ns/model:latest"
    assert ollama.tagged("registry.example:5000/ns/model:q4") == "registry.example:5000/ns/model:q4"


@pytest.mark.parametrize(("entry", "message"), [
    ("{kind: ollama}", "s.yaml:4:3: services.o.model: this field is required (a model Ollama has pulled, like "
     "llama3.2:1b)"),
    ("{kind: ollama, model: m, url: 'http://h:11434/v1'}",
     "s.yaml:4:31: services.o.url: give Ollama's own address without /v1 (like http://127.0.0.1:11434): "
     "h2ostack asks its /api/tags for the model and speaks OpenAI under /v1"),
    ("{kind: ollama, model: m, url: 'h:11434'}",
     "s.yaml:4:31: services.o.url: Ollama's address is an http:// or https:// URL, like http://127.0.0.1:11434"),
    ("{kind: ollama, model: m, url: 'http://h:11434/?x=1'}",
     "s.yaml:4:31: services.o.url: Ollama's address takes no query or fragment"),
    ("{kind: ollama, model: m, args: {num_ctx: 4}}",
     "s.yaml:4:31: services.o.args: an Ollama service is not started by h2ostack: it takes no `args:`"),
    ("{kind: ollama, model: m, port: 11434}",
     "s.yaml:4:31: services.o.port: an external service (`url:`) is not started: it takes no gpus or port"),
    ("{kind: ollama, model: m, python: /p}", "s.yaml:4:31: services.o.python: unknown field 'python'"),
])
def test_bad_ollama_entries_name_their_line(entry: str, message: str) -> None:
    assert err(f"version: 1\nname: s\nservices:\n  o: {entry}\n") == message
