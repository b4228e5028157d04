"""h2ostack: one stack file, one command, for self-hosted LLM servers and their chat fronts.

Layout: `cli.py` (Typer) -> `api.py` (plain functions) -> `plan.py` (pure: stack + machine facts
-> plan) and `executor.py` (dependency-ordered parallel start, reverse stop) -> `runtimes/`
(processes, Docker) and `backends/` (one module per kind: flags, readiness). `loader.py` turns
YAML into frozen pydantic models (`spec.py`) once, with errors that name file, line and column.
`render.py` writes shell scripts and multi-node Ray recipes, `render_deploy.py` compose files and
Kubernetes manifests, `lock.py` lock files, `init.py` stack files from `templates/`.
"""

__version__ = "0.1.0"
