"""Planning across hosts: GPUs per host, URLs by the host's address, published ports, refusals."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from h2ostack.facts import GPU, Facts
from h2ostack.loader import StackError, load_text
from h2ostack.plan import PlanError, make_plan

HEAD = """\
name: lab
hosts:
  near: {docker: "unix:///run/other/docker.sock"}
  far: {docker: "ssh://ml@gpu2.lab", gpus: [0, 1, 2, 3]}
  tcp: {docker: "tcp://10.1.2.3:2376", address: 10.1.2.30, bind: 10.1.2.30}
services:
"""


def plan(services: str, local_gpus: int = 1):
    stack = load_text(HEAD + textwrap.indent(textwrap.dedent(services), "  "), "s.yaml", {}, Path("/x"))
    return make_plan(stack, Facts(tuple(GPU(i) for i in range(local_gpus)), "stated", frozenset(), "/py", {}))


TGI = "kind: tgi, image: ghcr.io/huggingface/text-generation-inference:2.4.1, model: m"


def test_gpus_are_planned_per_host() -> None:
    p = plan(f"""\
    here: {{{TGI}, gpus: 1, port: 7001}}
    a: {{{TGI}, host: far, gpus: 2, port: 7002}}
    b: {{{TGI}, host: far, gpus: 2, port: 7003}}
    """)
    # this machine's one GPU and the far host's four are separate pools
    assert p.services["here"].gpus == (0,) and p.services["a"].gpus == (0, 1) and p.services["b"].gpus == (2, 3)
    a = p.services["a"]
    assert a.host == "far" and a.docker_url == "ssh://ml@gpu2.lab" and a.runtime_key == "container@far"
    assert a.url == "http://gpu2.lab:7002" and a.container["ports"]["80/tcp"] == ["0.0.0.0", 7002]  # type: ignore[index]
    assert p.services["here"].runtime_key == "container" and p.services["here"].url == "http://127.0.0.1:7001"
    assert p.to_json()["services"][1]["host"] == "far"


def test_host_address_bind_and_unix_engines() -> None:
    p = plan(f"""\
    t: {{{TGI}, host: tcp, gpus: [1], port: 7004}}
    n: {{{TGI}, host: near, port: 7005}}
    """)
    assert p.services["t"].url == "http://10.1.2.30:7004"
    assert p.services["t"].container["ports"]["80/tcp"] == ["10.1.2.30", 7004]  # type: ignore[index]
    assert p.services["t"].gpus == (1,)  # ids taken as given where the host's GPUs are not stated
    assert p.services["n"].url == "http://127.0.0.1:7005"
    assert p.services["n"].container["ports"]["80/tcp"] == ["127.0.0.1", 7005]  # type: ignore[index]


def test_host_gpu_mistakes() -> None:
    with pytest.raises(PlanError) as err:
        plan(f"a: {{{TGI}, host: far, gpus: [5], port: 7002}}")
    assert "GPU 5 does not exist: the GPUs of host far (hosts.far.gpus) are [0, 1, 2, 3]" in str(err.value)
    with pytest.raises(PlanError) as err:
        plan(f"a: {{{TGI}, host: tcp, gpus: 2, port: 7002}}")
    assert "a GPU count needs the GPUs of host tcp (hosts.tcp.gpus)" in str(err.value)
    with pytest.raises(PlanError) as err:
        plan(f"a: {{{TGI}, host: far, gpus: 5, port: 7002}}")
    assert "needs 5 GPU(s) but only 4 of the GPUs of host far" in str(err.value)


def test_host_reference_mistakes() -> None:
    with pytest.raises(StackError) as err:
        plan(f"a: {{{TGI}, host: farr, port: 7002}}")
    assert "no host named 'farr' in `hosts:`" in str(err.value) and "did you mean 'far'" in str(err.value)
    with pytest.raises(StackError) as err:
        plan("a: {kind: vllm, model: m, host: far}")
    assert "a vllm service runs as a process on this machine" in str(err.value)


def test_gpus_from_a_hosts_engine() -> None:
    from h2ostack.facts import parse_smi_csv

    smi = "0, 81559, 81000, NVIDIA H100 80GB HBM3\n1, 81559, 1024, NVIDIA H100 80GB HBM3\n"
    assert parse_smi_csv(smi)[1] == GPU(1, 79.65, 1.0, "NVIDIA H100 80GB HBM3")
    stack = load_text(HEAD + f"  a: {{{TGI}, host: tcp, gpus: 2, port: 7002}}\n", "s.yaml", {}, Path("/x"))
    facts = Facts((), "none", frozenset(), "/py", {}, {"tcp": tuple(parse_smi_csv(smi))})
    assert make_plan(stack, facts).services["a"].gpus == (0, 1)
    with pytest.raises(PlanError) as err:
        make_plan(load_text(HEAD + f"  a: {{{TGI}, host: tcp, gpus: 3, port: 7002}}\n", "s.yaml", {}, Path("/x")),
                  facts)
    assert "only 2 of the GPUs of host tcp (as its engine lists them)" in str(err.value)
