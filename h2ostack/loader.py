"""YAML -> `Stack`: `${VAR}` expansion, env_file, and errors that name file:line:col.

The file is composed into PyYAML nodes (which carry their marks), turned into plain values
while recording where each field path came from, expanded, then validated kind by kind so
every error can point at the line a user has to change, with a "did you mean" where a near
name exists.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from h2ostack.errors import Loc, Problem, StackError, format_problem  # noqa: F401 - re-exported
from h2ostack.spec import KINDS, NAME_RE, SERVICE_MODELS, Front, Stack

MAX_FILE_BYTES = 1_000_000
MAX_NODES = 100_000

_VAR_RE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\{([^}]*)\})")
USER_TOP_KEYS = ("version", "name", "env_file", "defaults", "hosts", "services", "fronts")


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass
class SourceMap:
    """Field path -> (line, col), 1-based, for the key (or value) that introduced it."""

    marks: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def find(self, loc: Loc) -> tuple[int | None, int | None]:
        for n in range(len(loc), -1, -1):
            hit = self.marks.get(tuple(loc[:n]))
            if hit:
                return hit
        return None, None


class _Converter:
    def __init__(self, path: str):
        self.path = path
        self.smap = SourceMap()
        self.count = 0
        self.problems: list[Problem] = []

    def convert(self, node: yaml.Node, loc: Loc) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise StackError(self.path, [Problem((), f"the file expands to more than {MAX_NODES} values "
                                                     "(a YAML alias bomb?); refusing it")])
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    merged = self.convert(value_node, loc)
                    for item in merged if isinstance(merged, list) else [merged]:
                        if isinstance(item, dict):
                            for k, v in item.items():
                                out.setdefault(k, v)
                    continue
                key = self.convert(key_node, loc)
                if isinstance(key, list | dict):
                    self._problem(loc, "a mapping key must be a plain value", key_node)
                    continue
                key = str(key) if not isinstance(key, str) else key
                sub = (*loc, key)
                if key in out:
                    self._problem(sub, f"'{key}' is given twice", key_node)
                self.smap.marks[sub] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out[key] = self.convert(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.smap.marks.setdefault((*loc, i), (item.start_mark.line + 1, item.start_mark.column + 1))
                items.append(self.convert(item, (*loc, i)))
            return items
        value = _scalar(node)
        if isinstance(value, str) and "\x00" in value:
            self._problem(loc, NUL_PROBLEM, node)
            return value.replace("\x00", "")
        return value

    def _problem(self, loc: Loc, message: str, node: yaml.Node) -> None:
        self.problems.append(Problem(loc, message, node.start_mark.line + 1, node.start_mark.column + 1))


_SCALAR_LOADER = yaml.SafeLoader("")
NUL_PROBLEM = "holds a NUL character, which no path, argument or environment value can carry"


def _scalar(node: yaml.Node) -> Any:
    # the safe loader's resolution of a plain scalar: ints, floats, bools, nulls, strings
    return _SCALAR_LOADER.construct_object(node, deep=True)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, `export` allowed, quotes stripped, `#` comments ignored."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


def _expand(value: Any, loc: Loc, env: Mapping[str, str], problems: list[Problem], smap: SourceMap) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, k), env, problems, smap) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), env, problems, smap) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        whole = m.group(0)
        if whole == "$$":
            return "$"
        name, default, bad = m.group(1), m.group(2), m.group(3)
        if name is None:
            line, col = smap.find(loc)
            problems.append(Problem(loc, f"'${{{bad}}}' is not a valid variable reference "
                                         "(use ${NAME} or ${NAME:-default})", line, col))
            return ""
        got = env.get(name)
        if got is not None and (got != "" or ":-" not in whole):
            return got
        if default is not None:
            return default
        line, col = smap.find(loc)
        problems.append(Problem(loc, f"variable ${{{name}}} is not set and has no default "
                                     f"(set {name} in the environment or the env_file, or write ${{{name}:-default}})",
                                line, col))
        return ""

    out = _VAR_RE.sub(sub, value)
    if "\x00" in out:  # brought in by a variable (an env_file's value)
        line, col = smap.find(loc)
        problems.append(Problem(loc, NUL_PROBLEM, line, col))
        return out.replace("\x00", "")
    return out


def _pydantic_problems(err: ValidationError, prefix: Loc, model_fields: dict[Loc, list[str]],
                       smap: SourceMap) -> list[Problem]:
    out = []
    for e in err.errors():
        loc = (*prefix, *e["loc"])
        kind = e["type"]
        if kind == "extra_forbidden":
            name = str(loc[-1])
            choices = model_fields.get(tuple(loc[:-1]), model_fields.get((), []))
            msg = f"unknown field '{name}'{did_you_mean(name, choices)}"
        elif kind == "missing":
            msg = "this field is required"
        elif kind == "literal_error":
            msg = f"{e['msg'].lower()}, got {e.get('input')!r}"
        else:
            msg = e["msg"][0].lower() + e["msg"][1:]
            if "input" in e and not isinstance(e["input"], dict | list):
                msg += f", got {e['input']!r}"
        line, col = smap.find(loc)
        out.append(Problem(loc, msg, line, col))
    return out


def _fields_of(model: type) -> list[str]:
    return list(model.model_fields)  # type: ignore[attr-defined]


def _nested_fields(prefix: Loc, model: type) -> dict[Loc, list[str]]:
    """Known field names for each nested object, so unknown keys get a did-you-mean."""
    out: dict[Loc, list[str]] = {prefix: _fields_of(model)}
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        ann = info.annotation
        for cand in getattr(ann, "__args__", (ann,)):
            if isinstance(cand, type) and hasattr(cand, "model_fields"):
                out[(*prefix, name)] = _fields_of(cand)
    return out


def load_text(text: str, path: str = "<stack>", environ: Mapping[str, str] | None = None,
              base_dir: Path | None = None) -> Stack:
    if len(text.encode()) > MAX_FILE_BYTES:
        raise StackError(path, [Problem((), f"the file is larger than {MAX_FILE_BYTES // 1000} kB; refusing it")])
    conv = _Converter(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise StackError(path, [Problem((), f"not valid YAML: {problem}",
                                        mark.line + 1 if mark else None,
                                        mark.column + 1 if mark else None)]) from None
    if node is None:
        raise StackError(path, [Problem((), "the file is empty: a stack needs at least `name:` and `services:`")])
    try:
        raw = conv.convert(node, ())
    except yaml.YAMLError as exc:
        raise StackError(path, [Problem((), f"not valid YAML: {exc}")]) from None
    if conv.problems:
        raise StackError(path, conv.problems)
    smap = conv.smap
    if not isinstance(raw, dict):
        raise StackError(path, [Problem((), "the top level must be a mapping with `name:` and `services:`", 1, 1)])

    base = base_dir or Path(path).resolve().parent
    env: dict[str, str] = {}
    problems: list[Problem] = []
    env_file = raw.get("env_file")
    if isinstance(env_file, str):
        env_path = (base / os.path.expanduser(env_file)).resolve()
        if env_path.is_file():
            env.update(read_env_file(env_path))
        else:
            line, col = smap.find(("env_file",))
            problems.append(Problem(("env_file",), f"env file {env_path} does not exist", line, col))
    env.update(environ if environ is not None else os.environ)
    data = _expand(raw, (), env, problems, smap)

    for key in data:
        if key not in USER_TOP_KEYS:
            line, col = smap.find((key,))
            problems.append(Problem((key,), f"unknown field '{key}'{did_you_mean(key, USER_TOP_KEYS)}", line, col))
    if "name" not in data:
        problems.append(Problem(("name",), "this field is required (the stack's name keys its labels, state and logs)",
                                1, 1))

    services: dict[str, Any] = {}
    raw_services = data.get("services") or {}
    raw_fronts = data.get("fronts") or {}
    for section, value in (("services", raw_services), ("fronts", raw_fronts)):
        if not isinstance(value, dict):
            line, col = smap.find((section,))
            problems.append(Problem((section,), "must be a mapping of names to definitions", line, col))
    if problems:
        raise StackError(path, problems)

    seen_names: dict[str, str] = {}
    for section, entries in (("services", raw_services), ("fronts", raw_fronts)):
        for name in entries:
            line, col = smap.find((section, name))
            if not NAME_RE.match(str(name)):
                problems.append(Problem((section, name), "a name must start with a letter and hold only letters, "
                                        "digits, '-' and '_' (at most 63)", line, col))
            if name in seen_names and seen_names[name] != section:
                problems.append(Problem((section, name), f"'{name}' is already the name of one of the "
                                        f"{seen_names[name]}", line, col))
            seen_names[name] = section

    for name, body in raw_services.items():
        loc: Loc = ("services", name)
        if not isinstance(body, dict):
            line, col = smap.find(loc)
            problems.append(Problem(loc, "must be a mapping with at least `kind:`", line, col))
            continue
        kind = body.get("kind")
        if kind is None:
            line, col = smap.find(loc)
            problems.append(Problem((*loc, "kind"), f"this field is required: one of {', '.join(KINDS)}", line, col))
            continue
        if kind not in SERVICE_MODELS:
            line, col = smap.find((*loc, "kind"))
            problems.append(Problem((*loc, "kind"), f"unknown kind '{kind}'{did_you_mean(str(kind), KINDS)}; "
                                    f"one of {', '.join(KINDS)}", line, col))
            continue
        model = SERVICE_MODELS[kind]
        try:
            services[name] = model.model_validate(body)
        except ValidationError as err:
            problems.extend(_pydantic_problems(err, loc, _nested_fields(loc, model), smap))
            continue
        problems.extend(_service_rules(loc, services[name], smap))

    fronts: dict[str, Front] = {}
    for name, body in raw_fronts.items():
        loc = ("fronts", name)
        try:
            fronts[name] = Front.model_validate(body if body is not None else {})
        except ValidationError as err:
            problems.extend(_pydantic_problems(err, loc, _nested_fields(loc, Front), smap))
    if problems:
        raise StackError(path, problems)

    top = {k: v for k, v in data.items() if k not in ("services", "fronts")}
    try:
        stack = Stack.model_validate({**top, "services": services, "fronts": fronts,
                                      "base_dir": str(base), "source": path})
    except ValidationError as err:
        raise StackError(path, _pydantic_problems(err, (), _nested_fields((), Stack), smap)) from None
    problems.extend(cross_checks(stack, smap))
    if problems:
        raise StackError(path, problems)
    stack._marks = smap.marks
    return stack


def _service_rules(loc: Loc, svc: Any, smap: SourceMap) -> list[Problem]:
    out = []

    def add(field_name: str, msg: str) -> None:
        line, col = smap.find((*loc, field_name))
        out.append(Problem((*loc, field_name), msg, line, col))

    kind = svc.kind
    if kind == "tgi":
        modes = [m for m in ("image", "launcher", "url") if getattr(svc, m)]
        if len(modes) != 1:
            add("kind", "a tgi service needs exactly one of `image:` (Docker), `launcher:` (a local install) "
                        f"or `url:` (an existing server); got {', '.join(modes) or 'none'}")
    if kind in ("vllm", "transformers") and svc.url and getattr(svc, "python", None):
        add("url", "give either `url:` (an existing server) or `python:` (start one), not both")
    if kind == "h2ogpt" and not (svc.url or svc.python):
        add("kind", "an h2ogpt service needs `url:` (an existing server) or `python:` (start one)")
    if kind == "h2ogpt" and svc.url and svc.python:
        add("url", "give either `url:` (an existing server) or `python:` (start one), not both")
    if not svc.model and kind != "tgi" and not (kind == "h2ogpt" and svc.url):
        add("model", "this field is required")
    if kind == "tgi" and not svc.url and not svc.model:
        add("model", "this field is required")
    if svc.starts_something and svc.port is None and kind == "tgi" and svc.image:
        add("port", "a TGI container needs a host `port:` (the container listens on 80)")
    if svc.host is not None and not (kind == "tgi" and svc.image):
        add("host", f"a {kind} service runs as a process on this machine; only container services (tgi with "
                    "`image:`) take `host:`")
    nodes = getattr(svc, "nodes", None)
    if nodes and svc.url:
        add("url", "give either `url:` (an existing server) or `nodes:` (one model across hosts), not both")
    if nodes and not svc.gpus:
        add("nodes", "a multi-node service needs `gpus:` (the GPUs it uses on each node)")
    if svc.external and not nodes and (svc.gpus or svc.port):
        add("gpus" if svc.gpus else "port", "an external service (`url:`) is not started: it takes no gpus or port")
    return out


def cross_checks(stack: Stack, smap: SourceMap | None = None) -> list[Problem]:
    """Rules between entries: references, cycles, duplicate ports. GPU rules need the machine: plan.py."""
    smap = smap or SourceMap()
    out: list[Problem] = []
    names = list(stack.services)

    def add(loc: Loc, msg: str) -> None:
        line, col = smap.find(loc)
        out.append(Problem(loc, msg, line, col))

    for name, svc in stack.services.items():
        if svc.host is not None and svc.host not in stack.hosts:
            add(("services", name, "host"), f"no host named '{svc.host}' in `hosts:`"
                                            f"{did_you_mean(svc.host, list(stack.hosts))}")
        for node in getattr(svc, "nodes", None) or []:
            if node not in stack.hosts:
                add(("services", name, "nodes"), f"no host named '{node}' in `hosts:`"
                                                 f"{did_you_mean(node, list(stack.hosts))}")
        for i, dep in enumerate(svc.depends_on):
            if dep not in stack.services:
                add(("services", name, "depends_on", i), f"no service named '{dep}'{did_you_mean(dep, names)}")
            elif dep == name:
                add(("services", name, "depends_on", i), "a service cannot depend on itself")
    for name, front in stack.fronts.items():
        for i, model in enumerate(front.models):
            if model not in stack.services:
                add(("fronts", name, "models", i), f"no service named '{model}'{did_you_mean(model, names)}")
        for i, dep in enumerate(front.depends_on):
            if dep not in stack.services:
                add(("fronts", name, "depends_on", i), f"no service named '{dep}'{did_you_mean(dep, names)}")
        if front.kind == "h2ogpt" and not front.python:
            add(("fronts", name, "python"), "an h2ogpt front needs `python:` (the interpreter of an h2oGPT install)")
        if front.arena and (front.kind != "gradio" or len(set(front.models)) < 2):
            add(("fronts", name, "arena"), "an Arena is a tab of the built-in front and needs two models or more")

    cycle = find_cycle({n: [d for d in s.depends_on if d in stack.services and d != n]
                       for n, s in stack.services.items()})
    if cycle:
        add(("services", cycle[0], "depends_on"), "dependency cycle: " + " -> ".join([*cycle, cycle[0]]))

    ports: dict[int, Loc] = {}
    entries: list[tuple[Loc, int | None]] = [(("services", n), s.port) for n, s in stack.services.items()
                                             if not s.external]
    entries += [(("fronts", n), f.port) for n, f in stack.fronts.items()]
    for loc, port in entries:
        if port is None:
            continue
        if port in ports:
            other = ports[port]
            add((*loc, "port"), f"port {port} is already used by {other[0][:-1]} '{other[1]}'")
        else:
            ports[port] = loc
    return out


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a list of names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                return stack[stack.index(dep):]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> Stack:
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise StackError(str(path), [Problem((), f"cannot read the stack file: {exc.strerror}")]) from None
    if size > MAX_FILE_BYTES:
        raise StackError(str(path), [Problem((), f"the file is larger than {MAX_FILE_BYTES // 1000} kB; refusing it")])
    return load_text(p.read_text(), str(path), environ, p.resolve().parent)


def stack_name(path: str | Path, environ: Mapping[str, str] | None = None) -> str:
    """Just the stack's name, for commands that act on what runs (status, down, logs, kill): they
    must work without the secrets and variables that only `up` needs."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text()) if p.stat().st_size <= MAX_FILE_BYTES else None
    except (OSError, yaml.YAMLError):
        raw = None
    name = raw.get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str) or not name:
        return load(p, environ).name  # the full load says what is wrong
    problems: list[Problem] = []
    expanded = _expand(name, ("name",), environ if environ is not None else os.environ, problems, SourceMap())
    if problems or not NAME_RE.match(expanded):
        return load(p, environ).name
    return str(expanded)
