"""Rendering under arbitrary text: whatever a stack file's string fields hold, the loader refuses it, or
`render --format shell` writes a script that, run under stub commands, executes exactly the planned
argv (and environment) and nothing else; compose and k8s output parse to exactly the expected documents.

The stubs (docker, curl, ssh, the interpreters, ray) are shell scripts that append their argv to a log
as NUL-separated fields, a count first; `ssh` runs its stdin with bash as the remote side would. PATH
holds the stubs and mkdir/sleep only, and bash's command_not_found_handle logs any other command, so an
injected command shows as a record that was not planned.
"""

from __future__ import annotations

import copy
import os
import shlex
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from h2ostack.errors import StackError
from h2ostack.facts import GPU, Facts
from h2ostack.loader import load_text
from h2ostack.plan import Plan, ServicePlan, make_plan
from h2ostack.render import render_shell
from h2ostack.render_deploy import k8s_documents, render_compose, render_k8s
from h2ostack.spec import reveal

WORK = Path(os.environ.get("TMPDIR", "/tmp")) / f"h2ostack-render-property-{os.getpid()}"
STUBS = WORK / "bin"
LOG = WORK / "calls.log"
BASH = "/bin/bash"

HOSTILE = ["\n", "\r", "\t", "'", '"', "\\", "$(touch pwned)", "`touch pwned`", "; touch pwned", "&& touch pwned",
           "| touch pwned", "${HOME}", "$HOME", "$$", "#", " ", "--", "-oProxyCommand=touch pwned", "*", "?", "~",
           "\x00", "\x1b[2J", "\x85", "\u2028", "é", "漢字", "\U0001f600", "\n---\nkind: Pod\n", "{a: b}", "!!python",
           "&anchor", "*alias", "%", "@", ":", "/", "..", "=", "-", "_"]
TEXT = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(HOSTILE)), max_size=6).map("".join)
NAME_LIKE = st.one_of(TEXT, st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,20}", fullmatch=True))
FILE_NAME = TEXT.filter(lambda t: "/" not in t and t not in ("", ".", "..") and len(t.encode(errors="replace")) < 200)
STRATEGIES = {**dict.fromkeys(("stack name", "host key", "service name", "front"), NAME_LIKE),
              **dict.fromkeys(("python", "workdir"), FILE_NAME),
              "env key": st.one_of(TEXT, st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)),
              "args": st.one_of(TEXT, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,12}", fullmatch=True)),
              "docker url": st.tuples(st.sampled_from(["ssh://", "tcp://", "unix://"]), TEXT).map("".join)}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)

# a command found on PATH (docker, curl, ssh): its name and argv
PLAIN_STUB = """#!/bin/bash
printf '%s\\0' "$(( $# + 1 ))" "${H2T_AS:-${0##*/}}" "$@" >>"$H2T_LOG"
"""
# an interpreter named by its path (python, ray): the path, argv, then KEY=VALUE of every planned key
ENV_STUB = """#!/bin/bash
__h2t_envs=()  # (names no planned key takes: a key `k` would read the loop's own variable)
for __h2t_k in ${H2T_KEYS-}; do __h2t_envs+=("$__h2t_k=${!__h2t_k-<unset>}"); done
printf '%s\\0' "$(( $# + 1 + ${#__h2t_envs[@]} ))" "$0" "$@" "${__h2t_envs[@]}" >>"$H2T_LOG"
"""
SSH_STUB = PLAIN_STUB + "exec /bin/bash -s\n"  # the remote side: the same stubs and log
PRELUDE = f"""command_not_found_handle() {{ H2T_AS="not-found:$1" {STUBS}/path/curl "${{@:2}}"; return 127; }}
trap wait EXIT
"""


def base_stack() -> dict[str, Any]:
    py = str(STUBS / "python")
    return {
        "name": "lab",
        "hosts": {"far": {"docker": "ssh://ml@gpu2.lab", "address": "10.0.0.2", "gpus": [0, 1]},
                  "near": {"docker": "ssh://ml@gpu3.lab", "address": "10.0.0.3", "ssh": "ml@gpu3.lab"}},
        "services": {
            "ext": {"kind": "openai", "url": "http://127.0.0.1:9/v1", "model": "m"},
            "proc": {"kind": "transformers", "model": "org/m", "python": py, "port": 8001, "gpus": [0],
                     "env": {"K1": "v1"}, "args": {"max_new_tokens": 5}},
            "tgi": {"kind": "tgi", "image": "ghcr.io/x/tgi:1", "model": "org/m", "host": "far", "port": 8002,
                    "gpus": [0], "env": {"K2": "v2"}, "volumes": ["/data:/data"]},
            "big": {"kind": "vllm", "model": "org/big", "python": py, "nodes": ["far", "near"], "gpus": [0, 1],
                    "env": {"K3": "v3"}},
            "h2o": {"kind": "h2ogpt", "model": "org/h", "python": py, "port": 8003, "prompt_type": "plain",
                    "prompt_dict": {"promptA": "A:"}, "workdir": str(WORK / "wd"), "args": {"max_seq_len": 512}},
        },
        "fronts": {"chat": {"models": ["ext", "proc"], "port": 7860, "env": {"K4": "v4"}}},
    }


def _rename(mapping: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {new if k == old else k: v for k, v in mapping.items()}


def mutate(stack: dict[str, Any], field: str, text: str) -> None:
    svc, hosts = stack["services"], stack["hosts"]
    if field == "stack name":
        stack["name"] = text
    elif field == "external url":
        svc["ext"]["url"] = text
    elif field == "model":
        svc["proc"]["model"] = text
    elif field == "env value":
        for body in (svc["proc"], svc["tgi"], svc["big"], stack["fronts"]["chat"]):
            body["env"] = {**body["env"], "EXTRA": text, "API_TOKEN": "s" + text}  # (empty secrets: refused elsewhere)
    elif field == "env key":
        for body in (svc["proc"], svc["tgi"], svc["big"]):
            body["env"] = {**body["env"], text: "x"}
    elif field == "args":
        svc["proc"]["args"] = {"dtype": text, text: "1"}
    elif field == "host":
        hosts["far"] = {**hosts["far"], "address": text, "ssh": text}
    elif field == "docker url":
        hosts["far"]["docker"] = text
    elif field == "host key":
        stack["hosts"] = _rename(hosts, "far", text)
        svc["tgi"]["host"] = text
        svc["big"]["nodes"] = [text, "near"]
    elif field == "service name":
        stack["services"] = _rename(svc, "proc", text)
        stack["fronts"]["chat"]["models"] = ["ext", text]
    elif field == "image and volume":
        svc["tgi"]["image"] = text
        svc["tgi"]["volumes"] = [f"/data:{text}", text]
    elif field == "prompt dict":
        svc["h2o"]["prompt_dict"] = {"promptA": text, "PreInstruct": "### Instruction:\n" + text + "\n\t"}
    elif field == "workdir":
        svc["h2o"]["workdir"] = str(WORK / "wd" / text)
    elif field == "front":
        stack["fronts"] = {text: {**stack["fronts"]["chat"], "env": {"K4": text}}}
    elif field == "revision, shm, tgi model":
        svc["proc"]["revision"] = text
        svc["tgi"]["shm_size"] = text
        svc["tgi"]["model"] = text
    elif field == "hf_home":
        stack["defaults"] = {"hf_home": text}
    elif field == "python":
        svc["proc"]["python"] = str(STUBS / "py" / text)
        svc["big"]["python"] = str(STUBS / "py" / text)
    else:  # pragma: no cover
        raise AssertionError(field)


def plan_of(field: str, text: str) -> Plan | None:
    """The plan of the stack with `text` in `field`, or None when it is refused with a clear message."""
    stack = copy.deepcopy(base_stack())
    mutate(stack, field, text)
    try:
        source = yaml.safe_dump(stack, allow_unicode=True)
    except yaml.YAMLError:
        return None  # not even writable as YAML (e.g. a lone surrogate)
    try:
        loaded = load_text(source, str(WORK / "s.yaml"), {}, WORK)
        return make_plan(loaded, Facts((GPU(0),), "stated", frozenset(), str(STUBS / "python"), {}))
    except StackError as exc:
        assert str(exc) and "Traceback" not in str(exc)
        return None


def read_log() -> list[tuple[str, ...]]:
    data = LOG.read_bytes().split(b"\0") if LOG.exists() else []
    out, i = [], 0
    while i < len(data) - 1:
        n = int(data[i])
        out.append(tuple(x.decode() for x in data[i + 1:i + 1 + n]))
        i += n + 1
    return out


def planned_env(plan: Plan) -> tuple[list[str], dict[str, str]]:
    """The keys the interpreter stubs report, and the secrets the script reads from its environment."""
    # (`$_` is bash's last argument inside the stub itself: not comparable)
    keys = sorted({k for sp in plan.all().values() for k in sp.env if k != "_"} | {"VLLM_HOST_IP"})
    secrets = {k: str(reveal(v)) for sp in plan.all().values() for k, v in sp.env.items() if isinstance(v, SecretStr)}
    return keys, secrets


def env_of(plan: Plan, sp: ServicePlan | None, extra: dict[str, str] | None = None) -> tuple[str, ...]:
    """KEY=VALUE as the stub sees them: the service's own values over what the script inherits (its secrets)."""
    keys, secrets = planned_env(plan)
    own = {k: str(reveal(v)) for k, v in (sp.env if sp else {}).items()}
    seen = {**secrets, **own, **(extra or {})}
    return tuple(f"{k}={seen.get(k, '<unset>')}" for k in keys)


def expected_calls(plan: Plan) -> list[tuple[str, ...]]:
    """What the script must run: from the plan alone (commands, container specs, URLs)."""
    calls: list[tuple[str, ...]] = []
    for sp in plan.all().values():
        probe = sp.probes[0].path if sp.probes else "/health"
        if sp.nodes:
            ssh = ("ssh", "-T", "-o", "BatchMode=yes", "--")
            cmd = list(sp.command or ())
            ray = os.path.join(os.path.dirname(cmd[0]), "ray")
            gpus = f"--num-gpus={len(sp.gpus)}"
            (_, head_ssh, head_addr), *_ = sp.nodes
            for i, (_, target, addr) in enumerate(sp.nodes):
                calls.append((*ssh, target, "bash", "-s"))
                where = ("--head", "--port=6379") if i == 0 else (f"--address={head_addr}:6379",)
                calls.append((ray, "start", *where, gpus, "--block", *env_of(plan, sp, {"VLLM_HOST_IP": addr})))
            calls.append((*ssh, head_ssh, "bash", "-s"))  # all nodes joined?
            calls.append((cmd[0], "-c", *JOINED, *env_of(plan, None)))
            calls.append((*ssh, head_ssh, "bash", "-s"))
            calls.append((*cmd, *env_of(plan, sp, {"VLLM_HOST_IP": sp.nodes[0][2]})))
            calls.append(("curl", "-fsS", "-o", "/dev/null", (sp.url or "") + probe))
        elif not sp.started:
            continue
        elif sp.mode == "container":
            spec = sp.container or {}
            docker = ("docker", "-H", sp.docker_url) if sp.docker_url else ("docker",)
            calls.append((*docker, "rm", "-f", spec["name"]))
            calls.append(("<docker run>", sp.name))  # compared field by field in check_docker_run
            calls.append(("curl", "-fsS", "-o", "/dev/null", (sp.url or "") + probe))
        else:
            calls.append((*(sp.command or ()), *env_of(plan, sp)))
            calls.append(("curl", "-fsS", "-o", "/dev/null", (sp.url or "") + probe))
    return calls


JOINED = ("import ray, sys; ray.init(address=sys.argv[1], logging_level=40); sys.exit(sum(n[sys.argv[2]] for n in "
          "ray.nodes()) < 2)", "auto", "Alive")


def check_docker_run(call: tuple[str, ...], plan: Plan) -> str:
    """A `docker run` record against the container spec it was planned from; returns the service's name."""
    sp = next(s for s in plan.all().values() if s.mode == "container" and s.container and
              (s.container["name"] in call))
    spec = sp.container or {}
    argv = list(call)
    prefix = ["docker", "-H", sp.docker_url] if sp.docker_url else ["docker"]
    assert argv[:len(prefix) + 2] == [*prefix, "run", "-d"], argv
    tail = [sp.image or "", *map(str, spec.get("command", []))]
    assert argv[len(argv) - len(tail):] == tail, (argv, tail)
    opts = argv[len(prefix) + 2:len(argv) - len(tail)]
    pairs = list(zip(opts[::2], opts[1::2], strict=True))
    assert ("--name", spec["name"]) in pairs and ("--label", f"io.h2ostack.stack={plan.stack}") in pairs
    want_env = [("-e", k if isinstance(v, SecretStr) else f"{k}={v}") for k, v in sp.env.items()]
    assert [p for p in pairs if p[0] == "-e"] == want_env
    assert [p[1] for p in pairs if p[0] == "-v"] == [str(v) for v in spec.get("volumes", [])]
    return sp.name


def run_script(plan: Plan) -> list[tuple[str, ...]]:
    LOG.unlink(missing_ok=True)
    keys, secrets = planned_env(plan)
    env = {"PATH": str(STUBS / "path"), "BASH_ENV": str(WORK / "prelude.sh"), "H2T_LOG": str(LOG),
           "H2T_KEYS": " ".join(keys), "LOGS": str(WORK / "logs"), **secrets}
    script = render_shell(plan)
    res = subprocess.run([BASH, "-c", script, "script"], env=env, cwd=WORK, capture_output=True, timeout=30)
    assert res.returncode == 0, (res.stderr.decode(errors="replace"), script)
    return read_log()


@pytest.fixture(scope="module", autouse=True)
def stubs() -> Any:
    (STUBS / "path").mkdir(parents=True, exist_ok=True)
    for name, body in (("docker", PLAIN_STUB), ("curl", PLAIN_STUB), ("ssh", SSH_STUB), ("python", ENV_STUB),
                       ("ray", ENV_STUB)):
        path = STUBS / ("path" if name in ("docker", "curl", "ssh") else "") / name
        path.write_text(body)
        path.chmod(0o755)
    for tool in ("mkdir", "sleep"):
        (STUBS / "path" / tool).unlink(missing_ok=True)
        (STUBS / "path" / tool).symlink_to(subprocess.run(["bash", "-c", f"type -P {tool}"], capture_output=True,
                                                          text=True).stdout.strip())
    (WORK / "prelude.sh").write_text(PRELUDE)
    (WORK / "wd").mkdir(exist_ok=True)
    yield
    subprocess.run(["rm", "-rf", str(WORK)], check=False)


def make_python_stub(plan: Plan) -> None:
    """The interpreter a fuzzed `python:` names: a stub at that path (under the stub dir), and ray beside it."""
    for sp in plan.all().values():
        if sp.command and sp.command[0].startswith(str(STUBS / "py") + "/"):
            path = Path(sp.command[0])
            path.parent.mkdir(parents=True, exist_ok=True)
            assert path.resolve().parent == (STUBS / "py").resolve(), path
            for p in (path, path.parent / "ray"):
                p.write_text(ENV_STUB)
                p.chmod(0o755)


def make_workdir(plan: Plan) -> None:
    """The checkout a fuzzed `workdir:` names: made under the work dir (and nowhere else)."""
    for sp in plan.all().values():
        if sp.workdir and sp.workdir.startswith(str(WORK / "wd") + "/"):
            assert Path(sp.workdir).resolve().parent == (WORK / "wd").resolve(), sp.workdir
            Path(sp.workdir).mkdir(parents=True, exist_ok=True)


def check_shell(plan: Plan) -> None:
    make_python_stub(plan)
    make_workdir(plan)
    calls = run_script(plan)
    assert not [c for c in calls if c[0].startswith("not-found:")], calls
    runs = [c for c in calls if "run" in c[:4] and c[0].endswith("docker")]
    names = [check_docker_run(c, plan) for c in runs]
    got = Counter(c for c in calls if c not in runs)
    got.update(("<docker run>", n) for n in names)
    assert got == Counter(expected_calls(plan)), (got, Counter(expected_calls(plan)))


def unescape(value: Any) -> Any:
    """Compose's `$$` back to the `$` written (the renderer doubles every `$` of a value)."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, dict):
        return {k: unescape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unescape(v) for v in value]
    return value


def check_documents(plan: Plan) -> None:
    containers = [sp for sp in plan.all().values() if sp.mode == "container"]
    skipped = sorted(n for n, sp in plan.all().items() if sp.mode != "container")
    docs = list(yaml.safe_load_all(render_compose(plan)))
    assert len(docs) == 1 and set(docs[0]) == {"name", "services", "x-h2ostack-not-rendered"}
    assert sorted(docs[0]["x-h2ostack-not-rendered"]) == skipped
    assert list(docs[0]["services"]) == [sp.name for sp in containers]
    for sp in containers:
        raw = docs[0]["services"][sp.name]
        svc = unescape({k: v for k, v in raw.items() if k != "environment"})
        assert svc["image"] == sp.image and svc["command"] == [str(a) for a in (sp.container or {})["command"]]
        want = {k: (f"${{{k}:?set {k} in the environment}}" if isinstance(v, SecretStr) else str(v).replace("$", "$$"))
                for k, v in sp.env.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
        assert raw.get("environment", {}) == want
    k8s = [d for d in yaml.safe_load_all(render_k8s(plan)) if d is not None]
    expected, _ = k8s_documents(plan)
    assert k8s == expected and [d["kind"] for d in k8s] == ["Deployment", "Service"] * len(containers)
    for sp, dep in zip(containers, k8s[::2], strict=True):
        c = dep["spec"]["template"]["spec"]["containers"][0]
        assert c["image"] == sp.image and c["args"] == [str(a) for a in (sp.container or {})["command"]]


FIELDS = ["stack name", "external url", "model", "env value", "env key", "args", "host", "docker url", "host key",
          "service name", "image and volume", "python", "prompt dict", "workdir", "front", "revision, shm, tgi model",
          "hf_home"]


def test_the_base_stack_renders_and_runs_as_planned() -> None:
    plan = plan_of("model", "org/m")
    assert plan is not None
    check_shell(plan)
    check_documents(plan)
    calls = read_log()
    assert ("docker", "-H", "ssh://ml@gpu2.lab", "rm", "-f", "lab-tgi") in calls  # the host's engine, not this one


@pytest.mark.parametrize("field", FIELDS)
def test_arbitrary_text_is_refused_or_runs_exactly_the_plan(field: str) -> None:
    accepted: list[str] = []

    @SETTINGS
    @given(text=STRATEGIES.get(field, TEXT))
    def prop(text: str) -> None:
        plan = plan_of(field, text)
        if plan is None:
            return
        accepted.append(text)
        check_shell(plan)
        check_documents(plan)

    prop()
    assert accepted, f"no text in {field} was accepted: the property was never exercised"
    assert not (WORK.parent / "pwned").exists() and not (WORK / "pwned").exists()


def test_a_hostile_plan_is_still_quoted() -> None:
    """The renderer's own end: values that bypass the loader (a plan built by other code) stay data."""
    import dataclasses

    plan = plan_of("model", "org/m")
    assert plan is not None
    evil = "x\n touch pwned #'\"$(touch pwned)`touch pwned`"
    ext = dataclasses.replace(plan.services["ext"], url=evil, name="ext\ntouch pwned")
    plan = dataclasses.replace(plan, stack="lab", source=evil, services={**plan.services, "ext": ext})
    script = render_shell(plan)
    assert all(line.startswith("#") for line in script.splitlines() if "pwned" in line), script
    check_shell(plan)
    compose = list(yaml.safe_load_all(render_compose(plan)))  # the values stay data inside one document
    assert len(compose) == 1 and compose[0]["x-h2ostack-not-rendered"]["ext"] == "external endpoint " + evil.replace("$", "$$")
    assert [d for d in yaml.safe_load_all(render_k8s(plan)) if d] == k8s_documents(plan)[0]
    bad_env = dataclasses.replace(plan.services["proc"], env={"A B": "1"})
    with pytest.raises(ValueError, match="not an environment variable name a script can set"):
        render_shell(dataclasses.replace(plan, services={**plan.services, "proc": bad_env}))


def test_quoting_helpers_round_trip() -> None:
    from h2ostack.render import comment_value

    for text in HOSTILE:
        shown = comment_value(text)
        assert "\n" not in shown and "\r" not in shown
        if "\x00" not in text:
            assert shlex.split(shlex.quote(text)) == [text]
