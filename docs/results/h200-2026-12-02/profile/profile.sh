#!/bin/bash
# Where a compiled fast-path step's time goes on the H200 (--profile_steps: workshop/callbacks.py).
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 tools/bloom_architecture.py bloom-560m .gpu-data/squad /tmp/arch560 >/dev/null || exit 1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
common=(--model_name_or_path /tmp/arch560 --random_weights True --dataset_name_or_path ../.gpu-data/squad
        --num_train_epochs 2 --answer_quality False --save_model False --profile_steps 8)
OUTPUT_DIR=/tmp/p-compiled bash baseline/baseline.slurm --fast_path True --compile_blocks True "${common[@]}" 2>&1 | grep -E "^\||ms a step|job time|error" | tee "$OUT/profile-compiled.txt"
OUTPUT_DIR=/tmp/p-workshop bash baseline/baseline.slurm "${common[@]}" 2>&1 | grep -E "^\||ms a step|job time|error" | tee "$OUT/profile-workshop.txt"
DS_CONFIG=ds_zero1.json OUTPUT_DIR=/tmp/p-zero1 bash deepspeed-single-gpu/deepspeed-single-gpu.slurm --fast_path True --compile_blocks True "${common[@]}" 2>&1 | grep -E "^\||ms a step|job time|error" | tee "$OUT/profile-zero1-compiled.txt"
