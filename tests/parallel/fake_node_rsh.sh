#!/bin/sh
# An rsh/ssh stand-in for mpirun's plm_rsh_agent that starts the "remote" daemon on this machine, in its
# own UTS namespace whose hostname is the requested host: OpenMPI then sees separate nodes (shared memory
# inside a node, TCP between nodes), as on a real cluster. Usage (by mpirun): fake_node_rsh.sh [opts] HOST CMD...
while [ $# -gt 0 ]; do
  case "$1" in
    -o|-p|-l|-i) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
host=$1
shift
if unshare --uts true 2>/dev/null; then
  exec unshare --uts /bin/sh -c 'hostname "$0" && exec /bin/sh -c "$1"' "$host" "$*"
fi
exec unshare --user --map-root-user --uts /bin/sh -c 'hostname "$0" && exec /bin/sh -c "$1"' "$host" "$*"
