#!/bin/bash
# Does ZeRO-2 lose its speed to the reduction at every micro-batch? ZeRO-2 at 16 x 1 against the
# workshop's 4 x 4 (the same 16 sequences per step), one H200, the single-GPU stage's own job.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
D=$(readlink -f .gpu-data/squad)
python3 tools/bloom_architecture.py bloom-560m $D /tmp/arch560 >/dev/null
small="--model_name_or_path /tmp/arch560 --random_weights True --dataset_name_or_path $D --train_samples 500 --num_train_epochs 1 --eval_samples 50 --answer_quality False"
for batch in "16 1" "4 4"; do set -- $batch
  SLURM_JOB_NAME=zero2-$1x$2 DS_CONFIG=ds_zero2.json timeout 60 bash deepspeed-single-gpu/deepspeed-single-gpu.slurm $small \
    --per_device_train_batch_size $1 --gradient_accumulation_steps $2 2>&1 | grep -E "^(run |job time|error)"
done
tar czf $OUT/runs.tgz --exclude='*.safetensors' --exclude='tokenizer*' deepspeed-single-gpu/runs deepspeed-single-gpu/log
