#!/bin/bash
# Two simulated nodes of two ranks each (fake_node_rsh.sh): node-local EP groups under block and
# round-robin placement, the EP=2 x DP=2 gradient / loss-curve tests with DP traffic over TCP, and a rank
# on the other node dying or stopping mid-collective.
#   multinode_test.sh <launch_check> <context_test_bin> <kill_test_bin>
set -uo pipefail
launch_check="$(realpath "$1")"; context_test="$(realpath "$2")"; kill_test="$(realpath "$3")"
agent="$(realpath "$(dirname "$0")/fake_node_rsh.sh")"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export TMPDIR="${TEST_TMPDIR:-${TMPDIR:-/tmp}}"
export OMPI_MCA_plm_rsh_agent="$agent"
export OMP_NUM_THREADS=1
out="$TMPDIR/out.txt"
failures=0
fail() { echo "FAIL: $*"; echo "--- output:"; cat "$out"; echo "---"; failures=$((failures + 1)); }

# check_layout <mpirun placement flags> -- <expected line regexps...>
check_layout() {
  local what="$1"; shift
  local flags=()
  while [[ "$1" != "--" ]]; do flags+=("$1"); shift; done
  shift
  timeout -k 5 120 mpirun -np 4 --host nodeA:2,nodeB:2 "${flags[@]}" "$launch_check" --ep=2 >"$out" 2>&1
  local rc=$?
  if [[ $rc -ne 0 ]]; then fail "$what: exit status $rc"; return; fi
  for want in "$@"; do
    grep -q "^$want\$" "$out" || { fail "$what: no line matching '$want'"; return; }
  done
  echo "ok: $what"
}

check_layout "block placement" -- \
  "rank 0 of 4: node nodeA, local 0/2, ep 0/2, dp 0/2, ep group \[0,1\]" \
  "rank 1 of 4: node nodeA, local 1/2, ep 1/2, dp 0/2, ep group \[0,1\]" \
  "rank 2 of 4: node nodeB, local 0/2, ep 0/2, dp 1/2, ep group \[2,3\]" \
  "rank 3 of 4: node nodeB, local 1/2, ep 1/2, dp 1/2, ep group \[2,3\]"
check_layout "round-robin placement (--map-by node)" --map-by node -- \
  "rank 0 of 4: node nodeA, local 0/2, ep 0/2, dp 0/2, ep group \[0,2\]" \
  "rank 2 of 4: node nodeA, local 1/2, ep 1/2, dp 0/2, ep group \[0,2\]" \
  "rank 1 of 4: node nodeB, local 0/2, ep 0/2, dp 1/2, ep group \[1,3\]" \
  "rank 3 of 4: node nodeB, local 1/2, ep 1/2, dp 1/2, ep group \[1,3\]"

# Gradients and the 20-step loss curve across the two nodes (skipping the single-node topology test).
timeout -k 5 240 mpirun -np 4 --host nodeA:2,nodeB:2 "$context_test" --ep=2 \
  --gtest_filter=-ParallelContext.TopologyFromMpi >"$out" 2>&1
rc=$?
if [[ $rc -ne 0 ]]; then fail "EP=2 x DP=2 across two nodes: exit status $rc"; else echo "ok: EP=2 x DP=2 across two nodes"; fi

# Rank 1 lives on nodeB (--map-by node), the survivors talk to it over TCP.
kill_script="$(dirname "$0")/kill_test.sh"
"$kill_script" "$kill_test" 4 kill 3 alltoall "" --host nodeA:2,nodeB:2 --map-by node || failures=$((failures + 1))
"$kill_script" "$kill_test" 4 hang 3 allreduce "sum of metrics over ranks" --host nodeA:2,nodeB:2 --map-by node ||
  failures=$((failures + 1))
exit $((failures > 0))
