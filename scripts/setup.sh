#!/usr/bin/env bash
# The project environment .venv: h2ostack with the CPU serving stack (transformers serve),
# the front, NVML bindings and the dev tools. torch is pinned to the CPU build so pip never
# pulls the multi-GB CUDA one. A stamp makes a second run instant.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH=${H2OSTACK_TORCH:-torch==2.13.0}
stamp="$VENV/.h2ostack-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/h2ostack" ]; then
  exit 0
fi
py=${PYTHON:-python3}
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup: Python 3.11+ is needed" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
echo "setup: installing into $VENV" >&2
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "$TORCH"
"$VENV/bin/pip" install -q --progress-bar off -e '.[serve,front,gpu,dev]' "$TORCH"
# they break beside the CPU torch
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "$want" > "$stamp"
echo "setup: done" >&2
