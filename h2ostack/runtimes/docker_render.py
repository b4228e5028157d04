"""`docker run` lines for container services, as `render --format shell` writes them.

Quoted as Docker needs (`--gpus '"device=0,3"'`: unquoted, the CLI reads device 0 and a count of
3), options before the image so nothing is swallowed, and secrets passed by name (`-e NAME`)
so their values are read from the environment when the script runs, never written.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from pydantic import SecretStr

from h2ostack.runtimes.docker import labels_for

if TYPE_CHECKING:
    from h2ostack.plan import Plan, ServicePlan


def docker_run_lines(sp: ServicePlan, plan: Plan) -> list[str]:
    spec = dict(sp.container or {})
    q = shlex.quote
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
    secrets = []
    for key, value in sp.env.items():
        if isinstance(value, SecretStr):
            opts.append(f"-e {q(key)}")
            secrets.append(key)
        else:
            opts.append(f"-e {q(f'{key}={value}')}")
    for vol in spec.get("volumes", []):
        opts.append(f"-v {q(vol)}")
    lines = [f"# {sp.name}: {sp.kind} container" + (f" on GPUs {','.join(map(str, sp.gpus))}" if sp.gpus else "")]
    from h2ostack.render import required_checks  # (render imports this module when it runs)

    lines += required_checks(sp.env)
    lines.append(f"docker rm -f {q(spec['name'])} >/dev/null 2>&1 || true")
    args = " ".join(q(a) for a in spec.get("command", []))
    lines.append("docker run -d " + " \\\n    ".join(opts) + f" \\\n    {q(sp.image or '')} {args}")
    probe = sp.probes[0].path if sp.probes else "/health"
    lines.append(f"wait_ready {q((sp.url or '') + probe)}")
    return lines
