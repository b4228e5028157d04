"""The pure planner: GPUs, ports, order, argv per kind, memory fit, hashes, masking."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from h2ostack.backends import h2ogpt
from h2ostack.facts import GPU, Facts
from h2ostack.loader import load_text
from h2ostack.plan import PlanError, make_plan, order_levels
from h2ostack.spec import Stack, reveal

PY = "/opt/py/bin/python"


def stack(text: str, environ: dict[str, str] | None = None) -> Stack:
    return load_text(textwrap.dedent(text), "s.yaml", environ or {}, Path("/stacks"))


def facts(n_gpus: int = 4, mem: float | None = None, busy: set[int] | None = None,
          sizes: dict[str, float] | None = None) -> Facts:
    gpus = tuple(GPU(i, mem, mem) for i in range(n_gpus))
    return Facts(gpus, "stated" if n_gpus else "none", frozenset(busy or ()), PY, sizes or {})


def plan_error(s: Stack, f: Facts) -> str:
    with pytest.raises(PlanError) as info:
        make_plan(s, f)
    return str(info.value)


GPU_STACK = """\
name: g
services:
  a: {kind: vllm, model: m/a, gpus: [0, 3], port: 5000}
  b: {kind: vllm, model: m/b, gpus: 1, port: 5001}
  c: {kind: vllm, model: m/c, gpus: 1, port: 5002}
  d: {kind: transformers, model: m/d, port: 5003}
"""


def test_counts_pack_onto_free_devices_after_explicit_ids() -> None:
    p = make_plan(stack(GPU_STACK), facts(4))
    assert [p.services[n].gpus for n in "abcd"] == [(0, 3), (1,), (2,), ()]
    assert p.services["a"].env["CUDA_VISIBLE_DEVICES"] == "0,3"
    assert p.services["b"].env["CUDA_VISIBLE_DEVICES"] == "1"
    # a CPU service on a GPU machine is kept off the GPUs
    assert p.services["d"].env["CUDA_VISIBLE_DEVICES"] == ""


def test_same_file_same_plan() -> None:
    a = make_plan(stack(GPU_STACK), facts(4)).to_json()
    b = make_plan(stack(GPU_STACK), facts(4)).to_json()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_gpu_id_out_of_range() -> None:
    assert plan_error(stack(GPU_STACK), facts(3)) == (
        "s.yaml:3:31: services.a.gpus: GPU 3 does not exist: the GPUs stated with --gpus / H2OSTACK_GPUS are "
        "[0, 1, 2]")


def test_count_larger_than_free_gpus() -> None:
    s = stack("name: g\nservices:\n  a: {kind: vllm, model: m, gpus: [0]}\n"
              "  b: {kind: vllm, model: m, gpus: 2, port: 8001}\n")
    assert plan_error(s, facts(2)) == (
        "s.yaml:4:29: services.b.gpus: needs 2 GPU(s) but only 1 of the GPUs stated with --gpus / H2OSTACK_GPUS "
        "([0, 1]) are free")


def test_gpu_out_of_range_without_gpus() -> None:
    s = stack("name: g\nservices:\n  a: {kind: vllm, model: m, gpus: [0]}\n")
    assert plan_error(s, facts(0)) == ("s.yaml:3:29: services.a.gpus: GPU 0 does not exist: the GPUs found "
                                       "(no NVML; state them with --gpus) are none")


def test_gpu_used_twice() -> None:
    s = stack("name: g\nservices:\n  a: {kind: vllm, model: m, gpus: [1]}\n  b: {kind: vllm, model: m, gpus: [1], "
              "port: 8001}\n")
    assert plan_error(s, facts(2)) == ("s.yaml:4:29: services.b.gpus: GPU 1 is already used by service 'a' "
                                       "(set `share_gpus: true` on both to share it)")


def test_share_gpus_on_both_allows_it() -> None:
    s = stack("name: g\nservices:\n  a: {kind: vllm, model: m, gpus: [1], share_gpus: true}\n"
              "  b: {kind: vllm, model: m, gpus: [1], port: 8001, share_gpus: true}\n")
    p = make_plan(s, facts(2))
    assert p.services["a"].gpus == p.services["b"].gpus == (1,)


def test_busy_port_is_refused() -> None:
    assert plan_error(stack(GPU_STACK), facts(4, busy={5001})) == (
        "s.yaml:4:40: services.b.port: port 5001 is already in use on this machine "
        "(stop what holds it, or pick another port)")


def test_busy_port_held_by_own_running_service_is_fine() -> None:
    p = make_plan(stack(GPU_STACK), facts(4, busy={5001}), keep_ports=frozenset({5001}))
    assert p.services["b"].port == 5001


def test_auto_ports_skip_busy_and_taken() -> None:
    s = stack("name: p\nservices:\n  a: {kind: vllm, model: m}\n  b: {kind: vllm, model: m}\n"
              "  c: {kind: vllm, model: m, port: 8002}\n")
    p = make_plan(s, facts(0, busy={8000}))
    assert (p.services["a"].port, p.services["b"].port, p.services["c"].port) == (8001, 8003, 8002)


def test_order_levels_backends_before_fronts_and_depends_on() -> None:
    s = stack("""\
        name: o
        services:
          a: {kind: vllm, model: m, port: 8001}
          b: {kind: vllm, model: m, port: 8002, depends_on: [a]}
          c: {kind: openai, model: gpt-4o, api_key: k}
        fronts:
          chat: {port: 7860, models: [b, c]}
        """)
    p = make_plan(s, facts(0))
    assert p.order == (("a", "c"), ("b",), ("chat",))
    assert p.fronts["chat"].depends_on == ("b",)  # external c is not waited on


def test_order_levels_rejects_cycles() -> None:
    with pytest.raises(ValueError, match="cycle"):
        order_levels({"a": ["b"], "b": ["a"]})


def test_vllm_argv_and_tensor_parallel() -> None:
    s = stack("""\
        name: v
        services:
          llama65b:
            kind: vllm
            python: ~/envs/vllm/bin/python
            model: h2oai/h2ogpt-research-oasst1-llama-65b
            gpus: 2
            port: 5000
            args: {tokenizer: hf-internal-testing/llama-tokenizer, seed: 1234, enforce_eager: true, x: false}
            env: {NCCL_IGNORE_DISABLED_P2P: "1"}
        """)
    sp = make_plan(s, facts(4)).services["llama65b"]
    assert sp.command == (str(Path("~/envs/vllm/bin/python").expanduser()), "-m",
                          "vllm.entrypoints.openai.api_server", "--model", "h2oai/h2ogpt-research-oasst1-llama-65b",
                          "--host", "127.0.0.1", "--port", "5000", "--served-model-name",
                          "h2oai/h2ogpt-research-oasst1-llama-65b", "--tensor-parallel-size", "2",
                          "--tokenizer", "hf-internal-testing/llama-tokenizer", "--seed", "1234", "--enforce-eager")
    assert sp.env["CUDA_VISIBLE_DEVICES"] == "0,1" and sp.env["NCCL_IGNORE_DISABLED_P2P"] == "1"
    assert [p.path for p in sp.probes] == ["/health", "/v1/models", "/v1/completions"]


def test_vllm_explicit_tensor_parallel_wins() -> None:
    s = stack("name: v\nservices:\n  a: {kind: vllm, model: m, gpus: 2, args: {tensor_parallel_size: 1}}\n")
    cmd = make_plan(s, facts(2)).services["a"].command
    assert cmd is not None and cmd.count("--tensor-parallel-size") == 1


def test_vllm_api_key_goes_to_env_not_argv() -> None:
    s = stack("name: v\nservices:\n  a: {kind: vllm, model: m, api_key: sk-secret-1}\n")
    sp = make_plan(s, facts(0)).services["a"]
    assert "sk-secret-1" not in " ".join(sp.command or ())
    assert "sk-secret-1" not in json.dumps(sp.to_json()) and sp.to_json()["env"]["VLLM_API_KEY"] == "***"


def test_vllm_keeps_idle_connections_for_the_gateway_unless_the_user_says_otherwise() -> None:
    from h2ostack.gateway import routes_from_plan

    s = stack("name: v\nservices:\n  a: {kind: vllm, model: m}\n"
              "  b: {kind: vllm, model: m, env: {VLLM_HTTP_TIMEOUT_KEEP_ALIVE: '20'}}\n"
              "  c: {kind: vllm, url: 'http://10.0.0.9:8000', model: m}\n")
    plan = make_plan(s, facts(0))
    assert plan.services["a"].env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] == "75"
    assert plan.services["b"].env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] == "20"
    assert [r.keep_alive for r in routes_from_plan(plan, s, ["a", "b", "c"])] == [75.0, 20.0, None]


def test_transformers_argv_local_model_resolved_against_stack_dir() -> None:
    s = stack("name: t\nservices:\n  small: {kind: transformers, model: ./models/tiny, port: 8001}\n")
    sp = make_plan(s, facts(0)).services["small"]
    assert sp.command == (PY, "-m", "transformers.cli.transformers", "serve", "/stacks/models/tiny", "--host",
                          "127.0.0.1", "--port", "8001", "--device", "cpu")
    assert sp.url == "http://127.0.0.1:8001" and sp.workdir == "/stacks"
    assert [p.path for p in sp.probes] == ["/health", "/v1/chat/completions"]


def test_tgi_launcher_process_flags() -> None:
    s = stack("""\
        name: t
        services:
          local_tgi:
            kind: tgi
            launcher: /opt/tgi/bin/text-generation-launcher
            model: h2oai/h2ogpt-oasst1-512-12b
            gpus: [1]
            port: 8080
            args: {sharded: false, trust_remote_code: true, max_stop_sequences: 6}
            env: {NCCL_SHM_DISABLE: "1"}
        """)
    sp = make_plan(s, facts(2)).services["local_tgi"]
    assert sp.command == ("/opt/tgi/bin/text-generation-launcher", "--model-id", "h2oai/h2ogpt-oasst1-512-12b",
                          "--sharded", "false", "--trust-remote-code", "--max-stop-sequences", "6",
                          "--hostname", "127.0.0.1", "--port", "8080")
    assert sp.env["CUDA_VISIBLE_DEVICES"] == "1"


def test_tgi_container_spec_sharded_defaults_num_shard() -> None:
    s = stack("""\
        name: lab
        services:
          big:
            kind: tgi
            image: ghcr.io/huggingface/text-generation-inference:1.4.5
            model: tiiuae/falcon-40b-instruct
            gpus: [0, 3]
            port: 6112
            shm_size: 1g
            volumes: ["~/.cache/huggingface:/data"]
            env: {HF_TOKEN: "${HF_TOKEN}"}
            args: {sharded: true, max_input_length: 2048}
        """, {"HF_TOKEN": "hf_xyz"})
    sp = make_plan(s, facts(4)).services["big"]
    assert sp.mode == "container" and sp.command is None
    c = sp.container or {}
    assert c["name"] == "lab-big"
    assert c["command"] == ["--model-id", "tiiuae/falcon-40b-instruct", "--sharded", "true", "--max-input-length",
                            "2048", "--num-shard", "2", "--hostname", "0.0.0.0"]
    assert c["ports"] == {"80/tcp": ["127.0.0.1", 6112]}
    assert c["device_requests"][0]["DeviceIDs"] == ["0", "3"]
    assert c["volumes"] == [str(Path("~/.cache/huggingface").expanduser()) + ":/data"]
    assert "CUDA_VISIBLE_DEVICES" not in sp.env
    assert "hf_xyz" not in json.dumps(sp.to_json())


def test_external_services_are_not_started() -> None:
    s = stack("""\
        name: e
        services:
          gpt: {kind: openai, model: gpt-4o, api_key: "${K}"}
          remote: {kind: h2ogpt, url: "http://gpu-box:7680/", model: m}
          shared: {kind: tgi, url: "https://tgi.example", auth: {user: u, token: t0ken}}
        """, {"K": "sk-abc"})
    p = make_plan(s, facts(0))
    assert all(not sp.started for sp in p.services.values())
    assert p.services["gpt"].url == "https://api.openai.com/v1"
    assert p.services["remote"].url == "http://gpu-box:7680"
    dumped = json.dumps(p.to_json())
    assert "sk-abc" not in dumped and "t0ken" not in dumped


def test_config_hash_changes_with_config_and_secret() -> None:
    base = "name: h\nservices:\n  a: {kind: vllm, model: m, port: 8000, env: {HF_TOKEN: '${T}'}}\n"
    h1 = make_plan(stack(base, {"T": "one"}), facts(0)).services["a"].config_hash
    assert h1 == make_plan(stack(base, {"T": "one"}), facts(0)).services["a"].config_hash
    assert h1 != make_plan(stack(base, {"T": "two"}), facts(0)).services["a"].config_hash
    assert h1 != make_plan(stack(base.replace("8000", "8001"), {"T": "one"}), facts(0)).services["a"].config_hash


def test_memory_fit_from_vram_gb() -> None:
    s = stack("name: m\nservices:\n  a: {kind: tgi, image: i, model: m, port: 80, gpus: [0], vram_gb: 30}\n")
    assert plan_error(s, facts(1, mem=24.0)) == ("s.yaml:3:48: services.a.gpus: does not fit on GPU 0: 30.0 GiB "
                                                 "needed (a 30.0 GiB) but 24.0 GiB is free there")
    make_plan(s, facts(1, mem=40.0))


def test_memory_fit_from_local_weights_split_over_gpus() -> None:
    s = stack("name: m\nservices:\n  a: {kind: tgi, launcher: l, model: ./w, port: 81, gpus: 2}\n")
    sizes = {"/stacks/w": 26.0}  # 13 GiB per GPU x 1.2 = 15.6
    make_plan(s, facts(2, mem=16.0, sizes=sizes))
    assert "15.6 GiB needed" in plan_error(s, facts(2, mem=15.0, sizes=sizes))


def test_memory_fit_vllm_uses_its_utilization_share() -> None:
    s = stack("name: m\nservices:\n  a: {kind: vllm, model: m, gpus: [0], vram_gb: 30, "
              "args: {gpu_memory_utilization: 0.5}}\n")
    assert "but vLLM may use 20.0 GiB of GPU 0" in plan_error(s, facts(1, mem=40.0))
    make_plan(s, facts(1, mem=80.0))


def test_two_vllm_shares_on_one_gpu_must_add_up() -> None:
    s = stack("name: m\nservices:\n"
              "  a: {kind: vllm, model: m, gpus: [0], vram_gb: 5, share_gpus: true, "
              "args: {gpu_memory_utilization: 0.6}}\n"
              "  b: {kind: vllm, model: m, gpus: [0], vram_gb: 5, share_gpus: true, port: 8009, "
              "args: {gpu_memory_utilization: 0.6}}\n")
    assert "does not fit on GPU 0" in plan_error(s, facts(1, mem=40.0))


def test_plan_json_shape() -> None:
    p = make_plan(stack(GPU_STACK), facts(4)).to_json()
    assert set(p) == {"stack", "order", "services", "fronts"}
    a = p["services"][0]
    for key in ("name", "kind", "gpus", "port", "url", "depends_on", "env", "command"):
        assert key in a


def test_h2ogpt_front_model_lock() -> None:
    s = stack("""\
        name: f
        services:
          falcon7b: {kind: tgi, image: i, model: h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v2, port: 6112,
                     prompt_type: prompt_answer}
          llama: {kind: vllm, model: m/l, port: 5000}
          gpt35: {kind: openai, model: gpt-3.5-turbo, api_key: k}
        fronts:
          h: {kind: h2ogpt, python: /h/py, workdir: /h, port: 7861, models: [falcon7b, llama, gpt35], columns: 3}
        """)
    f = make_plan(s, facts(0)).fronts["h"]
    # the OpenAI key makes generate.py run behind the filter that keeps it out of the log
    assert f.command[:3] == ("/h/py", "-c", h2ogpt.REDACTING + h2ogpt.RUN_CHECKOUT)
    assert json.loads(reveal(f.env[h2ogpt.REDACT_ENV])) == ["k"]
    assert f.command[3:] == ("--model_lock=[{'inference_server':'http://127.0.0.1:6112','base_model':"
                         "'h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v2','prompt_type':'prompt_answer'},"
                         "{'inference_server':'vllm_chat:127.0.0.1:5000','base_model':'m/l'},"
                         "{'inference_server':'openai_chat','base_model':'gpt-3.5-turbo'}]",
                         "--model_lock_columns=3", "--server_name=127.0.0.1", "--openai_server=False",
                         "--function_server=False")
    assert f.env["GRADIO_SERVER_PORT"] == "7861" and f.workdir == "/h"
    assert reveal(f.env["OPENAI_API_KEY"]) == "k"



def test_h2ogpt_installed_package_service_and_front() -> None:
    """No `workdir:`: generate.py of the pip-installed package, its folder first on sys.path."""
    from h2ostack.backends.h2ogpt import RUN_INSTALLED

    s = stack("""\
        name: f
        services:
          own: {kind: h2ogpt, python: /e/bin/python, model: h2oai/h2ogpt-oasst1-512-12b, port: 7680,
                prompt_type: human_bot, args: {max_seq_len: 2048, openai_server: true, load_8bit: false}}
          tiny: {kind: vllm, model: m/t, port: 5001}
        fronts:
          h: {kind: h2ogpt, python: /e/bin/python, port: 7861, models: [tiny]}
        """)
    p = make_plan(s, facts(0))
    own = p.services["own"]
    assert own.command == ("/e/bin/python", "-c", RUN_INSTALLED, "--base_model=h2oai/h2ogpt-oasst1-512-12b",
                           "--prompt_type=human_bot", "--function_server=False", "--max_seq_len=2048",
                           "--openai_server=True", "--load_8bit=False")
    assert own.workdir == s.base_dir
    assert p.fronts["h"].command == ("/e/bin/python", "-c", RUN_INSTALLED,
                                     "--model_lock=[{'inference_server':'vllm_chat:127.0.0.1:5001','base_model':'m/t'}]",
                                     "--server_name=127.0.0.1", "--openai_server=False", "--function_server=False")
    assert "h2ogpt/generate.py" not in RUN_INSTALLED and "'generate.py'" in RUN_INSTALLED
