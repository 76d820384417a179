#!/bin/bash
# Run configurations of the single-GPU stages through their own jobs (bash, no SLURM) on a
# GPU machine without the hub: the BLOOM architecture with random weights, real SQuAD rows.
#   tools/gpu_matrix.sh ARCH DATA PRECISION CONFIG... [-- more train.py options]
#     ARCH       a folder from tools/architecture.py
#     PRECISION  fp16 | bf16
#     CONFIG     baseline | ds_config.json | ds_zero1.json | ds_zero2.json | ds_zero3.json |
#                ds_zero2_offload.json | ds_zero3_offload.json
# A run that fails (out of memory, say) is reported and the next one starts.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=$(readlink -f "$1") data=$(readlink -f "$2") precision=$3
shift 3
configs=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do configs+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
for config in "${configs[@]}"; do
  if [ "$config" = baseline ]; then job=baseline/baseline.slurm
  else job=deepspeed-single-gpu/deepspeed-single-gpu.slurm; fi
  echo "=== $config $precision $(basename "$arch")"
  DS_CONFIG=$config bash "$job" --model_name_or_path "$arch" --random_weights True \
    --dataset_name_or_path "$data" --"$precision" True --save_model False "$@" \
    | grep -E "^(run |epoch |metrics:|error|notice)|Error|out of memory" || echo "=== $config $precision FAILED"
done
