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

# scancel, the time limit (SLURM sends SIGTERM to every process of the job) or the job passing
# it on: the launcher stops the ranks, which write their metrics; wait for it, at most a minute.
# Stopped on request already (75, below): srun is stopping the other nodes, say 75 too.
TRAIN_PID= STOPPED=
processes_of() {  # $1 and all its descendants
  ps -e -o pid=,ppid= | awk -v root="$1" '{ parent[$1] = $2 }
    END { for (p in parent) { q = p; while (q > 1 && q != root) q = parent[q]; if (q == root) print p } }'
}
stop_training() {
  trap '' TERM INT; [ -z "$STOPPED" ] || exit 75
  for i in $(seq 300); do
    [ -n "$TRAIN_PID" ] && kill -0 "$TRAIN_PID" 2>/dev/null || break
    [ "$i" != 15 ] || kill -TERM $(processes_of "$TRAIN_PID") 2>/dev/null || true
    sleep 0.2
  done
  exit 143
}
trap stop_training TERM INT

# Memory loggers, stopped by the trap whatever happens (success, failure, scancel, Ctrl-C).
LOGGERS=()
trap '[ ${#LOGGERS[@]} -eq 0 ] || kill "${LOGGERS[@]}" 2>/dev/null || true' EXIT
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  # memory.used is the 4th field, for: tail -n +2 log/*-gpu-memory-*.csv | cut -d',' -f4
  nvidia-smi --query-gpu=timestamp,index,name,memory.used,memory.total,utilization.gpu \
    --format=csv,nounits -l 1 >> "$LOG/$RUN_NAME-gpu-memory-$(hostname -s).csv" &
  LOGGERS+=($!)
else
  echo "$(hostname -s): nvidia-smi not found or no GPU: GPU memory is not logged; training anyway"
fi
# Every second, the host memory (MiB) of the training's ranks below process $1: the resident
# memory of each `python train.py` process, once. Not counted: the deepspeed launcher, the
# compile workers of torch.compile, ninja/c++ building DeepSpeed's ops, processes a rank forks.
log_host_memory() {
  echo "timestamp,rss_mib"
  while kill -0 "$1" 2>/dev/null; do
    ps -e -o pid=,ppid=,rss=,args= | awk -v root="$1" -v now="$(date '+%Y/%m/%d %H:%M:%S')" '
      { parent[$1] = $2; rss[$1] = $3; args = $0; sub(/^ *[0-9]+ +[0-9]+ +[0-9]+ +/, "", args)
        rank[$1] = args ~ /^[^ ]*python[0-9.]*( -[^ ]+)* ([^ ]*\/)?train\.py( |$)/ }
      END { for (p in rss) { if (!rank[p] || rank[parent[p]]) continue
                             q = p; while (q > 1 && q != root) q = parent[q]; if (q == root) kib += rss[p] }
            printf "%s,%.0f\n", now, kib / 1024 }'
    sleep 1
  done
}

# The launcher of this node: node rank from srun, all nodes and their slots from the hostfile.
deepspeed --hostfile "$HOSTFILE" --no_ssh --node_rank "${SLURM_NODEID:-0}" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "$@" &
TRAIN_PID=$!
log_host_memory "$TRAIN_PID" >> "$LOG/$RUN_NAME-host-memory-$(hostname -s).csv" &
LOGGERS+=($!)
status=0; wait "$TRAIN_PID" || status=$?
# Stopped on request (75), every node after the same step: the other nodes' launchers get 2 s to
# see it too, before srun stops them (for --kill-on-bad-exit, 75 is a bad exit).
if [ "$status" -eq 75 ]; then STOPPED=1; sleep 2; fi
exit "$status"
