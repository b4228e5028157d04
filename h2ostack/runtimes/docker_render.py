"""`docker run` lines for container services, as `render --format shell` writes them.

Quoted as Docker needs (`--gpus '"device=0,3"'`: unquoted, the CLI reads device 0 and a count of
3), options before the image so nothing is swallowed, and secrets passed by name (`-e NAME`)
so their values are read from the environment when the script runs, never written. A service
of a `hosts:` entry runs on that host's engine (`docker -H URL`), as `up` runs it.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from pydantic import SecretStr

from h2ostack.quoting import comment_value, env_name, required_checks
from h2ostack.runtimes.docker import labels_for

if TYPE_CHECKING:
    from h2ostack.plan_types import Plan, ServicePlan


def docker_run_lines(sp: ServicePlan, plan: Plan) -> list[str]:
    spec = dict(sp.container or {})
    q = shlex.quote
    docker = f"docker -H {q(sp.docker_url)}" if sp.docker_url else "docker"
    opts = [f"--name {q(spec['name'])}"]
    for key, value in labels_for(plan.stack, sp).items():
        opts.append(f"--label {q(f'{key}={value}')}")
    for port, (host, host_port) in spec.get("ports", {}).items():
        container_port = port.split("/")[0]
        opts.append("-p " + q(f"{host}:{host_port}:{container_port}"))
    for d in spec.get("device_requests", []):
        opts.append("--gpus " + q('"device=' + ",".join(d["DeviceIDs"]) + '"'))
    if spec.get("shm_size"):
        opts.append(f"--shm-size {q(str(spec['shm_size']))}")
    policy = spec.get("restart_policy")
    if policy:
        name = policy["Name"] + (f":{policy['MaximumRetryCount']}" if policy.get("MaximumRetryCount") else "")
        opts.append(f"--restart {q(name)}")
    for key, value in sp.env.items():
        if isinstance(value, SecretStr):
            opts.append(f"-e {q(env_name(key))}")
        else:
            opts.append(f"-e {q(f'{env_name(key)}={value}')}")
    for vol in spec.get("volumes", []):
        opts.append(f"-v {q(vol)}")
    where = f" on host {comment_value(sp.host)}" if sp.host else ""
    lines = [f"# {comment_value(sp.name)}: {comment_value(sp.kind)} container{where}"
             + (f" on GPUs {','.join(map(str, sp.gpus))}" if sp.gpus else "")]
    lines += required_checks(sp.env)
    lines.append(f"{docker} rm -f {q(spec['name'])} >/dev/null 2>&1 || true")
    args = " ".join(q(str(a)) for a in spec.get("command", []))
    lines.append(f"{docker} run -d " + " \\\n    ".join(opts) + f" \\\n    {q(sp.image or '')} {args}")
    probe = sp.probes[0].path if sp.probes else "/health"
    lines.append(f"wait_ready {q((sp.url or '') + probe)}")
    return lines
