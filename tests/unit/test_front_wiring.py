"""The front's page as Gradio sends it to the browser (every event: its function's name, api_name,
inputs, outputs, queue and trigger settings, order; every component and the layout), kept equal to
a recorded snapshot: the page's wiring is tuned, and any change to it is made on purpose (regenerate
the snapshot with `H2OSTACK_FRONT_SNAPSHOT=write`)."""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from h2ostack.front.app import build_blocks
from h2ostack.front.clients import Pane
from h2ostack.protocols.endpoint import Endpoint

SNAPSHOT = Path(__file__).parent / "data" / "front_wiring.json"


def backends() -> list[Pane]:
    return [Pane(Endpoint("a", "openai", "http://127.0.0.1:9", "a", "vllm")),
            Pane(Endpoint("b", "tgi", "http://127.0.0.1:9", "b", "tgi")),
            Pane(Endpoint("c", "openai", "http://127.0.0.1:9", "c", "transformers"))]


def wiring(demo: Any) -> dict[str, Any]:
    """The page's config, each component's id as its rank on the page (Gradio numbers the
    components of every Blocks made in the process from one counter)."""
    cfg = demo.get_config_file()
    names = {i: f.name for i, f in demo.fns.items()}

    def layout_ids(node: dict[str, Any]) -> Iterator[int]:
        yield node["id"]
        for c in node.get("children", []):
            yield from layout_ids(c)

    rank = {x: k for k, x in enumerate(sorted({c["id"] for c in cfg["components"]} | set(layout_ids(cfg["layout"]))))}

    def renumber(node: dict[str, Any]) -> dict[str, Any]:
        return {**node, "id": rank[node["id"]],
                **({"children": [renumber(c) for c in node["children"]]} if "children" in node else {})}

    comps = [{"id": rank[c["id"]], "type": c["type"],
              # (a State's value is the server's, never sent to the page)
              "props": {k: v for k, v in c["props"].items() if not (c["type"] == "state" and k == "value")}}
             for c in cfg["components"]]
    deps = [{**d, "fn": names.get(d["id"]), "targets": [[rank.get(t[0], t[0]), *t[1:]] for t in d["targets"]],
             **{k: [rank[x] for x in d[k]] for k in ("inputs", "outputs", "show_progress_on") if d.get(k)}}
            for d in cfg["dependencies"]]
    return {"dependencies": deps, "components": comps, "layout": renumber(cfg["layout"])}


def pages(tmp_path: Path) -> dict[str, Any]:
    from h2ostack.front.arena import Arena
    from h2ostack.front.arena_core import VoteStore

    arena = Arena(backends(), VoteStore(tmp_path / "arena.sqlite3"), "chat", random.Random(5))
    return {"grid": wiring(build_blocks(backends(), None, None)),
            "grid_2_columns": wiring(build_blocks(backends()[:2], 2, "pw", title="t")),
            "with_arena": wiring(build_blocks(backends(), None, None, arena=arena))}


def test_the_pages_wiring_is_as_recorded(tmp_path: Path) -> None:
    # (a function's address is not part of the page)
    got = json.loads(re.sub(r" at 0x[0-9a-f]+", "", json.dumps(pages(tmp_path), default=str)))
    if os.environ.get("H2OSTACK_FRONT_SNAPSHOT") == "write":
        SNAPSHOT.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.fail("snapshot written; run again without H2OSTACK_FRONT_SNAPSHOT")
    want = json.loads(SNAPSHOT.read_text())
    for page in want:
        for part in ("dependencies", "components", "layout"):
            assert got[page][part] == want[page][part], (page, part)
    assert len(want["grid"]["dependencies"]) == 46 and want["grid"]["dependencies"][0]["fn"] == "submit"
