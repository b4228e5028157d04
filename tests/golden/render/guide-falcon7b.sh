#!/usr/bin/env bash
# stack falcon7b, rendered by h2ostack from stacks/guide-falcon7b.yaml
# Secrets are read from the environment when this runs; none is written here.
set -euo pipefail
LOGS=${LOGS:-./falcon7b-logs}
mkdir -p "$LOGS"
wait_ready() {  # poll a health URL until it answers 2xx
  until curl -fsS -o /dev/null "$1"; do sleep 1; done
}

# falcon7b: tgi container on GPUs 0
docker rm -f falcon7b-falcon7b >/dev/null 2>&1 || true
docker run -d --name falcon7b-falcon7b \
    --label io.h2ostack.stack=falcon7b \
    --label io.h2ostack.service=falcon7b \
    --label io.h2ostack.config-hash=520291a0e70c42a5 \
    --label io.h2ostack.version=0.1.0 \
    --label io.h2ostack.port=6112 \
    --label io.h2ostack.kind=tgi \
    -p 127.0.0.1:6112:80 \
    --gpus '"device=0"' \
    --shm-size 2g \
    -v /home/user/.cache/huggingface/hub:/data \
    ghcr.io/huggingface/text-generation-inference:1.4.5 --model-id h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v2 --max-input-length 2048 --max-total-tokens 4096 --sharded false --disable-custom-kernels --trust-remote-code --max-stop-sequences 6 --hostname 0.0.0.0
wait_ready http://127.0.0.1:6112/health

