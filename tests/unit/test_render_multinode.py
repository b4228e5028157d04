"""Multi-node vLLM: the plan and the Ray recipe `render` writes (golden), and how secrets travel
to the other hosts (inside the script on ssh's stdin, never in an argv)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from h2ostack.api import load_plan
from h2ostack.loader import StackError, load_text
from h2ostack.render import render_shell

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "stacks" / "multinode-vllm.yaml"
GOLDEN = ROOT / "tests" / "golden" / "render" / "multinode-vllm.sh"
TOKEN = "hf_multi 'node' $secret"  # quotes, a space and a dollar: must arrive as written


def rendered(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("VLLM_KEY", "sk-multinode-key")
    monkeypatch.chdir(ROOT)
    _, _, plan = load_plan(STACK.relative_to(ROOT), gpus="0", check_ports=False)
    return render_shell(plan).replace(sys.executable, "<python>").replace(str(ROOT), "<root>")


def test_plan_is_tensor_parallel_per_node_and_pipeline_parallel_across(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("VLLM_KEY", "sk-multinode-key")
    monkeypatch.chdir(ROOT)
    _, _, plan = load_plan(STACK.relative_to(ROOT), gpus="0", check_ports=False)  # this machine's GPUs don't count
    sp = plan.services["llama405b"]
    assert sp.mode == "external" and sp.url == "http://10.0.0.11:8000"
    assert sp.gpus == (0, 1, 2, 3, 4, 5, 6, 7)
    cmd = " ".join(sp.command or ())
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 2 --distributed-executor-backend ray" in cmd
    assert [n[0] for n in sp.nodes] == ["gpu1", "gpu2"] and sp.nodes[1] == ("gpu2", "ml@gpu2.lab", "10.0.0.12")
    assert plan.to_json()["services"][0]["nodes"][0] == {"host": "gpu1", "ssh": "ml@gpu1.lab", "address": "10.0.0.11"}


def test_recipe_matches_golden(monkeypatch: pytest.MonkeyPatch) -> None:
    text = rendered(monkeypatch)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    assert TOKEN not in text and "sk-multinode-key" not in text
    # head first, then the worker pointing at it, then the server on the head
    steps = [m.group(0) for m in re.finditer(r"ray start --head|ray start --address=10\.0\.0\.11:6379|"
                                             r"api_server --model", text)]
    assert steps == ["ray start --head", "ray start --address=10.0.0.11:6379", "api_server --model"]


def test_secrets_reach_the_host_inside_the_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run the head's Ray line with `on_host` standing for ssh: the script arriving on stdin sets
    the secret exactly, and no argv on this side carries it (printf is a shell builtin)."""
    text = rendered(monkeypatch)
    line = next(ln for ln in text.splitlines() if "ray start --head" in ln)
    script = tmp_path / "run.sh"
    script.write_text(f'on_host() {{ cat > "{tmp_path}/sent.sh"; }}\nLOGS={tmp_path}\n{line}\nwait\n')
    env = {**os.environ, "HF_TOKEN": TOKEN, "VLLM_API_KEY": "sk-multinode-key"}
    subprocess.run(["bash", str(script)], env=env, check=True)
    sent = (tmp_path / "sent.sh").read_text()
    assert sent.splitlines()[-1] == "exec /opt/envs/vllm/bin/ray start --head --port=6379 --num-gpus=8 --block"
    probe = sent.replace(sent.splitlines()[-1], 'printf "%s|%s|%s" "$HF_TOKEN" "$VLLM_API_KEY" "$VLLM_HOST_IP"')
    out = subprocess.run(["bash", "-c", probe], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True)
    assert out.stdout == f"{TOKEN}|sk-multinode-key|10.0.0.11"


def test_multinode_mistakes_are_refused() -> None:
    base = "name: s\nhosts: {a: {docker: 'ssh://u@a'}, b: {address: 10.0.0.2}}\nservices:\n  m:\n    kind: vllm\n"
    with pytest.raises(StackError) as err:
        load_text(base + "    model: x\n    nodes: [a, b]\n", "s.yaml", {}, ROOT)
    assert "needs `gpus:`" in str(err.value)
    with pytest.raises(StackError) as err:
        load_text(base + "    model: x\n    nodes: [a]\n    gpus: 2\n", "s.yaml", {}, ROOT)
    assert "nodes" in str(err.value)
    with pytest.raises(StackError) as err:
        load_text("name: s\nhosts: {a: {docker: 'gpu1:2376'}}\n", "s.yaml", {}, ROOT)
    assert "ssh://user@host, tcp://host:port or unix:///path" in str(err.value)
    with pytest.raises(StackError) as err:
        load_text(base + "    model: x\n    nodes: [a, c]\n    gpus: 2\n", "s.yaml", {}, ROOT)
    assert "no host named 'c' in `hosts:`" in str(err.value)
