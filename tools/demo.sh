#!/bin/bash
# The quick-start demo: every stage's job, run with bash (no SLURM, no GPU, no download) on a
# tiny BLOOM and made-up SQuAD rows (tools/make_tiny.py), then the workshop's tables.
#   bash tools/demo.sh tiny          # tiny/ made by: python tools/make_tiny.py tiny
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}" ] || [ ! -f .venv/bin/activate ] || source .venv/bin/activate
tiny=$(readlink -f "${1:-tiny}")
# A high learning rate: the tiny model's loss falls visibly within 3 epochs of 64 rows. The
# jobs are GPU jobs: on the CPU only when told (--use_cpu True), with GPUS=N processes.
args=(--model_name_or_path "$tiny/model" --dataset_name_or_path "$tiny/data"
      --train_samples 64 --eval_samples 16 --max_length 64 --learning_rate 2e-3 --use_cpu True)
# The lines the README shows; while none comes, how long the stage has been running (every 10 s).
show() { bash tools/heartbeat.sh '^(run |epoch |answers |job time|error|notice|building)'; }

echo "== 1. baseline: HF Trainer, no DeepSpeed"
bash baseline/baseline.slurm "${args[@]}" 2>&1 | show
echo "== 2. deepspeed-single-gpu: ZeRO-2, one process"
DS_CONFIG=ds_zero2.json bash deepspeed-single-gpu/deepspeed-single-gpu.slurm "${args[@]}" 2>&1 | show
echo "== 3. deepspeed-multi-gpu: ZeRO-2, two processes"
GPUS=2 DS_CONFIG=ds_zero2.json bash deepspeed-multi-gpu/deepspeed-multi-gpu.slurm "${args[@]}" 2>&1 | show
echo "== 4. deepspeed-multi-node: ZeRO-3, this machine as one node of two processes"
GPUS=2 DS_CONFIG=ds_zero3.json bash deepspeed-multi-node/deepspeed-multi-node.slurm "${args[@]}" 2>&1 | show
echo "== the workshop's tables (plots in tables/)"
python tools/tables.py baseline deepspeed-single-gpu deepspeed-multi-gpu deepspeed-multi-node 2>&1 | bash tools/heartbeat.sh
