"""TGI containers see the host's Hugging Face cache where their image looks, and the token by both names;
an optional token does not stop the rendered script."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from h2ostack.backends import tgi
from h2ostack.facts import GPU, Facts
from h2ostack.loader import load_text
from h2ostack.plan import make_plan
from h2ostack.render import render_shell
from h2ostack.spec import reveal


def plan(text: str, environ: dict[str, str]):
    s = load_text(textwrap.dedent(text), "s.yaml", environ, Path("/stacks"))
    return make_plan(s, Facts((GPU(0, None, None),), "stated", frozenset(), "/py", {}))


@pytest.mark.parametrize(("image", "volume"), [
    ("ghcr.io/huggingface/text-generation-inference:1.4.5", "/h/hf/hub:/data"),
    ("ghcr.io/huggingface/text-generation-inference:0.9.3", "/h/hf/hub:/data"),
    ("ghcr.io/huggingface/text-generation-inference:2.2.0", "/h/hf/hub:/data"),
    ("ghcr.io/huggingface/text-generation-inference:2.3.0", "/h/hf:/data"),
    ("ghcr.io/huggingface/text-generation-inference:3.0", "/h/hf:/data"),
    ("ghcr.io/huggingface/text-generation-inference:latest", "/h/hf:/data"),
    ("localhost:5000/tgi", "/h/hf:/data"),
])
def test_hf_home_is_mounted_where_the_image_keeps_its_cache(image: str, volume: str) -> None:
    p = plan(f"""\
        name: c
        defaults: {{hf_home: /h/hf}}
        services:
          t: {{kind: tgi, image: "{image}", model: m, port: 6112, gpus: [0]}}
        """, {})
    t = p.services["t"]
    assert t.container["volumes"] == [volume]
    assert "HF_HOME" not in t.env  # a host path means nothing inside the container


def test_a_volume_at_data_is_kept_as_given() -> None:
    p = plan("""\
        name: c
        defaults: {hf_home: /h/hf}
        services:
          t: {kind: tgi, image: "i:1.4.5", model: m, port: 6112, volumes: ["/other:/data"]}
        """, {})
    assert p.services["t"].container["volumes"] == ["/other:/data"]


def test_hf_home_of_a_process_is_the_host_path() -> None:
    p = plan("""\
        name: c
        defaults: {hf_home: /h/hf}
        services:
          t: {kind: tgi, launcher: /bin/tgi, model: m, port: 6112}
        """, {})
    assert p.services["t"].env["HF_HOME"] == "/h/hf"


@pytest.mark.parametrize("given", list(tgi.TOKEN_NAMES))
def test_the_token_reaches_the_container_by_both_names(given: str) -> None:
    p = plan(f"""\
        name: c
        services:
          t: {{kind: tgi, image: "i:1.4.5", model: m, port: 6112, env: {{{given}: "${{TOK}}"}}}}
        """, {"TOK": "hf_abc"})
    env = p.services["t"].env
    assert {k: reveal(env[k]) for k in tgi.TOKEN_NAMES} == {"HF_TOKEN": "hf_abc", "HUGGING_FACE_HUB_TOKEN": "hf_abc"}
    script = render_shell(p)
    assert "hf_abc" not in script


def run_secret_lines(script: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The rendered script's secret checks and exports, run by bash with -u as the script runs them."""
    lines = [ln for ln in script.splitlines() if ln.startswith((": \"${", "export "))]
    probe = "set -euo pipefail\n" + "\n".join(lines) + '\nprintf "%s|%s" "${HF_TOKEN:-}" "${HUGGING_FACE_HUB_TOKEN:-}"'
    return subprocess.run(["bash", "-c", probe], env={"PATH": os.environ["PATH"], **environ}, capture_output=True,
                          text=True)


def test_an_optional_token_does_not_stop_the_script() -> None:
    p = plan("""\
        name: c
        services:
          t: {kind: tgi, image: "i:1.4.5", model: m, port: 6112, env: {HF_TOKEN: "${HF_TOKEN:-}"}}
        """, {})
    script = render_shell(p)
    assert "HF_TOKEN:?" not in script
    out = run_secret_lines(script, {})
    assert out.returncode == 0 and out.stdout == "|", out.stderr
    assert run_secret_lines(script, {"HF_TOKEN": "x"}).stdout == "x|x"


def test_a_required_token_stops_the_script_when_unset() -> None:
    p = plan("""\
        name: c
        services:
          t: {kind: tgi, image: "i:1.4.5", model: m, port: 6112, env: {HF_TOKEN: "${HF_TOKEN}"}}
        """, {"HF_TOKEN": "set-at-render"})
    script = render_shell(p)
    out = run_secret_lines(script, {})
    assert out.returncode != 0 and "set HF_TOKEN in the environment" in out.stderr
    assert run_secret_lines(script, {"HF_TOKEN": "y"}).stdout == "y|y"
