#!/usr/bin/env bash
# The whole test suite with real components. Installs and starts what the tests need;
# a component that cannot be had fails the run (nothing is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== vLLM CPU environment"
H2OSTACK_VLLM_PYTHON=$(bash scripts/vllm-env.sh | tail -n 1)
export H2OSTACK_VLLM_PYTHON
"$H2OSTACK_VLLM_PYTHON" -c 'import vllm' || { echo "the vLLM environment is broken" >&2; exit 1; }

echo "== h2oGPT environment"
H2OSTACK_TEST_H2OGPT_PYTHON=$(bash scripts/h2ogpt-env.sh | tail -n 1)
export H2OSTACK_TEST_H2OGPT_PYTHON
"$H2OSTACK_TEST_H2OGPT_PYTHON" -c 'import h2ogpt, gradio, transformers' \
  || { echo "the h2oGPT environment is broken" >&2; exit 1; }

echo "== llama.cpp environment (a source build the first time, then cached)"
H2OSTACK_LLAMACPP_PYTHON=$(bash scripts/llamacpp-env.sh | tail -n 1)
export H2OSTACK_LLAMACPP_PYTHON
"$H2OSTACK_LLAMACPP_PYTHON" -c 'import llama_cpp, llama_cpp.server.app' \
  || { echo "the llama.cpp environment is broken" >&2; exit 1; }

echo "== Docker engine (private, for the tests)"
DOCKER_DIR=$(mktemp -d /tmp/h2ostack-docker.XXXXXX)
trap 'bash scripts/docker-engine.sh stop "$DOCKER_DIR" || true' EXIT
eval "$(bash scripts/docker-engine.sh start "$DOCKER_DIR" | tail -n 1 | sed 's/DOCKER_HOST/H2OSTACK_TEST_DOCKER_HOST/')"
export H2OSTACK_TEST_DOCKER_HOST

echo "== browser"
bash scripts/browser.sh

echo "== tiny model"
H2OSTACK_TEST_TINY_MODEL=$(.venv/bin/python -m h2ostack.tinymodel "${H2OSTACK_CACHE:-$HOME/.cache/h2ostack}/tiny-model" | tail -n 1)
export H2OSTACK_TEST_TINY_MODEL

echo "== small model (a real one: built once per package version, then cached)"
H2OSTACK_TEST_SMALL_MODEL=$(.venv/bin/python -m h2ostack.smallmodel | tail -n 1)
export H2OSTACK_TEST_SMALL_MODEL

echo "== the small model's GGUF file (what the llama.cpp server loads)"
H2OSTACK_TEST_GGUF=$(.venv/bin/python -m h2ostack.smallmodel --gguf | tail -n 1)
export H2OSTACK_TEST_GGUF
[ -s "$H2OSTACK_TEST_GGUF" ] || { echo "no GGUF file at $H2OSTACK_TEST_GGUF" >&2; exit 1; }

echo "== tests"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider -o console_output_style=classic --durations=15 tests "$@"
rc=$?
set -e
# pytest's 5 means no test ran: that is a failure here
[ "$rc" -eq 5 ] && { echo "no test ran" >&2; exit 1; }
exit "$rc"
