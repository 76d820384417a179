#!/bin/bash
# The whole-job benchmark (tools/bench_fast.py) and where a job's start goes (-X importtime).
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 tools/bloom_architecture.py bloom-560m .gpu-data/squad /tmp/arch560 >/dev/null || exit 1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 tools/bench_fast.py /tmp/arch560 .gpu-data/squad --epochs 3 --out /tmp/bench --deepspeed ds_zero1.json 2>&1 | tee "$OUT/bench.out"
cd baseline && python3 -X importtime -c "import train" 2> /tmp/importtime.txt
sort -t'|' -k2 -n -r /tmp/importtime.txt | head -40 > "$OUT/importtime-top.txt"
cd .. && tar czf "$OUT/bench.tgz" -C /tmp bench --exclude='*.safetensors' --exclude='cache*' --exclude='*.pt'
