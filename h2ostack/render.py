"""`h2ostack render`: the plan as plain commands a person could run.

Secrets are never written: a secret env var is passed by name (`-e NAME` for Docker, a required
`${NAME:?}` for processes) and its value is read from the environment when the script runs.

Every value written is quoted (`shlex.quote`), in comments too, where control characters are also
escaped so that no value can end the comment it is shown in; environment names are checked to be
identifiers before they are written unquoted. A container of a `hosts:` entry is run on that host's
engine (`docker -H URL`), as `up` does.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from pydantic import SecretStr

from h2ostack.plan import Plan, ServicePlan
from h2ostack.quoting import comment_value, env_name, required_checks, secret_ref, token_aliases
from h2ostack.spec import reveal

RAY_PORT = 6379


UNSET = "h2ostack-unset-"  # the value an unset variable gets while planning what is rendered


def environ_for(stack_file: str | Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment with a placeholder for each variable the stack file references with no default
    that neither the environment nor its env_file sets. What is rendered holds secrets by name only, so a
    stack renders without this machine's secrets; a placeholder that reaches the output was not a
    secret (`leaked`). The files are read as the loader reads them (bounded, regular files only): what
    is wrong with them is the loader's to say."""
    import yaml

    from h2ostack.loader import Unreadable, bounded_yaml, read_env_file, read_text_file, referenced_variables

    path = Path(stack_file)
    env = dict(os.environ if environ is None else environ)
    try:
        text = read_text_file(path)
        raw = bounded_yaml(text)
    except (Unreadable, yaml.YAMLError, RecursionError):
        return env
    known = set(env)
    env_file = raw.get("env_file") if isinstance(raw, dict) else None
    if isinstance(env_file, str):
        with contextlib.suppress(Unreadable, OSError, ValueError):
            known |= set(read_env_file(path.resolve().parent / os.path.expanduser(env_file)))
    for name in referenced_variables(text, required_only=True):
        if name not in known:
            env[name] = UNSET + name
    return env


def leaked(text: str) -> bool:
    return UNSET in text


def shell_words(argv: Iterable[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def _process_lines(sp: ServicePlan, log_dir: str) -> list[str]:
    lines = [f"# {comment_value(sp.name)}: {comment_value(sp.kind)}"
             + (f" on GPUs {','.join(map(str, sp.gpus))}" if sp.gpus else "")]
    env_words = []
    aliases = token_aliases(sp.env)
    for key, value in sp.env.items():
        key = env_name(key)
        if key in aliases:
            env_words.append(f'{key}="${{{key}:-${{{env_name(aliases[key])}:-}}}}"')
        elif isinstance(value, SecretStr):
            env_words.append(f'{key}="{secret_ref(key, value)}"')
        else:
            env_words.append(f"{key}={shlex.quote(str(value))}")
    cd = f"cd {shlex.quote(sp.workdir)} && " if sp.workdir else ""
    cmd = shell_words(sp.command or ())
    env = " ".join(env_words)
    lines.append(f"( {cd}{env + ' ' if env else ''}exec {cmd} ) >{log_dir}/{shlex.quote(sp.name + '.log')} 2>&1 &")
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
    exports = [f"{env_name(k)}={q(str(v))}" for k, v in sp.env.items() if not isinstance(v, SecretStr)]
    secrets = [env_name(k) for k, v in sp.env.items() if isinstance(v, SecretStr)]
    cv = comment_value
    lines = [f"# {cv(sp.name)}: vLLM across {len(sp.nodes)} nodes with Ray (head {cv(head)}, workers "
             f"{', '.join(cv(w[0]) for w in workers)}); GPUs {','.join(map(str, sp.gpus))} on each node",
             *required_checks(sp.env)]

    def on(node: tuple[str, str, str], step: str, argv: list[str]) -> str:
        name, target, addr = node
        refs = {k: f"${k}" if reveal(sp.env[k]) else f"${{{k}:-}}" for k in secrets}  # optional: may be unset
        script = [f"printf 'export %s=%q\\n' {k} \"{refs[k]}\"" for k in secrets]
        script.append("echo " + q("export " + " ".join([*exports, f"VLLM_HOST_IP={q(addr)}"])))
        script.append("echo " + q("exec " + shell_words(argv)))
        log = q(f"{sp.name}-{name}-{step}.log")
        return f"{{ {'; '.join(script)}; }} | on_host {q(target)} >{log_dir}/{log} 2>&1 &"

    lines.append(on(sp.nodes[0], "ray", [ray, "start", "--head", f"--port={RAY_PORT}", f"--num-gpus={n_gpus}",
                                         "--block"]))
    for node in workers:
        lines.append(on(node, "ray", [ray, "start", f"--address={head_addr}:{RAY_PORT}", f"--num-gpus={n_gpus}",
                                      "--block"]))
    joined = (f'{q(command[0])} -c "import ray, sys; ray.init(address=sys.argv[1], logging_level=40); '
              f'sys.exit(sum(n[sys.argv[2]] for n in ray.nodes()) < {len(sp.nodes)})" auto Alive')
    lines.append(f"until on_host {q(head_ssh)} <<<{q(joined)} >/dev/null 2>&1; do sleep 2; done  # all nodes joined")
    lines.append(on(sp.nodes[0], sp.kind, command))
    lines.append(f"wait_ready {q((sp.url or '') + (sp.probes[0].path if sp.probes else '/health'))}")
    return lines


def render_shell(plan: Plan) -> str:
    from h2ostack.runtimes import docker_render

    out = [
        "#!/usr/bin/env bash",
        f"# stack {comment_value(plan.stack)}, rendered by h2ostack from {comment_value(plan.source)}",
        "# Secrets are read from the environment when this runs; none is written here.",
        "set -euo pipefail",
        f"LOGS=${{LOGS:-{shlex.quote('./' + plan.stack + '-logs')}}}",
        'mkdir -p "$LOGS"',
        "wait_ready() {  # poll a health URL until it answers 2xx",
        '  until curl -fsS -o /dev/null "$1"; do sleep 1; done',
        "}",
    ]
    everything = plan.all()
    if any(sp.nodes for sp in everything.values()):
        out += ["on_host() {  # run stdin as a bash script on another machine",
                '  ssh -T -o BatchMode=yes -- "$1" bash -s',
                "}"]
    out.append("")
    for level in plan.order:
        for name in level:
            sp = everything[name]
            if sp.nodes:
                out += _multinode_lines(sp, '"$LOGS"')
            elif not sp.started:
                out.append(f"# {comment_value(name)}: external {comment_value(sp.kind)} endpoint "
                           f"{comment_value(sp.url)} (not started)")
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
