#!/usr/bin/env bash
# stack falcon40b, rendered by h2ostack from stacks/guide-falcon40b.yaml
# Secrets are read from the environment when this runs; none is written here.
set -euo pipefail
LOGS=${LOGS:-./falcon40b-logs}
mkdir -p "$LOGS"
wait_ready() {  # poll a health URL until it answers 2xx
  until curl -fsS -o /dev/null "$1"; do sleep 1; done
}

# falcon40b: tgi container on GPUs 1,2
: "${HF_TOKEN:?set HF_TOKEN in the environment}"
export HUGGING_FACE_HUB_TOKEN="${HUGGING_FACE_HUB_TOKEN:-${HF_TOKEN:-}}"
docker rm -f falcon40b-falcon40b >/dev/null 2>&1 || true
docker run -d --name falcon40b-falcon40b \
    --label io.h2ostack.stack=falcon40b \
    --label io.h2ostack.service=falcon40b \
    --label io.h2ostack.config-hash=ef7914099f84252a \
    --label io.h2ostack.version=0.1.0 \
    --label io.h2ostack.port=6112 \
    --label io.h2ostack.kind=tgi \
    -p 127.0.0.1:6112:80 \
    --gpus '"device=1,2"' \
    --shm-size 1g \
    -e HF_TOKEN \
    -e HUGGING_FACE_HUB_TOKEN \
    -v /home/user/.cache/huggingface/hub:/data \
    ghcr.io/huggingface/text-generation-inference:1.4.5 --model-id h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v2 --max-input-length 2048 --max-total-tokens 4096 --max-stop-sequences 6 --sharded true --num-shard 2 --hostname 0.0.0.0
wait_ready http://127.0.0.1:6112/health

