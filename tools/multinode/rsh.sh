#!/bin/sh
# mpirun's rsh agent for the simulated hosts of tools/multinode/hosts.sh: `rsh.sh [ssh options] HOST CMD...`
# runs CMD on HOST (its network namespace and hostname) instead of logging in over ssh. The hosts come from
# HYBRIDMOE_HOSTS_DIR (the DIR of `hosts.sh up`). Use it with an absolute path:
#   hosts.sh exec DIR node0 mpirun --host node0:2,node1:2 --mca plm_rsh_agent /abs/tools/multinode/rsh.sh ...
while [ $# -gt 0 ]; do
  case "$1" in
    -o|-p|-l|-i) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
host=$1
shift
dir=${HYBRIDMOE_HOSTS_DIR:?rsh.sh: HYBRIDMOE_HOSTS_DIR is not set (the DIR of tools/multinode/hosts.sh up)}
[ -f "$dir/netns.$host" ] || { echo "rsh.sh: $host is not a simulated host of $dir" >&2; exit 255; }
exec nsenter --net="/run/netns/$(cat "$dir/netns.$host")" unshare --uts \
  /bin/sh -c 'hostname "$0" && exec /bin/sh -c "$1"' "$host" "$*"
