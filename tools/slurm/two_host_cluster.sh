#!/bin/bash
# A two-node Slurm cluster on this machine, on the two simulated hosts of tools/multinode/hosts.sh (network
# namespaces joined by a veth pair, each with its own hostname): slurmctld and `slurmd -N node0` on node0,
# `slurmd -N node1` on node1, one munged (its socket is a file, reachable from both). Each slurmd has a
# private /tmp (PMIx makes /tmp/spmix_appdir_<uid>_<job>.<step> on every node; a shared /tmp collides), so
# DIR must not be under /tmp; it keeps everything (munge key and socket, slurm.conf, state, spool, logs).
#
#   tools/slurm/two_host_cluster.sh start DIR     prints `export SLURM_CONF=...` and `export HYBRIDMOE_HOSTS_DIR=...`
#   tools/slurm/two_host_cluster.sh stop DIR      stops the daemons and deletes the hosts; keeps DIR/log
#
# Clients (sbatch, sinfo, squeue) must run on node0 (`tools/multinode/hosts.sh exec DIR/hosts node0 sbatch ...`):
# the controller listens on node0's address. Root only (ip netns, the daemons and the jobs run as root).
# Pitfalls this avoids: `ip netns exec` remounts /sys (slurmd then finds no cgroup filesystem), so the daemons
# enter the network namespace only (nsenter --net); RealMemory may not exceed what `slurmd -C` reports.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
here="$(cd "$(dirname "$0")" && pwd)"
HOSTS_SH="${HOSTS_SH:-$here/../multinode/hosts.sh}"
die() { echo "two_host_cluster.sh: $*" >&2; exit 1; }
usage="usage: two_host_cluster.sh start|stop DIR"
cmd="${1:-}"; dir="${2:-}"
[[ -n "$dir" ]] || die "$usage"
alive() { [[ -n "$1" && -r /proc/$1/stat ]] && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

do_stop() {
  [[ -d "$dir" ]] || return 0
  dir="$(cd "$dir" && pwd -P)"
  local name pid
  if [[ -f "$dir/pids" ]]; then
    for name in slurmd1 slurmd0 slurmctld munged; do
      pid="$(awk -v n="$name" '$1 == n { print $2 }' "$dir/pids")"
      alive "$pid" || continue
      kill -TERM "$pid" 2>/dev/null
      for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
      alive "$pid" && kill -KILL "$pid" 2>/dev/null
    done
    rm -f "$dir/pids"
  fi
  # Step daemons and job tasks live in the namespaces: hosts.sh down kills what is left there.
  [[ -d "$dir/hosts" ]] && "$HOSTS_SH" down "$dir/hosts"
  return 0
}

do_start() {
  [[ "$(id -u)" == 0 ]] || die "must run as root"
  local b
  for b in munged slurmctld slurmd sbatch srun nsenter unshare; do
    command -v "$b" >/dev/null || die "$b is not installed (apt-get install slurm-wlm munge)"
  done
  mkdir -p "$dir" || die "cannot create $dir"
  dir="$(cd "$dir" && pwd -P)"
  [[ -z "$(ls -A "$dir")" ]] || die "$dir is not empty; give a new or empty DIR"
  [[ "$dir" != /tmp/* ]] || die "$dir is under /tmp, which each slurmd replaces with a private one"
  (( ${#dir} <= 60 )) || die "$dir is longer than 60 characters (UNIX socket paths live in it)"
  local p="$dir"
  while p="$(dirname "$p")"; [[ "$p" != / ]]; do
    (( 0$(stat -c %a "$p") & 1 )) || die "$p is not world-searchable (munged refuses the socket below it)"
  done
  chmod 0755 "$dir"
  mkdir -p "$dir"/{munge,etc,state,log,spool/node0,spool/node1,tmp_node0,tmp_node1} && chmod 0755 "$dir/munge"
  "$HOSTS_SH" up "$dir/hosts" >/dev/null || { do_stop; die "could not create the hosts"; }
  local key="$dir/munge/munge.key" sock="$dir/munge/munge.socket.2"
  head -c 1024 /dev/urandom >"$key" && chmod 0400 "$key"
  setsid munged -F --socket="$sock" --key-file="$key" --pid-file="$dir/munge/munged.pid" \
    --seed-file="$dir/munge/munged.seed" </dev/null >"$dir/log/munged.log" 2>&1 &
  echo "munged $!" >"$dir/pids"
  for _ in $(seq 50); do [[ -S "$sock" ]] && break; sleep 0.1; done
  [[ -S "$sock" ]] || { do_stop; die "munged did not start (see $dir/log/munged.log)"; }
  local hw mem cpus
  hw="$(slurmd -C 2>&1 | head -n 1)"
  mem=$(( $(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw") * 4 / 10 ))  # two nodes share the memory
  cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")"
  cat >"$dir/etc/slurm.conf" <<CONF
# Written by tools/slurm/two_host_cluster.sh: a private two-node test cluster on simulated hosts.
ClusterName=hybridmoe-two
SlurmctldHost=node0($(cat "$dir/hosts/addr.node0"))
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
MinJobAge=5
NodeName=node0 NodeAddr=$(cat "$dir/hosts/addr.node0") CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=node1 NodeAddr=$(cat "$dir/hosts/addr.node1") CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=node0,node1 Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$dir/etc/slurm.conf"
  local ns0 ns1
  ns0="$(cat "$dir/hosts/netns.node0")" ns1="$(cat "$dir/hosts/netns.node1")"
  nsenter --net="/run/netns/$ns0" unshare --uts sh -c "hostname node0; exec setsid slurmctld -D -c -f $SLURM_CONF" \
    </dev/null >"$dir/log/slurmctld.out" 2>&1 &
  echo "slurmctld $!" >>"$dir/pids"
  local i ns
  for i in 0 1; do
    ns="$ns0"; ((i == 1)) && ns="$ns1"
    nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private sh -c \
      "hostname node$i && mount --bind $dir/tmp_node$i /tmp && exec setsid slurmd -D -f $SLURM_CONF -N node$i" \
      </dev/null >"$dir/log/slurmd-node$i.out" 2>&1 &
    echo "slurmd$i $!" >>"$dir/pids"
  done
  local state=""
  for _ in $(seq 150); do
    state="$(nsenter --net="/run/netns/$ns0" sinfo -h -o '%T %D' 2>/dev/null | tr '\n' ' ')"
    [[ "$state" == "idle 2 " ]] && break
    sleep 0.2
  done
  if [[ "$state" != "idle 2 " ]]; then
    for f in "$dir"/log/*; do [[ -s "$f" ]] && { echo "--- $f" >&2; tail -n 10 "$f" >&2; }; done
    do_stop
    die "the nodes are '$state', not 2 idle, after 30 s"
  fi
  echo "two_host_cluster.sh: node0 and node1 idle ($cpus CPUs each) in $dir" >&2
  echo "export SLURM_CONF=$SLURM_CONF"
  echo "export HYBRIDMOE_HOSTS_DIR=$dir/hosts"
}

case "$cmd" in
  start) do_start ;;
  stop) do_stop ;;
  *) die "$usage" ;;
esac
