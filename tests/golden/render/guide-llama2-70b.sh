#!/usr/bin/env bash
# stack llama2-70b, rendered by h2ostack from stacks/guide-llama2-70b.yaml
# Secrets are read from the environment when this runs; none is written here.
set -euo pipefail
LOGS=${LOGS:-./llama2-70b-logs}
mkdir -p "$LOGS"
wait_ready() {  # poll a health URL until it answers 2xx
  until curl -fsS -o /dev/null "$1"; do sleep 1; done
}

# llama2-70b: tgi container on GPUs 0,1,2,3
: "${HF_TOKEN:?set HF_TOKEN in the environment}"
export HUGGING_FACE_HUB_TOKEN="${HUGGING_FACE_HUB_TOKEN:-${HF_TOKEN:-}}"
docker rm -f llama2-70b-llama2-70b >/dev/null 2>&1 || true
docker run -d --name llama2-70b-llama2-70b \
    --label io.h2ostack.stack=llama2-70b \
    --label io.h2ostack.service=llama2-70b \
    --label io.h2ostack.config-hash=4d55e8b09cf47a0b \
    --label io.h2ostack.version=0.1.0 \
    --label io.h2ostack.port=6112 \
    --label io.h2ostack.kind=tgi \
    -p 127.0.0.1:6112:80 \
    --gpus '"device=0,1,2,3"' \
    --shm-size 1g \
    -e HF_TOKEN \
    -e HUGGING_FACE_HUB_TOKEN \
    -v /home/user/.cache/huggingface/hub:/data \
    ghcr.io/huggingface/text-generation-inference:1.4.5 --model-id meta-llama/Llama-2-70b-chat-hf --max-input-length 4096 --max-total-tokens 8192 --max-stop-sequences 6 --sharded true --num-shard 4 --hostname 0.0.0.0
wait_ready http://127.0.0.1:6112/health

