#!/bin/bash
# Simulated hosts on one machine, for multi-node tests: each host is a network namespace of its own (its own
# loopback and one end of a veth pair, 198.51.100.<i>/24 from a documentation range) entered together with a
# UTS namespace whose hostname is the host's name, so OpenMPI and Slurm see separate nodes: shared memory
# within a host, TCP over the veth between hosts. The root namespace's links, addresses and routes are never
# touched (the veth pair is created inside the namespaces), and the namespace names carry this run's PID and
# a random part, so two runs at once cannot collide.
#
#   hosts.sh check                     exit 0 when the kernel lets us make network namespaces (else the reason)
#   hosts.sh up DIR                    two hosts, node0 (198.51.100.1) and node1 (198.51.100.2), joined by a
#                                      veth pair; DIR (new or empty) keeps their state (namespace names)
#   hosts.sh down DIR                  SIGKILLs every process left in the namespaces, deletes them
#   hosts.sh exec DIR HOST CMD...      runs CMD "on" HOST: in its network namespace, with its hostname
#   hosts.sh cut DIR HOST              cuts HOST off: its veth goes down inside its namespace
#   hosts.sh pids DIR HOST             PIDs of the processes in HOST's network namespace
#   hosts.sh addr DIR HOST             HOST's address on the veth
#
# mpirun must itself run on one of the hosts (`hosts.sh exec DIR node0 mpirun ...`): the daemons on the other
# hosts cannot reach the root namespace. Its rsh agent is tools/multinode/rsh.sh (absolute path), which finds
# the hosts through HYBRIDMOE_HOSTS_DIR=DIR. Needs root (ip netns), nsenter and unshare (util-linux), ip
# (iproute2). Only namespaces created by `up` (recorded in DIR) are ever entered, cut or deleted.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
die() { echo "hosts.sh: $*" >&2; exit 1; }
usage="usage: hosts.sh check | up DIR | down DIR | exec DIR HOST CMD... | cut DIR HOST | pids DIR HOST | addr DIR HOST"

ns_of() {  # ns_of DIR HOST
  [[ -f "$1/netns.$2" ]] || die "$2 is not a host of $1 (hosts: $(cat "$1/hosts" 2>/dev/null))"
  cat "$1/netns.$2"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  check)
    [[ "$(id -u)" == 0 ]] || { echo "not root: ip netns needs root"; exit 1; }
    for b in ip nsenter unshare; do command -v "$b" >/dev/null || { echo "$b is not installed"; exit 1; }; done
    # A namespace of our own that nobody else sees: can we make it, and a veth inside it?
    out="$(unshare --net --uts sh -c 'ip link add hmchk0 type veth peer name hmchk1 && hostname hmchk' 2>&1)" ||
      { echo "the kernel refuses network/UTS namespaces or veth pairs: $out"; exit 1; }
    exit 0
    ;;
  up)
    dir="${1:?$usage}"
    [[ "$(id -u)" == 0 ]] || die "must run as root (ip netns)"
    mkdir -p "$dir" || die "cannot create $dir"
    [[ -z "$(ls -A "$dir")" ]] || die "$dir is not empty; give a new or empty DIR"
    tag="hm$$r$RANDOM" hosts=()
    for i in 0 1; do
      ns="${tag}n$i"
      ip netns add "$ns" || { "$0" down "$dir"; die "ip netns add $ns failed"; }
      echo "$ns" >"$dir/netns.node$i"
      hosts+=("node$i")
      echo "${hosts[*]}" >"$dir/hosts"  # so that down can delete what exists so far
      ip -n "$ns" link set lo up
      echo "198.51.100.$((i + 1))" >"$dir/addr.node$i"
      echo "veth$i" >"$dir/link.node$i"
    done
    a="$(cat "$dir/netns.node0")" b="$(cat "$dir/netns.node1")"
    # Created inside the namespaces: the root namespace never sees the pair.
    ip -n "$a" link add veth0 type veth peer name veth1 netns "$b" &&
      ip -n "$a" addr add 198.51.100.1/24 dev veth0 && ip -n "$b" addr add 198.51.100.2/24 dev veth1 &&
      ip -n "$a" link set veth0 up && ip -n "$b" link set veth1 up ||
      { "$0" down "$dir"; die "cannot create the veth pair between $a and $b"; }
    echo "export HYBRIDMOE_HOSTS_DIR=$(cd "$dir" && pwd)"
    ;;
  down)
    dir="${1:?$usage}"
    [[ -f "$dir/hosts" ]] || exit 0
    for host in $(cat "$dir/hosts"); do
      ns="$(cat "$dir/netns.$host" 2>/dev/null)" || continue
      ip netns list | grep -qw "$ns" || continue
      # Our own namespace: whatever runs in it was started by this harness's user.
      for _ in 1 2 3; do
        pids="$(ip netns pids "$ns" 2>/dev/null)"
        [[ -z "$pids" ]] && break
        kill -KILL $pids 2>/dev/null
        sleep 0.2
      done
      ip netns del "$ns" || echo "hosts.sh: could not delete namespace $ns" >&2
    done
    rm -f "$dir/hosts"
    ;;
  exec)
    dir="${1:?$usage}"; host="${2:?$usage}"; shift 2
    (($#)) || die "$usage"
    ns="$(ns_of "$dir" "$host")" || exit 1
    # nsenter --net only (ip netns exec would also remount /sys, which slurmd needs as it is).
    exec nsenter --net="/run/netns/$ns" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$host" "$@"
    ;;
  cut)
    dir="${1:?$usage}"; host="${2:?$usage}"
    ns="$(ns_of "$dir" "$host")" || exit 1
    ip -n "$ns" link set "$(cat "$dir/link.$host")" down
    ;;
  pids)
    dir="${1:?$usage}"; host="${2:?$usage}"
    ns="$(ns_of "$dir" "$host")" || exit 1
    ip netns pids "$ns"
    ;;
  addr)
    dir="${1:?$usage}"; host="${2:?$usage}"
    ns_of "$dir" "$host" >/dev/null || exit 1
    cat "$dir/addr.$host"
    ;;
  *) die "$usage" ;;
esac
