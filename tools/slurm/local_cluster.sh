#!/bin/bash
# A one-node Slurm cluster on this machine, for tests and for trying tools/slurm/train.sbatch:
# munged + slurmctld + slurmd, everything (munge key and socket, slurm.conf, state, spool, logs, PIDs) in one
# private directory, with a private SLURM_CONF (no /etc/slurm, no systemd, no cgroups).
#
#   tools/slurm/local_cluster.sh start  [DIR] [--cpus=N]   prints `export SLURM_CONF=DIR/etc/slurm.conf`
#   tools/slurm/local_cluster.sh stop   [DIR]              cancels jobs, stops the daemons; keeps DIR/log
#   tools/slurm/local_cluster.sh status [DIR]
#
# DIR defaults to /tmp/hybridmoe-slurm. It must be short (UNIX socket paths live in it) and every directory
# above it must be world-searchable (munged insists). Both commands are idempotent: `start` on a running
# cluster only prints its SLURM_CONF, `stop` on a stopped one does nothing. --cpus declares N CPUs whatever
# the hardware has (default: what `slurmd -C` reports). Ports: a random free pair in 20000-39999.
# Needs root (the daemons run as root, and so do the jobs) and Debian's slurm-wlm and munge packages.
# Only processes recorded in DIR/pids whose command line names DIR are ever signalled, plus the job step
# daemons whose environment names this cluster's SLURM_CONF.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "local_cluster.sh: $*" >&2; exit 1; }
say() { echo "local_cluster.sh: $*" >&2; }

usage="usage: local_cluster.sh start|stop|status [DIR] [--cpus=N]"
cmd="${1:-}"; shift || true
dir="" cpus=""
for arg in "$@"; do
  case "$arg" in
    --cpus=*) cpus="${arg#--cpus=}" ;;
    -*) die "unknown option $arg; $usage" ;;
    *) [[ -z "$dir" ]] || die "more than one DIR; $usage"; dir="$arg" ;;
  esac
done
dir="${dir:-/tmp/hybridmoe-slurm}"
[[ -z "$cpus" || "$cpus" =~ ^[1-9][0-9]*$ ]] || die "--cpus=$cpus: want a positive integer"
case "$cmd" in start|stop|status) ;; *) die "$usage" ;; esac

# A live process (a zombie counts as dead: its parent may reap it late).
alive() { [[ -n "$1" && -r /proc/$1/stat ]] && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
# ours PID NAME: PID is alive, and its command line names NAME and this cluster's directory.
ours() {
  alive "$1" || return 1
  local cl; cl="$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline")"
  [[ "$cl" == *"$2"* && "$cl" == *"$dir"* ]]
}
pid_of() { awk -v n="$1" '$1 == n { print $2 }' "$dir/pids" 2>/dev/null; }
running() {  # all three daemons of this cluster are up
  [[ -f "$dir/pids" ]] && ours "$(pid_of munged)" munged && ours "$(pid_of slurmctld)" slurmctld &&
    ours "$(pid_of slurmd)" slurmd
}

stop_daemon() {  # stop_daemon NAME: SIGTERM, then SIGKILL after 10 s
  local pid; pid="$(pid_of "$1")"
  ours "$pid" "$1" || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do alive "$pid" || return 0; sleep 0.1; done
  say "$1 (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null
}

tree_of() {  # tree_of PID: PID's descendants, deepest first
  local kid
  for kid in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree_of "$kid"; echo "$kid"; done
}

do_stop() {
  [[ -d "$dir" ]] || return 0
  dir="$(cd "$dir" && pwd -P)"
  export SLURM_CONF="$dir/etc/slurm.conf"
  [[ -f "$dir/pids" ]] || return 0
  if ours "$(pid_of slurmctld)" slurmctld; then
    local jobs; jobs="$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')"
    [[ -n "${jobs// }" ]] && scancel $jobs 2>/dev/null
    for _ in $(seq 75); do  # at most 15 s for the jobs and their step daemons to go
      [[ -z "$(squeue -h -o %A 2>/dev/null)" && -z "$(find "$dir/spool" -maxdepth 1 -type s 2>/dev/null)" ]] && break
      sleep 0.2
    done
  fi
  stop_daemon slurmd  # first, or it tries to re-register with the controller
  stop_daemon slurmctld
  stop_daemon munged
  # Step daemons that outlived slurmd (e.g. the controller had died): found by their environment.
  local d pid
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    [[ "$(tr '\0' ' ' 2>/dev/null <"$d/cmdline")" == slurmstepd:* ]] || continue
    tr '\0' '\n' 2>/dev/null <"$d/environ" | grep -qxF "SLURM_CONF=$SLURM_CONF" || continue
    say "killing leftover step daemon $pid and its processes"
    # shellcheck disable=SC2046  # one argument per PID
    kill -KILL $(tree_of "$pid") "$pid" 2>/dev/null
  done
  rm -f "$dir/pids"
  say "stopped the cluster in $dir (logs kept in $dir/log)"
}

do_status() {
  if running; then
    echo "running: $dir (SLURM_CONF=$dir/etc/slurm.conf)"
    SLURM_CONF="$dir/etc/slurm.conf" sinfo 2>&1
  else
    echo "not running: $dir"
    return 1
  fi
}

abort() {  # a failed start: show the logs, stop whatever started, fail
  local f
  for f in "$dir"/log/*; do [[ -s "$f" ]] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
  do_stop
  die "start failed: $*"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

do_start() {
  [[ "$(id -u)" == 0 ]] || die "must run as root (the daemons and the test jobs run as root); try sudo"
  local b missing=""
  for b in munged munge unmunge slurmctld slurmd sinfo squeue scancel sbatch srun; do
    command -v "$b" >/dev/null || missing+=" $b"
  done
  [[ -z "$missing" ]] || die "missing:$missing; install the Debian packages: apt-get install -y slurm-wlm munge"
  mkdir -p "$dir" || die "cannot create $dir"
  dir="$(cd "$dir" && pwd -P)"
  # Never reuse a directory this script did not create: start clears subdirectories of DIR.
  [[ -f "$dir/.local_cluster" || -z "$(ls -A "$dir")" ]] ||
    die "$dir is not empty and was not made by local_cluster.sh; give a new or empty DIR"
  (( ${#dir} <= 60 )) || die "$dir is ${#dir} characters long; use a directory of at most 60 (UNIX socket paths)"
  local p="$dir"
  while p="$(dirname "$p")"; [[ "$p" != / ]]; do
    (( 0$(stat -c %a "$p") & 1 )) || die "$p is not world-searchable (munged refuses the socket below it); use a DIR under /tmp"
  done
  if running; then
    say "already running in $dir"
    echo "export SLURM_CONF=$dir/etc/slurm.conf"
    return 0
  fi
  [[ -f "$dir/pids" ]] && { say "$dir holds a half-dead cluster; stopping it first"; do_stop; }
  rm -rf "${dir:?}/munge" "${dir:?}/etc" "${dir:?}/state" "${dir:?}/spool" "${dir:?}/log" "${dir:?}/tmp"
  touch "$dir/.local_cluster"
  chmod 0755 "$dir"
  mkdir -p "$dir"/{munge,etc,state,spool,log,tmp} && chmod 0755 "$dir/munge"

  # munge: a fresh key and a private socket.
  local key="$dir/munge/munge.key" sock="$dir/munge/munge.socket.2"
  if command -v mungekey >/dev/null; then mungekey -c -k "$key"; else head -c 1024 /dev/urandom >"$key"; fi \
    || abort "cannot create the munge key $key"
  chmod 0600 "$key"
  setsid munged -F --socket="$sock" --key-file="$key" --pid-file="$dir/munge/munged.pid" \
    --seed-file="$dir/munge/munged.seed" </dev/null >"$dir/log/munged.log" 2>&1 &
  echo "munged $!" >"$dir/pids"
  for _ in $(seq 50); do [[ -S "$sock" ]] && break; sleep 0.1; done
  munge -n -S "$sock" | unmunge -S "$sock" >/dev/null || abort "munge self-test failed"

  # slurm.conf: one node named node0 at 127.0.0.1 (no DNS, any hostname), the CPUs `slurmd -C` reports.
  local hw; hw="$(slurmd -C 2>&1)"
  [[ "$hw" == NodeName=* ]] || abort "slurmd -C failed: $(tr '\n' ' ' <<<"$hw")(a sandbox or container without setgroups?)"
  hw="$(head -n 1 <<<"$hw")"
  field() { tr ' ' '\n' <<<"$hw" | awk -F= -v k="$1" '$1 == k { print $2 }'; }
  local node_cpus
  node_cpus="CPUs=$(field CPUs) Sockets=$(field SocketsPerBoard) CoresPerSocket=$(field CoresPerSocket) ThreadsPerCore=$(field ThreadsPerCore)"
  local overrides=""
  if [[ -n "$cpus" ]]; then
    node_cpus="CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1"
    overrides="SlurmdParameters=config_overrides"
  fi
  local mem=$(( $(field RealMemory) * 9 / 10 ))  # declaring more than is there drains the node
  local ctld_port d_port
  for _ in $(seq 50); do
    ctld_port=$(( 20000 + RANDOM % 10000 * 2 )); d_port=$(( ctld_port + 1 ))
    port_in_use "$ctld_port" || port_in_use "$d_port" || break
  done
  cat >"$dir/etc/slurm.conf" <<EOF
# Written by tools/slurm/local_cluster.sh: a private one-node test cluster.
ClusterName=hybridmoe-local
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Schedule batch jobs at once (default: every 3 s).
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
$overrides
ReturnToService=2
InactiveLimit=0
KillWait=5
Waittime=0
# 'sbatch --wait' keeps polling every 2 s only while MinJobAge <= 5.
MinJobAge=5
NodeName=node0 NodeAddr=127.0.0.1 $node_cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=node0 Default=YES MaxTime=INFINITE State=UP
EOF
  # mpi.conf sits next to slurm.conf; it keeps PMIx's per-job directories inside this cluster's directory.
  echo "PMIxCliTmpDirBase=$dir/tmp" >"$dir/etc/mpi.conf"
  export SLURM_CONF="$dir/etc/slurm.conf"

  setsid slurmctld -D -c -f "$SLURM_CONF" </dev/null >"$dir/log/slurmctld.out" 2>&1 &
  echo "slurmctld $!" >>"$dir/pids"
  setsid slurmd -D -c -f "$SLURM_CONF" -N node0 </dev/null >"$dir/log/slurmd.out" 2>&1 &
  echo "slurmd $!" >>"$dir/pids"
  local state="" deadline=$(( SECONDS + ${LOCAL_SLURM_START_TIMEOUT:-30} ))
  while (( SECONDS < deadline )); do
    for b in munged slurmctld slurmd; do
      ours "$(pid_of "$b")" "$b" || abort "$b exited during start-up"
    done
    state="$(sinfo -h -n node0 -o %T 2>/dev/null)"
    [[ "$state" == idle ]] && break
    sleep 0.2
  done
  [[ "$state" == idle ]] || abort "node0 is '$state', not idle, after ${LOCAL_SLURM_START_TIMEOUT:-30} s"
  say "node0 idle ($(field CPUs) CPUs in hardware, ${cpus:-$(field CPUs)} declared; ports $ctld_port/$d_port) in $dir"
  echo "export SLURM_CONF=$SLURM_CONF"
}

case "$cmd" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
esac
