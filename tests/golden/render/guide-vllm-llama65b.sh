#!/usr/bin/env bash
# stack vllm65b, rendered by h2ostack from stacks/guide-vllm-llama65b.yaml
# Secrets are read from the environment when this runs; none is written here.
set -euo pipefail
LOGS=${LOGS:-./vllm65b-logs}
mkdir -p "$LOGS"
wait_ready() {  # poll a health URL until it answers 2xx
  until curl -fsS -o /dev/null "$1"; do sleep 1; done
}

# llama65b: vllm on GPUs 0,1
( cd <root>/stacks && CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0,1 PYTHONUNBUFFERED=1 VLLM_HTTP_TIMEOUT_KEEP_ALIVE=75 exec /home/user/envs/vllm/bin/python -m vllm.entrypoints.openai.api_server --model h2oai/h2ogpt-research-oasst1-llama-65b --host 127.0.0.1 --port 5000 --served-model-name h2oai/h2ogpt-research-oasst1-llama-65b --tensor-parallel-size 2 --tokenizer hf-internal-testing/llama-tokenizer --seed 1234 ) >"$LOGS"/llama65b.log 2>&1 &
wait_ready http://127.0.0.1:5000/health

