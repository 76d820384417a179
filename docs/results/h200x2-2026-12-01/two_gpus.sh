#!/bin/bash
# Stage 3 on two H200s of one host: one GPU against two, in one call, through the multi-GPU
# stage's own job run with bash; bloom-560m architecture (random weights), 1 epoch; then
# bloom-7b1 across the two GPUs (3 steps). A job is skipped once 490 s have gone.
set -uo pipefail
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1
D=$(readlink -f .gpu-data/squad)
{ date -u; echo "commit $1"; nproc; free -g | head -2
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv; nvidia-smi topo -m
  env | grep -E '^NCCL_|MULTICAST|NVSHMEM' | sort
  python3 -c "import sys,torch,transformers,tokenizers,deepspeed,datasets,accelerate
print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__, 'deepspeed', deepspeed.__version__, 'datasets', datasets.__version__, 'accelerate', accelerate.__version__)"
} > $OUT/env.txt 2>&1
python3 tools/bloom_architecture.py bloom-560m $D /tmp/arch560 >/dev/null
python3 tools/bloom_architecture.py bloom-7b1 $D /tmp/arch7b1 >/dev/null
small="--model_name_or_path /tmp/arch560 --random_weights True --dataset_name_or_path $D --num_train_epochs 1 --eval_samples 50 --answer_quality False"
large="--model_name_or_path /tmp/arch7b1 --random_weights True --dataset_name_or_path $D --bf16 True --max_steps 3 --eval_samples 8 --answer_quality False --save_model False"
job() {  # label GPUs DeepSpeed-config train.py-options...
  local label=$1 gpus=$2 config=$3; shift 3
  if [ $(( $(date +%s) - T0 )) -gt 490 ]; then echo "=== $label: not run (time)"; return; fi
  echo "=== $label: GPUS=$gpus DS_CONFIG=$config $*"
  SLURM_JOB_NAME=$label GPUS=$gpus DS_CONFIG=$config timeout 150 bash deepspeed-multi-gpu/deepspeed-multi-gpu.slurm "$@" 2>&1 \
    | grep -E "^(run |job time|metrics:|error)|OutOfMemory|NCCL INFO (Channel 00|comm .* rank)|Error" | tail -6
}
job zero1-1gpu 1 ds_zero1.json $small
job zero1-2gpu-weak 2 ds_zero1.json $small --train_samples 1000
job zero2-1gpu 1 ds_zero2.json $small
job zero2-2gpu-weak 2 ds_zero2.json $small --train_samples 1000
job fast-1gpu 1 ds_config.json $small --fast_path True
job fast-2gpu-weak 2 ds_config.json $small --fast_path True --train_samples 1000
job 7b1-zero3-2gpu 2 ds_zero3.json $large
job fast-zero1-1gpu 1 ds_zero1.json $small --fast_path True
job fast-zero1-2gpu-weak 2 ds_zero1.json $small --fast_path True --train_samples 1000
job zero3-1gpu 1 ds_zero3.json $small
job zero3-2gpu-weak 2 ds_zero3.json $small --train_samples 1000
job zero2-2gpu-strong 2 ds_zero2.json $small
job 7b1-zero2-2gpu 2 ds_zero2.json $large
echo "all in $(( $(date +%s) - T0 )) s"
tar czf $OUT/runs.tgz --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='global_step*' deepspeed-multi-gpu/runs deepspeed-multi-gpu/log
