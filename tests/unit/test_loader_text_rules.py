"""Text that would become a command, a path or a name: control characters anywhere, names that are
paths, env keys that are not identifiers. Each refused with file:line:col and without the value."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from h2ostack.loader import StackError, load_text

BASE = """\
name: lab
hosts:
  gpu2: {docker: "ssh://ml@gpu2"}
services:
  a:
    kind: openai
    url: http://127.0.0.1:9/v1
    model: m
"""


def err(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(StackError) as info:
        load_text(textwrap.dedent(text), "s.yaml", environ or {}, Path("/tmp"))
    return str(info.value)


def test_base_loads() -> None:
    assert load_text(BASE, "s.yaml", {}, Path("/tmp")).name == "lab"


# each control character as a YAML double-quoted escape
ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e", "\x7f": "\\x7f", "\x85": "\\N",
           "\x9b": "\\x9b", "\x01": "\\x01"}


@pytest.mark.parametrize("char", list(ESCAPES), ids=ascii)
def test_control_character_in_a_value_is_refused_without_echoing_it(char: str) -> None:
    msg = err(BASE.replace("url: http://127.0.0.1:9/v1", f'url: "http://x{ESCAPES[char]}touch pwned"'))
    assert msg.startswith("s.yaml:7:5: services.a.url: holds a control character"), msg
    assert "touch pwned" not in msg and char not in msg


def test_control_character_brought_in_by_a_variable() -> None:
    msg = err(BASE.replace("model: m", "model: ${M}"), {"M": "m\nrm -rf ~"})
    assert msg.startswith("s.yaml:8:5: services.a.model: holds a control character (\\n at position 2)")
    assert "rm -rf" not in msg


def test_control_character_in_a_key_is_shown_escaped() -> None:
    msg = err(BASE + '    env: {"A\\nB": "1"}\n')
    assert "services.a.env: the key 'A\\nB' holds a control character" in msg and "A\nB" not in msg


def test_control_character_in_the_stack_name_and_a_secret() -> None:
    msg = err(BASE.replace("name: lab", 'name: "lab\\necho hi"') + '    api_key: "sk-\\nsecret"\n')
    assert "s.yaml:1:1: name: holds a control character" in msg
    assert "services.a.api_key: holds a control character" in msg and "secret" not in msg


def test_prompt_templates_keep_newline_and_tab_but_nothing_else() -> None:
    ok = BASE + '    prompt_dict: {promptA: "Below:\\n\\t", promptB: "x"}\n'
    assert load_text(ok, "s.yaml", {}, Path("/tmp")).services["a"].prompt_dict == {"promptA": "Below:\n\t",
                                                                                   "promptB": "x"}
    assert "prompt_dict.promptA: holds a control character (\\x1b" in err(
        BASE + '    prompt_dict: {promptA: "a\\e[2J"}\n')


@pytest.mark.parametrize("name", ["../../x", "/abs/dir", "a/b", ".hidden", "a b", "x" * 64, "-rf"])
def test_stack_name_is_a_name_never_a_path(name: str) -> None:
    msg = err(BASE.replace("name: lab", f"name: {name!r}"))
    assert msg.startswith("s.yaml:1:1: name: a name must start with a letter"), msg


@pytest.mark.parametrize("key", ["A B", "9X", "A-B", "A=B", "$(id)", "A;B", ""])
def test_env_keys_are_identifiers(key: str) -> None:
    msg = err(BASE + f"    env: {{{key!r}: '1'}}\n")
    assert "services.a.env." in msg and "an environment variable's name is letters, digits and '_'" in msg


def test_good_env_keys_load() -> None:
    s = load_text(BASE + "    env: {_A1: x, hf_home: y}\n", "s.yaml", {}, Path("/tmp"))
    assert set(s.services["a"].env) == {"_A1", "hf_home"}


@pytest.mark.parametrize("key", ["bad host", "a/b", "-x", "1gpu"])
def test_host_names_follow_the_name_rule(key: str) -> None:
    assert f"s.yaml:3:3: hosts.{key}: a name must start with a letter" in err(BASE.replace("gpu2:", f"{key!r}:"))


@pytest.mark.parametrize("field", ["ssh", "address"])
def test_host_targets_cannot_be_options(field: str) -> None:
    msg = err(BASE.replace('{docker: "ssh://ml@gpu2"}', f'{{{field}: "-oProxyCommand=touch x"}}'))
    assert f"hosts.gpu2.{field}: must not start with '-'" in msg


def test_ssh_docker_url_cannot_be_an_option() -> None:
    assert "hosts.gpu2.docker: must not start with '-'" in err(BASE.replace("ssh://ml@gpu2", "ssh://-oProxy=x"))


@pytest.mark.parametrize("key", ["--x y", "-a", "a;b", "a b"])
def test_args_keys_are_flag_names(key: str) -> None:
    assert f"services.a.args.{key}: a flag's name" in err(BASE + f"    args: {{{key!r}: 1}}\n")


@pytest.mark.parametrize("key", ["UID", "EUID", "PPID", "SHELLOPTS", "BASHOPTS", "GROUPS"])
def test_env_keys_bash_keeps_for_itself(key: str) -> None:
    assert f"services.a.env.{key}: bash keeps this name for itself" in err(BASE + f"    env: {{{key}: '1'}}\n")
