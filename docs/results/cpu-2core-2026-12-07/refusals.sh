#!/bin/bash
# How long a refusal takes through a DeepSpeed stage's own job (job script, DeepSpeed's launcher,
# one rank), on the 2-core machine, nothing else running: each kind twice.
#   bash docs/results/cpu-2core-2026-12-07/refusals.sh TINY   (TINY: python tools/make_tiny.py TINY)
set -uo pipefail
tiny=$(readlink -f "$1"); cd "$(dirname "$0")/../../.."
work=$(mktemp -d); python=.venv/bin/python
$python - "$work" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1]); base = json.loads(Path("deepspeed-single-gpu/ds_zero3_offload.json").read_text())
def write(name, change):
    config = json.loads(json.dumps(base)); change(config); (work / name).write_text(json.dumps(config))
write("nvme.json", lambda c: c["zero_optimization"].update(offload_param={"device": "nvme"}))
write("removed-key.json", lambda c: c["zero_optimization"].update(mics_shard_size=2))
write("param-dtype.json", lambda c: c.update(data_types={"param_dtype": "bf16"}))
PY
mkdir -p "$work/null-context/data"; ln -s "$tiny/model" "$work/null-context/model"
cp "$tiny/data/validation.jsonl" "$work/null-context/data/"
$python -c "import json; rows=[json.loads(l) for l in open('$tiny/data/train.jsonl')]; rows[3]['context']=None; open('$work/null-context/data/train.jsonl','w').writelines(json.dumps(r)+'\\n' for r in rows)"
declare -A cases=(  # the environment the job is given, then train.py options
  ["a number out of range"]="PREPARED=$tiny -- --learning_rate -1"
  ["NVMe offload without nvme_path"]="PREPARED=$tiny DS_CONFIG=$work/nvme.json --"
  ["a key DeepSpeed removed"]="PREPARED=$tiny DS_CONFIG=$work/removed-key.json --"
  ["an assertion of DeepSpeed's engine"]="PREPARED=$tiny DS_CONFIG=$work/param-dtype.json --"
  ["a prepared folder that is not there"]="PREPARED=$work/no-such-folder --"
  ["a null context in the data"]="PREPARED=$work/null-context --"
)
for name in "${!cases[@]}"; do
  read -r -a given <<< "${cases[$name]}"; split=$(printf '%s\n' "${given[@]}" | grep -n '^--$' | cut -d: -f1)
  for attempt in 1 2; do
    start=$(date +%s.%N)
    said=$(env "${given[@]:0:split-1}" bash deepspeed-single-gpu/deepspeed-single-gpu.slurm --use_cpu True --train_samples 32 --eval_samples 8 --max_length 64 \
           "${given[@]:split}" 2>&1 | grep "^error" | tail -1)
    printf '%5.1f s  %-36s %s\n' "$(echo "$(date +%s.%N) - $start" | bc)" "$name" "${said:0:110}"
  done
done
rm -rf "$work"
