"""`h2ostack init` and `h2ostack schema`: a commented stack file from a template, and the JSON
Schema editors use to complete and check stack files.

Templates are stack files in the top-level `templates/` (shipped in the wheel as
`h2ostack/templates/`). Their first line names the schema for the YAML language server, their
second `# h2ostack template: NAME: what it is`. A value that `init`'s flags fill is tagged by a
comment on its line, `# --model`, `# --gpus`, `# --port` or `# --name`: every tagged line gets
the flag's value, except ports, which count up from the one given, line by line. The file is
loaded before it is written, so what `init` writes validates.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2ostack
from h2ostack.errors import Problem, StackError

DEFAULT_TEMPLATE = "cpu-demo"
SCHEMA_FILE = "stack.schema.json"
_HEAD_RE = re.compile(r"^# h2ostack template: ([a-z0-9-]+): (.+)$", re.MULTILINE)
_SCHEMA_LINE_RE = re.compile(r"^# yaml-language-server: \$schema=.*$", re.MULTILINE)
_TAGGED_RE = re.compile(r"^(?P<key>\s*[A-Za-z_][\w-]*:[ \t]+)(?P<value>\S.*?)(?P<pad>[ \t]+)"
                        r"(?P<tag># --(?P<flag>name|model|gpus|port)\b.*)$")
# stack-file fields a person writes (the loader's own bookkeeping is left out of the schema)
_INTERNAL_FIELDS = ("base_dir", "source")
_VAR = {"type": "string", "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
        "description": "a ${VAR} or ${VAR:-default} reference, expanded when the file is loaded"}


@dataclass(frozen=True)
class Template:
    name: str
    summary: str
    path: Path


def templates_dir() -> Path:
    """The installed package's templates, or a source checkout's top-level `templates/`."""
    pkg = Path(h2ostack.__file__).resolve().parent
    for candidate in (pkg / "templates", pkg.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no templates folder beside {pkg}: the installation is incomplete")


def schema_path() -> Path:
    """The schema file shipped with the package (kept equal to `stack_schema()` by a test)."""
    return Path(h2ostack.__file__).resolve().parent / SCHEMA_FILE


def templates() -> dict[str, Template]:
    out = {}
    for path in sorted(templates_dir().glob("*.yaml")):
        head = _HEAD_RE.search(path.read_text())
        if head:
            out[head.group(1)] = Template(head.group(1), head.group(2), path)
    return out


def _fail(message: str, loc: tuple = ()) -> StackError:
    return StackError("h2ostack init", [Problem(loc, message)])


def _scalar(value: str) -> str:
    """A YAML scalar that reads back as exactly this string (JSON's quoting is YAML's)."""
    plain = re.fullmatch(r"[A-Za-z0-9_./~][A-Za-z0-9_./~@:+-]*", value) and ": " not in value
    return value if plain else json.dumps(value)


def parse_gpus(text: str) -> str:
    """`--gpus 2` (a count) or `--gpus 0,1` (device ids), as the YAML the stack file takes."""
    text = text.strip()
    if re.fullmatch(r"\d{1,3}", text):
        return str(int(text))
    ids = text.split(",")
    if not all(re.fullmatch(r"\d{1,3}", i.strip()) for i in ids) or len({int(i) for i in ids}) != len(ids):
        raise _fail(f"--gpus takes a count (2) or distinct device ids (0,1), got {text!r}", ("gpus",))
    return "[" + ", ".join(str(int(i)) for i in ids) + "]"


def fill(text: str, name: str | None = None, model: str | None = None, gpus: str | None = None,
         port: int | None = None, schema: str | None = None) -> str:
    """The template's text with the flags' values on their tagged lines."""
    for label, value in (("--name", name), ("--model", model)):
        if value is not None and (not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value)):
            raise _fail(f"{label} must be a non-empty value on one line, got {value!r}")
    from h2ostack.spec import NAME_RE

    if name is not None and not NAME_RE.match(name):
        raise _fail(f"--name must start with a letter and hold only letters, digits, '-' and '_' (at most 63), "
                    f"got {name!r}", ("name",))
    if port is not None and not 1 <= port <= 65535:
        raise _fail(f"--port must be between 1 and 65535, got {port}", ("port",))
    values = {"name": name, "model": model, "gpus": parse_gpus(gpus) if gpus is not None else None}
    next_port = port
    lines = []
    for line in text.splitlines():
        m = _TAGGED_RE.match(line)
        if m:
            flag = m.group("flag")
            new: str | None
            if flag == "port":
                new = str(next_port) if next_port is not None else None
                if next_port is not None:
                    if next_port > 65535:
                        raise _fail(f"--port {port} leaves no room for the template's other ports", ("port",))
                    next_port += 1
            elif flag in ("name", "model"):
                new = _scalar(values[flag]) if values[flag] is not None else None
            else:
                new = values[flag]
            if new is not None:
                width = len(m.group("value")) + len(m.group("pad"))
                line = m.group("key") + new + " " * max(1, width - len(new)) + m.group("tag")
        lines.append(line)
    out = "\n".join(lines) + "\n"
    if schema is not None:
        out = _SCHEMA_LINE_RE.sub(lambda _m: f"# yaml-language-server: $schema={schema}", out, count=1)
    return out


def render(template: str = DEFAULT_TEMPLATE, name: str | None = None, model: str | None = None,
           gpus: str | None = None, port: int | None = None, dest: Path | None = None) -> str:
    """The stack file `init` writes, checked by the loader (variables it references may be unset:
    they are the user's to set before `up`)."""
    known = templates()
    if template not in known:
        from h2ostack.loader import did_you_mean

        raise _fail(f"no template {template!r}{did_you_mean(template, list(known))}; "
                    f"one of {', '.join(known)}", ("template",))
    text = fill(known[template].path.read_text(), name, model, gpus, port, schema=str(schema_path()))
    from h2ostack.loader import load_text

    where = str(dest) if dest is not None else "<init>"
    base = (dest.resolve().parent if dest is not None else Path.cwd())
    load_text(text, where, with_unset_as_placeholders(text), base)
    return text


def with_unset_as_placeholders(text: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment with a placeholder for each variable the text references and nobody set."""
    env = dict(os.environ if environ is None else environ)
    from h2ostack.loader import referenced_variables

    for var in referenced_variables(text):
        if var not in env:
            env[var] = f"unset-{var}"
    return env


def _relax(node: Any) -> Any:
    """Let every number and boolean field also take a ${VAR} reference, as the loader does."""
    if isinstance(node, list):
        return [_relax(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _relax(v) for k, v in node.items()}
    if node.get("type") in ("integer", "number", "boolean"):
        scalar = {k: v for k, v in node.items() if k not in ("title", "description", "default")}
        rest = {k: v for k, v in node.items() if k in ("title", "description", "default")}
        return {**rest, "anyOf": [scalar, _VAR]}
    return node


def stack_schema() -> dict[str, Any]:
    """The JSON Schema of a stack file, from the pydantic models the loader checks it with."""
    from h2ostack.spec import Stack

    schema = Stack.model_json_schema(mode="validation")
    for key in _INTERNAL_FIELDS:
        schema.get("properties", {}).pop(key, None)
    schema = _relax(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "h2ostack stack file"
    schema["required"] = ["name"]
    return schema


def schema_text() -> str:
    return json.dumps(stack_schema(), indent=2, sort_keys=True) + "\n"
