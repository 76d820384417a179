#!/bin/bash
# The final measurements on one GPU (see docs/results/h200-2026-12-01/README.md), in priority
# order, each piece with its own time limit so that what ran comes back.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; D=$(readlink -f .gpu-data/squad)
date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 tools/bloom_architecture.py bloom-560m $D /tmp/arch560 >/dev/null
echo "=== bench"
timeout 360 python3 tools/bench_fast.py /tmp/arch560 $D --epochs 3 --out $OUT/bench --deepspeed ds_zero1.json 2>&1 | tail -14
echo "=== GPU tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -4
echo "=== stage 2 as participants run it (one epoch)"
OUTPUT_DIR=$OUT/stage2 DS_CONFIG=ds_zero2.json timeout 110 bash deepspeed-single-gpu/deepspeed-single-gpu.slurm \
  --model_name_or_path /tmp/arch560 --random_weights True --dataset_name_or_path $D --num_train_epochs 1 > $OUT/stage2.log 2>&1
grep -E "^(run |epoch |answers|job time|metrics)" $OUT/stage2.log
cp -r deepspeed-single-gpu/log $OUT/stage2-log
cd $OUT && rm -rf bench/cache* && find . -name "*.safetensors" -delete && find . -name training_args.bin -delete
tar czf results.tgz bench stage2 stage2-log *.log 2>/dev/null; ls -la results.tgz
