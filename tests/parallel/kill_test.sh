#!/bin/bash
# A rank that dies (SIGKILL) or stops answering (SIGSTOP) mid-collective must not leave the others hanging:
# mpirun must end non-zero, well before the outer limit, with a message naming the failure.
#   kill_test.sh <kill_test binary> <np> <mode: kill|hang|none> <timeout_s> <where: alltoall|allreduce>
#                <regexp of the operation named in the timeout line> [mpirun options...]
set -uo pipefail
bin="$1"; np="$2"; mode="$3"; timeout_s="$4"; where="$5"; op="$6"; shift 6
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export TMPDIR="${TEST_TMPDIR:-${TMPDIR:-/tmp}}"
export OMPI_MCA_btl_vader_backing_directory="$TMPDIR"
export OMP_NUM_THREADS=1
out="$TMPDIR/out.txt"
limit=120
start=$SECONDS
timeout -k 5 "$limit" mpirun --oversubscribe -np "$np" "$@" "$bin" --mode="$mode" --where="$where" \
  --timeout="$timeout_s" >"$out" 2>&1
rc=$?
elapsed=$((SECONDS - start))
echo "mode $mode at the $where: mpirun exit status $rc after ${elapsed}s"

fail() { echo "FAIL: $*"; echo "--- output:"; cat "$out"; echo "---"; exit 1; }

# (mpirun itself exits 137 when a rank died of SIGKILL, so the hang check looks at the clock.)
if [[ $elapsed -ge $limit ]]; then fail "the job hung until the ${limit}s limit"; fi
case "$mode" in
  none)
    [[ $rc -eq 0 ]] || fail "exit status $rc, want 0"
    grep -q "^all $np ranks finished$" "$out" || fail "no completion line"
    ;;
  kill)
    [[ $rc -ne 0 ]] || fail "exit status 0 after a rank was killed"
    # OpenMPI 4.1: "mpirun noticed that process rank 1 with PID ... exited on signal 9 (Killed)."
    grep -q "process rank 1 with PID .* exited on signal 9" "$out" || fail "no message naming the killed rank"
    ;;
  hang)
    [[ $rc -ne 0 ]] || fail "exit status 0 after a rank stopped answering"
    pattern="^rank [0-9]+: ${op} did not complete within ${timeout_s} s; rank 1 is unresponsive or dead$"
    grep -Eq "$pattern" "$out" || fail "no line matching '$pattern'"
    if grep -E "^rank [0-9]+: .* did not complete" "$out" | grep -q "^rank 1:"; then fail "the stopped rank reported"; fi
    ;;
  stuck_cleanup)
    [[ $rc -ne 0 ]] || fail "exit status 0 after a rank failed"
    grep -q "^rank 1: test failure: with a cleanup that never returns$" "$out" || fail "no failure line before the cleanup"
    # Fail's 20 s alarm, not the ${limit}s limit, must end the stuck rank.
    [[ $elapsed -le 60 ]] || fail "took ${elapsed}s: the alarm was not armed before the cleanup"
    ;;
  *) fail "unknown mode $mode" ;;
esac
echo "ok"
grep -E "^rank [0-9]+: " "$out" || true
