#!/usr/bin/env bash
# The llama.cpp server (llama-cpp-python's OpenAI-compatible server) in its own environment, cached by
# version under $H2OSTACK_CACHE. The package is a source distribution: it is compiled here once, for the
# CPU only, with llama.cpp's tests, examples, tools and the multimodal library left out.
# Prints the environment's interpreter on its last line.
set -euo pipefail
VERSION=${LLAMACPP_PYTHON_VERSION:-0.3.36}
CACHE=${H2OSTACK_CACHE:-$HOME/.cache/h2ostack}
ENV_DIR="$CACHE/llamacpp-$VERSION"
STAMP="$ENV_DIR/.h2ostack-ready"

if [ ! -f "$STAMP" ]; then
  echo "llamacpp-env: creating $ENV_DIR (llama-cpp-python[server]==$VERSION; a source build, minutes the first time)" >&2
  rm -rf "$ENV_DIR"
  mkdir -p "$CACHE"
  python3 -m venv "$ENV_DIR"
  "$ENV_DIR/bin/pip" install -q --upgrade pip >&2
  # CPU only; native CPU features stay on (the build is for this machine). Nothing beyond the
  # libraries the Python package loads: no tests, examples, tools, server binary or multimodal library.
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF \
-DGGML_BLAS=OFF -DGGML_RPC=OFF ${LLAMACPP_CMAKE_ARGS:-}" \
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$ENV_DIR/bin/pip" install -q --no-cache-dir "llama-cpp-python[server]==$VERSION" >&2
  "$ENV_DIR/bin/python" -c 'import llama_cpp, llama_cpp.server.app' >&2
  date > "$STAMP"
fi
echo "$ENV_DIR/bin/python"
