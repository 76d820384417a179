#!/bin/bash
# The single-GPU reference runs that `tools/tables.py --against docs/results/<gpu>-<date>`
# compares a participant's runs with: each configuration through its stage's own job, with
# bash on this machine's one GPU (no SLURM), bloom-560m's architecture with random weights
# (tools/architecture.py, its tokenizer trained on the rows run), the first 500 train
# and 100 validation rows of DATA (a folder of SQuAD v1.1 rows: train.jsonl, validation.jsonl),
# the workshop's settings but one epoch, no answers and no final save. About 8 minutes on an H100.
#   bash tools/gpu_reference.sh DATA OUT [CONFIG...] [-- more train.py options]
#     CONFIG  baseline | fast | ds_config.json | ds_zero1.json | ds_zero2.json | ds_zero3.json |
#             ds_zero2_offload.json | ds_zero3_offload.json    (default: all, in this order)
#     ARCH=FOLDER  the model (default: bloom-560m's architecture, built into SCRATCH)
#     SCRATCH=FOLDER  the rows run and the model (default: $TMPDIR/gpu-reference)
# Writes OUT/<stage>/runs/<run>/ and OUT/<stage>/log/<run>.out with its memory CSVs (the
# layout tools/tables.py reads), and OUT/machine.txt (GPU, versions, commit). DeepSpeed's CPU
# Adam is built first (python -m workshop.build_ops): the offload jobs compile nothing, as
# after make setup.
# A job that fails is reported and the next one starts; the exit status is 1 if any failed.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: bash tools/gpu_reference.sh DATA OUT [CONFIG...] [-- train.py options]" >&2; exit 1; }
data=$(readlink -f "$1") out=$(readlink -m "$2")
shift 2
cd "$(dirname "$0")/.."
configs=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do configs+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
[ ${#configs[@]} -gt 0 ] || configs=(baseline fast ds_config.json ds_zero1.json ds_zero2.json ds_zero3.json
                                     ds_zero2_offload.json ds_zero3_offload.json)
# The rows the runs read, which the tokenizer is trained on too: the first 500 train and 100
# validation rows, as in the H200 reference runs; beside the model, outside OUT (not results).
scratch=${SCRATCH:-${TMPDIR:-/tmp}/gpu-reference}
mkdir -p "$out" "$scratch/data"
head -n 500 "$data/train.jsonl" > "$scratch/data/train.jsonl"
head -n 100 "$data/validation.jsonl" > "$scratch/data/validation.jsonl"
data=$scratch/data
arch=${ARCH:-$scratch/arch-bloom-560m}
[ -d "$arch" ] || python tools/architecture.py bloom-560m "$data" "$arch"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  python -c "from workshop.metrics_file import versions; print(versions())"; git rev-parse --short HEAD 2>/dev/null || true; } > "$out/machine.txt"
python -m workshop.build_ops
options=(--model_name_or_path "$arch" --random_weights True --dataset_name_or_path "$data"
         --num_train_epochs 1 --answer_quality False --save_model False "$@")
failed=0
for config in "${configs[@]}"; do
  case $config in
    baseline) stage=baseline extra=() ;;
    fast) stage=baseline extra=(--fast_path True) ;;
    ds_*.json) stage=deepspeed-single-gpu extra=() ;;
    *) echo "error: CONFIG $config: give baseline, fast or one of deepspeed-single-gpu/ds_*.json" >&2; exit 1 ;;
  esac
  echo "=== $config"
  said=$(DS_CONFIG=$config bash "$stage/$stage.slurm" "${options[@]}" "${extra[@]}" 2>&1 |
         grep -E "^(run |epoch |job time|error|notice|building)" || true)
  echo "$said"
  run=$(sed -n 's/^run \([^ ]*\) on .*/\1/p' <<< "$said" | head -1)
  if [ -z "$run" ] || ! grep -q "^job time" <<< "$said" || grep -q "^error" <<< "$said"; then
    echo "=== $config FAILED"; failed=1
  fi
  [ -n "$run" ] || continue
  mkdir -p "$out/$stage/runs" "$out/$stage/log"
  [ ! -d "$stage/runs/$run" ] || mv "$stage/runs/$run" "$out/$stage/runs/"
  mv "$stage/log/$run".out "$stage/log/$run"-*.csv "$out/$stage/log/" 2>/dev/null || true
done
exit $failed
