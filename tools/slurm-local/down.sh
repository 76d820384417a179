#!/usr/bin/env bash
# Tear down what up.sh started -- only by recorded pid files (checked against the expected
# process name), never by name patterns: other slurm/munge on the machine are left alone.
# Idempotent: safe to run when nothing is up.
#   down.sh            cancel this cluster's jobs, stop its slurmd(s), slurmctld, munged; undo
#                      its /etc changes, delete its network namespaces (mode 2ns)
#   SLAB_NAME=NAME     the cluster up.sh started under that name (default slurm-local); other
#                      clusters (other names) and their jobs are left alone
#   SLAB_KEEP_MUNGE=1  leave munged running
# Logs and state stay in $SLAB_DIR for post-mortems (up.sh starts from a clean state anyway).
set -euo pipefail
NAME=${SLAB_NAME:-slurm-local}
LAB=${SLAB_DIR:-/tmp/$NAME}
NS=slab-$NAME
RUN=$LAB/run
T0=$EPOCHREALTIME
log() { printf '[down %s] %s\n' "$(date +%T)" "$*"; }

is_proc() { # is_proc PID COMM  (process exists, has that name, is not a zombie)
  [ -n "$1" ] && [ "$(cat /proc/"$1"/comm 2>/dev/null)" = "$2" ] \
    && [ "$(awk '{print $3}' /proc/"$1"/stat 2>/dev/null)" != Z ]
}
stop_pid() { # stop_pid PID COMM [TENTHS]  (TERM, wait up to TENTHS/10 s (default 15 s), then KILL)
  local p=$1 c=$2 n=${3:-150} i
  is_proc "$p" "$c" || return 0
  kill -TERM "$p" 2>/dev/null || true
  for i in $(seq 1 "$n"); do
    is_proc "$p" "$c" || { log "stopped $c $p"; return 0; }
    sleep 0.1
  done
  log "$c $p ignored TERM, sending KILL"; kill -KILL "$p" 2>/dev/null || true; sleep 0.2
}
stop_file() { # stop_file PIDFILE COMM
  local p; p=$(cat "$1" 2>/dev/null) || return 0
  stop_pid "$p" "$2"
  rm -f "$1"
}
descendants() { # all descendant PIDs of $1 (walks PPid links)
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo -n "$c "; descendants "$c"; done
}

export SLURM_CONF=$LAB/etc/slurm.conf
# mode 2ns: slurmctld listens in n1's network namespace only
net=(); [ -f "$RUN/netns" ] && [ -e "/run/netns/$NS-n1" ] && net=(nsenter --net="/run/netns/$NS-n1")

# 1. cancel this cluster's jobs (by id, from its own slurmctld) so their processes end cleanly
if [ -f "$RUN/mode" ] && is_proc "$(cat "$RUN/slurmctld.pid" 2>/dev/null)" slurmctld; then
  jobs=$(timeout 5 "${net[@]}" squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086  # a list of job ids
    timeout 5 "${net[@]}" scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 100); do
      [ -z "$(timeout 5 "${net[@]}" squeue -h -o %i 2>/dev/null || true)" ] && break; sleep 0.2
    done
  fi
fi

# 2. daemons (pid files written by slurmd/slurmctld themselves), signalled together, then waited for
for f in "$RUN"/slurmd-*.pid; do [ -e "$f" ] && stop_file "$f" slurmd & done
stop_file "$RUN/slurmctld.pid" slurmctld &
wait

# 3. leftover slurmstepd of OUR cluster (recognised by our SLURM_CONF in its environment, which
#    it inherits from up.sh via slurmd), with the job processes below it
for d in /proc/[0-9]*; do
  [ "$(cat "$d/comm" 2>/dev/null)" = slurmstepd ] || continue
  if { tr '\0' '\n' < "$d/environ"; } 2>/dev/null | grep -qx "SLURM_CONF=$SLURM_CONF"; then
    sp=${d#/proc/}
    kids=$(descendants "$sp")
    if [ -n "$kids" ]; then
      log "TERM job processes of slurmstepd $sp: $kids"
      # shellcheck disable=SC2086  # a list of pids
      kill -TERM $kids 2>/dev/null || true; sleep 0.5; kill -KILL $kids 2>/dev/null || true
    fi
    stop_pid "$sp" slurmstepd 20 &   # slurmstepd ignores TERM while it cannot reach slurmd
  fi
done
wait

# 4. munged
[ "${SLAB_KEEP_MUNGE:-0}" = 1 ] || stop_file "$LAB/munge/munged.pid" munged

# 5. network namespaces (2ns), /etc changes up.sh recorded
if [ -f "$RUN/netns" ]; then
  for ns in $(cat "$RUN/netns"); do ip netns del "$ns" 2>/dev/null && log "deleted netns $ns" || true; done
  rm -f "$RUN/netns"
fi
if [ -f "$RUN/etc_link" ]; then
  l=$(cat "$RUN/etc_link")
  [ "$(readlink "$l" || true)" = "$SLURM_CONF" ] && rm -f "$l"
  rm -f "$RUN/etc_link"
fi
if [ -f "$RUN/hosts_added" ]; then
  # /etc/hosts may be a bind mount (docker): rewrite in place, don't rename over it
  grep -v "# $NS\$" /etc/hosts > "$RUN/hosts.tmp" || true
  cat "$RUN/hosts.tmp" > /etc/hosts
  rm -f "$RUN/hosts.tmp" "$RUN/hosts_added"
fi
rm -f "$RUN/mode" "$RUN/spec" "$LAB"/bin/*
rm -rf "$LAB/spool"
log "down in $(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b-a}') s"
