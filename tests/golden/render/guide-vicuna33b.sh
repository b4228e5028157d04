#!/usr/bin/env bash
# stack vicuna33b, rendered by h2ostack from stacks/guide-vicuna33b.yaml
# Secrets are read from the environment when this runs; none is written here.
set -euo pipefail
LOGS=${LOGS:-./vicuna33b-logs}
mkdir -p "$LOGS"
wait_ready() {  # poll a health URL until it answers 2xx
  until curl -fsS -o /dev/null "$1"; do sleep 1; done
}

# vicuna33b: tgi container on GPUs 4,5
docker rm -f vicuna33b-vicuna33b >/dev/null 2>&1 || true
docker run -d --name vicuna33b-vicuna33b \
    --label io.h2ostack.stack=vicuna33b \
    --label io.h2ostack.service=vicuna33b \
    --label io.h2ostack.config-hash=68bd8cc09a004c0d \
    --label io.h2ostack.version=0.1.0 \
    --label io.h2ostack.port=6112 \
    --label io.h2ostack.kind=tgi \
    -p 127.0.0.1:6112:80 \
    --gpus '"device=4,5"' \
    --shm-size 2g \
    -v /home/user/.cache/huggingface/hub:/data \
    ghcr.io/huggingface/text-generation-inference:1.4.5 --model-id lmsys/vicuna-33b-v1.3 --max-input-length 2048 --max-total-tokens 4096 --sharded true --num-shard 2 --hostname 0.0.0.0
wait_ready http://127.0.0.1:6112/health

