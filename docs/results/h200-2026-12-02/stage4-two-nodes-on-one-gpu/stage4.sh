#!/bin/bash
# Stage 4 on one H200: two "nodes" (network namespaces n1, n2 joined by a veth; then the same
# two launchers on one node's loopback), each node one deepspeed launcher through the stage's
# own run_node.sh, both ranks on the one GPU; distinct NCCL_HOSTID so that NCCL takes them for
# two hosts and uses its network transport. One epoch each, ZeRO-1, 2, 3.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 tools/bloom_architecture.py bloom-560m .gpu-data/squad /tmp/arch560 >/dev/null || exit 1
python3 .gpu-data/netns_pair.py || exit 1
grep -q " n1$" /etc/hosts || printf '10.77.0.1 n1\n10.77.0.2 n2\n' >> /etc/hosts
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cd deepspeed-multi-node
ARGS=(--model_name_or_path /tmp/arch560 --random_weights True --dataset_name_or_path ../.gpu-data/squad
      --train_samples "${SAMPLES:-320}" --eval_samples 32 --num_train_epochs 1 --answer_quality False --save_model False)
run() {  # run NAME CONFIG MODE(veth|loopback)
  local name=$1 config=$2 mode=$3 port=$((29500 + RANDOM % 1000))
  local master=10.77.0.1; [ "$mode" = veth ] || master=127.0.0.1
  mkdir -p log; printf 'n1 slots=1\nn2 slots=1\n' > "log/$name.hostfile"
  local started=$(date +%s.%N) pids=()
  for rank in 0 1; do
    local node=n$((rank + 1)) wrap=()
    [ "$mode" = veth ] && wrap=(nsenter "--net=/var/run/netns/$node")
    SLURM_NODEID=$rank SLURM_NNODES=2 NCCL_HOSTID=$node NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET \
      NCCL_SOCKET_IFNAME=$([ "$mode" = veth ] && echo "veth-$node" || echo lo) \
      "${wrap[@]}" unshare --uts sh -c "hostname $node; exec bash run_node.sh $(dirname "$(command -v python3)") log $name log/$name.hostfile $master $port JOB_STARTED_AT=$started COMPILE_CACHE=/tmp/cc -- train.py --deepspeed $config --output_dir runs/$name ${ARGS[*]}" \
      > "log/$name-node$rank.out" 2>&1 &
    pids+=($!)
  done
  local status=0; for p in "${pids[@]}"; do wait "$p" || status=$?; done
  echo "$name: exit $status after $(python3 -c "import time; print(round(time.time() - $started, 1))") s"
  grep -h "via NET\|epoch \|job time\|error:" "log/$name-node0.out" | grep -v "^\[" | sort -u | head -8
}
for config in ${CONFIGS:-ds_zero1.json ds_zero2.json ds_zero3.json}; do
  for mode in ${MODES:-veth loopback}; do
    run "stage4-${config%.json}-$mode" "$config" "$mode"
  done
done
tar czf "$OUT/stage4.tgz" log runs
