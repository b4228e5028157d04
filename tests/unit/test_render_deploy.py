"""`render --format compose` and `--format k8s`, validated against the formats' own schemas
(compose-spec as vendored by check-jsonschema; Kubernetes 1.30 by kubernetes-validate), for every
stack in stacks/ and one with every setting, plus what each must carry."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from h2ostack.api import load_plan
from h2ostack.plan import Plan
from h2ostack.render_deploy import dns_name, k8s_documents, render_compose, render_k8s

ROOT = Path(__file__).resolve().parents[2]
STACKS = sorted((ROOT / "stacks").glob("*.yaml")) + [ROOT / "tests" / "data" / "deploy.yaml"]
K8S_VERSION = "1.30.0"
SECRETS = {"HF_TOKEN": "hf_deploysecret_1", "TGI_KEY": "sk-deploy-tgi-2", "VLLM_KEY": "sk-deploy-vllm-3",
           "OPENAI_API_KEY": "sk-deploy-openai-4"}


def plan_of(path: Path, monkeypatch: pytest.MonkeyPatch) -> Plan:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(ROOT)
    return load_plan(path, gpus="0,1,2,3,4,5,6,7", check_ports=False)[2]


def compose_errors(doc: Any) -> list[str]:
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("stack", STACKS, ids=lambda p: p.stem)
def test_compose_is_valid_and_keeps_secrets_out(stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = render_compose(plan_of(stack, monkeypatch))
    doc = yaml.safe_load(text)
    assert compose_errors(doc) == []
    for value in SECRETS.values():
        assert value not in text


@pytest.mark.parametrize("stack", STACKS, ids=lambda p: p.stem)
def test_k8s_is_valid_and_keeps_secrets_out(stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = render_k8s(plan_of(stack, monkeypatch))
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any error
    for value in SECRETS.values():
        assert value not in text


def test_the_validators_catch_mistakes() -> None:
    assert compose_errors({"services": {"a": {"image": "x", "shm_sise": "1g"}}})
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"},
           "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "a", "imagee": "x"}]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_compose_carries_gpus_health_order_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plan_of(ROOT / "tests" / "data" / "deploy.yaml", monkeypatch)
    doc = yaml.safe_load(render_compose(plan, "vllm/vllm-openai:v0.6.3"))
    assert doc["name"] == "deploy_lab"
    falcon, llama = doc["services"]["falcon"], doc["services"]["llama"]
    assert falcon["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": ["0", "3"], "capabilities": ["gpu"]}]
    assert falcon["ports"] == ["127.0.0.1:6112:80"] and falcon["shm_size"] == "1g"
    assert falcon["restart"] == "on-failure:3" and llama["restart"] == "always"
    assert falcon["environment"]["HF_TOKEN"] == "${HF_TOKEN:?set HF_TOKEN in the environment}"
    assert falcon["environment"]["API_KEY"] == "${API_KEY:?set API_KEY in the environment}"
    assert falcon["environment"]["PRICE"] == "5$$"  # a literal dollar survives compose's interpolation
    assert falcon["volumes"] == ["/data/hf:/data", "/srv/weights:/weights:ro"]
    assert "http://127.0.0.1:80/health" in falcon["healthcheck"]["test"][1]
    assert falcon["healthcheck"]["start_period"] == "600s"
    assert llama["image"] == "vllm/vllm-openai:v0.6.3"
    assert llama["depends_on"] == {"falcon": {"condition": "service_healthy"}}
    assert llama["command"][:2] == ["--model", "meta-llama/Llama-2-70b-chat-hf"]
    assert llama["command"][llama["command"].index("--port") + 1] == "8000"
    assert llama["command"][llama["command"].index("--host") + 1] == "0.0.0.0"
    assert llama["ports"] == ["127.0.0.1:5000:8000"]
    assert llama["environment"]["VLLM_API_KEY"].startswith("${VLLM_API_KEY:?")
    assert "CUDA_VISIBLE_DEVICES" not in llama["environment"]  # the device reservation decides
    assert set(doc["x-h2ostack-not-rendered"]) == {"small", "gpt", "chat"}


def test_k8s_carries_gpus_probes_shm_and_secret_refs(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plan_of(ROOT / "tests" / "data" / "deploy.yaml", monkeypatch)
    docs, skipped = k8s_documents(plan)
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert kinds == [("Deployment", "falcon"), ("Service", "falcon"), ("Deployment", "llama"), ("Service", "llama")]
    falcon = docs[0]["spec"]["template"]["spec"]
    c = falcon["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["startupProbe"]["failureThreshold"] == 60 and c["livenessProbe"]["failureThreshold"] == 6
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "deploy-lab-secrets", "key": "HF_TOKEN"}}} \
        in c["env"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in falcon["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {"name": "host-1", "mountPath": "/weights", "readOnly": True} in c["volumeMounts"]
    assert docs[1]["spec"]["ports"] == [{"name": "http", "port": 6112, "targetPort": "http"}]
    assert set(skipped) == {"small", "gpt", "chat"}
    assert "kubectl create secret generic deploy-lab-secrets" in render_k8s(plan)


def test_dns_names() -> None:
    assert dns_name("Deploy_Lab") == "deploy-lab" and dns_name("7b") == "s-7b" and len(dns_name("a" * 90)) == 63


def test_cli_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    env = {**os.environ, **SECRETS}
    for fmt in ("compose", "k8s"):
        out = subprocess.run([sys.executable, "-m", "h2ostack.cli", "render", "tests/data/deploy.yaml", "--format",
                              fmt, "--gpus", "0,1,2,3"], capture_output=True, text=True, cwd=ROOT, env=env)
        assert out.returncode == 0, out.stderr
        assert list(yaml.safe_load_all(out.stdout))
    bad = subprocess.run([sys.executable, "-m", "h2ostack.cli", "render", "tests/data/deploy.yaml", "--format", "helm"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert bad.returncode == 2 and "one of shell, compose, k8s" in bad.stderr


ON_DEMAND = """\
version: 1
name: od
services:
  coder:
    kind: vllm
    python: /opt/envs/vllm/bin/python
    model: Qwen/Qwen2.5-Coder-7B-Instruct
    gpus: 1
    port: 5001
    on_demand: true
    sleep: 1
  falcon:
    kind: tgi
    image: ghcr.io/huggingface/text-generation-inference:2.4.1
    model: h2oai/h2ogpt-oasst1-falcon-7b
    gpus: 1
    port: 6112
    on_demand: true
  llama:
    kind: vllm
    python: /opt/envs/vllm/bin/python
    model: meta-llama/Llama-3.1-8B-Instruct
    gpus: 1
    port: 5000
fronts:
  chat: {port: 7860, models: [coder, falcon, llama]}
"""


def test_on_demand_services_render_apart_and_started_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    path = tmp_path / "od.yaml"
    path.write_text(ON_DEMAND)
    plan = plan_of(path, monkeypatch)
    assert plan.services["coder"].sleep == 1 and "--enable-sleep-mode" in (plan.services["coder"].command or ())

    text = render_compose(plan)
    doc = yaml.safe_load(text)
    assert compose_errors(doc) == []
    services = doc["services"]
    assert services["coder"]["profiles"] == services["falcon"]["profiles"] == ["on-demand"]
    assert "profiles" not in services["llama"]  # always-on: `docker compose up` starts it alone
    assert "--enable-sleep-mode" not in services["coder"]["command"]  # nothing puts it to sleep there
    assert "VLLM_SERVER_DEV_MODE" not in (services["coder"].get("environment") or {})
    header = text.split("\nname:")[0]
    assert "# on demand: coder, falcon. Under h2ostack (`h2ostack up`) the front's gateway starts" in header
    assert "`docker compose --profile on-demand up -d NAME`" in header

    k8s = render_k8s(plan)
    docs = [d for d in yaml.safe_load_all(k8s) if d]
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in docs if d["kind"] == "Deployment"}
    assert replicas == {"coder": 0, "falcon": 0, "llama": 1}
    coder = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "coder")
    container = coder["spec"]["template"]["spec"]["containers"][0]
    assert "--enable-sleep-mode" not in container["args"]
    assert all(e["name"] != "VLLM_SERVER_DEV_MODE" for e in container["env"])
    assert "`kubectl scale deployment/NAME --replicas=1`" in k8s and "# on demand: coder, falcon." in k8s


def test_a_stack_without_on_demand_services_renders_no_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plan_of(ROOT / "tests" / "data" / "deploy.yaml", monkeypatch)
    text = render_compose(plan)
    assert "on demand" not in text and "profiles" not in text
    assert "on demand" not in render_k8s(plan)
