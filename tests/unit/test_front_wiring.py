"""The front's page as Gradio sends it to the browser (every event: its function's name, api_name,
inputs, outputs, queue and trigger settings, order; every component and the layout), kept equal to
a recorded snapshot: the page's wiring is tuned, and any change to it is made on purpose (regenerate
the snapshot with `H2OSTACK_FRONT_SNAPSHOT=write`)."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest

from h2ostack.front.app import build_blocks
from h2ostack.front.clients import Backend

SNAPSHOT = Path(__file__).parent / "data" / "front_wiring.json"


def backends() -> list[Backend]:
    return [Backend("a", "vllm", "openai", "http://127.0.0.1:9", "a"),
            Backend("b", "tgi", "tgi", "http://127.0.0.1:9", "b"),
            Backend("c", "transformers", "openai", "http://127.0.0.1:9", "c")]


def wiring(demo: Any) -> dict[str, Any]:
    cfg = demo.get_config_file()
    names = {i: f.name for i, f in demo.fns.items()}
    comps = [{"id": c["id"], "type": c["type"],
              "props": {k: v for k, v in c["props"].items() if k not in ("value", "proxy_url", "_selectable")}}
             for c in cfg["components"]]
    return {"dependencies": [{**d, "fn": names.get(d["id"])} for d in cfg["dependencies"]],
            "components": comps, "layout": cfg["layout"]}


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
