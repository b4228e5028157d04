"""Services as containers, through the Docker SDK (the engine `DOCKER_HOST` names).

Containers are named `<stack>-<service>` and carry labels (stack, service, config hash, port,
h2ostack version): `status`, `logs`, `down` and `kill` find them by labels alone, so they work
with the state dir gone. Secrets reach a container only as environment values at creation;
never in labels or the command. Restarts are Docker's own restart policy.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from h2ostack import __version__
from h2ostack.errors import EngineUnavailable
from h2ostack.runtimes.base import Observed
from h2ostack.spec import reveal

if TYPE_CHECKING:
    from h2ostack.plan_types import ServicePlan

LABEL = "io.h2ostack."


def labels_for(stack: str, plan: ServicePlan) -> dict[str, str]:
    return {LABEL + "stack": stack, LABEL + "service": plan.name, LABEL + "config-hash": plan.config_hash,
            LABEL + "version": __version__, LABEL + "port": str(plan.port or ""), LABEL + "kind": plan.kind}


def engine_host(base_url: str | None = None) -> str:
    return base_url or os.environ.get("DOCKER_HOST") or ("unix:///var/run/docker.sock (the default; DOCKER_HOST "
                                                         "is not set)")


def engine(base_url: str | None = None) -> Any:
    """A client of the engine at `base_url` (a host of `hosts:`), else of DOCKER_HOST / the default."""
    import docker

    host = engine_host(base_url)
    try:
        if base_url:  # ssh:// through the system's ssh client (keys, agent and config as the user has them)
            client = docker.DockerClient(base_url=base_url, use_ssh_client=base_url.startswith("ssh://"))
        else:
            client = docker.from_env()
        client.ping()
    except Exception as exc:  # the SDK raises DockerException, requests' errors, FileNotFoundError...
        raise EngineUnavailable(f"no Docker engine answers at {host}: {exc}. Start one, or point DOCKER_HOST "
                                "at it (unix:///path/docker.sock, tcp://host:2376, ssh://user@host)") from None
    return client


def _started_at(attrs: dict[str, Any]) -> float | None:
    text = (attrs.get("State") or {}).get("StartedAt") or ""
    if not text or text.startswith("0001"):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp()
    return None


class _ContainerHandle:
    def __init__(self, container: Any):
        self.container = container

    def exit_code(self) -> int | None | bool:
        try:
            self.container.reload()
        except Exception:
            return True  # removed under us
        state = self.container.attrs.get("State") or {}
        if state.get("Running") or state.get("Restarting"):
            return None
        if state.get("Status") in ("exited", "dead"):
            return int(state.get("ExitCode", 1))
        return None


class DockerRuntime:
    def __init__(self, stack: str, client: Any = None, base_url: str | None = None, key: str = "container"):
        self.stack = stack
        self._client = client
        self.base_url = base_url
        self.mode = key  # `container`, or `container@HOST` for a host of `hosts:`

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = engine(self.base_url)
        return self._client

    def containers(self, service: str | None = None) -> list[Any]:
        filters = [f"{LABEL}stack={self.stack}"]
        if service is not None:
            filters.append(f"{LABEL}service={service}")
        return self.client.containers.list(all=True, filters={"label": filters})

    def observe(self) -> dict[str, Observed]:
        out = {}
        for c in self.containers():
            labels = c.labels or {}
            name = labels.get(LABEL + "service", c.name)
            state = c.attrs.get("State") or {}
            alive = bool(state.get("Running") or state.get("Restarting"))
            code = None if alive or state.get("Status") == "created" else state.get("ExitCode")
            port = labels.get(LABEL + "port")
            out[name] = Observed(name, self.mode, alive, labels.get(LABEL + "config-hash", ""),
                                 int(port) if port else None, c.short_id, _started_at(c.attrs), code,
                                 "" if state.get("Status") != "created" else "created, not started",
                                 int(c.attrs.get("RestartCount") or 0))
        return out

    def create_kwargs(self, plan: ServicePlan) -> dict[str, Any]:
        """The Docker SDK's create parameters for a planned container (secrets revealed here only)."""
        from docker.types import DeviceRequest

        spec = dict(plan.container or {})
        kwargs: dict[str, Any] = {
            "image": plan.image, "name": spec["name"], "command": list(spec["command"]),
            "labels": labels_for(self.stack, plan), "detach": True,
            "environment": {k: reveal(v) or "" for k, v in plan.env.items()},
            "ports": {port: tuple(addr) for port, addr in spec.get("ports", {}).items()},
            "volumes": list(spec.get("volumes", [])),
        }
        if spec.get("shm_size"):
            kwargs["shm_size"] = spec["shm_size"]
        if spec.get("device_requests"):
            kwargs["device_requests"] = [DeviceRequest(driver=d.get("Driver", ""), device_ids=d["DeviceIDs"],
                                                       capabilities=d["Capabilities"])
                                         for d in spec["device_requests"]]
        if spec.get("restart_policy"):
            kwargs["restart_policy"] = dict(spec["restart_policy"])
        return kwargs

    def ensure_image(self, image: str) -> None:
        """Pull the image when the engine does not have it, as `docker run` would."""
        import docker.errors

        try:
            self.client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        try:
            self.client.images.pull(image)
        except docker.errors.DockerException as exc:
            why = getattr(exc, "explanation", None) or str(exc)
            raise RuntimeError(f"image {image} is not on the Docker engine at {engine_host(self.base_url)} and "
                               "could not be "
                               f"pulled: {why}. Pull or load it there first (docker pull {image}, or "
                               "docker load -i FILE)") from None

    def create(self, plan: ServicePlan) -> Any:
        self.ensure_image(plan.image or "")
        for old in self.containers(plan.name):  # an exited or changed one under the same name
            old.remove(force=True)
        return self.client.containers.create(**self.create_kwargs(plan))

    def start(self, plan: ServicePlan) -> _ContainerHandle:
        container = self.create(plan)
        try:
            container.start()
        except Exception as exc:  # e.g. no NVIDIA runtime for a GPU request: leave no container behind
            container.remove(force=True)
            explanation = getattr(exc, "explanation", None) or str(exc)
            raise RuntimeError(f"the engine could not start container {container.name}: {explanation}") from None
        return _ContainerHandle(container)

    def stop(self, name: str, timeout: float, force: bool = False) -> bool:
        found = self.containers(name)
        for c in found:
            with contextlib.suppress(Exception):
                if force:
                    c.kill()
                else:
                    c.stop(timeout=int(max(0, timeout)))
            c.remove(force=True)
        return bool(found)

    def log_tail(self, name: str, lines: int) -> str:
        out = []
        for c in self.containers(name):
            with contextlib.suppress(Exception):
                out.append(c.logs(tail=min(lines, 100000)).decode(errors="replace"))
        return "".join(out).rstrip("\n")

    def log_path(self, name: str) -> str | None:
        return None

    def follow(self, name: str, emit: Callable[[str], object]) -> None:
        """`logs -f`: stream new lines from the container in a background thread."""

        def pump() -> None:
            for c in self.containers(name):
                buf = b""
                # tail=0: only what comes after the tail `logs` has just printed
                for chunk in c.logs(stream=True, follow=True, tail=0):
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        emit(line.decode(errors="replace") + "\n")

        threading.Thread(target=pump, daemon=True).start()
