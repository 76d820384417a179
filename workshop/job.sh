# The plumbing every stage's job shares, sourced by the .slurm file from its stage folder (and
# by run_node.sh on each node) where the workshop package is installed (python -m workshop.job
# path): where the log goes, signals, memory logging, requeueing, and the log's last lines: the
# run's summary, or the reason it failed. The .slurm files keep what each stage teaches.
[ -f train.py ] || { echo "error: no train.py in $PWD: submit the job from the repository (sbatch baseline/baseline.slurm)" >&2; exit 1; }
HOST=$(hostname -s)
# The exit status of a run stopped to be resumed, and the files that ask train.py to stop: the package's
NAMES=$(python -m workshop.job names)
eval "$NAMES"  # STOPPED_TO_RESUME, SAVE_AND_STOP_FILE, STOP_WITHOUT_SAVING_FILE
MAX_RESTARTS=${MAX_RESTARTS:-3}  # CLUSTER: requeues after a lost node or rank, each resuming from the last checkpoint
LOGGERS=() TRAIN_PID= STATUS= ENDING= PREEMPTED= JOB_SHELL= REQUEUED=
# Background loggers end with the job, however it ends (success, failure, scancel, Ctrl-C).
trap '[ ${#LOGGERS[@]} -eq 0 ] || kill "${LOGGERS[@]}" 2>/dev/null || true' EXIT

# background COMMAND...: a logger that the job stops when it ends
background() { "$@" & LOGGERS+=($!); }

# has_gpus: whether nvidia-smi sees a GPU on this node; it says so when not
has_gpus() {
  command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && return
  echo "$HOST: nvidia-smi not found or no GPU: GPU memory is not logged; training anyway"; return 1
}

# start_job NAME DESCRIPTION: the run's name, output folder and log (SLURM's, else log/ here),
# and the log's first lines: the tables tool reads the first one.
start_job() {
  JOB_SHELL=1
  RUN_NAME=${SLURM_JOB_NAME:-$1}-${SLURM_JOB_ID:-local-$(date +%Y%m%d-%H%M%S)-$$}
  OUTPUT_DIR=${OUTPUT_DIR:-runs/$RUN_NAME}
  [[ $OUTPUT_DIR = /* ]] || OUTPUT_DIR=$PWD/$OUTPUT_DIR
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    OUT=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *StdOut=//p')
  else  # without SLURM the job writes its own log
    OUT=$PWD/log/$RUN_NAME.out; mkdir -p log; exec > >(tee -a "$OUT") 2>&1
  fi
  LOG=$(dirname "$OUT") OUT_START=$(stat -c %s "$OUT" 2>/dev/null || echo 0)
  echo "run $RUN_NAME on $HOST, ${2:+$2, }output in $OUTPUT_DIR"
  echo "python: $(command -v python)"
  if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
    echo "attempt $((SLURM_RESTART_COUNT + 1)) of job $SLURM_JOB_ID (requeued $SLURM_RESTART_COUNT time(s))"
    python -m workshop.job lost "$OUTPUT_DIR"
  fi
  rm -f "$OUTPUT_DIR/$SAVE_AND_STOP_FILE" "$OUTPUT_DIR/$STOP_WITHOUT_SAVING_FILE"
  trap 'save_and_stop "warning signal"' USR1
}

# gpus_per_node: the processes to start on each node: GPUS, else the allocation's GPU count
# (SLURM's, else CUDA_VISIBLE_DEVICES or nvidia-smi), refused when above the allocation's.
gpus_per_node() {
  local allocated
  if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then allocated=$SLURM_GPUS_ON_NODE
  elif [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then allocated=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | wc -l)
  else allocated=$( (nvidia-smi -L 2>/dev/null || true) | wc -l); fi
  local gpus=${GPUS:-$allocated}
  [[ $gpus =~ ^[0-9]+$ ]] || { echo "error: GPUS=$gpus: give a number of processes, e.g. GPUS=2" >&2; return 1; }
  if [ "$allocated" -gt 0 ] && [ "$gpus" -gt "$allocated" ]; then
    echo "error: GPUS=$gpus but this allocation has $allocated GPU(s)" >&2; return 1
  fi
  if [ "$gpus" -eq 0 ] && [ "$allocated" -gt 0 ]; then
    echo "error: GPUS=0: give the processes to start, 1 to $allocated (this allocation's GPUs)" >&2; return 1
  fi
  [ "$gpus" -gt 0 ] || { echo "error: no GPU in this allocation; set GPUS=N to run N processes on CPU" >&2; return 1; }
  echo "$gpus"
}

# prepared FOLDER: whether FOLDER holds prepare.py's model/ and data/; a folder named
# explicitly (PREPARED=...) that does not is refused: the job would fall back to the hub ids.
prepared() {
  [ -d "$1/model" ] && [ -d "$1/data" ] && return 0
  [ "$1" = ../prepared ] && return 1
  echo "error: PREPARED=$1 holds no model/ and data/ (looked in $(realpath -m "$1")): give the folder python tools/prepare.py --prepared_dir filled" >&2
  exit 1
}

# whole_seconds NAME: refuse a variable that is not a whole number of seconds
whole_seconds() {
  [[ ${!1} =~ ^[1-9][0-9]*$ ]] || { echo "error: $1=${!1}: give whole seconds, e.g. 60" >&2; exit 1; }
}

# rendezvous_port: MASTER_PORT, else one from the job id, outside Linux's ephemeral range
# (32768-60999, where any program's connections take ports); the next free one if taken.
rendezvous_port() {
  python -m workshop.job port "${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-$RANDOM} % 10000))}"
}

# write_hostfile: HOSTFILE lists every node with its GPUS slots, for every node's launcher;
# MASTER_ADDR, the first node, hosts the rendezvous
write_hostfile() {
  local nodes=localhost
  [ -z "${SLURM_JOB_ID:-}" ] || nodes=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
  MASTER_ADDR=$(echo "$nodes" | head -n 1) HOSTFILE=$LOG/$RUN_NAME.hostfile
  echo "$nodes" | sed "s/\$/ slots=$GPUS/" > "$HOSTFILE"
  echo "rendezvous on $MASTER_ADDR:$MASTER_PORT"
}

# SLURM's warning before the time limit (--signal=B:USR1@N) asks train.py, through a file in
# the output folder, to save a checkpoint and stop after its current step (exit status
# STOPPED_TO_RESUME); the job
# then requeues itself and resumes. Without SLURM: `kill -USR1 <pid of the job>`. (start_job
# sets the trap: the job's own shell is the one that saves.)
save_and_stop() { echo "$1: saving a checkpoint and stopping"; mkdir -p "$OUTPUT_DIR"; touch "$OUTPUT_DIR/$SAVE_AND_STOP_FILE"; }

# SIGTERM while SLURM still has the job RUNNING is a preemption notice (SLURM's preemption
# with a grace time, `scancel --batch --signal=TERM`, or `kill` without SLURM): save if the
# last checkpoint took less than the grace SLURM gives (GraceTime + KillWait; unknown: try),
# then requeue. Otherwise (scancel, the time limit, Ctrl-C, or on a node) the training writes
# its metrics on SIGTERM, told by a file not to wait for a preemption's word (SLURM kills what
# still runs KillWait seconds later): wait for it, at most a minute, passing SIGTERM on if it
# reached this shell only. Once the job is ending on purpose (ENDING), a SIGTERM just ends it
# with STOPPED_TO_RESUME.
on_term() {
  [ -z "$REQUEUED" ] || return 0  # SLURM ends the attempt it requeued: the job says so (requeue)
  [ -z "$ENDING" ] || exit "$STOPPED_TO_RESUME"
  if [ "$1" = TERM ] && [ -n "$JOB_SHELL" ] && [ -n "$TRAIN_PID" ] && [ -z "$PREEMPTED" ] && job_still_running; then
    PREEMPTED=1
    local grace checkpoint
    grace=$(grace_seconds) checkpoint=($(python -m workshop.job checkpoint "$OUTPUT_DIR" || true))
    if [ -n "$grace" ] && [ "${checkpoint[1]:-0}" -ge "$grace" ]; then
      echo "preemption notice: no time to save (a checkpoint takes ${checkpoint[1]} s, SLURM gives $grace s): stopping"
      touch "$OUTPUT_DIR/$STOP_WITHOUT_SAVING_FILE" 2>/dev/null || true
      stop_training
    else
      save_and_stop "preemption notice${grace:+ ($grace s to go)}"
    fi
    return 0  # (a bare return in a trap gives the interrupted wait's status: set -e would exit)
  fi
  trap '' TERM INT
  [ -z "$JOB_SHELL" ] || touch "$OUTPUT_DIR/$STOP_WITHOUT_SAVING_FILE" 2>/dev/null || true  # train.py need not wait
  [ -z "$JOB_SHELL" ] || ! job_is 'Reason=TimeLimit' || echo "job $SLURM_JOB_ID reached its time limit without a \
warning signal to save first (#SBATCH --signal=B:USR1@300): train.py stops after its current step and writes its metrics"
  for i in $(seq 300); do
    training_runs || break
    [ "$i" != 15 ] || stop_training
    sleep 0.2
  done
  [ -z "$JOB_SHELL" ] || { rm -f "$OUTPUT_DIR/$STOP_WITHOUT_SAVING_FILE"; summary; }
  exit 143
}
# training_runs: the launcher, or (the job's own shell) a rank of this run it left behind
training_runs() {
  [ -n "$TRAIN_PID" ] || return 1
  kill -0 "$TRAIN_PID" 2>/dev/null || { [ -n "$JOB_SHELL" ] && python -m workshop.job training "$OUTPUT_DIR"; }
}
trap 'on_term TERM' TERM
trap 'on_term INT' INT
job_still_running() { [ -z "${SLURM_JOB_ID:-}" ] || job_is 'JobState=RUNNING '; }
job_is() { [ -n "${SLURM_JOB_ID:-}" ] && scontrol show job "$SLURM_JOB_ID" 2>/dev/null | grep -q "$1"; }
grace_seconds() {
  [ -n "${SLURM_JOB_ID:-}" ] || return 0
  local kill_wait grace_time
  kill_wait=$(scontrol show config 2>/dev/null | sed -n 's/^KillWait *= *\([0-9]*\).*/\1/p')
  grace_time=$(scontrol show partition "${SLURM_JOB_PARTITION:-}" 2>/dev/null | grep -o 'GraceTime=[0-9]*' | cut -d= -f2)
  echo $((${kill_wait:-30} + ${grace_time:-0}))
}
# stop_training: SIGTERM to the training; from the batch shell of several nodes, to every
# node's tasks (not to srun, which would SIGKILL them)
stop_training() {
  if [ -n "$JOB_SHELL" ] && [ "${SLURM_NNODES:-1}" -gt 1 ]; then
    scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null || true
  else
    python -m workshop.job stop "$TRAIN_PID" || true
  fi
}

# launch COMMAND...: the training on this node, the host memory of its ranks logged beside the
# job's log; launch_nodes COMMAND...: the training on every node (each logs its own). STATUS
# is its exit status once it has ended (a signal to this shell cuts `wait` short).
launch() {
  "$@" &
  TRAIN_PID=$!
  background python -m workshop.host_memory "$TRAIN_PID" "$LOG/$RUN_NAME-host-memory-$HOST.csv"
  wait_for_training
}
launch_nodes() { "$@" & TRAIN_PID=$!; wait_for_training; }
wait_for_training() {
  STATUS=0; wait "$TRAIN_PID" || STATUS=$?
  while [ "$STATUS" -gt 128 ] && kill -0 "$TRAIN_PID" 2>/dev/null; do
    STATUS=0; wait "$TRAIN_PID" || STATUS=$?
  done
}

# end_job: 0 done. STOPPED_TO_RESUME (saved on request) or preempted: requeue, to resume from the newest
# checkpoint. Failed: the reason as the log's last line; after a lost node or rank (a collective
# that timed out, a peer gone, a node's task killed) the job requeues itself first, at most
# MAX_RESTARTS times.
end_job() {
  [ "$STATUS" -ne 0 ] || { summary; exit 0; }
  if [ "$STATUS" -eq "$STOPPED_TO_RESUME" ] || [ -n "$PREEMPTED" ]; then
    requeue
    exit "$STOPPED_TO_RESUME"
  fi
  [ -n "${SLURM_JOB_ID:-}" ] || sleep 0.5  # tee writes the log a moment later
  local reason restarts
  reason=$(python -m workshop.job reason "$OUT" "$OUT_START" "$JOB_STARTED_AT" "$OUTPUT_DIR" "$STATUS" \
    "$LOG/$RUN_NAME-host-memory-*.csv")
  if [ -n "${SLURM_JOB_ID:-}" ] && [[ $reason =~ "collective operation timed out"|"closed by peer"|"reset by peer"|"was killed (srun" ]]; then
    restarts=$(grep -c "^requeueing job $SLURM_JOB_ID after a failure" "$OUT" || true)
    if [ "$restarts" -lt "$MAX_RESTARTS" ]; then
      say_last "$reason"
      requeue "after a failure (restart $((restarts + 1)) of at most $MAX_RESTARTS)"
    else
      echo "not requeueing: $restarts restarts after failures already (MAX_RESTARTS=$MAX_RESTARTS)"
    fi
  fi
  say_last "$reason"
  exit 1
}
say_last() { [ "$(tail -n 1 "$OUT")" = "$1" ] || echo "$1"; }
# summary: the run's summary again where other lines came after it (launchers, a progress bar)
summary() {
  [ -n "${SLURM_JOB_ID:-}" ] || sleep 0.5  # tee writes the log a moment later
  python -m workshop.job summary "$OUT" "$OUT_START" "$JOB_STARTED_AT" "$OUTPUT_DIR" || true
}
# requeue [WHY]: requeue this job (it ends here); without SLURM, say how to resume
requeue() {
  if [ -z "${SLURM_JOB_ID:-}" ]; then
    echo "stopped with a checkpoint: OUTPUT_DIR=$OUTPUT_DIR bash $SCRIPT [the same options] resumes it"
    return
  fi
  echo "requeueing job $SLURM_JOB_ID${1:+ $1}: $(python -m workshop.job resumes "$OUTPUT_DIR")"
  REQUEUED=1
  if scontrol requeue "$SLURM_JOB_ID"; then  # done once this attempt ends; SLURM then holds it
    echo "job $SLURM_JOB_ID is requeued, not cancelled (whatever a CANCELLED line of SLURM's above says): SLURM \
holds it about 2 minutes (its BeginTime, about $(date -d '+2 min' +%H:%M:%S)) before it can start again; its next \
attempt goes on in this log"
    exit "$STOPPED_TO_RESUME"
  fi
  REQUEUED=; echo "error: this job cannot be requeued here: OUTPUT_DIR=$OUTPUT_DIR sbatch $SCRIPT resumes it"
}
