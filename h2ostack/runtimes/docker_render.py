"""`docker run` lines for container services (filled in with the Docker runtime)."""

from __future__ import annotations

from h2ostack.plan import Plan, ServicePlan


def docker_run_lines(sp: ServicePlan, plan: Plan) -> list[str]:
    raise NotImplementedError("container rendering comes with the Docker runtime")
