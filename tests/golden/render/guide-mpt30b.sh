#!/usr/bin/env bash
# stack mpt30b, rendered by h2ostack from stacks/guide-mpt30b.yaml
# Secrets are read from the environment when this runs; none is written here.
set -euo pipefail
LOGS=${LOGS:-./mpt30b-logs}
mkdir -p "$LOGS"
wait_ready() {  # poll a health URL until it answers 2xx
  until curl -fsS -o /dev/null "$1"; do sleep 1; done
}

# mpt30b: tgi container on GPUs 0,3
: "${HF_TOKEN:?set HF_TOKEN in the environment}"
export HUGGING_FACE_HUB_TOKEN="${HUGGING_FACE_HUB_TOKEN:-${HF_TOKEN:-}}"
docker rm -f mpt30b-mpt30b >/dev/null 2>&1 || true
docker run -d --name mpt30b-mpt30b \
    --label io.h2ostack.stack=mpt30b \
    --label io.h2ostack.service=mpt30b \
    --label io.h2ostack.config-hash=01aa492cd075b8fe \
    --label io.h2ostack.version=0.1.0 \
    --label io.h2ostack.port=6112 \
    --label io.h2ostack.kind=tgi \
    -p 127.0.0.1:6112:80 \
    --gpus '"device=0,3"' \
    --shm-size 2g \
    -e HF_TOKEN \
    -e HUGGING_FACE_HUB_TOKEN \
    -v /home/user/.cache/huggingface/hub:/data \
    ghcr.io/huggingface/text-generation-inference:1.4.5 --model-id mosaicml/mpt-30b-chat --max-batch-prefill-tokens 2048 --max-input-length 2048 --max-total-tokens 4096 --max-stop-sequences 6 --trust-remote-code --hostname 0.0.0.0
wait_ready http://127.0.0.1:6112/health

