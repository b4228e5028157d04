"""TGI in real containers on a real Docker engine (the server inside is TGI's API stand-in)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import docker
import pytest

from tests.conftest import H2O, IMAGE, ROOT, free_port, marked_processes, ours, wait_for

pytestmark = pytest.mark.integration


def tgi_stack(name: str, port: int, extra_args: str = "", extra: str = "") -> str:
    return f"""\
version: 1
name: {name}
services:
  falcon:
    kind: tgi
    image: {IMAGE}
    model: h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v2
    port: {port}
    shm_size: 256m
    env: {{HF_TOKEN: "${{PLANTED:-hf_dockersecret42}}", STANDIN_LOAD_DELAY: "1"}}
    args: {{max_input_length: 512, max_total_tokens: 1024, max_stop_sequences: 6, trust_remote_code: true,
            sharded: false{extra_args}}}
    health: {{timeout: 120}}
{extra}"""


def info(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=5) as r:
        return json.loads(r.read())


LIFECYCLE_EXTRA = """\
    api_key: "${TGI_KEY:-sk-tgi-key-77}"
    volumes: ["~/hf-cache:/data"]
"""


def test_tgi_container_lifecycle(dh2o: H2O, docker_host: str, write_stack, stack_name: str,
                                 tmp_path: Path) -> None:
    port = free_port()
    dh2o.env["HOME"] = str(tmp_path / "home")  # `~` in volumes is this HOME
    (tmp_path / "home" / "hf-cache").mkdir(parents=True)
    path = write_stack(tgi_stack(stack_name, port, extra=LIFECYCLE_EXTRA))
    plan = json.loads(dh2o("plan", str(path), "--json", check=True).stdout)
    spec = plan["services"][0]["container"]
    assert spec["name"] == f"{stack_name}-falcon" and plan["services"][0]["env"]["HF_TOKEN"] == "***"
    assert plan["services"][0]["env"]["API_KEY"] == "***" and "sk-tgi-key-77" not in json.dumps(plan)

    up = dh2o("up", str(path), timeout=300)
    assert up.returncode == 0, up.stderr
    [container] = ours(docker_host, stack_name)
    assert container.name == f"{stack_name}-falcon"
    labels = container.labels
    assert labels["io.h2ostack.service"] == "falcon" and labels["io.h2ostack.config-hash"]
    for secret in ("hf_dockersecret42", "sk-tgi-key-77"):
        assert secret not in json.dumps(labels) + " ".join(container.attrs["Config"]["Cmd"])
        assert secret in " ".join(container.attrs["Config"]["Env"])  # secrets reach it as env only
    assert container.attrs["HostConfig"]["ShmSize"] == 256 * 2**20
    assert container.attrs["HostConfig"]["Binds"] == [f"{tmp_path}/home/hf-cache:/data"]
    assert container.attrs["HostConfig"]["PortBindings"]["80/tcp"] == [{"HostIp": "127.0.0.1",
                                                                         "HostPort": str(port)}]
    # the launcher flags seen inside the container are the plan's
    assert info(port)["args"] == spec["command"]
    assert info(port)["max_stop_sequences"] == 6
    # the api key arrived inside: generation without it is refused; up's probes and check send it
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/generate", method="POST",
                                                      data=b'{"inputs": "x"}'), timeout=5)
    assert refused.value.code == 401

    rows = dh2o.status(str(path))
    assert rows["falcon"]["state"] == "running" and rows["falcon"]["health"] == "healthy"
    assert rows["falcon"]["ident"] == container.short_id

    check = dh2o("check", str(path), timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Hello from the stand" in check.stdout

    logs = dh2o("logs", str(path), "falcon", "--tail", "50")
    assert "stand-in launcher args: --model-id h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v2" in logs.stdout
    for text in (up.stdout, up.stderr, logs.stdout, dh2o("render", str(path)).stdout):
        assert "hf_dockersecret42" not in text and "sk-tgi-key-77" not in text
    assert_logs_follow(dh2o, path, port)
    doctor = dh2o("doctor", str(path)).stdout
    assert f"ok    port {port} (falcon)" in doctor and "held by this stack's falcon, which is running" in doctor

    # unchanged: left alone; changed: recreated
    assert "kept     falcon" in dh2o("up", str(path), check=True).stderr
    assert ours(docker_host, stack_name)[0].id == container.id
    path.write_text(tgi_stack(stack_name, port, ", max_batch_prefill_tokens: 512", extra=LIFECYCLE_EXTRA))
    again = dh2o("up", str(path), check=True, timeout=300)
    assert "stopping falcon (config changed)" in again.stderr
    [recreated] = ours(docker_host, stack_name)
    assert recreated.id != container.id and "--max-batch-prefill-tokens" in info(port)["args"]

    t0 = time.monotonic()
    assert dh2o("down", str(path), check=True).returncode == 0
    assert time.monotonic() - t0 < 20, "the server stops on SIGTERM: down must not wait out its timeout"
    assert ours(docker_host, stack_name) == []


def assert_logs_follow(dh2o: H2O, path: Path, port: int) -> None:
    """`logs -f` prints the tail once, then lines the container writes afterwards."""
    proc = dh2o.popen("logs", str(path), "falcon", "-f", "--tail", "1")
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: lines, 30, "the tail of the log")
        time.sleep(1)  # the follower is attached
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/info?follow-marker", timeout=5)
        wait_for(lambda: any("/info?follow-marker" in ln for ln in lines), 30, "a followed log line")
    finally:
        proc.terminate()
        proc.wait(10)
    assert len(lines) >= 2 and sum("/info?follow-marker" in ln for ln in lines) == 1


def test_gpu_container_device_requests(dh2o: H2O, docker_host: str, write_stack, stack_name: str) -> None:
    path = write_stack(tgi_stack(stack_name, free_port()).replace("    port:", "    gpus: [0, 3]\n    port:"))
    os.environ["DOCKER_HOST"] = docker_host
    try:
        from h2ostack.api import load_plan
        from h2ostack.runtimes.docker import DockerRuntime

        _, _, plan = load_plan(path, gpus="0,1,2,3", check_ports=False)
        runtime = DockerRuntime(stack_name)
        container = runtime.create(plan.services["falcon"])  # created only: no NVIDIA runtime here
        try:
            requests = docker.DockerClient(base_url=docker_host).api.inspect_container(
                container.id)["HostConfig"]["DeviceRequests"]
            assert requests == [{"Driver": "nvidia", "Count": 0, "DeviceIDs": ["0", "3"],
                                 "Capabilities": [["gpu"]], "Options": {}}]
        finally:
            container.remove(force=True)
    finally:
        del os.environ["DOCKER_HOST"]
    # `up` on this machine fails clearly and leaves nothing behind
    out = dh2o("up", str(path), env={"H2OSTACK_GPUS": "0,1,2,3"}, timeout=120)
    assert out.returncode == 1 and "could not start container" in out.stderr
    assert ours(docker_host, stack_name) == []


def test_host_port_taken_is_refused_before_anything_starts(dh2o: H2O, docker_host: str, write_stack,
                                                           stack_name: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        path = write_stack(tgi_stack(stack_name, holder.getsockname()[1]))
        out = dh2o("up", str(path))
    assert out.returncode == 2 and "is already in use on this machine" in out.stderr
    assert ours(docker_host, stack_name) == []


def test_container_crashing_at_start_is_reported_with_its_log(dh2o: H2O, docker_host: str, write_stack,
                                                              stack_name: str) -> None:
    path = write_stack(tgi_stack(stack_name, free_port(), ", crash_at_start: true"))
    t0 = time.monotonic()
    out = dh2o("up", str(path), timeout=120)
    assert out.returncode == 1
    assert "falcon: exited while starting (code 1)" in out.stderr
    assert "CUDA out of memory (stand-in crash)" in out.stderr
    assert time.monotonic() - t0 < 60
    assert ours(docker_host, stack_name) == []


def test_found_by_labels_with_the_state_dir_gone(dh2o: H2O, docker_host: str, write_stack,
                                                 stack_name: str) -> None:
    path = write_stack(tgi_stack(stack_name, free_port()))
    dh2o("up", str(path), check=True, timeout=300)
    shutil.rmtree(dh2o.state_dir)
    rows = dh2o.status(stack_name)
    assert rows["falcon"]["state"] == "running" and rows["falcon"]["mode"] == "container"
    # an engine that does not answer is an error, never "nothing was running"
    gone = {"DOCKER_HOST": f"unix://{dh2o.workdir}/none.sock"}
    for cmd in (("down", stack_name), ("kill", stack_name), ("status", stack_name), ("logs", stack_name)):
        out = dh2o(*cmd, env=gone)
        assert out.returncode == 1, (cmd, out.stdout, out.stderr)
        assert f"no Docker engine answers at unix://{dh2o.workdir}/none.sock" in out.stderr, (cmd, out.stderr)
        assert "Traceback" not in out.stderr and "nothing" not in out.stderr, (cmd, out.stderr)
    assert len(ours(docker_host, stack_name)) == 1
    assert dh2o("kill", stack_name, check=True).returncode == 0
    assert ours(docker_host, stack_name) == []


def test_an_image_that_cannot_be_had_is_a_clear_error(dh2o: H2O, docker_host: str, write_stack,
                                                      stack_name: str) -> None:
    path = write_stack(tgi_stack(stack_name, free_port()).replace(IMAGE, "h2ostack/not-here:1"))
    out = dh2o("up", str(path), timeout=120)
    assert out.returncode == 1
    assert "image h2ostack/not-here:1 is not on the Docker engine" in out.stderr
    assert "docker pull h2ostack/not-here:1" in out.stderr and "Traceback" not in out.stderr
    assert ours(docker_host, stack_name) == []


def test_no_engine_is_a_clear_error(h2o: H2O, write_stack, stack_name: str, tmp_path: Path) -> None:
    path = write_stack(tgi_stack(stack_name, free_port()))
    out = h2o("up", str(path), env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert out.returncode == 1
    assert f"no Docker engine answers at unix://{tmp_path}/none.sock" in out.stderr and "Traceback" not in out.stderr


def test_tgi_launcher_as_a_process(h2o: H2O, write_stack, stack_name: str) -> None:
    port = free_port()
    path = write_stack(f"""\
name: {stack_name}
services:
  local_tgi:
    kind: tgi
    launcher: {ROOT / 'tests' / 'tgi-launcher'}
    model: h2oai/h2ogpt-oasst1-512-12b
    port: {port}
    env: {{NCCL_SHM_DISABLE: "1"}}
    args: {{sharded: false, max_stop_sequences: 6}}
""")
    assert h2o("up", str(path), timeout=120).returncode == 0
    assert info(port)["args"] == ["--model-id", "h2oai/h2ogpt-oasst1-512-12b", "--sharded", "false",
                                  "--max-stop-sequences", "6", "--hostname", "127.0.0.1", "--port", str(port)]
    check = h2o("check", str(path))
    assert check.returncode == 0, check.stdout
    assert h2o("down", str(path), check=True).returncode == 0
    assert marked_processes(h2o.state_dir) == []


def test_external_tgi_with_auth_is_checked_never_started(h2o: H2O, write_stack, stack_name: str) -> None:
    port = free_port()
    # an existing server that h2ostack did not start
    server = subprocess.Popen([str(ROOT / "tests" / "tgi-launcher"), "--model-id", "m/x", "--port", str(port),
                               "--hostname", "127.0.0.1"], env={**os.environ, "STANDIN_AUTH": "alice s3cr3t-tok"},
                              stdout=subprocess.DEVNULL)
    try:
        path = write_stack(f"""\
name: {stack_name}
services:
  shared_tgi:
    kind: tgi
    url: http://127.0.0.1:{port}
    auth: {{user: alice, token: "${{TGI_TOKEN}}"}}
""")
        up = h2o("up", str(path), env={"TGI_TOKEN": "s3cr3t-tok"}, timeout=60)
        assert up.returncode == 0 and "ready    shared_tgi" in up.stderr and "starting" not in up.stderr
        assert marked_processes(h2o.state_dir, stack_name) == []
        row = h2o.status(str(path))["shared_tgi"]
        assert row["state"] == "external" and row["health"] == "healthy"
        assert h2o("check", str(path), env={"TGI_TOKEN": "s3cr3t-tok"}).returncode == 0
        wrong = h2o("check", str(path), env={"TGI_TOKEN": "nope"})
        assert wrong.returncode == 1 and "Unauthorized" in wrong.stdout
        plan = h2o("plan", str(path), "--json", env={"TGI_TOKEN": "s3cr3t-tok"}).stdout
        assert "s3cr3t-tok" not in up.stderr + up.stdout + plan
        assert h2o("down", str(path), check=True).returncode == 0
        assert server.poll() is None, "down must not touch a server h2ostack did not start"
    finally:
        server.terminate()
        server.wait(10)


def test_doctor(dh2o: H2O, docker_host: str, write_stack, stack_name: str, tiny_model: Path) -> None:
    gpu_stack = write_stack(tgi_stack(stack_name, free_port()).replace("    port:", "    gpus: [0, 3]\n    port:"))
    out = dh2o("doctor", str(gpu_stack), "--gpus", "0,1,2,3")
    assert out.returncode == 1
    assert f"ok    docker engine                {docker_host}: Docker" in out.stdout
    assert "FAIL  nvidia container runtime     absent" in out.stdout and "nvidia-ctk runtime configure" in out.stdout
    cpu_stack = write_stack(f"name: {stack_name}\nservices:\n  a: {{kind: transformers, model: {tiny_model}, "
                            f"port: {free_port()}}}\n  b: {{kind: vllm, python: /nonexistent/python, model: m, "
                            f"port: {free_port()}}}\n", "cpu.yaml")
    out = dh2o("doctor", str(cpu_stack))
    assert out.returncode == 1
    assert "ok    python of a" in out.stdout and "imports transformers.cli.transformers" in out.stdout
    assert "FAIL  python of b" in out.stdout and "pip install vllm" in out.stdout


def engine(action: str, docker_host: str) -> None:
    """Halt or start the tests' own engine (scripts/docker-engine.sh), keeping its data."""
    engine_dir = Path(docker_host.removeprefix("unix://")).parent
    out = subprocess.run(["bash", str(ROOT / "scripts" / "docker-engine.sh"), action, str(engine_dir)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def test_engine_restart_while_the_stack_runs(dh2o: H2O, docker_host: str, write_stack, stack_name: str) -> None:
    """dockerd goes away and comes back under a running stack: status says the engine is gone
    (never "nothing runs"), the `restart: always` service is back by Docker's own policy, the
    other is shown stopped and `up` brings it back while keeping the first; `down` clears all."""
    ports = {"keep": free_port(), "plain": free_port()}
    text = tgi_stack(stack_name, ports["keep"])
    service = text[text.index("  falcon:"):]
    path = write_stack(text.replace("  falcon:", "  keep:").replace("    shm_size:", "    restart: always\n"
                                                                     "    shm_size:")
                       + service.replace("  falcon:", "  plain:").replace(str(ports["keep"]), str(ports["plain"])))
    assert dh2o("up", str(path), timeout=300).returncode == 0
    before = {c.name: c.id for c in ours(docker_host, stack_name)}
    assert set(before) == {f"{stack_name}-keep", f"{stack_name}-plain"}

    engine("halt", docker_host)
    try:
        gone = dh2o("status", str(path))
        assert gone.returncode == 1 and "no Docker engine answers at" in gone.stderr, gone.stderr
        assert "Traceback" not in gone.stderr
    finally:
        engine("start", docker_host)

    def settled() -> dict | None:
        rows = dh2o.status(str(path))
        return rows if rows["keep"]["health"] == "healthy" and rows["plain"]["state"] != "running" else None

    rows = wait_for(settled, 90, "keep back and healthy after the engine restart")
    assert rows["plain"]["state"] in ("exited", "stopped"), rows["plain"]  # type: ignore[index]
    assert {c.name: c.id for c in ours(docker_host, stack_name)} == before  # the same containers, found by labels

    again = dh2o("up", str(path), timeout=300)
    assert again.returncode == 0, again.stderr
    assert "kept     keep" in again.stderr
    rows = dh2o.status(str(path))
    assert rows["keep"]["health"] == "healthy" and rows["plain"]["health"] == "healthy"
    assert info(ports["plain"])["model_id"] == "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v2"
    assert dh2o("down", str(path), check=True).returncode == 0
    assert ours(docker_host, stack_name) == []
