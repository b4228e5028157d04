"""The small model's builder: where it caches, how it links, and its command line (the build
itself runs for real in scripts/test.sh and the tests that ask the model questions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from h2ostack import smallmodel


def test_cached_by_package_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("H2OSTACK_CACHE", str(tmp_path))
    assert smallmodel.small_model_dir() == tmp_path / f"smollm2-{smallmodel.VERSION}" / "model"
    assert smallmodel.small_model_dir("9.9") == tmp_path / "smollm2-9.9" / "model"


def test_link_points_at_the_model_and_replaces_an_older_link(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    at = tmp_path / "models" / "small"
    smallmodel.link(first, at)
    assert at.resolve() == first.resolve()
    smallmodel.link(second, at)
    assert at.resolve() == second.resolve()
    real = tmp_path / "real"
    real.mkdir()
    with pytest.raises(RuntimeError, match="not a link"):
        smallmodel.link(first, real)


def test_a_built_model_is_not_built_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("H2OSTACK_CACHE", str(tmp_path))
    path = smallmodel.small_model_dir()
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_text("")
    monkeypatch.setattr(smallmodel, "fetch_gguf", lambda *a: pytest.fail("fetched again"))
    assert smallmodel.build_small_model() == path


@pytest.mark.parametrize("argv", [["a", "b"], ["--nope"], ["--gguf", "x"], ["--gguf", "--check"]])
def test_bad_arguments_get_the_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert smallmodel.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_gguf_prints_the_cached_file_and_builds_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("H2OSTACK_CACHE", str(tmp_path))
    cached = tmp_path / f"smollm2-{smallmodel.VERSION}" / smallmodel.GGUF_NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"GGUF")
    monkeypatch.setattr(smallmodel, "build_small_model", lambda *a, **k: pytest.fail("built the folder"))
    assert smallmodel.main(["--gguf"]) == 0
    assert capsys.readouterr().out.strip() == str(cached)
