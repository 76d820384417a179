#!/bin/bash
# The compiled-blocks GPU test and two "nodes" on one GPU (distinct NCCL_HOSTID), side by side.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; D=$(readlink -f .gpu-data/squad)
python3 tools/bloom_architecture.py bloom-560m $D /tmp/arch560 >/dev/null
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k compiled > $OUT/gpu-test.log 2>&1 &
cd deepspeed-multi-node && printf "nodeA slots=1\nnodeB slots=1\n" > /tmp/hostfile && mkdir -p log
for r in 0 1; do
  SLURM_NODEID=$r timeout 150 bash ../.gpu-data/run_node.sh "$(dirname "$(command -v python3)")" log two-nodes-on-one-gpu /tmp/hostfile 127.0.0.1 29600 \
    NCCL_HOSTID=node$r NCCL_DEBUG=INFO JOB_STARTED_AT=$(date +%s.%N) -- \
    train.py --deepspeed ds_zero2.json --model_name_or_path /tmp/arch560 --random_weights True \
    --dataset_name_or_path $D --bf16 True --max_steps 30 --answer_quality False --save_model False \
    --output_dir $OUT/two-nodes > $OUT/two-nodes-node$r.log 2>&1 &
done
wait; cd ..
tail -3 $OUT/gpu-test.log
grep -h "NET/\|via " $OUT/two-nodes-node*.log | sed 's/^.*NCCL INFO //' | sort | uniq -c | head -8
grep -h "^job time\|world_size\|^error" $OUT/two-nodes-node*.log | head -4
cp deepspeed-multi-node/log/* $OUT/ 2>/dev/null; rm -f $OUT/two-nodes/*.safetensors $OUT/two-nodes/training_args.bin
cd $OUT && tar czf last.tgz two-nodes *.log *.csv 2>/dev/null
