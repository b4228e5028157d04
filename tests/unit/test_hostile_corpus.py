"""A hostile-input corpus: generated stack files, env files and command lines, each run through the
real CLI. Every case must end with exit 2 and a message (never a traceback), within a time bound,
without writing outside the state dir, and without echoing a secret it carried.

Most cases run in this interpreter through Typer's runner (fast); the ones that could hang or read
without end (a FIFO, /dev/zero, /dev/urandom) run as real subprocesses with a timeout.
"""

from __future__ import annotations

import codecs
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from h2ostack.cli import app

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-corpus-7Hq2vX9eLw"  # written in files: must never be printed
ENV_SECRET = "hf_corpusEnv4Kp8Zm"  # brought in from the environment: must never be printed
COMMANDS = ("validate", "plan", "render", "doctor")
PLANNING = ("plan", "render", "doctor")
IN_PROCESS_LIMIT_S = 20
SUBPROCESS_LIMIT_S = 30

BASE = """\
version: 1
name: corpus
services:
  small:
    kind: transformers
    model: ./m
    port: 8001
"""
FRONT = """\
fronts:
  chat:
    port: 7860
    models: [small]
"""


@dataclass
class Case:
    id: str
    args: list[str]  # after the command; "{stack}" stands for the stack file
    files: dict[str, bytes | str] = field(default_factory=dict)  # name -> content; "@fifo", "@dir"
    env: dict[str, str] = field(default_factory=dict)
    commands: tuple[str, ...] = ("validate",)
    subprocess: bool = False
    mentions: str = ""  # the message must name this (a field path, the file)


def stack(text: str, id: str, commands: tuple[str, ...] = ("validate",), env: dict[str, str] | None = None,
          mentions: str = "", extra: dict[str, bytes | str] | None = None) -> Case:
    return Case(id, ["{stack}"], {"s.yaml": text, **(extra or {})}, dict(env or {}), commands,
                mentions=mentions)


def rotate(i: int, choices: tuple[str, ...] = COMMANDS) -> tuple[str, ...]:
    return (choices[i % len(choices)],)


def service(body: str, kind: str = "transformers", top: str = "") -> str:
    """A stack with one service `a` of `kind` whose body is `body` (YAML lines at 4 spaces)."""
    return f"version: 1\nname: corpus\n{top}services:\n  a:\n    kind: {kind}\n" + body


# -- the classes of hostile input ---------------------------------------------------------------------

def deep_nesting() -> Iterator[Case]:
    for n in (60, 200, 500, 3000):
        yield stack(BASE + "    args: {x: " + "[" * n + "]" * n + "}\n", f"deep-flow-list-{n}", rotate(n))
        yield stack(BASE + "    args: {x: " + "{a: " * n + "1" + "}" * n + "}\n", f"deep-flow-map-{n}", rotate(n + 1))
        block = "".join("  " * i + "k:\n" for i in range(n)) + "  " * n + "v: 1\n"
        yield stack(block, f"deep-block-map-{n}", rotate(n + 2))
        yield stack("x:\n" + "".join("  " * i + "- \n" for i in range(1, n)) + "  " * n + "- 1\n",
                    f"deep-block-list-{n}", rotate(n + 3))
    yield stack(BASE + "    args: &a {x: *a}\n", "alias-self-map")
    yield stack(BASE + "    args: {x: &a [*a]}\n", "alias-self-list", ("plan",))
    yield stack(BASE + "    args: &a {<<: *a}\n", "alias-self-merge", ("render",))
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(8))
    yield stack(laughs, "alias-billion-laughs", ("doctor",))


def encodings() -> Iterator[Case]:
    text = BASE + FRONT
    for i, (name, data) in enumerate([
        ("utf16-le-bom", codecs.BOM_UTF16_LE + text.encode("utf-16-le")),
        ("utf16-be-bom", codecs.BOM_UTF16_BE + text.encode("utf-16-be")),
        ("utf16-no-bom", text.encode("utf-16-le")),
        ("utf32-le-bom", codecs.BOM_UTF32_LE + text.encode("utf-32-le")),
        ("utf32-be-bom", codecs.BOM_UTF32_BE + text.encode("utf-32-be")),
        ("latin1-in-name", text.replace("corpus", "corp\xe9s").encode("latin-1")),
        ("latin1-in-comment", (text + "# caf\xe9\n").encode("latin-1")),
        ("latin1-in-key", (text + "    caf\xe9: 1\n").encode("latin-1")),
        ("lone-continuation", text.encode() + b"    model: \x80\n"),
        ("overlong-slash", text.encode().replace(b"./m", b"\xc0\xafm")),
        ("surrogate", text.encode().replace(b"./m", b"\xed\xa0\x80")),
        ("truncated-multibyte", text.encode() + b"\xe2\x82"),
        ("nul-byte", text.encode().replace(b"./m", b"./\x00m")),
        ("nul-at-start", b"\x00" + text.encode()),
        ("png-header", b"\x89PNG\r\n\x1a\n" + bytes(range(256))),
        ("random-bytes-1", random.Random(1).randbytes(4096)),
        ("random-bytes-2", random.Random(2).randbytes(300)),
        ("bom-then-binary", codecs.BOM_UTF8 + b"\xff\xfe\xfd"),
        ("cp1252-quotes", text.replace("./m", "\u201c./m\u201d").encode("cp1252")),
        ("utf8-then-latin1", (text + "# \u00e9 ok\n").encode() + "# \xe9\n".encode("latin-1")),
    ]):
        yield Case(f"encoding-{name}", ["{stack}"], {"s.yaml": data}, commands=rotate(i), mentions="s.yaml")


def file_kinds() -> Iterator[Case]:
    long_name = "x" * 300
    for i, (name, args, files) in enumerate([
        ("missing", ["missing.yaml"], {}),
        ("directory", ["{stack}"], {"s.yaml": "@dir"}),
        ("dot", ["."], {}),
        ("root", ["/"], {}),
        ("dev-null", ["/dev/null"], {}),
        ("empty-path", [""], {}),
        ("long-component", [long_name + ".yaml"], {}),
        ("long-path", ["/".join(["y" * 200] * 30) + ".yaml"], {}),
        ("path-10000", ["z" * 10000], {}),
        ("dangling-link", ["{stack}"], {"s.yaml": "@link:nowhere"}),
        ("link-to-dir", ["{stack}"], {"s.yaml": "@link:.", }),
        ("too-large", ["{stack}"], {"s.yaml": "#" * 1_000_001 + "\n"}),
        ("sparse-10g", ["{stack}"], {"s.yaml": "@sparse"}),
        ("empty-file", ["{stack}"], {"s.yaml": ""}),
        ("only-comment", ["{stack}"], {"s.yaml": "# nothing\n"}),
        ("newline-in-name", ["a\nb.yaml"], {}),
    ]):
        for command in (COMMANDS[i % 4], COMMANDS[(i + 1) % 4]):
            yield Case(f"file-{name}-{command}", args, files, commands=(command,))
    for command in (*COMMANDS, "lock", "check"):
        yield Case(f"file-fifo-{command}", ["{stack}"], {"s.yaml": "@fifo"}, commands=(command,), subprocess=True)
    for command in ("validate", "plan", "render", "lock"):
        yield Case(f"file-dev-zero-{command}", ["/dev/zero"], commands=(command,), subprocess=True)
    yield Case("file-dev-urandom", ["/dev/urandom"], commands=("validate",), subprocess=True)
    yield Case("file-deep-subprocess", ["{stack}"], {"s.yaml": BASE + "    args: {x: " + "[" * 5000 + "]" * 5000
                                                     + "}\n"}, commands=("plan",), subprocess=True)


def env_files() -> Iterator[Case]:
    top = BASE.replace("name: corpus\n", "name: corpus\nenv_file: e.env\n")
    for i, (name, content) in enumerate([
        ("missing", None),
        ("directory", "@dir"),
        ("utf16", codecs.BOM_UTF16_LE + "A=1\n".encode("utf-16-le")),
        ("latin1", "A=caf\xe9\n".encode("latin-1")),
        ("nul", b"A=1\x00\n"),
        ("too-large", "A=" + "x" * 1_000_001 + "\n"),
        ("random-bytes", random.Random(3).randbytes(512)),
    ]):
        files: dict[str, bytes | str] = {} if content is None else {"e.env": content}
        yield stack(top, f"env-file-{name}", rotate(i), mentions="env_file", extra=files)
    yield Case("env-file-fifo", ["{stack}"], {"s.yaml": top, "e.env": "@fifo"}, commands=("plan",), subprocess=True,
               mentions="env_file")
    yield stack(BASE.replace("name: corpus\n", "name: corpus\nenv_file: /dev/zero\n"), "env-file-dev-zero",
                ("render",), mentions="env_file")
    yield stack(BASE.replace("name: corpus\n", f"name: corpus\nenv_file: {'e' * 10000}\n"), "env-file-path-10000",
                ("validate",), mentions="env_file")


def long_values() -> Iterator[Case]:
    huge, part = "v" * 10000, "w" * 300
    places = [
        ("model", "transformers", "    model: {v}\n"),
        ("model-abs", "transformers", "    model: /{v}\n"),
        ("model-rel", "vllm", "    model: ./{v}\n"),
        ("python", "vllm", "    model: m\n    python: {v}\n"),
        ("launcher", "tgi", "    model: m\n    launcher: /opt/{v}\n"),
        ("workdir", "h2ogpt", "    model: m\n    python: python3\n    workdir: {v}\n"),
        ("volume", "tgi", "    model: m\n    image: i\n    port: 8080\n    volumes: [\"{v}:/data\"]\n"),
    ]
    for i, (name, kind, body) in enumerate(places):
        for label, value in (("10000", huge), ("part-300", f"a/{part}/b")):
            yield stack(service(body.format(v=value), kind), f"long-{name}-{label}", rotate(i + len(label)),
                        mentions=name.split("-")[0])
    yield stack(BASE.replace("name: corpus\n", f"name: corpus\ndefaults: {{hf_home: {huge}}}\n"),
                "long-hf-home", ("doctor",), mentions="hf_home")
    yield stack(BASE + FRONT.replace("    models: [small]\n", f"    models: [small]\n    workdir: {huge}\n"),
                "long-front-workdir", ("render",), mentions="workdir")


def booleans_and_non_finite() -> Iterator[Case]:
    places = [
        ("port", "    model: m\n    port: {v}\n"),
        ("gpus", "    model: m\n    gpus: {v}\n"),
        ("gpus-item", "    model: m\n    gpus: [{v}]\n"),
        ("vram-gb", "    model: m\n    vram_gb: {v}\n"),
        ("max-restarts", "    model: m\n    max_restarts: {v}\n"),
        ("health-timeout", "    model: m\n    health: {{timeout: {v}}}\n"),
        ("health-interval", "    model: m\n    health: {{interval: {v}}}\n"),
        ("health-unhealthy-after", "    model: m\n    health: {{unhealthy_after: {v}}}\n"),
    ]
    for i, (name, body) in enumerate(places):
        values = ("true", "false", "yes") if "health" not in name and "vram" not in name else ("true", ".inf", ".nan")
        for value in values:
            yield stack(service(body.format(v=value)), f"loose-{name}-{value.strip('.')}", rotate(i),
                        mentions=name.split("-")[0].replace("max", "max_restarts").replace("vram", "vram_gb"))
    yield stack(BASE.replace("version: 1", "version: true"), "loose-version-true", mentions="version")
    yield stack(BASE + FRONT + "    columns: true\n", "loose-front-columns", ("plan",), mentions="columns")
    yield stack(BASE + FRONT.replace("port: 7860", "port: false"), "loose-front-port", ("render",), mentions="port")
    yield stack(BASE.replace("name: corpus\n", "name: corpus\nhosts:\n  h: {gpus: [true]}\n"), "loose-host-gpus",
                mentions="hosts.h.gpus")
    yield stack(BASE + "    vram_gb: -.inf\n", "loose-vram-minus-inf", ("plan",), mentions="vram_gb")


def variables() -> Iterator[Case]:
    values = [
        ("unclosed", "${A"), ("unclosed-default", "${A:-x"), ("unclosed-nested", "${A:-${B}"),
        ("unclosed-inner", "${A:-${B"), ("bare-open", "${"), ("empty-name", "${}"), ("digit-name", "${1A}"),
        ("question-op", "${A:?needed}"), ("plus-op", "${A:+x}"), ("space-name", "${A B}"),
        ("nested-unset", "${A:-${B}}"), ("nested-deep-unset", "${A-${B-${C}}}"), ("unset", "${UNSET_VAR_X}"),
        ("unclosed-after-text", "m-${A"), ("dollar-brace-brace", "${{A}}"),
    ]
    fields = [("model", "    model: \"{v}\"\n"), ("env", "    model: m\n    env: {{X: \"{v}\"}}\n"),
              ("port", "    model: m\n    port: \"{v}\"\n")]
    for i, (name, value) in enumerate(values):
        fname, body = fields[i % len(fields)]
        yield stack(service(body.format(v=value)), f"var-{name}-in-{fname}", rotate(i), mentions=fname)
        if i % 3 == 0:
            yield stack(BASE.replace("name: corpus", f"name: \"{value}\""), f"var-{name}-in-name", rotate(i + 1),
                        mentions="name")


def empty_secrets() -> Iterator[Case]:
    for i, kind in enumerate(("tgi", "vllm", "transformers", "openai")):
        body = "    model: m\n    url: http://127.0.0.1:9\n    api_key: {v}\n"
        yield stack(service(body.format(v='""'), kind), f"empty-api-key-{kind}", rotate(i), mentions="api_key")
        yield stack(service(body.format(v='"${EMPTY_KEY}"'), kind), f"empty-api-key-from-env-{kind}", rotate(i + 1),
                    env={"EMPTY_KEY": ""}, mentions="api_key")
    for i, keys in enumerate(('[""]', '[" "]', '["${EMPTY_KEY}"]', '["k-1", ""]', '["${UNSET_KEY:-}"]')):
        yield stack(BASE + FRONT + f"    api_keys: {keys}\n", f"empty-api-keys-{i}", rotate(i), {"EMPTY_KEY": ""},
                    mentions="api_keys")
    yield stack(BASE + FRONT + "    admin_pass: \"\"\n", "empty-admin-pass", ("plan",), mentions="admin_pass")
    yield stack(BASE + FRONT + "    admin_pass: \"${EMPTY_KEY:-}\"\n", "empty-admin-pass-default", ("render",),
                mentions="admin_pass")
    yield stack(BASE + FRONT + "    auth: {user: admin, password: \"\"}\n", "empty-front-password", ("doctor",),
                mentions="password")
    yield stack(BASE + FRONT + "    auth: {user: admin, password: \"${EMPTY_KEY}\"}\n", "empty-front-password-env",
                env={"EMPTY_KEY": ""}, mentions="password")
    for kind in ("tgi", "h2ogpt"):
        yield stack(service("    url: http://127.0.0.1:9\n    model: m\n    auth: {user: u, token: \"\"}\n", kind),
                    f"empty-auth-token-{kind}", ("plan",), mentions="token")


def echoed_secrets() -> Iterator[Case]:
    """Secrets in wrong-typed or wrong places, written out or brought in from the environment; the
    file is refused and neither value appears in the output."""
    s, env = SECRET, {"CORPUS_TOKEN": ENV_SECRET, "PLAIN_VAR": ENV_SECRET}
    written = [
        ("api-key-list", "    model: m\n    url: http://h\n    api_key: [" + s + "]\n", "openai"),
        ("api-key-int", "    model: m\n    url: http://h\n    api_key: 9" + "7" * 20 + "\n", "openai"),
        ("api-key-and-bad-port", "    model: m\n    port: x\n    api_key: " + s + "\n", "vllm"),
        ("auth-as-string", "    url: http://h\n    model: m\n    auth: \"admin:" + s + "\"\n", "tgi"),
        ("auth-extra-field", "    url: http://h\n    model: m\n    auth: {user: u, token: " + s + ", x: 1}\n", "tgi"),
        ("auth-user-list", "    url: http://h\n    model: m\n    auth: {user: [1], token: " + s + "}\n", "h2ogpt"),
        ("env-token-list", "    model: m\n    env: {HF_TOKEN: [" + s + "]}\n", "transformers"),
        ("env-token-map", "    model: m\n    env: {MY_SECRET: {a: " + s + "}}\n", "transformers"),
    ]
    for i, (name, body, kind) in enumerate(written):
        yield stack(service(body, kind), f"secret-written-{name}", rotate(i))
    fronts = [("admin-pass-list", "    admin_pass: [" + s + "]\n"), ("api-keys-string", "    api_keys: " + s + "\n"),
              ("api-keys-map", "    api_keys: [{k: " + s + "}]\n"),
              ("auth-password-and-bad", "    auth: {user: [x], password: " + s + "}\n"),
              ("password-number", "    auth: {user: a, password: 12345678901234}\n")]
    for i, (name, line) in enumerate(fronts):
        yield stack(BASE + FRONT + line, f"secret-front-{name}", rotate(i + 1))
    expanded = [
        ("port", "    model: m\n    port: ${{{v}}}\n"), ("gpus", "    model: m\n    gpus: ${{{v}}}\n"),
        ("vram", "    model: m\n    vram_gb: ${{{v}}}\n"), ("restart", "    model: m\n    restart: ${{{v}}}\n"),
        ("timeout", "    model: m\n    health: {{timeout: \"${{{v}}}\"}}\n"),
        ("depends-on", "    model: m\n    depends_on: [\"${{{v}}}\"]\n"),
        ("host", "    model: m\n    host: \"${{{v}}}\"\n"), ("max-restarts", "    model: m\n    max_restarts: ${{{v}}}\n"),
        ("api-key-list-item", "    model: m\n    url: http://h\n    api_key: [\"${{{v}}}\"]\n"),
        ("env-map", "    model: m\n    env: {{HF_TOKEN: {{x: \"${{{v}}}\"}}}}\n"),
    ]
    for i, (name, body) in enumerate(expanded):
        for var in ("CORPUS_TOKEN", "PLAIN_VAR"):
            yield stack(service(body.format(v=var), "openai" if "api-key" in name else "transformers"),
                        f"secret-env-{name}-{var.lower()}", rotate(i), env)
    yield stack(service("    model: m\n").replace("kind: transformers", "kind: \"${CORPUS_TOKEN}\""),
                "secret-env-kind", ("plan",), env)
    yield stack(BASE + FRONT.replace("models: [small]", "models: [\"${PLAIN_VAR}\"]"), "secret-env-front-model",
                ("render",), env)
    yield stack(BASE.replace("version: 1", "version: ${CORPUS_TOKEN}"), "secret-env-version", env=env)
    yield stack(BASE + FRONT + "    columns: ${PLAIN_VAR}\n", "secret-env-columns", ("doctor",), env)


def secret_args() -> Iterator[Case]:
    names = ["api_key", "api-key", "hf_token", "hf-token", "token", "use_auth_token", "password", "admin_pass",
             "h2ogpt_api_keys", "h2ogpt_key", "client_secret", "openai_api_key", "auth", "passwd", "apikey",
             "hub_token", "access_token", "secret", "api_keys", "aws_secret_access_key"]
    for i, name in enumerate(names):
        value = f"[{SECRET}]" if i % 5 == 0 else ("\"${CORPUS_TOKEN}\"" if i % 2 else SECRET)
        kind = ("vllm", "tgi", "transformers")[i % 3]
        extra = "    image: i\n    port: 8080\n" if kind == "tgi" else ""
        yield stack(service(f"    model: m\n{extra}    args: {{{name}: {value}, max_new_tokens: 5}}\n", kind),
                    f"secret-arg-{name}", rotate(i), {"CORPUS_TOKEN": ENV_SECRET}, mentions=f"args.{name}")


def plan_values() -> Iterator[Case]:
    body = "    model: m\n    gpus: [0]\n    vram_gb: 10\n    args: {{gpu_memory_utilization: {v}}}\n"
    for i, value in enumerate(("abc", '""', "true", "2", "-1", ".nan", "[0.5]", "0")):
        case = stack(service(body.format(v=value), "vllm"), f"plan-gpu-memory-utilization-{i}",
                     rotate(i, PLANNING), mentions="gpu_memory_utilization")
        case.args += ["--gpus", "0", "--gpu-memory", "80"]
        yield case


def arguments() -> Iterator[Case]:
    good = {"s.yaml": BASE}
    for i, value in enumerate(("nan", "inf", "-inf", "-1", "0", "abc", "1e400", "NaN", "", " ")):
        for command in (PLANNING[i % 3], PLANNING[(i + 1) % 3]):
            yield Case(f"arg-gpu-memory-{i}-{command}", ["{stack}", "--gpus", "0", "--gpu-memory", value], good,
                       commands=(command,))
    for i, value in enumerate(("nan", "inf", "abc", "-5", "0")):
        yield Case(f"env-gpu-memory-{i}", ["{stack}", "--gpus", "0"], good, {"H2OSTACK_GPU_MEMORY": value},
                   commands=(PLANNING[i % 3],))
    for i, value in enumerate(("abc", "1,1", "-1", "0,,x", "0;rm -rf /", "1.5")):
        yield Case(f"arg-gpus-{i}", ["{stack}", "--gpus", value], good, commands=(PLANNING[i % 3],))
        yield Case(f"env-gpus-{i}", ["{stack}"], good, {"H2OSTACK_GPUS": value}, commands=(PLANNING[(i + 1) % 3],))
    for fmt in ("bogus", "", "shell;id", "../x"):
        yield Case(f"arg-format-{fmt or 'empty'}", ["{stack}", "--format", fmt], good, commands=("render",))
    yield Case("doctor-gpu-memory-without-stack", ["--gpus", "0", "--gpu-memory", "nan"], commands=("doctor",))


def lock_files() -> Iterator[Case]:
    """`up --locked` reads STACK.lock before anything starts: a hostile one is refused like a stack."""
    for name, content in [("deep", "a: " + "[" * 600 + "]" * 600 + "\n"), ("latin1", "a: caf\xe9\n".encode("latin-1")),
                          ("utf16", codecs.BOM_UTF16_LE + "a: 1\n".encode("utf-16-le")), ("directory", "@dir"),
                          ("dev-zero", "@link:/dev/zero"), ("not-a-lock", "[1, 2]\n"), ("alias-loop", "a: &a [*a]\n")]:
        yield Case(f"lock-{name}", ["{stack}", "--locked"], {"s.yaml": BASE, "s.yaml.lock": content}, commands=("up",))
    yield Case("lock-fifo", ["{stack}", "--locked"], {"s.yaml": BASE, "s.yaml.lock": "@fifo"}, commands=("up",),
               subprocess=True)


CLASSES: dict[str, Callable[[], Iterator[Case]]] = {
    "deep nesting and alias loops": deep_nesting,
    "encodings (non-UTF-8, UTF-16/32, NUL, binary)": encodings,
    "what is not a regular stack file (FIFO, /dev/zero, directory, missing, huge, long path)": file_kinds,
    "env_file (missing, FIFO, device, encodings, huge)": env_files,
    "10,000-character and over-long path values": long_values,
    "booleans as numbers, inf and nan": booleans_and_non_finite,
    "variable references (unclosed, nested, invalid)": variables,
    "empty secrets": empty_secrets,
    "secrets in wrong places (written and from the environment)": echoed_secrets,
    "secrets as args": secret_args,
    "plan-time values": plan_values,
    "command-line arguments": arguments,
    "STACK.lock for `up --locked`": lock_files,
}
CASES = [(cls, case) for cls, gen in CLASSES.items() for case in gen()]


def test_the_corpus_is_large_and_named_uniquely() -> None:
    runs = [(c.id, cmd) for _, c in CASES for cmd in c.commands]
    assert len(runs) >= 200
    assert len({c.id for _, c in CASES}) == len(CASES)


# -- running a case -----------------------------------------------------------------------------------

def materialise(case: Case, where: Path) -> list[str]:
    for name, content in case.files.items():
        path = where / name
        if content == "@fifo":
            os.mkfifo(path)
        elif content == "@dir":
            path.mkdir()
        elif content == "@sparse":
            with open(path, "wb") as fh:
                fh.truncate(10 * 2**30)
        elif isinstance(content, str) and content.startswith("@link:"):
            path.symlink_to(content[len("@link:"):])
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)
    return [str(where / "s.yaml") if a == "{stack}" else a for a in case.args]


def snapshot(where: Path, skip: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(where):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            dirnames[:] = []
            continue
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


def environment(tmp: Path, case: Case) -> dict[str, str]:
    return {"H2OSTACK_STATE_DIR": str(tmp / "state"), "HOME": str(tmp / "home"), "HF_HOME": str(tmp / "hf"),
            "DOCKER_HOST": "tcp://127.0.0.1:9", "H2OSTACK_GPUS": "none", "COLUMNS": "200", **case.env}


class Hung(Exception):
    pass


def run_in_process(args: list[str], env: dict[str, str]) -> tuple[int, str, BaseException | None]:
    def alarm(*_: object) -> None:
        raise Hung(f"no answer within {IN_PROCESS_LIMIT_S} s")

    unset = {k: None for k in ("H2OSTACK_GPU_MEMORY",) if k not in env}
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(IN_PROCESS_LIMIT_S)
    try:
        result = CliRunner().invoke(app, args, env={**unset, **env}, catch_exceptions=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    error = result.exception if not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.output, error


def run_subprocess(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, BaseException | None]:
    full = {k: v for k, v in os.environ.items() if k not in ("H2OSTACK_GPU_MEMORY",)} | env
    full["PYTHONPATH"] = str(ROOT)
    try:
        res = subprocess.run([sys.executable, "-m", "h2ostack.cli", *args], capture_output=True, text=True,
                             timeout=SUBPROCESS_LIMIT_S, env=full, cwd=cwd)
    except subprocess.TimeoutExpired:
        return -1, "", Hung(f"no answer within {SUBPROCESS_LIMIT_S} s")
    return res.returncode, res.stdout + res.stderr, None


@pytest.mark.parametrize(("cls", "case"), CASES, ids=[c.id for _, c in CASES])
def test_hostile_input_is_refused_with_a_message(cls: str, case: Case, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "home").mkdir()
    args = materialise(case, work)
    env = environment(tmp_path, case)
    monkeypatch.chdir(work)
    before = snapshot(tmp_path, tmp_path / "state")
    for command in case.commands:
        if case.subprocess:
            code, out, error = run_subprocess([command, *args], env, work)
        else:
            code, out, error = run_in_process([command, *args], env)
        assert error is None, f"{command}: {error!r}\n{out}"
        assert "Traceback" not in out, out
        assert code == 2, f"{command} exited {code}:\n{out}"
        assert out.strip(), f"{command}: no message"
        assert SECRET not in out and ENV_SECRET not in out, out
        if case.mentions:
            assert case.mentions in out, out
        if case.args[:1] == ["{stack}"] and "error:" not in out.lower():
            assert "s.yaml" in out, out  # a problem in the file names the file (file:line:col where known)
    assert snapshot(tmp_path, tmp_path / "state") == before, "something was written outside the state dir"


def test_a_model_at_the_root_is_planned_without_walking_the_disk(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`model: /` is a local folder as far as the planner knows: its size scan stops after a bounded
    number of entries instead of walking the whole file system."""
    (tmp_path / "s.yaml").write_text(BASE.replace("./m", "/") + "    gpus: [0]\n")
    monkeypatch.chdir(tmp_path)
    code, out, error = run_in_process(["plan", str(tmp_path / "s.yaml"), "--gpus", "0", "--gpu-memory", "80"],
                                      environment(tmp_path, Case("root", [])))
    assert error is None and "Traceback" not in out and code == 0, out


def test_the_security_table_counts_the_corpus() -> None:
    rows = {}
    for line in (ROOT / "docs" / "security.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].isdigit():
            rows[cells[0]] = (int(cells[1]), cells[2:])
    for cls, gen in CLASSES.items():
        assert rows[cls] == (sum(len(c.commands) for c in gen()), ["0", "0", "0"]), cls
