"""The `h2ostack` command: parse options, call `api`, render its events, map errors to exit codes.

Exit codes: 0 success, 1 a service failed or is unhealthy, 2 the stack file or command line is
invalid. Heavy modules (pydantic models, psutil, httpx, docker) are imported inside commands so
that `h2ostack --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="One stack file, one command: LLM servers and their chat fronts, planned, started, "
                       "health-checked and stopped.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode=None)

GpusOpt = Annotated[str | None, typer.Option("--gpus", help="The machine's GPU ids (0,1,2,3) instead of NVML; "
                                                             "env H2OSTACK_GPUS.")]
GpuMemOpt = Annotated[float | None, typer.Option("--gpu-memory", help="GiB per GPU, instead of NVML; "
                                                                      "env H2OSTACK_GPU_MEMORY.")]
StackArg = Annotated[Path, typer.Argument(help="The stack file.", show_default=False)]


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # a pipe gets full rows, not a terminal's 80 columns
    width = None if stream.isatty() else int(os.environ.get("COLUMNS", "200"))
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def _plain(*cells: str) -> list[Any]:
    """A table row's cells as plain text: a command's `[...]`, a server's answer or a health message is
    shown as it is, never read as Rich markup (which would hide it, or fail on a stray `[/]`)."""
    from rich.text import Text

    return [Text(c) for c in cells]


def _seconds(value: float) -> float:
    """A `--timeout`: a finite number of seconds, not negative (nan would never end, inf never kill)."""
    import math

    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"{value} is not a number of seconds (a finite number, 0 or more)")
    return value


def _fail(message: str, code: int) -> typer.Exit:
    _console(stderr=True).print(message, markup=False)
    return typer.Exit(code)


def _guard(fn: Any) -> Any:
    """Map the errors a user can cause to messages and exit codes, never a traceback."""
    from h2ostack.errors import EngineUnavailable, FactsError, NotFound, StackError, UpError

    try:
        return fn()
    except StackError as exc:
        raise _fail(str(exc), 2) from None
    except (FactsError, NotFound) as exc:
        raise _fail(f"error: {exc}", 2) from None
    except UpError:
        raise
    except EngineUnavailable as exc:
        raise _fail(f"error: {exc}", 1) from None
    except BlockingIOError:
        raise _fail("error: another h2ostack command is changing this stack", 1) from None


def _plan(stack: Path, gpus: str | None, gpu_memory: float | None, check_ports: bool = True) -> Any:
    from h2ostack.api import load_plan

    return _guard(lambda: load_plan(stack, gpus, gpu_memory, check_ports=check_ports))


@app.command()
def validate(stack: StackArg) -> None:
    """Load and check the stack file only; exit 2 when it is invalid."""
    from h2ostack.loader import load

    s = _guard(lambda: load(stack))
    _console().print(f"{stack}: valid stack '{s.name}' with {len(s.services)} service(s) and "
                     f"{len(s.fronts)} front(s)", markup=False)


@app.command()
def plan(stack: StackArg, json_out: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
         gpus: GpusOpt = None, gpu_memory: GpuMemOpt = None) -> None:
    """The resolved plan without starting anything: GPUs, ports, order, commands; secrets masked."""
    _, _, p = _plan(stack, gpus, gpu_memory)
    if json_out:
        sys.stdout.write(json.dumps(p.to_json(), indent=2) + "\n")
        return
    from rich.table import Table

    from h2ostack.render import shell_words

    con = _console()
    con.print(f"stack {p.stack}: start order " + " -> ".join("[" + ", ".join(level) + "]" for level in p.order),
              markup=False)
    table = Table("service", "kind", "mode", "gpus", "url", "command / image", show_lines=True)
    for s in p.all().values():
        what = shell_words(s.command) if s.command else (s.image or "")
        table.add_row(*_plain(s.name, s.kind, s.mode, ",".join(map(str, s.gpus)) or "-", s.url or "-", what))
    con.print(table)
    for s in p.on_demand().values():
        mem = ", ".join(f"GPU {g}: {c:.1f} GiB" if c is not None else f"GPU {g}: memory not known" for g, c in s.claims)
        con.print(f"{s.name}: on demand ({mem or 'no GPU'}; put away after {s.idle_timeout:g} s idle"
                  + (f", by vLLM sleep level {s.sleep}" if s.sleep else "") + "); "
                  + (f"cannot be up beside {', '.join(s.excludes)}" if s.excludes else "fits beside every other"),
                  markup=False)
    for f in p.fronts.values():
        for model, how in f.wiring:
            con.print(f"{f.name} -> {model}: {how}", markup=False)


@app.command()
def up(stack: StackArg,
       services: Annotated[list[str] | None, typer.Argument(help="Only these services (and what they need).")] = None,
       gpus: GpusOpt = None, gpu_memory: GpuMemOpt = None,
       attach: Annotated[bool, typer.Option("--attach", help="Stay and stream logs; Ctrl-C stops the stack.")] = False,
       timeout: Annotated[float, typer.Option("--timeout", help="Grace period when stopping, seconds.", callback=_seconds)] = 30.0,
       locked: Annotated[bool, typer.Option("--locked", help="Refuse to start if anything differs from "
                                            "STACK.lock (images, model revisions, packages, GPUs).")] = False,
       ) -> None:
    """Plan, start what is not already running with the same config, wait until every server answers."""
    from h2ostack import api
    from h2ostack.errors import UpError

    con = _console(stderr=True)
    if locked:
        differences = _guard(lambda: api.lock_differences(stack, gpus, gpu_memory))
        if differences:
            con.print(f"error: {stack} differs from {stack}.lock; nothing was started:", markup=False)
            for line in differences:
                con.print(f"  {line}", markup=False)
            raise typer.Exit(2)
        con.print(f"{stack}.lock: everything matches", markup=False)
    printer = _Progress(con)
    try:
        with printer:
            p = _guard(lambda: api.up(stack, services or (), gpus, gpu_memory, emit=printer.event,
                                      stop_timeout=timeout))
    except UpError as exc:
        con.print(f"\nh2ostack up failed: {len(exc.failures)} service(s) did not start; "
                  "what this run started has been stopped.", markup=False)
        for name, why in exc.failures.items():
            head, _, tail = why.partition("\n")
            con.print(f"\n{name}: {head}", markup=False)
            if tail.strip():
                con.print("  last log lines:\n" + "\n".join("  | " + ln for ln in tail.splitlines()), markup=False)
        raise typer.Exit(1) from None
    out = _console()
    shown = set(services or ()) and set(api.targets(p, services or ()))
    for s in p.all().values():
        if shown and s.name not in shown:
            continue
        out.print(f"{s.name:<16} {s.url or '-'}" + (f"  (gateway {s.url}/v1)" if s.is_front and s.kind == "gradio"
                                                     else ""), markup=False)
    if attach:
        try:
            _follow(api.log_sources(stack), tail=10)
        except KeyboardInterrupt:
            con.print("\nstopping the stack...", markup=False)
            api.down(stack, timeout=timeout, emit=printer.event)


class _Progress:
    """Rich progress while waiting for health: one line per service, events above it."""

    def __init__(self, console: Any):
        self.console = console
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}
        self.t0: dict[str, float] = {}
        self.steps: dict[str, str] = {}  # what each service's wait is at: its probe, and its phase
        self.phases: dict[str, str] = {}
        self.said: dict[str, str] = {}  # the last phase given a line of its own

    def __enter__(self) -> _Progress:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                 console=self.console, transient=True)
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def event(self, ev: Any) -> None:
        name = ev.service
        say = self.console.print
        if ev.kind == "start":
            self.t0[name] = time.monotonic()
            say(f"starting {name}", markup=False)
        elif ev.kind == "wait" and self.progress is not None:
            self.steps[name] = ev.detail
            self.tasks[name] = self.progress.add_task(f"{name}: waiting for {ev.detail}", total=None)
        elif ev.kind in ("step", "phase") and name in self.tasks:
            if ev.kind == "step":
                self.steps[name] = ev.detail
            else:
                self.phases[name] = ev.detail
            phase = f"{self.phases[name]}, " if name in self.phases else ""
            self.progress.update(self.tasks[name], description=f"{name}: {phase}waiting for {self.steps[name]}")
        if ev.kind == "phase":  # a line for each new phase (a download's progress shows on its bar)
            word = ev.detail.partition(" (")[0]
            if word != "ready" and self.said.get(name) != word:
                self.said[name] = word
                say(f"phase    {name}: {ev.detail}", markup=False)
        elif ev.kind in ("ready", "fail", "skip") and name in self.tasks:
            self.progress.remove_task(self.tasks.pop(name))
        if ev.kind == "ready":
            took = f" in {ev.elapsed:.1f} s" if ev.elapsed is not None else ""
            say(f"ready    {name}{took}  {ev.detail}", markup=False)
        elif ev.kind == "keep":
            say(f"kept     {name} ({ev.detail})", markup=False)
        elif ev.kind == "stop":
            say(f"stopping {name} ({ev.detail})", markup=False)
        elif ev.kind == "skip":
            say(f"skipped  {name}: {ev.detail}", markup=False)
        elif ev.kind == "warn":
            say(f"warning  {name}: {ev.detail}", markup=False)
        elif ev.kind == "fail":
            say(f"failed   {name}: {str(ev.detail).splitlines()[0]}", markup=False)


@app.command()
def down(stack: Annotated[str, typer.Argument(help="The stack file, or a stack's name.")],
         timeout: Annotated[float, typer.Option("--timeout", help="Seconds between SIGTERM and SIGKILL.", callback=_seconds)] = 30.0,
         ) -> None:
    """Stop the stack in reverse order: SIGTERM to each group or container, SIGKILL after the timeout."""
    from h2ostack import api

    con = _console(stderr=True)
    stopped = _guard(lambda: api.down(stack, timeout=timeout, emit=_Progress(con).event))
    con.print(f"stopped {len(stopped)} service(s)" if stopped else "nothing of this stack was running",
              markup=False)


@app.command()
def kill(stack: Annotated[str | None, typer.Argument(help="The stack file, or a stack's name.")] = None,
         all_stacks: Annotated[bool, typer.Option("--all", help="Every stack under the state dir.")] = False) -> None:
    """SIGKILL at once everything this stack (or every stack) started, found by labels and pidfiles."""
    from h2ostack import api

    if not stack and not all_stacks:
        raise _fail("error: name a stack, or use --all", 2)
    con = _console(stderr=True)
    killed = _guard(lambda: api.kill(stack, all_stacks, emit=_Progress(con).event))
    con.print(f"killed {len(killed)} service(s)" if killed else "nothing was running", markup=False)


@app.command()
def arena(stack: Annotated[str, typer.Argument(help="The stack file, or a stack's name.")],
          json_out: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
          jsonl: Annotated[bool, typer.Option("--jsonl", help="Every vote as a JSON line, not the leaderboard.")
                           ] = False,
          front: Annotated[str | None, typer.Option("--front", help="Only this front's votes.")] = None) -> None:
    """The leaderboard of the Arena's votes: Bradley-Terry ratings with 95% intervals, votes, win rates,
    and how often Model A won (side bias)."""
    from h2ostack.front import arena_cli

    _guard(lambda: arena_cli.run(stack, json_out, jsonl, front, _console()))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


@app.command()
def status(stack: Annotated[str | None, typer.Argument(help="The stack file or name; all stacks if omitted.")] = None,
           json_out: Annotated[bool, typer.Option("--json", help="One JSON list.")] = False,
           watch: Annotated[bool, typer.Option("--watch", help="Refresh every 2 s until Ctrl-C.")] = False) -> None:
    """One row per service; exit 0 only if every one is healthy."""
    from h2ostack import api

    def table() -> tuple[Any, list[Any]]:
        from rich.table import Table

        rows = _guard(lambda: api.status(stack))
        t = Table("stack", "service", "kind", "state", "phase", "health", "gpus", "url", "pid/container", "uptime",
                  "restarts")
        for r in rows:
            state = r.state + (f" ({r.exit_code})" if r.state == "exited" and r.exit_code is not None else "")
            restarts = str(r.restarts) + (f" (last exit {r.last_exit})" if r.restarts and r.last_exit is not None
                                          else "")
            if r.last_probe_failure:
                restarts += f", failed probe {r.last_probe_failure}"
            t.add_row(*_plain(r.stack, r.service, r.kind, state, r.phase, r.health, ",".join(map(str, r.gpus)) or "-",
                              r.url or "-", r.ident or "-", _age(r.uptime), restarts))
        return t, rows

    if json_out:
        rows = _guard(lambda: api.status(stack))
        sys.stdout.write(json.dumps([r.to_json() for r in rows], indent=2) + "\n")
    elif watch:
        from rich.live import Live

        try:
            with Live(table()[0], console=_console(), refresh_per_second=1) as live:
                while True:
                    time.sleep(2)
                    live.update(table()[0])
        except KeyboardInterrupt:
            return
    else:
        t, rows = table()
        _console().print(t) if rows else _console().print("no stacks are running", markup=False)
        for r in rows:
            if r.gateway and r.state == "running":
                _console().print(f"gateway {r.stack}/{r.service}: {r.gateway} (OpenAI-compatible)", markup=False)
        for why in dict.fromkeys(r.detail for r in rows if r.state == "unknown" and r.detail):
            _console(stderr=True).print(f"error: {why}", markup=False)
        for r in rows:
            if r.state in api.ON_DEMAND_STATES and r.detail:
                _console().print(f"{r.stack}/{r.service}: {r.detail}", markup=False)
        for r in rows:
            if r.detail.startswith(api.MALFORMED):
                _console(stderr=True).print(f"warning  {r.stack}/{r.service}: {r.detail}", markup=False)
    ok = bool(rows) and all(r.health == "healthy" or r.state == "external" and r.health != "unreachable"
                            or r.state in api.ON_DEMAND_STATES for r in rows)
    raise typer.Exit(0 if ok else 1)


def _follow(sources: list[tuple[str, Any]], tail: int | None, follow: bool = True) -> None:
    out = sys.stdout
    prefix = len(sources) > 1
    width = max((len(n) for n, _ in sources), default=0)
    files: dict[str, Any] = {}
    for name, runtime in sources:
        pre = f"{name:<{width}} | " if prefix else ""
        text = runtime.log_tail(name, tail if tail is not None else 10**9)
        for line in text.splitlines():
            out.write(pre + line + "\n")
        path = runtime.log_path(name)
        if path and Path(path).exists():
            fh = open(path, errors="replace")  # noqa: SIM115 - kept open while following
            fh.seek(0, 2)
            files[name] = fh
    out.flush()
    if not follow:
        return
    followers = [(n, r) for n, r in sources if n not in files and hasattr(r, "follow")]
    def emit(line: str, name: str) -> None:
        out.write((f"{name:<{width}} | " if prefix else "") + line)
        out.flush()

    for name, runtime in followers:
        runtime.follow(name, lambda line, n=name: emit(line, n))
    while True:
        moved = False
        for name, fh in files.items():
            for line in fh.readlines():
                out.write((f"{name:<{width}} | " if prefix else "") + line)
                moved = True
        if moved:
            out.flush()
        time.sleep(0.2)


@app.command()
def logs(stack: Annotated[str, typer.Argument(help="The stack file, or a stack's name.")],
         service: Annotated[str | None, typer.Argument(help="One service; all if omitted.")] = None,
         follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines.")] = False,
         tail: Annotated[int | None, typer.Option("--tail", help="Only the last N lines.")] = None) -> None:
    """Service logs, prefixed by service name when several."""
    from h2ostack import api

    sources = _guard(lambda: api.log_sources(stack, service))
    try:
        _guard(lambda: _follow(sources, tail, follow))
    except KeyboardInterrupt:
        return


@app.command()
def check(stack: StackArg,
          max_tokens: Annotated[int, typer.Option("--max-tokens", help="Tokens to ask for.")] = 16,
          timeout: Annotated[float, typer.Option("--timeout", help="Seconds per request.", callback=_seconds)] = 120.0,
          prompt: Annotated[str | None, typer.Option("--prompt", help="The question to ask.")] = None,
          expect: Annotated[str | None, typer.Option("--expect", help="Fail unless every answer holds this "
                                                     "text (case aside).")] = None) -> None:
    """Send a test prompt to every endpoint, non-streaming and streaming; time to first token, tokens/s."""
    from rich.table import Table

    from h2ostack import api, executor
    from h2ostack.check import PROMPT, check_service

    stack_model, _, p = _plan(stack, None, None, check_ports=False)
    targets = [s for s in p.services.values() if not s.on_demand]
    results: dict[str, Any] = {}

    def one(name: str) -> None:
        sp = p.services[name]
        result = check_service(sp, api.auth_headers(sp, stack_model), max_tokens, timeout, prompt or PROMPT)
        if result.ok and expect and expect.lower() not in result.text.lower():
            result = dataclasses.replace(result, ok=False, error=f"the answer lacks {expect!r}: {result.text}")
        results[name] = result

    executor.run_graph({s.name: [] for s in targets}, one)
    t = Table("service", "kind", "ok", "ttft", "tokens", "tokens/s", "answer / error")
    for s in targets:
        r = results[s.name]
        t.add_row(*_plain(s.name, s.kind, "yes" if r.ok else "NO", f"{r.ttft_s * 1000:.0f} ms" if r.ttft_s else "-",
                          str(r.tokens), f"{r.tokens_per_s:.1f}" if r.tokens_per_s else "-",
                          (r.text if r.ok else r.error).replace("\n", " ")[:80]))
    if prompt:
        _console().print(f"asked: {prompt}", markup=False)
    _console().print(t)
    for s in p.on_demand().values():
        _console().print(f"{s.name}: on demand, not checked (ask through the front's gateway, which starts it)",
                         markup=False)
    raise typer.Exit(0 if all(r.ok for r in results.values()) else 1)


@app.command()
def lock(stack: StackArg, gpus: GpusOpt = None, gpu_memory: GpuMemOpt = None) -> None:
    """Write STACK.lock: image digests from the engine, model revisions, each environment's package
    versions, the h2ostack version and the planned GPU ids. `up --locked` then refuses any change."""
    from h2ostack import api

    path, data = _guard(lambda: api.lock(stack, gpus, gpu_memory))
    out = _console()
    for name, entry in data["services"].items():
        what = entry.get("image_id") or ", ".join(f"{k} {v}" for k, v in (entry.get("packages") or {}).items()
                                                   if k != "python") or entry.get("url") or entry.get("launcher") or ""
        model = entry.get("model") or {}
        rev = model.get("revision") or model.get("digest") or ""
        out.print(f"{name:<16} {entry['kind']:<13} {what}" + (f"  model {rev}" if rev else ""), markup=False)
    out.print(f"wrote {path}", markup=False)


@app.command()
def render(stack: StackArg,
           fmt: Annotated[str, typer.Option("--format", help="shell (a script), compose (a compose file), "
                                                         "k8s (Deployments and Services)")] = "shell",
           vllm_image: Annotated[str, typer.Option("--vllm-image", help="compose/k8s: the image vLLM services "
                                                   "run in (pin a tag)")] = "vllm/vllm-openai:latest",
           gpus: GpusOpt = None, gpu_memory: GpuMemOpt = None) -> None:
    """The plan for other hands: plain commands (`docker run ...`, `python -m vllm...`), a compose
    file or Kubernetes manifests. No secret is written: each is read from the environment or a Secret."""
    from h2ostack.api import load_plan
    from h2ostack.render import FORMATS, environ_for, leaked

    if fmt not in FORMATS:
        raise _fail(f"error: unknown format {fmt!r}; one of {', '.join(FORMATS)}", 2)
    from h2ostack.errors import StackError

    def without_secrets() -> str | None:
        """Unset secrets are fine: they are written by name. Any other unset variable: None."""
        try:
            p = load_plan(stack, gpus, gpu_memory, environ_for(stack), check_ports=False)[2]
        except StackError:
            return None  # planned again below, where the loader's own message is shown
        return FORMATS[fmt](p) if fmt == "shell" else FORMATS[fmt](p, vllm_image)  # type: ignore[call-arg]

    text = _guard(without_secrets)
    if text is None or leaked(text):
        _, _, p = _plan(stack, gpus, gpu_memory, check_ports=False)
        text = FORMATS[fmt](p) if fmt == "shell" else FORMATS[fmt](p, vllm_image)  # type: ignore[call-arg]
    sys.stdout.write(text)


@app.command()
def doctor(stack: Annotated[Path | None, typer.Argument(help="The stack file, for its own checks.")] = None,
           gpus: GpusOpt = None, gpu_memory: GpuMemOpt = None) -> None:
    """Check the machine for the stack: Docker, NVIDIA runtime, GPUs, HF cache, tokens, environments, ports."""
    from h2ostack import doctor as doc

    checks = _guard(lambda: doc.run(str(stack) if stack else None, gpus, gpu_memory))
    con = _console()
    for c in checks:
        con.print(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<28} {c.detail}" + (f"\n      -> {c.fix}" if c.fix and
                                                                                 not c.ok else ""), markup=False)
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


@app.command()
def init(file: Annotated[Path | None, typer.Argument(help="The stack file to write (default: stack.yaml; "
                                                    "- prints it).", show_default=False)] = None,
         template: Annotated[str, typer.Option("--template", "-t", help="The template (see --list).")] = "cpu-demo",
         list_templates: Annotated[bool, typer.Option("--list", help="List the templates and exit.")] = False,
         name: Annotated[str | None, typer.Option("--name", help="The stack's name.")] = None,
         model: Annotated[str | None, typer.Option("--model", help="The model: a hub id or a folder.")] = None,
         gpus: Annotated[str | None, typer.Option("--gpus", help="The model's GPUs: ids (0,1) or a count (2).")
                         ] = None,
         port: Annotated[int | None, typer.Option("--port", help="The first port; the template's others "
                                                  "follow it.")] = None,
         force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False) -> None:
    """Write a commented stack file from a template; without --template, the CPU demo. It validates."""
    from h2ostack import init as tpl

    if list_templates:
        for t in _guard(tpl.templates).values():
            _console().print(f"{t.name:<12} {t.summary}", markup=False)
        return
    dest = None if file is not None and str(file) == "-" else (file or Path("stack.yaml"))
    if dest is not None and dest.exists() and not force:
        raise _fail(f"error: {dest} exists; choose another file or add --force", 2)
    text = _guard(lambda: tpl.render(template, name, model, gpus, port, dest))
    if dest is None:
        sys.stdout.write(text)
        return
    try:
        dest.write_text(text)
    except OSError as exc:
        raise _fail(f"error: cannot write {dest}: {exc.strerror}", 1) from None
    _console().print(f"wrote {dest} from the {template} template: edit it, then `h2ostack plan {dest}` "
                     f"and `h2ostack up {dest}`", markup=False)


@app.command()
def schema() -> None:
    """The JSON Schema of the stack file, for editors (`# yaml-language-server: $schema=...`)."""
    from h2ostack.init import schema_text

    sys.stdout.write(schema_text())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
