"""`h2ostack render`: the plan as plain commands a person could run.

Secrets are never written: a secret env var is passed by name (`-e NAME` for Docker, a required
`${NAME:?}` for processes) and its value is read from the environment when the script runs.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable

from pydantic import SecretStr

from h2ostack.plan import Plan, ServicePlan


def shell_words(argv: Iterable[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def _process_lines(sp: ServicePlan, log_dir: str) -> list[str]:
    lines = [f"# {sp.name}: {sp.kind}" + (f" on GPUs {','.join(map(str, sp.gpus))}" if sp.gpus else "")]
    env_words = []
    for key, value in sp.env.items():
        if isinstance(value, SecretStr):
            env_words.append(f'{key}="${{{key}:?set {key} in the environment}}"')
        else:
            env_words.append(f"{key}={shlex.quote(str(value))}")
    cd = f"cd {shlex.quote(sp.workdir)} && " if sp.workdir else ""
    cmd = shell_words(sp.command or ())
    env = " ".join(env_words)
    lines.append(f"( {cd}{env + ' ' if env else ''}exec {cmd} ) >{log_dir}/{sp.name}.log 2>&1 &")
    lines.append(f"wait_ready {shlex.quote((sp.url or '') + (sp.probes[0].path if sp.probes else ''))}")
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
        "",
    ]
    everything = plan.all()
    for level in plan.order:
        for name in level:
            sp = everything[name]
            if not sp.started:
                out.append(f"# {name}: external {sp.kind} endpoint {sp.url} (not started)")
            elif sp.mode == "container":
                out += docker_render.docker_run_lines(sp, plan)
            else:
                out += _process_lines(sp, '"$LOGS"')
            out.append("")
    return "\n".join(out) + "\n"


FORMATS: dict[str, Callable[[Plan], str]] = {"shell": render_shell}
