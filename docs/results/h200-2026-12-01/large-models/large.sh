#!/bin/bash
# bloom-7b1 (and 1b7, 3b with gradient checkpointing) on one GPU through the stages' own jobs,
# random weights, bf16, the workshop's batch, 3 optimizer steps.
set -uo pipefail
cd "$(dirname "$0")/.."
D=$(readlink -f .gpu-data/squad)
for size in bloom-1b7 bloom-3b bloom-7b1; do python tools/bloom_architecture.py $size $D /tmp/arch-$size >/dev/null; done
common() { echo --model_name_or_path /tmp/arch-$1 --random_weights True --dataset_name_or_path $D --bf16 True --max_steps 3 --eval_samples 8 --answer_quality False --save_model False; }
run() { local label=$1; shift; echo "=== $label"; "$@" 2>&1 | grep -E "^(run |job time|metrics:|error)|OutOfMemory|Error" | tail -5; }
run "7b1 none"          bash baseline/baseline.slurm $(common bloom-7b1)
run "7b1 GC"            bash baseline/baseline.slurm $(common bloom-7b1) --gradient_checkpointing True
run "7b1 fast GC"       bash baseline/baseline.slurm $(common bloom-7b1) --fast_path True --gradient_checkpointing True
run "7b1 fast"          bash baseline/baseline.slurm $(common bloom-7b1) --fast_path True
run "7b1 ZeRO-3"        env DS_CONFIG=ds_zero3.json bash deepspeed-single-gpu/deepspeed-single-gpu.slurm $(common bloom-7b1)
run "1b7 GC"            bash baseline/baseline.slurm $(common bloom-1b7) --gradient_checkpointing True
run "3b GC"             bash baseline/baseline.slurm $(common bloom-3b) --gradient_checkpointing True
run "1b7 none"          bash baseline/baseline.slurm $(common bloom-1b7)
