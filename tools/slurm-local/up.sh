#!/usr/bin/env bash
# Bring up a real SLURM cluster (Debian 12: slurm-wlm 22.05) on ONE machine, as root, without
# systemd, so the workshop's job scripts can be tried with sbatch on a laptop/workstation/CI box.
#
#   up.sh [1|2|2ns]  (default: $SLAB_MODE or 1)
#     1    one node "localhost"
#     2    two nodes n1,n2 = two slurmd on loopback 127.0.0.11/.12 (Debian builds slurm with
#          --enable-multiple-slurmd); each slurmd runs under `unshare --mount --uts` with its own
#          hostname and /etc/hosts view, so `srun hostname` prints n1 / n2 and torchrun's c10d
#          rendezvous sees distinct hosts.
#     2ns  two nodes n1,n2, each in its own network namespace (slab-$SLAB_NAME-n1, -n2: 10.200.0.1/.2
#          on a veth pair that exists only inside them), slurmctld in n1's: a node's network can be
#          taken away (`ip -n slab-slurm-local-n2 link set slab-v2 down`). Client commands must run in
#          n1's namespace: $SLAB_DIR/bin/{sbatch,squeue,...} do that (env.sh puts them on PATH).
#
# Idempotent: same mode while healthy => no-op; another mode (or broken cluster) => down + up.
# Afterwards:  source $SLAB_DIR/env.sh   (SLURM_CONF, and slab_wait JOBID [TIMEOUT_S])
# Tear down:   down.sh (stops only what this script started, by pid file)
#
# Knobs (env): SLAB_NAME=slurm-local: the cluster's name; its state folder, network namespaces and
#   cleanup derive from it, so that clusters of other names (and ports) run beside it
#   SLAB_DIR=/tmp/$SLAB_NAME  SLAB_CPUS=16 (advertised CPUs/node)
#   SLAB_MEM_MB=131072 (advertised RealMemory/node, so #SBATCH --mem=32G is accepted)
#   SLAB_GPUS=4 (fake GPUs/node, 0 = no GRES)  SLAB_CTL_PORT=16817  SLAB_SLURMD_PORT=16818
#   SLAB_PARTITIONS="debug" (space-separated; scripts with #SBATCH --partition=X need X here)
#   SLAB_LINK_ETC=1 (symlink /etc/slurm/slurm.conf -> our conf if that path is free, so plain
#                    sbatch works without SLURM_CONF)
#   SLAB_INSTALL=1 (apt-get install the packages if missing)
#   SLAB_NO_UNSHARE=1 (mode 2 without unshare; automatic when unshare is not permitted)
#
# Exit status: 0 up, 1 failed (logs printed, partial cluster torn down), 2 usage,
#              3 not root, slurm/munge missing and not installable, or (2ns) no network
#                namespaces here (callers may skip).
set -euo pipefail

NAME=${SLAB_NAME:-slurm-local}
LAB=${SLAB_DIR:-/tmp/$NAME}
NS=slab-$NAME  # network namespaces $NS-n1, $NS-n2 (mode 2ns)
MODE=${1:-${SLAB_MODE:-1}}
CPUS=${SLAB_CPUS:-16}
MEM_MB=${SLAB_MEM_MB:-131072}
GPUS=${SLAB_GPUS:-4}
CTL_PORT=${SLAB_CTL_PORT:-16817}
SLURMD_PORT=${SLAB_SLURMD_PORT:-16818}
PARTS=${SLAB_PARTITIONS:-debug}   # all contain all nodes, the first is the default
LINK_ETC=${SLAB_LINK_ETC:-1}
INSTALL=${SLAB_INSTALL:-1}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PKGS="slurmctld slurmd slurm-client munge"

case "$MODE" in 1|2|2ns) ;; *) echo "usage: $0 [1|2|2ns]" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "up.sh: must run as root (slurmd/slurmctld/munged run as root)" >&2; exit 3; }
log() { printf '[up %s] %s\n' "$(date +%T)" "$*"; }
T0=$EPOCHREALTIME

# ---------------------------------------------------------------- packages
have_pkgs() { command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged; } >/dev/null
if ! have_pkgs; then
  [ "$INSTALL" = 1 ] || { echo "up.sh: slurm/munge not installed and SLAB_INSTALL=0" >&2; exit 3; }
  command -v apt-get >/dev/null || { echo "up.sh: slurm/munge not installed and no apt-get ($PKGS)" >&2; exit 3; }
  log "installing $PKGS"
  # keep the packages' postinst from starting munge/slurm via init scripts: we run our own
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt_ok=1
  # shellcheck disable=SC2086  # $PKGS: word splitting wanted
  apt-get install -y --no-install-recommends $PKGS >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends $PKGS >/dev/null; } \
    || apt_ok=0
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  { [ "$apt_ok" = 1 ] && have_pkgs; } || { echo "up.sh: could not install $PKGS with apt-get" >&2; exit 3; }
fi

RUN=$LAB/run; ETC=$LAB/etc
mkdir -p "$RUN" "$ETC" "$LAB/log"

alive() { # alive PIDFILE COMM  (process exists, has that name, is not a zombie)
  local p; p=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$p" ] && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$2" ] \
    && [ "$(awk '{print $3}' /proc/"$p"/stat 2>/dev/null)" != Z ]
}
nodes_of() { case "$1" in 1) echo localhost ;; *) echo "n1 n2" ;; esac; }
if [ "$MODE" = 2ns ] && ! { command -v ip >/dev/null && unshare --mount --uts --net true 2>/dev/null; }; then
  echo "up.sh: mode 2ns needs network namespaces (the ip command, CAP_SYS_ADMIN/CAP_NET_ADMIN)" >&2; exit 3
fi

# ---------------------------------------------------------------- already up?
SPEC="v4 name=$NAME mode=$MODE cpus=$CPUS mem=$MEM_MB gpus=$GPUS parts=$PARTS ports=$CTL_PORT,$SLURMD_PORT"
if [ -f "$RUN/mode" ]; then
  old=$(cat "$RUN/mode")
  ok=1
  alive "$RUN/slurmctld.pid" slurmctld || ok=0
  alive "$LAB/munge/munged.pid" munged || ok=0
  for n in $(nodes_of "$old"); do alive "$RUN/slurmd-$n.pid" slurmd || ok=0; done
  if [ "$(cat "$RUN/spec" 2>/dev/null)" = "$SPEC" ] && [ "$ok" = 1 ]; then
    log "cluster already up ($SPEC); source $LAB/env.sh"; exit 0
  fi
  log "tearing down previous cluster ($(cat "$RUN/spec" 2>/dev/null), healthy=$ok)"
  bash "$HERE/down.sh"
fi

# a half-started cluster is worse than none: stop whatever got started
trap 'echo "up.sh: failed at line $LINENO; tearing down" >&2; bash "$HERE/down.sh" >&2' ERR

# ---------------------------------------------------------------- munge (own key + socket)
MUNGE=$LAB/munge
mkdir -p "$MUNGE"; chmod 0755 "$MUNGE"   # munged insists on execute permission for all on the socket dir
if [ ! -s "$MUNGE/munge.key" ]; then
  if command -v mungekey >/dev/null; then mungekey --create --keyfile="$MUNGE/munge.key" --bits=1024
  else dd if=/dev/urandom of="$MUNGE/munge.key" bs=128 count=1 status=none; fi
fi
chown root:root "$MUNGE/munge.key"; chmod 0600 "$MUNGE/munge.key"
if ! alive "$MUNGE/munged.pid" munged; then
  rm -f "$MUNGE/munge.socket" "$MUNGE/munge.socket.lock"
  munged --key-file="$MUNGE/munge.key" --socket="$MUNGE/munge.socket" \
         --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed"
fi
munge -n -S "$MUNGE/munge.socket" | unmunge -S "$MUNGE/munge.socket" >/dev/null
log "munged pid $(cat "$MUNGE/munged.pid")"

# ---------------------------------------------------------------- config
# fresh state each time: no jobs/nodes from a previous mode come back
rm -rf "$LAB/state" "$LAB/spool"; mkdir -p "$LAB/state"; rm -f "$LAB"/log/*.log
for n in $(nodes_of "$MODE"); do mkdir -p "$LAB/spool/$n"; done

GRES_NODE=""; GRES_TYPES=""
: > "$ETC/gres.conf"
if [ "$GPUS" -gt 0 ]; then
  # fake GPUs so `#SBATCH --gres=gpu:N` is accepted: gres/gpu in 22.05 drops File-less GPUs
  # ("Removing file-less GPU") and rejects regular files ("is not a valid character or block
  # device"), so use symlinks to /dev/null. Jobs get CUDA_VISIBLE_DEVICES; torch sees no CUDA.
  rm -rf "$LAB/fakegpu"; mkdir -p "$LAB/fakegpu"
  for ((i=0;i<GPUS;i++)); do ln -s /dev/null "$LAB/fakegpu/nvidia$i"; done
  # (no AccountingStorageTRES=gres/gpu: slurmctld then dies "slurmdbd is required")
  GRES_NODE=" Gres=gpu:$GPUS"; GRES_TYPES="GresTypes=gpu"
  echo "AutoDetect=off" >> "$ETC/gres.conf"
  echo "Name=gpu File=$LAB/fakegpu/nvidia[0-$((GPUS-1))]" >> "$ETC/gres.conf"
fi

case "$MODE" in 2ns) CTL_HOST="n1(10.200.0.1)" ;; *) CTL_HOST="localhost(127.0.0.1)" ;; esac
{
cat <<EOF
# generated by $HERE/up.sh mode $MODE
ClusterName=slab
SlurmctldHost=$CTL_HOST
SlurmctldPort=$CTL_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE/munge.socket
StateSaveLocation=$LAB/state
SlurmdSpoolDir=$LAB/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LAB/log/slurmctld.log
SlurmdLogFile=$LAB/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups (no systemd), no accounting (so no sacct: use scontrol), no MPI
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# default batch_sched_delay=3 => every sbatch waits up to ~3 s for the next scheduling pass
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
# reject (instead of pending forever with Reason=PartitionNodeLimit) e.g. --nodes=2 on 1 node
EnforcePartLimits=ALL
# keep finished jobs visible to scontrol for an hour (there is no accounting database)
MinJobAge=3600
KillWait=5
# advertise the CPUs/RealMemory below even if the machine is smaller (nothing is enforced)
SlurmdParameters=config_overrides
$GRES_TYPES
EOF
case "$MODE" in
  1) echo "NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB$GRES_NODE State=UNKNOWN" ;;
  2) for i in 1 2; do
       echo "NodeName=n$i NodeAddr=127.0.0.1$i NodeHostname=localhost Port=$((SLURMD_PORT+i)) CPUs=$CPUS RealMemory=$MEM_MB$GRES_NODE State=UNKNOWN"
     done ;;
  2ns) for i in 1 2; do
       echo "NodeName=n$i NodeAddr=10.200.0.$i CPUs=$CPUS RealMemory=$MEM_MB$GRES_NODE State=UNKNOWN"
     done ;;
esac
def=YES
for p in $PARTS; do
  echo "PartitionName=$p Nodes=ALL Default=$def MaxTime=INFINITE State=UP"; def=NO
done
} > "$ETC/slurm.conf"

export SLURM_CONF=$ETC/slurm.conf
if [ "$LINK_ETC" = 1 ]; then
  mkdir -p /etc/slurm
  if [ ! -e /etc/slurm/slurm.conf ] || [ "$(readlink /etc/slurm/slurm.conf)" = "$SLURM_CONF" ]; then
    ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf; echo "/etc/slurm/slurm.conf" > "$RUN/etc_link"
  else
    log "NOTE: /etc/slurm/slurm.conf exists and is not ours: export SLURM_CONF=$SLURM_CONF"
  fi
fi

# ---------------------------------------------------------------- node identity (modes 2, 2ns)
# innode NODE CMD...: run CMD with hostname NODE and an /etc/hosts that knows n1/n2, in private
# UTS + mount namespaces (the job steps slurmd forks inherit them); in 2ns also in NODE's
# network namespace (nsenter --net, not `ip netns exec`, which remounts /sys and hides
# /sys/fs/cgroup: slurmd then dies "No filesystem mounted on /sys/fs/cgroup").
rm -f "$ETC/hosts"
UNSHARE_OK=0
case "$MODE" in
  2)   printf '127.0.0.1 localhost\n127.0.0.11 n1\n127.0.0.12 n2\n' > "$ETC/hosts" ;;
  2ns) printf '127.0.0.1 localhost\n10.200.0.1 n1\n10.200.0.2 n2\n' > "$ETC/hosts" ;;
esac
if [ "$MODE" = 2ns ]; then
  UNSHARE_OK=1
  for n in 1 2; do ip netns add "$NS-n$n" 2>/dev/null || true; done
  # the veth ends live only inside the namespaces: their names clash with no other cluster's
  ip -n "$NS-n1" link show slab-v1 >/dev/null 2>&1 || \
    ip link add slab-v1 netns "$NS-n1" type veth peer name slab-v2 netns "$NS-n2"
  for n in 1 2; do
    ip -n "$NS-n$n" addr replace 10.200.0.$n/24 dev slab-v$n
    ip -n "$NS-n$n" link set lo up
    ip -n "$NS-n$n" link set slab-v$n up
  done
  echo "$NS-n1 $NS-n2" > "$RUN/netns"
elif [ "$MODE" = 2 ]; then
  if [ "${SLAB_NO_UNSHARE:-0}" != 1 ] && unshare --mount --uts true 2>/dev/null; then
    UNSHARE_OK=1
  else
    # no CAP_SYS_ADMIN (e.g. unprivileged docker): make n1/n2 resolvable globally instead
    # (lines tagged "# $NS", removed by down.sh); both nodes keep the machine's hostname
    grep -q "# $NS\$" /etc/hosts || \
      printf '127.0.0.11 n1 # %s\n127.0.0.12 n2 # %s\n' "$NS" "$NS" >> /etc/hosts
    echo 1 > "$RUN/hosts_added"
    log "WARNING: no unshare: both nodes report hostname $(hostname); srun + env:// works,"
    log "         torchrun --rdzv_backend=c10d with --rdzv_endpoint=n1:PORT will hang"
  fi
fi
innode() {
  local n=$1; shift
  local net=()
  [ "$MODE" = 2ns ] && net=(nsenter --net=/run/netns/"$NS-$n")
  if [ "$UNSHARE_OK" = 1 ]; then
    "${net[@]}" unshare --mount --uts sh -c \
      'mount --bind "$0" /etc/hosts && hostname "$1" && shift && exec "$@"' "$ETC/hosts" "$n" "$@"
  else
    "$@"
  fi
}

# ---------------------------------------------------------------- daemons
# both daemonize and write their own pid files (SlurmctldPidFile/SlurmdPidFile): down.sh uses them
rm -f "$RUN"/slurm*.pid
echo "$MODE" > "$RUN/mode"; echo "$SPEC" > "$RUN/spec"
if [ "$MODE" = 2ns ]; then innode n1 slurmctld; else slurmctld; fi
for n in $(nodes_of "$MODE"); do innode "$n" slurmd -N "$n"; done

# ---------------------------------------------------------------- client wrappers (2ns)
# outside the namespaces (your shell, the tests): run the command in n1's network namespace,
# as on a login node; inside a job (already in a node's namespace): run it as it is
mkdir -p "$LAB/bin"; rm -f "$LAB/bin"/*
if [ "$MODE" = 2ns ]; then
  for c in sbatch srun salloc squeue sinfo scontrol scancel sattach; do
    cat > "$LAB/bin/$c" <<EOF
#!/bin/sh
export SLURM_CONF=$SLURM_CONF
here=\$(stat -L -c %i /proc/self/ns/net)
for ns in /run/netns/$NS-n1 /run/netns/$NS-n2; do
  [ "\$(stat -L -c %i \$ns 2>/dev/null)" != "\$here" ] || exec /usr/bin/$c "\$@"
done
exec nsenter --net=/run/netns/$NS-n1 /usr/bin/$c "\$@"
EOF
    chmod +x "$LAB/bin/$c"
  done
fi

# ---------------------------------------------------------------- env.sh for users
cat > "$LAB/env.sh" <<EOF
# source me
export SLURM_CONF=$SLURM_CONF
$( [ "$MODE" = 2ns ] && echo "export PATH=$LAB/bin:\$PATH" )
# slab_wait JOBID [TIMEOUT_S]: poll scontrol (sbatch --wait polls only every ~10 s; no sacct here);
# prints the final state, returns 0 only for COMPLETED with ExitCode 0:0
slab_wait() {
  local j=\$1 t=\${2:-600} s=\$(date +%s) st
  case "\$j" in ''|*[!0-9]*) echo "slab_wait: bad job id '\$j'"; return 2 ;; esac
  while :; do
    st=\$(scontrol -o show job "\$j" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
    case "\$st" in PENDING|RUNNING|CONFIGURING|COMPLETING|SUSPENDED|REQUEUED|"") ;; *) break ;; esac
    [ \$((\$(date +%s)-s)) -ge "\$t" ] && { echo "slab_wait: timeout, job \$j state=\$st"; return 124; }
    sleep 0.3
  done
  local ec=\$(scontrol -o show job "\$j" | grep -o ' ExitCode=[0-9:]*' | cut -d= -f2)
  echo "job \$j \$st ExitCode=\$ec"
  [ "\$st" = COMPLETED ] && [ "\$ec" = 0:0 ]
}
EOF

# shellcheck disable=SC1091
. "$LAB/env.sh"  # (2ns: sinfo below goes through the wrappers)

# ---------------------------------------------------------------- wait for nodes idle
want=$(nodes_of "$MODE" | wc -w); idle=0; why="nodes not idle after 30 s"
for i in $(seq 1 150); do
  sleep 0.2
  alive "$RUN/slurmctld.pid" slurmctld || { [ "$i" -gt 5 ] && { why="slurmctld died"; break; }; continue; }
  idle=$(timeout 5 sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l || true)
  [ "$idle" -ge "$want" ] && break
done
if [ "${idle:-0}" -lt "$want" ]; then
  trap - ERR
  echo "up.sh: $why" >&2
  timeout 5 sinfo -N -o '%N %T %E' >&2 || true
  tail -n 20 "$LAB"/log/*.log >&2 || true
  bash "$HERE/down.sh" >&2 || true
  exit 1
fi
sinfo -N -o '%N %T %c %m %G' | uniq
log "mode $MODE up in $(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b-a}') s; now: source $LAB/env.sh"
