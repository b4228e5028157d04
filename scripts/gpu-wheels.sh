#!/usr/bin/env bash
# Build the wheel folder bench/gpu_check.py installs from on a GPU machine with no network:
# bench/gpu-requirements.txt and their dependencies as binary wheels for CPython 3.12 on
# manylinux x86_64, plus h2ostack's own wheel, in .whl/gpu (git-ignored). Run it on a machine
# with network access, from the repository root:
#
#   scripts/gpu-wheels.sh [DEST]          # DEST defaults to .whl/gpu
#
# Then carry the folder to the GPU machine beside the working tree (see bench/GPU_CHECK.md).
# PYTHON (default .venv/bin/python, else python3) runs pip; PLATFORM, PY_VERSION override the target.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.whl/gpu}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
PLATFORM="${PLATFORM:-manylinux2014_x86_64}"
PY_VERSION="${PY_VERSION:-3.12}"
MAX_MIB="${MAX_MIB:-48}"

rm -rf "$DEST"
mkdir -p "$DEST"
# manylinux2014 is the oldest tag asked for; newer manylinux_2_x wheels (pydantic-core, httptools,
# hf-xet ...) are taken as well, up to glibc 2.28
platforms=()
for p in "$PLATFORM" manylinux_2_17_x86_64 manylinux_2_28_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download --quiet --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --abi "cp${PY_VERSION/./}" --abi abi3 --abi none "${platforms[@]}" \
  -r bench/gpu-requirements.txt -d "$DEST"
# h2ostack's own wheel, built offline from the folder just filled: this proves the folder holds
# what installing the working tree needs (the check installs the tree itself, so its code is current)
"$PY" -m pip wheel --quiet --no-deps --no-index --find-links "$DEST" -w "$DEST" .
rm -rf build h2ostack.egg-info/SOURCES.txt.tmp 2>/dev/null || true

size_kib=$(du -sk "$DEST" | cut -f1)
count=$(find "$DEST" -name '*.whl' | wc -l)
echo "$DEST: $count wheels, $((size_kib / 1024)) MiB"
if [ "$size_kib" -gt $((MAX_MIB * 1024)) ]; then
  echo "error: $DEST is over ${MAX_MIB} MiB (the GPU machine takes 64 MiB of carried files in all)" >&2
  exit 1
fi
