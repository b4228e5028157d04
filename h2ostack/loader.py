"""YAML -> `Stack`: `${VAR}` expansion, env_file, and errors that name file:line:col.

The file is composed into PyYAML nodes (which carry their marks), turned into plain values
while recording where each field path came from, expanded, then validated kind by kind so
every error can point at the line a user has to change, with a "did you mean" where a near
name exists.
"""

from __future__ import annotations

import codecs
import difflib
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from h2ostack import backends
from h2ostack.errors import Loc, Problem, StackError, format_problem  # noqa: F401 - re-exported
from h2ostack.fields import RULES_ERROR
from h2ostack.graph import find_cycle
from h2ostack.spec import KINDS, NAME_RE, SECRET_KEY_RE, SERVICE_MODELS, Front, Stack

MAX_FILE_BYTES = 1_000_000
MAX_NODES = 100_000
MAX_DEPTH = 50  # a stack nests about six levels; hundreds exhaust the recursion of the YAML composer

USER_TOP_KEYS = ("version", "name", "env_file", "defaults", "hosts", "services", "fronts")


class Unreadable(Exception):
    """A file that cannot be taken as a stack or env file: what is wrong, and where when known."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None):
        super().__init__(message)
        self.message, self.line, self.col = message, line, col


def is_regular_file(path: str | Path) -> bool:
    """Whether `path` names a regular file; False (never an error) for a path no file system holds."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def read_text_file(path: str | Path, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes. A pipe, device or directory is
    refused before it is opened (so a FIFO never blocks and /dev/zero is never read), and no more
    than `limit` bytes are read even if the file grows."""
    try:
        st = os.stat(path)
    except ValueError:
        raise Unreadable("cannot be read: its path holds a NUL character") from None
    except OSError as exc:
        raise Unreadable(f"cannot be read: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise Unreadable("is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise Unreadable("is not a regular file (a pipe, socket or device): give a file")
    if st.st_size > limit:
        raise Unreadable(f"is larger than {limit // 1000} kB; refusing it")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise Unreadable(f"cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # swapped since the stat above
            raise Unreadable("is not a regular file (a pipe, socket or device): give a file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise Unreadable(f"is larger than {limit // 1000} kB; refusing it")
    return decode_text(data)


def decode_text(data: bytes) -> str:
    """UTF-8 (a BOM allowed); anything else is refused with the place of the first bad byte."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            raise Unreadable(f"is {name} text: save it as UTF-8", 1, 1)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _place(data[:exc.start].decode("utf-8", errors="replace"))
        raise Unreadable(f"is not UTF-8 text (byte 0x{data[exc.start]:02x} here): save it as UTF-8",
                         line, col) from None
    nul = text.find("\x00")
    if nul >= 0:
        line, col = _place(text[:nul])
        raise Unreadable("holds a NUL byte: is it binary, or UTF-16 without a BOM? Save it as UTF-8 text",
                         line, col)
    return text


def _place(before: str) -> tuple[int, int]:
    """1-based line and column just after `before`."""
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader with a bound on nesting: PyYAML composes recursively, so a few hundred `[`
    would otherwise end in a RecursionError instead of a message."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self._depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, f"the file nests deeper than {MAX_DEPTH} levels; "
                                              "a stack needs a handful", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


def bounded_yaml(text: str) -> Any:
    """Plain values from YAML text with nesting bounded (for files other than stacks: the lock file)."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a safe loader


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
        self.depth = 0
        self.problems: list[Problem] = []

    def convert(self, node: yaml.Node, loc: Loc) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise StackError(self.path, [Problem((), f"the file expands to more than {MAX_NODES} values "
                                                     "(a YAML alias bomb?); refusing it")])
        if self.depth >= MAX_DEPTH:  # an alias that contains itself nests without end
            raise StackError(self.path, [Problem(loc, f"nests deeper than {MAX_DEPTH} levels (an alias that "
                                                 "contains itself?)", node.start_mark.line + 1,
                                                 node.start_mark.column + 1)])
        self.depth += 1
        try:
            return self._convert(node, loc)
        finally:
            self.depth -= 1

    def _convert(self, node: yaml.Node, loc: Loc) -> Any:
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
    """KEY=VALUE lines, `export` allowed, quotes stripped, `#` comments ignored. Raises Unreadable."""
    values: dict[str, str] = {}
    for raw in read_text_file(path).splitlines():
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


@dataclass
class Expansions:
    """What `${VAR}` expansion brought in: the text as written per field, and the values taken from
    the environment, so no message echoes them (any of them may be a secret)."""

    written: dict[Loc, str] = field(default_factory=dict)
    values: set[str] = field(default_factory=set)

    def source(self, loc: Loc) -> str | None:
        for n in range(len(loc), 0, -1):
            if tuple(loc[:n]) in self.written:
                return self.written[tuple(loc[:n])]
        return None


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_REFERENCE_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(\}|:?-)?")


def referenced_variables(text: str, required_only: bool = False) -> list[str]:
    """The names of the variables a text references (`$$` is a literal `$`), in order; with
    `required_only`, only those written with no default (`${NAME}`)."""
    out = []
    for m in _REFERENCE_RE.finditer(text):
        if m.group(1) and (m.group(2) == "}" if required_only else m.group(2) is not None):
            out.append(m.group(1))
    return out


class _Unclosed(Exception):
    def __init__(self, start: int):
        self.start = start


class _Substitution:
    """Compose-style `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR-default}` (unset), with
    defaults that hold references themselves (`${A:-${B}}`), and `$$` for a literal `$`."""

    def __init__(self, text: str, env: Mapping[str, str]):
        self.text, self.env = text, env
        self.problems: list[str] = []
        self.used: list[str] = []  # values taken from the environment

    def scan(self, i: int, nested: bool = False) -> tuple[str, int]:
        """Expand from `i` to the end or, nested, to the `}` that closes a default."""
        t, out = self.text, []
        while i < len(t):
            c = t[i]
            if nested and c == "}":
                return "".join(out), i + 1
            if c != "$":
                out.append(c)
                i += 1
            elif t.startswith("$$", i):
                out.append("$")
                i += 2
            elif t.startswith("${", i):
                value, i = self.reference(i)
                out.append(value)
            else:
                out.append("$")
                i += 1
        if nested:
            raise _Unclosed(-1)
        return "".join(out), i

    def reference(self, start: int) -> tuple[str, int]:
        t = self.text
        m = _NAME_RE.match(t, start + 2)
        if m:
            name, rest = m.group(), m.end()
            got = self.env.get(name)
            if t.startswith("}", rest):
                if got is None:
                    self.problems.append(f"variable ${{{name}}} is not set and has no default (set {name} in "
                                         f"the environment or the env_file, or write ${{{name}:-default}})")
                    return "", rest + 1
                self.used.append(got)
                return got, rest + 1
            op = ":-" if t.startswith(":-", rest) else "-" if t.startswith("-", rest) else None
            if op:
                inner = _Substitution(t, self.env)
                try:
                    default, after = inner.scan(rest + len(op), nested=True)
                except _Unclosed:
                    raise _Unclosed(start) from None
                if got is not None and (got != "" or op == "-"):
                    self.used.append(got)
                    return got, after
                self.problems += inner.problems
                self.used += inner.used
                return default, after
        close = t.find("}", start)
        if close < 0:
            raise _Unclosed(start)
        self.problems.append(f"'{_cut(t[start:close + 1])}' is not a valid variable reference (use ${{NAME}} or "
                             "${NAME:-default}, and $$ for a literal $)")
        return "", close + 1


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _expand(value: Any, loc: Loc, env: Mapping[str, str], problems: list[Problem], smap: SourceMap,
            seen: Expansions | None = None) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, k), env, problems, smap, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), env, problems, smap, seen) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    sub = _Substitution(value, env)
    try:
        out, _ = sub.scan(0)
    except _Unclosed as exc:
        line, col = smap.find(loc)
        shown = "a secret's value" if _is_secret_loc(loc) else f"'{_cut(value[exc.start:], 20)}'"
        problems.append(Problem(loc, f"{shown} opens `${{` without closing it: add '}}' (or write $$ for "
                                     "a literal $)", line, col))
        return ""
    for message in sub.problems:
        line, col = smap.find(loc)
        problems.append(Problem(loc, message, line, col))
    if seen is not None and "${" in value:
        seen.written[loc] = value
        seen.values.update(v for v in sub.used if v)
    if "\x00" in out:  # brought in by a variable (an env_file's value)
        line, col = smap.find(loc)
        problems.append(Problem(loc, NUL_PROBLEM, line, col))
        return out.replace("\x00", "")
    return out


def _pydantic_problems(err: ValidationError, prefix: Loc, model_fields: dict[Loc, list[str]],
                       smap: SourceMap, seen: Expansions | None = None) -> list[Problem]:
    found: dict[Loc, Problem] = {}
    rules: list[Problem] = []
    for e in err.errors():
        loc = (*prefix, *(part for part in e["loc"] if not _UNION_TAG_RE.match(str(part))))
        kind = e["type"]
        if kind == RULES_ERROR:  # a kind's load rules: each at the field it names
            for path, message in e.get("ctx", {}).get("problems", ()):
                line, col = smap.find((*loc, *path))
                rules.append(Problem((*loc, *path), message, line, col))
            continue
        if kind == "extra_forbidden":
            name = str(loc[-1])
            choices = model_fields.get(tuple(loc[:-1]), model_fields.get((), []))
            msg = f"unknown field '{name}'{did_you_mean(name, choices)}"
        elif kind == "missing":
            msg = "this field is required"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            msg = msg[0].lower() + msg[1:]
            if kind == "value_error":  # our own validators' messages say what is wrong without the value
                written = seen.source(loc) if seen is not None else None
                msg += f" (it comes from {_cut(written)})" if written else ""
            elif "input" in e and not isinstance(e["input"], dict | list):
                msg += _got(loc, e["input"], seen)
        line, col = smap.find(loc)
        if kind in _TYPE_MISMATCH and any(other[:len(loc)] == loc and other != loc for other in found):
            continue  # a union's other branch (`gpus: [-1]` is no int) says less than the one that matched
        found[loc] = Problem(loc, msg, line, col)  # of a union's failed branches, the last says most
    return [*found.values(), *rules]


_TYPE_MISMATCH = frozenset({"int_type", "float_type", "string_type", "list_type", "dict_type", "model_type",
                            "bool_type"})


# the names pydantic gives the branches of a union in an error's location (`list[int]`, `function-after[...]`)
_UNION_TAG_RE = re.compile(r"^(?:[a-z-]+\[.*\]|int|str|float|bool|constrained-[a-z]+)$", re.DOTALL)


def _got(loc: Loc, value: Any, seen: Expansions | None) -> str:
    """The offending value for a message, unless it may be a secret: a secret field's value is never
    shown, nor one brought in from the environment (shown as written, `${VAR}`)."""
    written = seen.source(loc) if seen is not None else None
    if _is_secret_loc(loc):
        return f" (from {_cut(written)}; the value is not shown)" if written else " (the value is not shown)"
    if written is not None:
        return f", got the value of {_cut(written)} (not shown: it came from the environment)"
    return f", got {_cut(repr(value), 80)}"


# fields whose values are secrets, and env keys that look like one (their values become SecretStr)
SECRET_FIELDS = frozenset({"api_key", "api_keys", "token", "password", "admin_pass", "auth"})


def _is_secret_loc(loc: Loc) -> bool:
    for i, part in enumerate(loc):
        if part in SECRET_FIELDS:
            return True
        if part == "env" and i + 1 < len(loc) and SECRET_KEY_RE.search(str(loc[i + 1])):
            return True
    return False


def _secret_values(data: Any, loc: Loc = ()) -> set[str]:
    """Every string at a secret place of the (expanded) file."""
    if isinstance(data, dict):
        return set().union(*(_secret_values(v, (*loc, k)) for k, v in data.items())) if data else set()
    if isinstance(data, list):
        return set().union(*(_secret_values(v, (*loc, i)) for i, v in enumerate(data))) if data else set()
    if isinstance(data, str | int | float) and not isinstance(data, bool) and _is_secret_loc(loc):
        return {str(data)}
    return set()


def _redact(problems: list[Problem], secrets: set[str]) -> list[Problem]:
    """The last guard: no message carries a secret, whatever rule wrote it. Values shorter than four
    characters are only masked where quoted, so a message is not garbled by a `1`."""
    out = []
    for p in problems:
        msg = p.message
        for value in sorted(secrets, key=len, reverse=True):
            if len(value) >= 4:
                msg = msg.replace(value, "***")
            elif value:
                msg = msg.replace(repr(value), "'***'").replace(f"'{value}'", "'***'")
        out.append(Problem(p.loc, msg, p.line, p.col) if msg != p.message else p)
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
    seen = Expansions()
    try:
        return _load_text(text, path, environ, base_dir, seen)
    except StackError as exc:
        raise StackError(exc.path, _redact(exc.problems, seen.values)) from None


def _load_text(text: str, path: str, environ: Mapping[str, str] | None, base_dir: Path | None,
               seen: Expansions) -> Stack:
    if len(text.encode()) > MAX_FILE_BYTES:
        raise StackError(path, [Problem((), f"the file is larger than {MAX_FILE_BYTES // 1000} kB; refusing it")])
    conv = _Converter(path)
    try:
        node = yaml.compose(text, Loader=_BoundedLoader)
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
        env_path = Path(os.path.normpath(base / os.path.expanduser(env_file)))
        try:
            env.update(read_env_file(env_path))
        except Unreadable as exc:
            line, col = smap.find(("env_file",))
            where = f" (its line {exc.line}, column {exc.col})" if exc.line else ""
            why = "does not exist" if not os.path.lexists(env_path) else exc.message
            problems.append(Problem(("env_file",), f"env file {_short(env_path)} {why}{where}", line, col))
    env.update(environ if environ is not None else os.environ)
    seen.values.update(v for v in _secret_values(raw) if "$" not in v)  # a secret written out in the file
    data = _expand(raw, (), env, problems, smap, seen)
    seen.values.update(_secret_values(data))
    problems.extend(text_problems(data, smap))
    problems.extend(_secret_arg_problems(data, smap))
    problems.extend(_path_problems(data, smap))

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
            services[name] = model.model_validate(body, context={"rules": True})
        except ValidationError as err:
            problems.extend(_pydantic_problems(err, loc, _nested_fields(loc, model), smap, seen))
            continue
        problems.extend(_service_rules(loc, services[name], smap))

    fronts: dict[str, Front] = {}
    for name, body in raw_fronts.items():
        loc = ("fronts", name)
        try:
            fronts[name] = Front.model_validate(body if body is not None else {})
        except ValidationError as err:
            problems.extend(_pydantic_problems(err, loc, _nested_fields(loc, Front), smap, seen))
    if problems:
        raise StackError(path, problems)

    top = {k: v for k, v in data.items() if k not in ("services", "fronts")}
    try:
        stack = Stack.model_validate({**top, "services": services, "fronts": fronts,
                                      "base_dir": str(base), "source": path})
    except ValidationError as err:
        raise StackError(path, _pydantic_problems(err, (), _nested_fields((), Stack), smap, seen)) from None
    problems.extend(cross_checks(stack, smap))
    if problems:
        raise StackError(path, problems)
    stack._marks = smap.marks
    return stack


# -- text that becomes commands, paths and names ------------------------------------------
# C0 (newline, CR and tab included), DEL and C1: no value may carry one into a rendered script,
# an argv, a header or a manifest. Prompt templates alone keep newline and tab: they are text for a
# model and reach a server only inside one quoted argument or a JSON body.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
TEMPLATE_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FLAG_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# names bash keeps for itself: readonly (a script setting one stops there) or never passed on
SHELL_RESERVED = frozenset({"BASHOPTS", "BASH_VERSINFO", "EUID", "PPID", "SHELLOPTS", "UID", "FUNCNAME", "GROUPS",
                            "BASH_LINENO", "BASH_SOURCE", "BASH_ARGC", "BASH_ARGV"})
NAME_RULE = "a name must start with a letter and hold only letters, digits, '-' and '_' (at most 63)"


def shown(text: str) -> str:
    """A key as a message may show it: control characters escaped, never raw on a terminal."""
    return repr(text)[1:-1] if CONTROL_RE.search(text) or "'" in text else text


def _control_at(text: str, template: bool = False) -> str | None:
    m = (TEMPLATE_CONTROL_RE if template else CONTROL_RE).search(text)
    if not m:
        return None
    return (f"holds a control character ({ascii(m.group(0))[1:-1]} at position {m.start() + 1}), which could end "
            "a line or quote in a rendered script or manifest; write it on one line without control characters")


def text_problems(data: Any, smap: SourceMap) -> list[Problem]:
    """Control characters in any key or string value (after `${VAR}` expansion, so a variable cannot
    bring one in), and keys that become names: the stack's and `hosts:`'s names follow the service-name
    rule, env keys are shell identifiers, `args:` keys are flag names. A value is never echoed: it may be
    a secret."""
    out: list[Problem] = []

    def add(loc: Loc, msg: str) -> None:
        line, col = smap.find(loc)
        out.append(Problem(tuple(shown(str(x)) if isinstance(x, str) else x for x in loc), msg, line, col))

    def walk(value: Any, loc: Loc) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and _control_at(k):
                    add(loc, f"the key '{shown(k)}' {_control_at(k)}")
                    continue
                walk(v, (*loc, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*loc, i))
        elif isinstance(value, str):
            template = len(loc) >= 2 and loc[-2] == "prompt_dict"
            why = _control_at(value, template)
            if why:
                add(loc, why)

    walk(data, ())
    if not isinstance(data, dict):
        return out
    name = data.get("name")
    if isinstance(name, str) and not CONTROL_RE.search(name) and not NAME_RE.match(name):
        add(("name",), f"{NAME_RULE}; the stack's name keys its state dir, labels and logs, so it is never "
                       "a path")
    hosts = data.get("hosts")
    if isinstance(hosts, dict):
        for host, body in hosts.items():
            if not CONTROL_RE.search(str(host)) and not NAME_RE.match(str(host)):
                add(("hosts", host), NAME_RULE)
            for field_name in ("address", "ssh", "docker"):
                value = body.get(field_name) if isinstance(body, dict) else None
                if isinstance(value, str) and value.removeprefix("ssh://").startswith("-"):
                    add(("hosts", host, field_name), "must not start with '-' (ssh and Ray would read it as an "
                                                     "option)")
    for section in ("services", "fronts"):
        entries = data.get(section)
        for name, body in (entries.items() if isinstance(entries, dict) else ()):
            if not isinstance(body, dict):
                continue
            env = body.get("env")
            for key in (env if isinstance(env, dict) else ()):
                if not CONTROL_RE.search(str(key)) and not ENV_KEY_RE.match(str(key)):
                    add((section, name, "env", key), "an environment variable's name is letters, digits and "
                                                     "'_', not starting with a digit")
                elif key in SHELL_RESERVED:
                    add((section, name, "env", key), "bash keeps this name for itself: a rendered script "
                                                     "could not pass it on")
            args = body.get("args")
            for key in (args if isinstance(args, dict) else ()):
                if not CONTROL_RE.search(str(key)) and not FLAG_KEY_RE.match(str(key)):
                    add((section, name, "args", key), "a flag's name is letters, digits, '_', '-' and '.', "
                                                      "starting with a letter or digit")
    return out


# argument names that carry a secret: api_key, hf_token, use_auth_token, admin_pass, h2ogpt_api_keys,
# password, client_secret... but not max_new_tokens or tokenizer (words are split on '_' and '-')
_SECRET_ARG_WORDS = frozenset({"token", "password", "passwd", "pass", "secret", "credential", "credentials",
                               "key", "keys", "apikey", "apikeys"})


def secret_arg_hint(name: str, section: str = "services") -> str | None:
    """Where a secret given as `args: {NAME: ...}` belongs instead, or None for an ordinary flag."""
    words = str(name).lower().replace("-", "_").strip("_").split("_")
    if not (_SECRET_ARG_WORDS.intersection(words) or words == ["auth"]):
        return None
    if "key" in words or "keys" in words or "apikey" in words or "apikeys" in words:
        if section == "fronts":
            return "set `api_keys:` on the front, from variables (api_keys: [\"${GATEWAY_KEY}\"])"
        return ("set `api_key:` on the service, from a variable (api_key: \"${MY_KEY}\"), which reaches "
                "the server through its environment")
    if "admin" in words:
        return "set `admin_pass:` on the front, from a variable (admin_pass: \"${ADMIN_PASS}\")"
    if "token" in words:
        return "pass it in `env:` (env: {HF_TOKEN: \"${HF_TOKEN}\"}), where it is kept out of the command line"
    if words == ["auth"] or "password" in words or "passwd" in words or "pass" in words:
        return "set `auth:` ({user: ..., password: \"${PASSWORD}\"}), which is never printed"
    return "pass it in `env:` under a name holding TOKEN, KEY or SECRET, which is never printed"


def _secret_arg_problems(data: Any, smap: SourceMap) -> list[Problem]:
    """`args:` become a command line, which `ps`, `docker inspect`, `plan` and `render` show: a
    secret there is refused (a true/false switch such as `enforce_h2ogpt_api_key: true` is no secret)."""
    out = []
    for section in ("services", "fronts"):
        entries = data.get(section) if isinstance(data, dict) else None
        for name, body in (entries.items() if isinstance(entries, dict) else ()):
            args = body.get("args") if isinstance(body, dict) else None
            for key, value in (args.items() if isinstance(args, dict) else ()):
                hint = secret_arg_hint(str(key), section)
                if hint is None or isinstance(value, bool) or value is None:
                    continue
                loc = (section, name, "args", key)
                line, col = smap.find(loc)
                out.append(Problem(loc, f"'{key}' carries a secret, and `args:` become a command line that "
                                        f"`ps`, `plan` and `render` show: {hint}", line, col))
    return out


# fields that name files or folders: a value the file system cannot hold is refused here, not met as an
# OSError later (Linux: PATH_MAX 4096 bytes, NAME_MAX 255 per part)
_PATH_FIELDS = ("model", "python", "launcher", "workdir")
PATH_MAX, NAME_MAX = 4095, 255


def _too_long_for_a_path(value: str) -> bool:
    return len(value.encode()) > PATH_MAX or any(len(part.encode()) > NAME_MAX for part in value.split("/"))


def _path_problems(data: Any, smap: SourceMap) -> list[Problem]:
    if not isinstance(data, dict):
        return []
    places: list[tuple[Loc, Any]] = [(("env_file",), data.get("env_file"))]
    defaults = data.get("defaults")
    if isinstance(defaults, dict):
        places.append((("defaults", "hf_home"), defaults.get("hf_home")))
    for section in ("services", "fronts"):
        entries = data.get(section)
        for name, body in (entries.items() if isinstance(entries, dict) else ()):
            if isinstance(body, dict):
                places += [((section, name, f), body.get(f)) for f in _PATH_FIELDS]
                volumes = body.get("volumes")
                places += [((section, name, "volumes", i), str(v).split(":", 1)[0])
                           for i, v in enumerate(volumes if isinstance(volumes, list) else [])]
    out = []
    for loc, value in places:
        if isinstance(value, str) and _too_long_for_a_path(value):
            line, col = smap.find(loc)
            out.append(Problem(loc, f"is too long for a path ({len(value)} characters): a path holds at most "
                                    f"{PATH_MAX} bytes and each part between slashes at most {NAME_MAX}", line, col))
    return out


def _service_rules(loc: Loc, svc: Any, smap: SourceMap) -> list[Problem]:
    """Rules every kind shares; a kind's own are its model's `load_rules` (run by model_validate)."""
    out = []

    def add(field_name: str, msg: str) -> None:
        line, col = smap.find((*loc, field_name))
        out.append(Problem((*loc, field_name), msg, line, col))

    kind = svc.kind
    backend = backends.get(kind)
    if svc.host is not None and backend.mode(svc) != "container":
        add("host", f"a {kind} service runs as a process on this machine; only container services (tgi with "
                    "`image:`) take `host:`")
    nodes = getattr(svc, "nodes", None)
    if svc.external and not nodes and (svc.gpus or svc.port):
        add("gpus" if svc.gpus else "port", "an external service (`url:`) is not started: it takes no gpus or port")
    if svc.on_demand and not svc.starts_something:
        add("on_demand", "only a service h2ostack starts can be on demand (not `url:`, `nodes:` or an h2oGPT "
                         "server without `python:`)")
    if svc.sleep is not None and not backend.can_sleep:
        add("sleep", f"only vLLM can sleep (its sleep mode); a {kind} service on demand is stopped and started")
    elif svc.sleep is not None and not svc.on_demand:
        add("sleep", "`sleep:` says how an on-demand service is put away: add `on_demand: true`")
    if "idle_timeout" in svc.model_fields_set and not svc.on_demand:
        add("idle_timeout", "`idle_timeout:` is for on-demand services: add `on_demand: true`")
    _prompt_rules(svc, add)
    return out


def _prompt_rules(svc: Any, add: Any) -> None:
    """prompt_type is one h2ostack knows (or `custom` with a prompt_dict); prompt_dict keys are h2oGPT's."""
    from h2ostack.prompts import KEYS, PROMPT_TYPES

    known = [*PROMPT_TYPES, "custom"]
    if svc.prompt_type is not None and svc.prompt_type not in known:
        add("prompt_type", f"unknown prompt type '{svc.prompt_type}'{did_you_mean(svc.prompt_type, known)}; "
                           f"one of {', '.join(known)} (custom: with `prompt_dict:`)")
    if svc.prompt_type == "custom" and not svc.prompt_dict:
        add("prompt_type", "prompt_type custom needs a `prompt_dict:`")
    for key in svc.prompt_dict or {}:
        if key not in KEYS:
            add("prompt_dict", f"unknown prompt_dict key '{key}'{did_you_mean(key, KEYS)}; one of {', '.join(KEYS)}")


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
            elif stack.services[dep].on_demand:
                add(("services", name, "depends_on", i), f"'{dep}' is on demand: nothing waits for it at `up` "
                                                         "(depend on always-on services only)")
    for name, front in stack.fronts.items():
        for i, model in enumerate(front.models):
            if model not in stack.services:
                add(("fronts", name, "models", i), f"no service named '{model}'{did_you_mean(model, names)}")
        for i, dep in enumerate(front.depends_on):
            if dep not in stack.services:
                add(("fronts", name, "depends_on", i), f"no service named '{dep}'{did_you_mean(dep, names)}")
            elif stack.services[dep].on_demand:
                add(("fronts", name, "depends_on", i), f"'{dep}' is on demand: list it in `models:`, where the "
                                                       "gateway starts it on its first request")
        if front.args and front.kind != "h2ogpt":
            add(("fronts", name, "args"), "`args:` are generate.py options of an h2ogpt front (`kind: h2ogpt`)")
        for i, model in enumerate(front.models):
            if front.kind == "h2ogpt" and model in stack.services and stack.services[model].on_demand:
                add(("fronts", name, "models", i), f"'{model}' is on demand, which the built-in front's gateway "
                                                   "starts; an h2oGPT front reaches its models directly")
        if front.kind == "h2ogpt" and not front.python:
            add(("fronts", name, "python"), "an h2ogpt front needs `python:` (the interpreter of an h2oGPT install)")
        if front.arena and (front.kind != "gradio" or len(set(front.models)) < 2):
            add(("fronts", name, "arena"), "an Arena is a tab of the built-in front and needs two models or more")

    served = {m for f in stack.fronts.values() if f.kind == "gradio" for m in f.models}
    for name, svc in stack.services.items():
        if svc.on_demand and name not in served:
            add(("services", name, "on_demand"), "nothing would start it: list it in the `models:` of a front "
                                                 "(kind gradio), whose gateway starts it on its first request")

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




def _short(path: str | Path, limit: int = 200) -> str:
    """A path as a message shows it: a hostile 10,000-character one is cut."""
    text = str(path)
    return text if len(text) <= limit else text[:limit // 2] + "..." + text[-limit // 2:]


def read_stack_text(path: str | Path) -> str:
    """The stack file's text, or a StackError that says why it cannot be read."""
    try:
        return read_text_file(path)
    except Unreadable as exc:
        why = exc.message if exc.message.startswith("cannot") else f"the stack file {exc.message}"
        raise StackError(_short(path), [Problem((), why, exc.line, exc.col)]) from None


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> Stack:
    p = Path(path)
    text = read_stack_text(p)
    return load_text(text, str(path), environ, p.resolve().parent)


def stack_name(path: str | Path, environ: Mapping[str, str] | None = None) -> str:
    """Just the stack's name, for commands that act on what runs (status, down, logs, kill): they
    must work without the secrets and variables that only `up` needs."""
    p = Path(path)
    try:
        raw = bounded_yaml(read_text_file(p))
    except (Unreadable, yaml.YAMLError):
        raw = None
    name = raw.get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str) or not name:
        return load(p, environ).name  # the full load says what is wrong
    problems: list[Problem] = []
    expanded = _expand(name, ("name",), environ if environ is not None else os.environ, problems, SourceMap())
    if problems or not NAME_RE.match(expanded):
        return load(p, environ).name
    return str(expanded)
