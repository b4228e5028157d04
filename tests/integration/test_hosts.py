"""A stack across two Docker engines: the tests' engine and a second real dockerd on this machine
(its own data, socket and bridge) stand for two hosts of `hosts:`. Each container lands on its
host; status, logs, down and kill reach both; the front is wired to both servers' URLs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import openai
import pytest

from tests.conftest import H2O, IMAGE, ROOT, build_standin, free_port, ours

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def second_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    where = tmp_path_factory.mktemp("engine2")
    script = str(ROOT / "scripts" / "docker-engine.sh")
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    net = next(f"10.213.{i}" for i in range(1, 255) if f"10.213.{i}." not in routes)  # a subnet nothing uses
    out = subprocess.run(["bash", script, "start", str(where)], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "H2OSTACK_ENGINE_BRIDGE": f"{net}.1/24"})
    assert out.returncode == 0, f"could not start a second Docker engine:\n{out.stderr[-3000:]}"
    url = out.stdout.strip().splitlines()[-1].split("=", 1)[1]
    client = docker.DockerClient(base_url=url)
    build_standin(client)
    client.close()
    yield url
    subprocess.run(["bash", script, "stop", str(where)], capture_output=True, timeout=120)


def stack_text(name: str, a: str, b: str, ports: dict[str, int]) -> str:
    return f"""\
version: 1
name: {name}
hosts:
  lab1: {{docker: "{a}"}}
  lab2: {{docker: "{b}", gpus: [0, 1]}}
services:
  fa: {{kind: tgi, image: {IMAGE}, host: lab1, model: h2oai/h2ogpt-oasst1-512-12b, port: {ports['fa']}}}
  fb: {{kind: tgi, image: {IMAGE}, host: lab2, model: h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v2,
        port: {ports['fb']}}}
fronts:
  chat: {{port: {ports['chat']}, models: [fa, fb]}}
"""


def test_a_stack_across_two_engines(h2o: H2O, docker_host: str, second_engine: str, write_stack,
                                    stack_name: str) -> None:
    h2o.env.pop("DOCKER_HOST", None)  # every container names its host's engine
    ports = {k: free_port() for k in ("fa", "fb", "chat")}
    path = write_stack(stack_text(stack_name, docker_host, second_engine, ports))
    plan = h2o("plan", str(path), "--json", check=True).stdout
    assert f'"docker": "{second_engine}"' in plan and '"host": "lab2"' in plan

    up = h2o("up", str(path), timeout=600)
    assert up.returncode == 0, up.stderr[-3000:]
    [a], [b] = ours(docker_host, stack_name), ours(second_engine, stack_name)
    assert a.labels["io.h2ostack.service"] == "fa" and b.labels["io.h2ostack.service"] == "fb"

    rows = h2o.status(str(path))
    assert rows["fa"]["health"] == "healthy" and rows["fb"]["health"] == "healthy"
    assert rows["fb"]["mode"] == "container" and rows["fb"]["url"] == f"http://127.0.0.1:{ports['fb']}"
    assert "stand-in launcher args: --model-id h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v2" in h2o(
        "logs", str(path), "fb", "--tail", "20").stdout

    # the front reaches both servers, each on its own engine
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{ports['chat']}/v1", api_key="x", max_retries=0)
    for model in ("fa", "fb"):
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=3)
        assert reply.choices[0].message.content == "Hello from the", model

    assert h2o("down", str(path), check=True).returncode == 0
    assert ours(docker_host, stack_name) == [] and ours(second_engine, stack_name) == []

    # kill by the stack's name only (no file): the saved plan names both engines
    assert h2o("up", str(path), "fb", timeout=600).returncode == 0
    assert len(ours(second_engine, stack_name)) == 1
    assert h2o("kill", stack_name, check=True).returncode == 0
    assert ours(second_engine, stack_name) == []


def test_a_process_on_another_host_is_refused(h2o: H2O, write_stack, stack_name: str, tiny_model: Path) -> None:
    path = write_stack(f"""\
name: {stack_name}
hosts: {{lab2: {{docker: "ssh://ml@lab2"}}}}
services:
  tiny: {{kind: transformers, model: {tiny_model}, host: lab2}}
""")
    out = h2o("up", str(path))
    assert out.returncode == 2
    assert "a transformers service runs as a process on this machine; only container services" in out.stderr


def test_gpus_asked_of_an_engine_without_the_nvidia_runtime(h2o: H2O, second_engine: str, write_stack,
                                                              stack_name: str) -> None:
    """No `hosts.NAME.gpus`: planning asks the host's engine (nvidia-smi in a container with every
    GPU requested). This engine has no NVIDIA runtime: a clear error, exit 2, nothing started."""
    path = write_stack(f"""\
name: {stack_name}
hosts: {{lab2: {{docker: "{second_engine}"}}}}
services:
  fb: {{kind: tgi, image: {IMAGE}, host: lab2, model: m, port: {free_port()}, gpus: 1}}
""")
    out = h2o("plan", str(path))
    assert out.returncode == 2, out.stderr
    assert f"could not ask host lab2's engine ({second_engine}) for its GPUs" in out.stderr
    assert "State them in `hosts.lab2.gpus`" in out.stderr and "Traceback" not in out.stderr
    assert ours(second_engine, stack_name) == [] and docker.DockerClient(base_url=second_engine).containers.list(
        all=True) == []  # the throwaway container is gone too
