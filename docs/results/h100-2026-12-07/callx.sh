#!/bin/bash
# One GPU call: the Llama-shaped 1B's whole jobs (tools/bench_fast.py), then other families' memory runs.
set -uo pipefail
out=$1; shift
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu-data/whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, deepspeed, datasets; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)"
date -u
for a in llama-3.2-1b qwen2.5-1.5b; do python3 tools/architecture.py $a .gpu-data/squad /tmp/arch/$a | tail -1 & done; wait
mkdir -p /tmp/bench-llama
timeout 360 python3 tools/bench_fast.py /tmp/arch/llama-3.2-1b .gpu-data/squad --out /tmp/bench-llama 2>&1 | grep -v -i "warn\|Writing model" | tee /tmp/bench-llama/bench.out
rm -rf /tmp/bench-llama/cache*
tar czf "$out/bench-llama.tgz" -C /tmp bench-llama
mkdir -p /tmp/r
for run in "$@"; do
  python3 .gpu-data/families.py /tmp/r .gpu-data/squad "$run" 2>&1 | grep -v -i "warn\|Writing model"
  tar czf "$out/families.tgz" -C /tmp/r .
done
date -u; ls -la "$out"
