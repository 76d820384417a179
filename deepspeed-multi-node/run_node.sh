#!/bin/bash
# One node of deepspeed-multi-node.slurm, which starts it on every node with srun: this node's
# memory loggers, then its `deepspeed` launcher (one process per GPU of the node). All it needs
# comes as arguments: some sites' srun starts tasks through /bin/sh or in a clean environment.
#   run_node.sh PYTHON_BIN LOG RUN_NAME HOSTFILE MASTER_ADDR MASTER_PORT [NAME=VALUE ...] -- train.py [options]
# PYTHON_BIN: the bin/ folder of the job's Python environment; NAME=VALUE: variables to set.
set -euo pipefail
PYTHON_BIN=$1 LOG=$2 RUN_NAME=$3 HOSTFILE=$4 MASTER_ADDR=$5 MASTER_PORT=$6; shift 6
while [ "$1" != -- ]; do export "${1?}"; shift; done; shift
export PATH=$PYTHON_BIN:$PATH  # the job's environment (its venv or conda env)
# CLUSTER: where srun starts tasks in a clean environment, load your site's software here too.
cd "$(dirname "$0")" && source "$(python -m workshop.job path)"

# GPU memory every second, beside the job's log (memory.used is the 4th field)
if has_gpus; then
  background nvidia-smi --query-gpu=timestamp,index,name,memory.used,memory.total,utilization.gpu \
    --format=csv,nounits -l 1 >> "$LOG/$RUN_NAME-gpu-memory-$HOST.csv"
fi

# The launcher of this node: node rank from srun, all nodes and their slots from the hostfile.
launch deepspeed --hostfile "$HOSTFILE" --no_ssh --node_rank "${SLURM_NODEID:-0}" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "$@"
# Stopped on request (STOPPED_TO_RESUME), every node after the same step: the other nodes'
# launchers get 10 s to see it too (a busy node's take seconds), before srun stops them (for
# --kill-on-bad-exit, that status is a bad exit).
if [ "$STATUS" -eq "$STOPPED_TO_RESUME" ]; then ENDING=1; sleep 10; fi
exit "$STATUS"
