"""Lock files, pure parts: the difference listing and the local model digest."""

from __future__ import annotations

from pathlib import Path

from h2ostack.lock import diff, local_model_digest


def test_diff_lists_every_difference_by_path() -> None:
    locked = {"h2ostack": "0.1.0", "services": {"a": {"gpus": [0], "packages": {"vllm": "0.6.3", "torch": "2.4"}},
                                                "b": {"image_id": "sha256:1"}}}
    now = {"h2ostack": "0.1.0", "services": {"a": {"gpus": [1], "packages": {"vllm": "0.6.4", "torch": "2.4"}},
                                             "c": {"image_id": "sha256:2"}}}
    assert diff(locked, now) == [
        "services.a.gpus: locked [0], now [1]",
        "services.a.packages.vllm: locked 0.6.3, now 0.6.4",
        'services.b: locked {"image_id": "sha256:1"}, now absent',
        'services.c: not in the lock, now {"image_id": "sha256:2"}',
    ]
    assert diff(locked, locked) == []


def test_local_model_digest_follows_content(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 100)
    first = local_model_digest(tmp_path)
    assert first == local_model_digest(tmp_path) and first.startswith("sha256:")
    (tmp_path / "config.json").write_text('{"a": 2}')
    assert local_model_digest(tmp_path) != first
