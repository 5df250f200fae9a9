#!/usr/bin/env bash
# The GPU run of the benchmarks, in one short script (a lent GPU machine has minutes, not hours).
#
#   bench/gpu.sh                 # set up, check the GPU, then accuracy, latency and concurrency
#   bench/gpu.sh --no-install    # the environment is ready (packages installed, e.g. from a wheelhouse)
#
# Runs each bench twice: with tiny.en (the packaged default) and with the largest model obtainable
# offline, multilingual `base` (the `multilingual` extra ships it in two pip packages). Every result
# line goes to bench/out/gpu-<date>.jsonl together with the card's name; copy the figures into
# bench/RESULTS.md. Needs the machine's NVIDIA driver and CUDA 12 libraries for CTranslate2.
set -euo pipefail
cd "$(dirname "$0")/.."

out="bench/out/gpu-$(date +%Y%m%d-%H%M).jsonl"
mkdir -p bench/out
export TRANSCRIBE_TEST_AUDIO="${TRANSCRIBE_TEST_AUDIO:-$(cd .. && pwd)/shared/audio}"
export TRANSCRIBE_DEVICE=cuda

echo "== GPU" >&2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out"

if [ "${1:-}" != "--no-install" ]; then
  echo "== install" >&2
  python -m pip install -q -e ".[dev]"
fi

echo "== engines see the GPU" >&2
python - <<'PY' | tee -a "$out"
import json
import ctranslate2
import torch

print(json.dumps({
    "ctranslate2_cuda_devices": ctranslate2.get_cuda_device_count(),
    "torch_cuda": torch.cuda.is_available(),  # openai-whisper's engine; CPU wheels say False
}))
if ctranslate2.get_cuda_device_count() < 1:
    raise SystemExit("CTranslate2 sees no CUDA device: check the driver and CUDA 12 libraries")
PY

for model in tiny.en base; do
  export TRANSCRIBE_MODEL="$model"
  echo "== $model: accuracy" >&2
  python bench/accuracy.py | sed "s/^{/{\"model\": \"$model\", \"device\": \"cuda\", \"bench\": \"accuracy\", /" | tee -a "$out"
  echo "== $model: latency" >&2
  python bench/latency.py | sed "s/^{/{\"model\": \"$model\", \"device\": \"cuda\", \"bench\": \"latency\", /" | tee -a "$out"
  echo "== $model: concurrency" >&2
  python bench/concurrency.py --levels 1,4,16 | sed "s/^{/{\"model\": \"$model\", \"device\": \"cuda\", \"bench\": \"concurrency\", /" | tee -a "$out"
done
echo "results: $out" >&2
