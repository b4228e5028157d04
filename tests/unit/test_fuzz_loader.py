"""Hostile input: whatever the file holds, the loader answers with a Stack or a StackError."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from h2ostack.loader import StackError, load_text
from h2ostack.spec import Stack

KEYS = ["version", "name", "services", "fronts", "kind", "model", "port", "gpus", "env", "args", "depends_on",
        "models", "url", "image", "python", "health", "timeout", "auth", "api_key", "share_gpus", "vram_gb",
        "env_file", "defaults", "bind", "columns", "launcher", "prot", "kinds", "a", "b"]
VALUES = ["tgi", "vllm", "transformers", "openai", "h2ogpt", "gradio", "${X}", "${X:-1}", "${", "$$", "~/x",
          "./m", "a", "b", "", "0", "-1", "8001", "1e9"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=True),
                    st.sampled_from(VALUES), st.text(max_size=12))
trees = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4),
    st.dictionaries(st.sampled_from(KEYS), kids, max_size=5)), max_leaves=30)


def check(text: str) -> None:
    try:
        result = load_text(text, "f.yaml", {"X": "1"}, Path("/tmp"))
    except StackError as exc:
        assert str(exc).startswith("f.yaml")
    else:
        assert isinstance(result, Stack)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_structured_garbage_never_raises_anything_else(tree: object) -> None:
    check(yaml.safe_dump(tree))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "c"]),
                       st.dictionaries(st.sampled_from(KEYS), scalars, max_size=6), max_size=3))
def test_service_shaped_garbage(services: dict) -> None:
    check(yaml.safe_dump({"version": 1, "name": "x", "services": services}))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abc: -[]{}&*!|>'\"#\n\t$%@`,?")) , max_size=80))
def test_raw_text_never_raises_anything_else(text: str) -> None:
    check(text)
