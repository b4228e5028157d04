"""Every loader rule of the contract, with the exact message a user sees."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from pydantic import SecretStr

from h2ostack.loader import StackError, load, load_text


def err(text: str, environ: dict[str, str] | None = None, path: str = "s.yaml") -> str:
    with pytest.raises(StackError) as info:
        load_text(textwrap.dedent(text), path, environ or {}, Path("/tmp"))
    return str(info.value)


BASE = """\
version: 1
name: lab
services:
  a:
    kind: transformers
    model: ./m
    port: 8001
"""


def test_minimal_stack_loads() -> None:
    s = load_text(BASE, "s.yaml", {}, Path("/tmp"))
    assert s.name == "lab" and list(s.services) == ["a"] and s.services["a"].port == 8001


def test_unknown_field_with_did_you_mean() -> None:
    assert err(BASE.replace("    port: 8001", "    prot: 8001")) == \
        "s.yaml:7:5: services.a.prot: unknown field 'prot' (did you mean 'port'?)"


def test_unknown_top_level_key() -> None:
    assert err(BASE + "servces: {}\n") == "s.yaml:8:1: servces: unknown field 'servces' (did you mean 'services'?)"


def test_unknown_kind() -> None:
    assert err(BASE.replace("kind: transformers", "kind: vlm")) == \
        "s.yaml:5:5: services.a.kind: unknown kind 'vlm' (did you mean 'vllm'?); " \
        "one of tgi, vllm, transformers, openai, h2ogpt, llamacpp, ollama"


def test_wrong_type() -> None:
    assert err(BASE.replace("port: 8001", "port: eighty")) == \
        "s.yaml:7:5: services.a.port: input should be a valid integer, unable to parse string as an integer, " \
        "got 'eighty'"


def test_port_out_of_range() -> None:
    assert err(BASE.replace("port: 8001", "port: 70000")) == \
        "s.yaml:7:5: services.a.port: input should be less than or equal to 65535, got 70000"


def test_variable_without_value_or_default() -> None:
    text = BASE + "    env: {HF_TOKEN: \"${HF_TOKEN}\"}\n"
    assert err(text) == ("s.yaml:8:11: services.a.env.HF_TOKEN: variable ${HF_TOKEN} is not set and has no default "
                         "(set HF_TOKEN in the environment or the env_file, or write ${HF_TOKEN:-default})")


def test_variables_expand_from_environment_and_defaults() -> None:
    text = BASE.replace("port: 8001", "port: ${PORT:-8005}").replace("./m", "${MODEL}")
    s = load_text(text, "s.yaml", {"MODEL": "org/model"}, Path("/tmp"))
    assert s.services["a"].port == 8005 and s.services["a"].model == "org/model"
    s = load_text(text, "s.yaml", {"MODEL": "x", "PORT": "9000"}, Path("/tmp"))
    assert s.services["a"].port == 9000


def test_dollar_dollar_is_a_literal_dollar() -> None:
    s = load_text(BASE + "    env: {NOTE: \"cost $$5\"}\n", "s.yaml", {}, Path("/tmp"))
    assert s.services["a"].env["NOTE"] == "cost $5"


def test_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("# comment\nexport TOKEN_A='abc'\nPORT=8123\n")
    (tmp_path / "s.yaml").write_text("env_file: .env\n" + BASE.replace("8001", "${PORT}") +
                                     "    env: {HF_TOKEN: \"${TOKEN_A}\"}\n")
    s = load(tmp_path / "s.yaml", environ={})
    assert s.services["a"].port == 8123
    # the environment wins over the env_file, as in compose
    s = load(tmp_path / "s.yaml", environ={"PORT": "8124"})
    assert s.services["a"].port == 8124


def test_missing_env_file() -> None:
    assert err("env_file: nope.env\n" + BASE) == "s.yaml:1:1: env_file: env file /tmp/nope.env does not exist"


def test_a_nul_character_is_refused_where_it_stands() -> None:
    """No path, argument or environment value can carry a NUL: it is refused with its place, not
    passed on to fail in the OS (`ValueError: embedded null byte`)."""
    assert err('env_file: "\\0"\n' + BASE) == \
        "s.yaml:1:11: env_file: holds a NUL character, which no path, argument or environment value can carry"
    assert err(BASE.replace("model: ./m", 'model: "./m\\0x"')) == \
        "s.yaml:6:12: services.a.model: holds a NUL character, which no path, argument or environment value can carry"


def test_a_nul_brought_in_by_a_variable_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"A=1\nM=./m\x00x\n")
    (tmp_path / "s.yaml").write_text("env_file: .env\n" + BASE.replace("./m", "${M}"))
    with pytest.raises(StackError) as info:
        load(tmp_path / "s.yaml", environ={})
    assert f"s.yaml:1:1: env_file: env file {tmp_path}/.env holds a NUL byte: is it binary, or UTF-16 without " \
        "a BOM? Save it as UTF-8 text (its line 2, column 6)" in str(info.value)
    with pytest.raises(StackError) as info:
        load_text(BASE.replace("./m", "${M}"), "s.yaml", {"M": "./m\x00x"}, tmp_path)
    assert "s.yaml:6:5: services.a.model: holds a NUL character" in str(info.value)


def test_secrets_are_secret_and_masked() -> None:
    text = BASE + "    env: {HF_TOKEN: \"${T}\", OTHER: plain}\n"
    s = load_text(text, "s.yaml", {"T": "hf_supersecret"}, Path("/tmp"))
    token = s.services["a"].env["HF_TOKEN"]
    assert isinstance(token, SecretStr) and token.get_secret_value() == "hf_supersecret"
    assert "hf_supersecret" not in repr(s) and "hf_supersecret" not in str(s.model_dump())
    assert s.services["a"].env["OTHER"] == "plain"


def test_duplicate_ports() -> None:
    text = BASE + "  b:\n    kind: transformers\n    model: ./m\n    port: 8001\n"
    assert err(text) == "s.yaml:11:5: services.b.port: port 8001 is already used by service 'a'"


def test_front_port_clashes_with_service() -> None:
    text = BASE + "fronts:\n  chat:\n    port: 8001\n    models: [a]\n"
    assert err(text) == "s.yaml:10:5: fronts.chat.port: port 8001 is already used by service 'a'"


def test_unknown_model_in_front() -> None:
    text = BASE + "fronts:\n  chat:\n    port: 7860\n    models: [b, aa]\n"
    assert err(text) == ("s.yaml:11:14: fronts.chat.models.0: no service named 'b'\n"
                         "s.yaml:11:17: fronts.chat.models.1: no service named 'aa' (did you mean 'a'?)")


def test_unknown_depends_on() -> None:
    assert err(BASE + "    depends_on: [aa]\n") == \
        "s.yaml:8:18: services.a.depends_on.0: no service named 'aa' (did you mean 'a'?)"


def test_dependency_cycle() -> None:
    text = BASE + "    depends_on: [b]\n  b:\n    kind: transformers\n    model: ./m\n    depends_on: [a]\n"
    assert err(text) == "s.yaml:8:5: services.a.depends_on: dependency cycle: a -> b -> a"


def test_self_dependency() -> None:
    assert err(BASE + "    depends_on: [a]\n") == "s.yaml:8:18: services.a.depends_on.0: a service cannot depend on itself"


def test_duplicate_key() -> None:
    assert err(BASE + "  a:\n    kind: vllm\n    model: x\n") == "s.yaml:8:3: services.a: 'a' is given twice"


def test_bad_name() -> None:
    text = BASE.replace("  a:\n", "  9a:\n")
    assert err(text) == ("s.yaml:4:3: services.9a: a name must start with a letter and hold only letters, digits, "
                         "'-' and '_' (at most 63)")


def test_service_and_front_share_a_name() -> None:
    text = BASE + "fronts:\n  a:\n    port: 7860\n"
    assert err(text) == "s.yaml:9:3: fronts.a: 'a' is already the name of one of the services"


def test_missing_required_model() -> None:
    assert err(BASE.replace("    model: ./m\n", "")) == "s.yaml:4:3: services.a.model: this field is required"


def test_missing_kind() -> None:
    assert err(BASE.replace("    kind: transformers\n", "")) == \
        "s.yaml:4:3: services.a.kind: this field is required: one of tgi, vllm, transformers, openai, h2ogpt, llamacpp, ollama"


def test_tgi_needs_one_mode() -> None:
    text = "name: x\nservices:\n  t:\n    kind: tgi\n    model: m\n    port: 80\n"
    assert err(text) == ("s.yaml:4:5: services.t.kind: a tgi service needs exactly one of `image:` (Docker), "
                         "`launcher:` (a local install) or `url:` (an existing server); got none")


def test_negative_gpu_id() -> None:
    assert err(BASE + "    gpus: [-1]\n") == "s.yaml:8:12: services.a.gpus.0: input should be greater than or equal to 0, got -1"


def test_missing_name() -> None:
    assert err("services: {}\n") == \
        "s.yaml:1:1: name: this field is required (the stack's name keys its labels, state and logs)"


def test_invalid_yaml() -> None:
    assert err("name: [a\n") .startswith("s.yaml:2:1: not valid YAML: ")


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["name: x", "a: &a [1,1,1,1,1,1,1,1,1,1]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [{','.join(['*a' + ('' if i == 1 else str(i - 1))] * 10)}]")
    msg = err("\n".join(lines) + "\n")
    assert "alias bomb" in msg


def test_huge_file_is_refused() -> None:
    assert "larger than" in err("name: x\n" + "#" * 1_100_000 + "\n")


def test_empty_file() -> None:
    assert err("") == "s.yaml: the file is empty: a stack needs at least `name:` and `services:`"


def test_the_contract_example_loads(tmp_path: Path) -> None:
    example = Path(__file__).parent / "data" / "contract.yaml"
    (tmp_path / ".env").write_text("HF_TOKEN=from-env-file\n")
    s = load_text(example.read_text(), "contract.yaml",
                  {"HF_TOKEN": "t", "OPENAI_API_KEY": "k", "TGI_USER": "u", "TGI_TOKEN": "tt",
                   "FRONT_PASSWORD": "p", "ADMIN_PASS": "ap"}, tmp_path)
    assert set(s.services) == {"falcon7b", "llama65b", "small", "gpt35", "remote40b", "local_tgi", "own_h2ogpt",
                               "shared_tgi"}
    assert s.services["shared_tgi"].external and s.services["gpt35"].external
    assert not s.services["remote40b"].starts_something
    assert s.fronts["h2ogpt"].kind == "h2ogpt"


# -- hostile input: reading, nesting, variables, secrets, loose values ---------------------------------

def test_files_that_are_not_regular_utf8_are_refused_without_reading_them(tmp_path: Path) -> None:
    def message(path: Path | str) -> str:
        with pytest.raises(StackError) as info:
            load(path, environ={})
        return str(info.value)

    os.mkfifo(tmp_path / "fifo.yaml")  # opening it would block until a writer came
    assert message(tmp_path / "fifo.yaml").endswith("fifo.yaml: the stack file is not a regular file (a pipe, "
                                                    "socket or device): give a file")
    assert message("/dev/zero") == "/dev/zero: the stack file is not a regular file (a pipe, socket or device): " \
                                   "give a file"
    assert message(tmp_path).endswith(": the stack file is a directory, not a file")
    (tmp_path / "u16.yaml").write_bytes(BASE.encode("utf-16"))
    assert message(tmp_path / "u16.yaml").endswith("u16.yaml:1:1: the stack file is UTF-16 text: save it as UTF-8")
    (tmp_path / "l1.yaml").write_bytes(BASE.replace("lab", "l\xe4b").encode("latin-1"))
    assert message(tmp_path / "l1.yaml").endswith("l1.yaml:2:8: the stack file is not UTF-8 text (byte 0xe4 here): "
                                                  "save it as UTF-8")
    assert message("x" * 10000).endswith("xxx: cannot be read: File name too long")
    assert len(message("x" * 10000)) < 300  # the path is shown cut


def test_a_utf8_bom_is_fine(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert load(tmp_path / "s.yaml", environ={}).name == "lab"


def test_deep_nesting_is_refused_with_its_place() -> None:
    assert err(BASE + "    args: {x: " + "[" * 500 + "]" * 500 + "}\n") == \
        "s.yaml:8:61: not valid YAML: the file nests deeper than 50 levels; a stack needs a handful"
    assert err(BASE + "    args: &a {x: *a}\n") == \
        "s.yaml:8:15: services.a.args" + ".x" * 46 + ": nests deeper than 50 levels (an alias that contains itself?)"


def test_nested_defaults_expand_like_compose() -> None:
    def model(value: str, env: dict[str, str]) -> str:
        text = BASE + f"    env: {{X: \"{value}\"}}\n"
        return str(load_text(text, "s.yaml", env, Path("/tmp")).services["a"].env["X"])

    assert model("${A:-${B}}", {"B": "bee"}) == "bee"
    assert model("${A:-${B}}", {"A": "", "B": "bee"}) == "bee"
    assert model("${A-${B}}", {"A": "", "B": "bee"}) == ""  # without ':' only an unset A takes the default
    assert model("${A:-${B}}", {"A": "ay"}) == "ay"  # B is not needed, so its absence is no error
    assert model("${A:-${B:-${C:-see}}}/x", {}) == "see/x"
    assert model("${A:-$${B}}", {}) == "${B}"
    assert err(BASE.replace("./m", "${A:-${B}}")) == \
        "s.yaml:6:5: services.a.model: variable ${B} is not set and has no default (set B in the environment or " \
        "the env_file, or write ${B:-default})"


def test_an_unclosed_reference_is_refused_with_its_place() -> None:
    assert err(BASE.replace("./m", '"m-${A"')) == \
        "s.yaml:6:5: services.a.model: '${A' opens `${` without closing it: add '}' (or write $$ for a literal $)"
    assert err(BASE.replace("./m", '"${A:-${B}"')) == \
        "s.yaml:6:5: services.a.model: '${A:-${B}' opens `${` without closing it: add '}' (or write $$ for a " \
        "literal $)"
    assert err(BASE.replace("./m", '"${A:?x}"')) == \
        "s.yaml:6:5: services.a.model: '${A:?x}' is not a valid variable reference (use ${NAME} or " \
        "${NAME:-default}, and $$ for a literal $)"


def test_booleans_are_not_numbers() -> None:
    assert err(BASE.replace("port: 8001", "port: true")) == "s.yaml:7:5: services.a.port: true is not a number: " \
                                                             "give a number"
    assert err(BASE + "    gpus: true\n") == "s.yaml:8:5: services.a.gpus: true is not a number: give a number"
    assert err(BASE + "    gpus: [0, false]\n") == \
        "s.yaml:8:15: services.a.gpus.1: false is not a number: give a number"
    assert err("version: true\n" + BASE.split("\n", 1)[1]) == "s.yaml:1:1: version: true is not a number: give a number"
    assert err(BASE + "    health: {timeout: .inf}\n") == \
        "s.yaml:8:14: services.a.health.timeout: input should be a finite number, got inf"
    assert load_text(BASE + "    gpus: 0\n", "s.yaml", {}, Path("/tmp")).services["a"].gpus == 0


SECRET = "sk-unit-3fQ9zR7w"


@pytest.mark.parametrize("text", [
    BASE.replace("kind: transformers", "kind: openai\n    url: http://h") + f"    api_key: [{SECRET}]\n",
    BASE.replace("port: 8001", "port: x") + f"    api_key: 12345678\n    env: {{HF_TOKEN: [{SECRET}]}}\n",
    BASE + f"fronts:\n  f: {{models: [a], auth: 'admin:{SECRET}'}}\n",
    BASE + f"fronts:\n  f: {{models: [a], auth: {{user: [u], password: {SECRET}}}, admin_pass: [{SECRET}]}}\n",
    BASE + f"fronts:\n  f: {{models: [a], api_keys: {SECRET}}}\n",
])
def test_no_message_echoes_a_secret_written_in_the_file(text: str) -> None:
    message = err(text)
    assert SECRET not in message and "12345678" not in message and message.startswith("s.yaml:")


@pytest.mark.parametrize("line", ["    port: ${V}\n", "    gpus: ${V}\n", "    restart: ${V}\n",
                                  "    depends_on: [\"${V}\"]\n", "    health: {timeout: \"${V}\"}\n"])
def test_no_message_echoes_a_value_from_the_environment(line: str) -> None:
    message = err(BASE.replace("    port: 8001\n", "") + line, {"V": SECRET})
    assert SECRET not in message and "services.a" in message
    message = err(BASE.replace("kind: transformers", "kind: ${OPENAI_API_KEY}"), {"OPENAI_API_KEY": SECRET})
    assert SECRET not in message and message.startswith("s.yaml:5:5: services.a.kind: unknown kind '***'")


def test_empty_secrets_are_refused_with_the_variable_they_came_from() -> None:
    front = BASE + "fronts:\n  f:\n    models: [a]\n"
    assert err(front + "    api_keys: [\"\"]\n") == \
        "s.yaml:11:16: fronts.f.api_keys.0: a secret cannot be empty: an empty key or password would let anyone " \
        "in (set the variable it comes from, or leave the field out)"
    assert err(front + "    api_keys: [\"${KEY}\"]\n", {"KEY": ""}).endswith("(it comes from ${KEY})")
    assert err(front + "    admin_pass: \"${ADMIN:-}\"\n").endswith("(it comes from ${ADMIN:-})")
    assert "fronts.f.auth.password: a secret cannot be empty" in err(front + "    auth: {user: a, password: ' '}\n")
    tgi = BASE.replace("kind: transformers", "kind: tgi\n    url: http://h")
    assert "services.a.auth.token: a secret cannot be empty" in err(tgi + "    auth: {user: u, token: ''}\n")
    assert "services.a.api_key: a secret cannot be empty" in err(tgi + "    api_key: ''\n")


@pytest.mark.parametrize(("name", "hint"), [
    ("api_key", "set `api_key:` on the service"), ("api-key", "set `api_key:` on the service"),
    ("hf_token", "pass it in `env:`"), ("use_auth_token", "pass it in `env:`"),
    ("admin_pass", "set `admin_pass:` on the front"), ("h2ogpt_api_keys", "set `api_key:` on the service"),
    ("password", "set `auth:`"), ("auth", "set `auth:`"), ("client_secret", "pass it in `env:` under a name"),
])
def test_secret_args_are_refused_with_where_they_belong(name: str, hint: str) -> None:
    message = err(BASE + f"    args: {{{name}: {SECRET}}}\n")
    assert message.startswith(f"s.yaml:8:12: services.a.args.{name}: '{name}' carries a secret, and `args:` become "
                              "a command line that `ps`, `plan` and `render` show: ")
    assert hint in message and SECRET not in message


def test_args_that_only_look_like_secrets_pass() -> None:
    args = ("{max_new_tokens: 5, max_total_tokens: 10, tokenizer: t, skip_special_tokens: true, "
            "enforce_h2ogpt_api_key: true, use_auth_token: false, ssl_keyfile: k.pem, passage_count: 3}")
    s = load_text(BASE + f"    args: {args}\n", "s.yaml", {}, Path("/tmp"))
    assert s.services["a"].args["max_new_tokens"] == 5


def test_paths_no_file_system_holds_are_refused_at_load() -> None:
    assert err(BASE.replace("./m", "./" + "m" * 300)) == \
        "s.yaml:6:5: services.a.model: is too long for a path (302 characters): a path holds at most 4095 bytes " \
        "and each part between slashes at most 255"
    assert "env_file: is too long for a path" in err("env_file: " + "e" * 5000 + "\n" + BASE)
