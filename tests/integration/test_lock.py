"""`h2ostack lock` and `up --locked` against a real engine and real environments: the lock holds
the engine's image id, the installed package versions and the planned GPUs; `up --locked` starts
an unchanged stack and refuses a changed one, naming each difference and starting nothing."""

from __future__ import annotations

import importlib.metadata
import io
import tarfile
from pathlib import Path

import docker
import pytest
import yaml

from tests.conftest import H2O, IMAGE, free_port, ours

pytestmark = pytest.mark.integration


def test_lock_then_up_locked(dh2o: H2O, docker_host: str, write_stack, stack_name: str, tiny_model: Path) -> None:
    tag = f"h2ostack/lockme:{stack_name}"
    client = docker.DockerClient(base_url=docker_host)
    client.images.get(IMAGE).tag(tag)
    ports = {"tgi": free_port(), "tiny": free_port()}
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  falcon:
    kind: tgi
    image: {tag}
    model: h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v2
    port: {ports['tgi']}
    env: {{HF_TOKEN: "hf_locksecret_9"}}
  tiny: {{kind: transformers, model: {tiny_model}, port: {ports['tiny']}}}
""")
    out = dh2o("lock", str(path), check=True)
    assert f"wrote {path}.lock" in out.stdout
    text = Path(f"{path}.lock").read_text()
    assert "hf_locksecret_9" not in text
    lock = yaml.safe_load(text)
    assert lock["h2ostack"] and lock["stack"] == stack_name
    falcon, tiny = lock["services"]["falcon"], lock["services"]["tiny"]
    assert falcon["image_id"] == client.images.get(tag).id and falcon["image"] == tag
    assert falcon["model"] == {"name": "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v2", "revision": None}  # offline
    assert tiny["packages"]["transformers"] == importlib.metadata.version("transformers")
    assert tiny["packages"]["torch"] == importlib.metadata.version("torch")
    assert tiny["model"]["digest"].startswith("sha256:") and tiny["gpus"] == []

    up = dh2o("up", str(path), "--locked", timeout=300)
    assert up.returncode == 0, up.stderr
    assert "everything matches" in up.stderr
    assert dh2o("down", str(path), check=True).returncode == 0

    # the same tag now names another image, and the lock says another transformers: both refused
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        data = f"FROM {IMAGE}\nLABEL rebuilt=yes\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    lock["services"]["tiny"]["packages"]["transformers"] = "0.0.1"
    Path(f"{path}.lock").write_text(yaml.safe_dump(lock))
    refused = dh2o("up", str(path), "--locked", timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert f"services.falcon.image_id: locked {falcon['image_id']}, now {client.images.get(tag).id}" in refused.stderr
    assert "services.tiny.packages.transformers: locked 0.0.1, now" in refused.stderr
    assert "nothing was started" in refused.stderr
    assert ours(docker_host, stack_name) == [] and not any(r["state"] == "running" for r in dh2o.status(str(path)).values())

    Path(f"{path}.lock").unlink()
    missing = dh2o("up", str(path), "--locked")
    assert missing.returncode == 2 and "write it with `h2ostack lock" in missing.stderr
    client.images.remove(tag, force=True)
