#!/usr/bin/env bash
# stack pythia12b, rendered by h2ostack from stacks/guide-pythia12b.yaml
# Secrets are read from the environment when this runs; none is written here.
set -euo pipefail
LOGS=${LOGS:-./pythia12b-logs}
mkdir -p "$LOGS"
wait_ready() {  # poll a health URL until it answers 2xx
  until curl -fsS -o /dev/null "$1"; do sleep 1; done
}

# pythia12b: tgi container on GPUs 0,1,2,3
docker rm -f pythia12b-pythia12b >/dev/null 2>&1 || true
docker run -d --name pythia12b-pythia12b \
    --label io.h2ostack.stack=pythia12b \
    --label io.h2ostack.service=pythia12b \
    --label io.h2ostack.config-hash=fd030e948bda1680 \
    --label io.h2ostack.version=0.1.0 \
    --label io.h2ostack.port=6112 \
    --label io.h2ostack.kind=tgi \
    -p 127.0.0.1:6112:80 \
    --gpus '"device=0,1,2,3"' \
    --shm-size 2g \
    -v /home/user/.cache/huggingface/hub:/data \
    ghcr.io/huggingface/text-generation-inference:1.4.5 --model-id h2oai/h2ogpt-oasst1-512-12b --max-input-length 2048 --max-total-tokens 4096 --sharded true --disable-custom-kernels --trust-remote-code --max-stop-sequences 6 --num-shard 4 --hostname 0.0.0.0
wait_ready http://127.0.0.1:6112/health

