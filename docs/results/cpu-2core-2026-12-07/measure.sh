#!/bin/bash
# time-stamped output of make setup, make demo and one ZeRO-2 offload job on a fresh clone
cd /tmp/fresh
stamp() { local start=$SECONDS; while IFS= read -r line; do printf '%5d %s\n' $((SECONDS - start)) "$line"; done; }
( while true; do echo "$(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)"; sleep 15; done ) > /tmp/wt35-load.log &
sampler=$!
echo "PATH ninja: $(command -v ninja) $(ninja --version)"
s=$SECONDS; PIP_NO_CACHE_DIR=1 make setup 2>&1 | stamp > /tmp/wt35-setup.log; echo "setup rc=${PIPESTATUS[0]} $((SECONDS - s)) s"
s=$SECONDS; make demo 2>&1 | stamp > /tmp/wt35-demo.log; echo "demo rc=${PIPESTATUS[0]} $((SECONDS - s)) s"
s=$SECONDS; DS_CONFIG=ds_zero2_offload.json bash deepspeed-single-gpu/deepspeed-single-gpu.slurm --model_name_or_path tiny/model --dataset_name_or_path tiny/data --train_samples 64 --eval_samples 16 --max_length 64 --learning_rate 2e-3 --use_cpu True 2>&1 | stamp > /tmp/wt35-offload.log; echo "offload rc=${PIPESTATUS[0]} $((SECONDS - s)) s"
kill $sampler
