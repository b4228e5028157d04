#!/usr/bin/env bash
# stack bigllama, rendered by h2ostack from stacks/multinode-vllm.yaml
# Secrets are read from the environment when this runs; none is written here.
set -euo pipefail
LOGS=${LOGS:-./bigllama-logs}
mkdir -p "$LOGS"
wait_ready() {  # poll a health URL until it answers 2xx
  until curl -fsS -o /dev/null "$1"; do sleep 1; done
}
on_host() {  # run stdin as a bash script on another machine
  ssh -T -o BatchMode=yes -- "$1" bash -s
}

# llama405b: vLLM across 2 nodes with Ray (head gpu1, workers gpu2); GPUs 0,1,2,3,4,5,6,7 on each node
: "${VLLM_API_KEY:?set VLLM_API_KEY in the environment}"
: "${HF_TOKEN:?set HF_TOKEN in the environment}"
{ printf 'export %s=%q\n' VLLM_API_KEY "$VLLM_API_KEY"; printf 'export %s=%q\n' HF_TOKEN "$HF_TOKEN"; echo 'export CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 VLLM_HTTP_TIMEOUT_KEEP_ALIVE=75 NCCL_SOCKET_IFNAME=eth0 VLLM_HOST_IP=10.0.0.11'; echo 'exec /opt/envs/vllm/bin/ray start --head --port=6379 --num-gpus=8 --block'; } | on_host ml@gpu1.lab >"$LOGS"/llama405b-gpu1-ray.log 2>&1 &
{ printf 'export %s=%q\n' VLLM_API_KEY "$VLLM_API_KEY"; printf 'export %s=%q\n' HF_TOKEN "$HF_TOKEN"; echo 'export CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 VLLM_HTTP_TIMEOUT_KEEP_ALIVE=75 NCCL_SOCKET_IFNAME=eth0 VLLM_HOST_IP=10.0.0.12'; echo 'exec /opt/envs/vllm/bin/ray start --address=10.0.0.11:6379 --num-gpus=8 --block'; } | on_host ml@gpu2.lab >"$LOGS"/llama405b-gpu2-ray.log 2>&1 &
until on_host ml@gpu1.lab <<<'/opt/envs/vllm/bin/python -c "import ray, sys; ray.init(address=sys.argv[1], logging_level=40); sys.exit(sum(n[sys.argv[2]] for n in ray.nodes()) < 2)" auto Alive' >/dev/null 2>&1; do sleep 2; done  # all nodes joined
{ printf 'export %s=%q\n' VLLM_API_KEY "$VLLM_API_KEY"; printf 'export %s=%q\n' HF_TOKEN "$HF_TOKEN"; echo 'export CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 VLLM_HTTP_TIMEOUT_KEEP_ALIVE=75 NCCL_SOCKET_IFNAME=eth0 VLLM_HOST_IP=10.0.0.11'; echo 'exec /opt/envs/vllm/bin/python -m vllm.entrypoints.openai.api_server --model meta-llama/Llama-3.1-405B-Instruct --host 0.0.0.0 --port 8000 --served-model-name meta-llama/Llama-3.1-405B-Instruct --max-model-len 8192 --tensor-parallel-size 8 --pipeline-parallel-size 2 --distributed-executor-backend ray'; } | on_host ml@gpu1.lab >"$LOGS"/llama405b-gpu1-vllm.log 2>&1 &
wait_ready http://10.0.0.11:8000/health

# chat: gradio
( cd <root>/stacks && PYTHONUNBUFFERED=1 exec <python> -m h2ostack.front <root>/stacks/multinode-vllm.yaml --front chat --host 127.0.0.1 --port 7860 ) >"$LOGS"/chat.log 2>&1 &
wait_ready http://127.0.0.1:7860/healthz

