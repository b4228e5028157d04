"""`h2ostack render`: the plan as plain commands a person could run.

Secrets are never written: a secret env var is passed by name (`-e NAME` for Docker, a required
`${NAME:?}` for processes) and its value is read from the environment when the script runs.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import SecretStr

from h2ostack.plan import Plan, ServicePlan
from h2ostack.spec import reveal

RAY_PORT = 6379


def shell_words(argv: Iterable[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def secret_ref(key: str, value: SecretStr) -> str:
    """`${KEY:?...}`: the script stops when a secret is unset; an optional one (empty when planned, as
    `${HF_TOKEN:-}` makes it) is `${KEY:-}` instead, so that the script runs without it."""
    return f"${{{key}:-}}" if not value.get_secret_value() else f"${{{key}:?set {key} in the environment}}"


def token_aliases(env: Mapping[str, Any]) -> dict[str, str]:
    """Secrets planned as another one's copy (TGI's HUGGING_FACE_HUB_TOKEN from HF_TOKEN): alias -> origin."""
    out: dict[str, str] = {}
    for key, value in env.items():
        if isinstance(value, SecretStr) and key not in out:
            for other, same in env.items():
                if other != key and same is value and other not in out and key not in out.values():
                    out[other] = key
    return out


def required_checks(env: Mapping[str, Any]) -> list[str]:
    """The script stops at once when a required secret is unset; a copy is taken from its origin."""
    aliases = token_aliases(env)
    lines = [f': "{secret_ref(k, v)}"' for k, v in env.items()
             if isinstance(v, SecretStr) and v.get_secret_value() and k not in aliases]
    return lines + [f'export {a}="${{{a}:-${{{o}:-}}}}"' for a, o in aliases.items()]


def _process_lines(sp: ServicePlan, log_dir: str) -> list[str]:
    lines = [f"# {sp.name}: {sp.kind}" + (f" on GPUs {','.join(map(str, sp.gpus))}" if sp.gpus else "")]
    env_words = []
    aliases = token_aliases(sp.env)
    for key, value in sp.env.items():
        if key in aliases:
            env_words.append(f'{key}="${{{key}:-${{{aliases[key]}:-}}}}"')
        elif isinstance(value, SecretStr):
            env_words.append(f'{key}="{secret_ref(key, value)}"')
        else:
            env_words.append(f"{key}={shlex.quote(str(value))}")
    cd = f"cd {shlex.quote(sp.workdir)} && " if sp.workdir else ""
    cmd = shell_words(sp.command or ())
    env = " ".join(env_words)
    lines.append(f"( {cd}{env + ' ' if env else ''}exec {cmd} ) >{log_dir}/{sp.name}.log 2>&1 &")
    lines.append(f"wait_ready {shlex.quote((sp.url or '') + (sp.probes[0].path if sp.probes else ''))}")
    return lines


def _multinode_lines(sp: ServicePlan, log_dir: str) -> list[str]:
    """vLLM across hosts, as vLLM documents it: a Ray head, Ray workers, then the server on the head.
    Each step runs over ssh as a script on stdin, so a secret travels inside the script and never in
    an argv (`ps` here or there)."""
    (head, head_ssh, head_addr), workers = sp.nodes[0], sp.nodes[1:]
    q = shlex.quote
    command = list(sp.command or ())
    bindir = os.path.dirname(command[0]) if "/" in command[0] else ""
    ray = os.path.join(bindir, "ray") if bindir else "ray"
    n_gpus = len(sp.gpus)
    exports = [f"{k}={q(str(v))}" for k, v in sp.env.items() if not isinstance(v, SecretStr)]
    secrets = [k for k, v in sp.env.items() if isinstance(v, SecretStr)]
    lines = [f"# {sp.name}: vLLM across {len(sp.nodes)} nodes with Ray (head {head}, workers "
             f"{', '.join(w[0] for w in workers)}); GPUs {','.join(map(str, sp.gpus))} on each node",
             *required_checks(sp.env)]

    def on(node: tuple[str, str, str], step: str, argv: list[str]) -> str:
        name, target, addr = node
        refs = {k: f"${k}" if reveal(sp.env[k]) else f"${{{k}:-}}" for k in secrets}  # optional: may be unset
        script = [f"printf 'export %s=%q\\n' {k} \"{refs[k]}\"" for k in secrets]
        script.append("echo " + q("export " + " ".join([*exports, f"VLLM_HOST_IP={addr}"])))
        script.append("echo " + q("exec " + shell_words(argv)))
        return (f"{{ {'; '.join(script)}; }} | on_host {q(target)} >{log_dir}/{sp.name}-{name}-{step}.log 2>&1 &")

    lines.append(on(sp.nodes[0], "ray", [ray, "start", "--head", f"--port={RAY_PORT}", f"--num-gpus={n_gpus}",
                                         "--block"]))
    for node in workers:
        lines.append(on(node, "ray", [ray, "start", f"--address={head_addr}:{RAY_PORT}", f"--num-gpus={n_gpus}",
                                      "--block"]))
    joined = (f'{command[0]} -c "import ray, sys; ray.init(address=sys.argv[1], logging_level=40); '
              f'sys.exit(sum(n[sys.argv[2]] for n in ray.nodes()) < {len(sp.nodes)})" auto Alive')
    lines.append(f"until on_host {q(head_ssh)} <<<{q(joined)} >/dev/null 2>&1; do sleep 2; done  # all nodes joined")
    lines.append(on(sp.nodes[0], "vllm", command))
    lines.append(f"wait_ready {q((sp.url or '') + (sp.probes[0].path if sp.probes else '/health'))}")
    return lines


def render_shell(plan: Plan) -> str:
    from h2ostack.runtimes import docker_render

    out = [
        "#!/usr/bin/env bash",
        f"# stack {plan.stack}, rendered by h2ostack from {plan.source}",
        "# Secrets are read from the environment when this runs; none is written here.",
        "set -euo pipefail",
        f"LOGS=${{LOGS:-./{plan.stack}-logs}}",
        'mkdir -p "$LOGS"',
        "wait_ready() {  # poll a health URL until it answers 2xx",
        '  until curl -fsS -o /dev/null "$1"; do sleep 1; done',
        "}",
    ]
    everything = plan.all()
    if any(sp.nodes for sp in everything.values()):
        out += ["on_host() {  # run stdin as a bash script on another machine",
                '  ssh -T -o BatchMode=yes "$1" bash -s',
                "}"]
    out.append("")
    for level in plan.order:
        for name in level:
            sp = everything[name]
            if sp.nodes:
                out += _multinode_lines(sp, '"$LOGS"')
            elif not sp.started:
                out.append(f"# {name}: external {sp.kind} endpoint {sp.url} (not started)")
            elif sp.mode == "container":
                out += docker_render.docker_run_lines(sp, plan)
            else:
                out += _process_lines(sp, '"$LOGS"')
            out.append("")
    return "\n".join(out) + "\n"


def _compose(plan: Plan, vllm_image: str = "vllm/vllm-openai:latest") -> str:
    from h2ostack.render_deploy import render_compose

    return render_compose(plan, vllm_image)


def _k8s(plan: Plan, vllm_image: str = "vllm/vllm-openai:latest") -> str:
    from h2ostack.render_deploy import render_k8s

    return render_k8s(plan, vllm_image)


FORMATS: dict[str, Callable[..., str]] = {"shell": render_shell, "compose": _compose, "k8s": _k8s}
