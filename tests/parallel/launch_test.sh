#!/bin/bash
# Launch checks of ParallelContext::Create through a stand-in main (launch_check):
# a mismatched launch fails before any work with ONE error line (rank 0's), and the topology of a good
# launch is what DESIGN.md says.   launch_test.sh <launch_check binary>
set -uo pipefail
bin="$1"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export TMPDIR="${TEST_TMPDIR:-${TMPDIR:-/tmp}}"
export OMPI_MCA_btl_vader_backing_directory="$TMPDIR"
failures=0
out="$TMPDIR/out.txt"

fail() { echo "FAIL: $*"; echo "--- output:"; cat "$out"; echo "---"; failures=$((failures + 1)); }

# expect_error <description> <expected line> <command...>
expect_error() {
  local what="$1" line="$2"; shift 2
  timeout -k 5 120 "$@" >"$out" 2>&1
  local rc=$?
  if [[ $rc -eq 0 || $rc -eq 124 ]]; then fail "$what: exit status $rc, want a failure"; return; fi
  local n
  n=$(grep -c '^error: ' "$out")
  if [[ "$n" != 1 ]]; then fail "$what: $n error lines, want exactly 1"; return; fi
  if ! grep -qxF "error: $line" "$out"; then fail "$what: missing line 'error: $line'"; return; fi
  echo "ok: $what"
}

expect_error "EP does not divide the world" \
  "parallel.expert_parallel_size (2) must divide the number of ranks (3); valid: 1, 3" \
  mpirun --oversubscribe -np 3 "$bin" --ep=2
expect_error "EP does not divide the experts" \
  "model.moe.num_experts (3) must be divisible by parallel.expert_parallel_size (2); valid sizes here: 1" \
  mpirun --oversubscribe -np 2 "$bin" --ep=2 --experts=3
expect_error "EP > 1 without a launcher" \
  "parallel.expert_parallel_size (2) must divide the number of ranks (1); valid: 1" \
  "$bin" --ep=2
expect_error "srun without MPI wire-up" \
  "launch: srun started 4 tasks (SLURM_STEP_NUM_TASKS=4) without MPI wire-up (no PMIX_RANK), so each would train alone; use srun --mpi=pmix, or mpirun inside the allocation" \
  env SLURM_JOB_ID=7 SLURM_STEP_ID=0 SLURM_STEP_NUM_TASKS=4 SLURM_PROCID=0 "$bin"

# A good launch: EP=2 x DP=2, EP groups of adjacent ranks.
timeout -k 5 120 mpirun --oversubscribe -np 4 "$bin" --ep=2 >"$out" 2>&1
rc=$?
if [[ $rc -ne 0 ]]; then
  fail "EP=2 x DP=2 launch: exit status $rc"
else
  ok=1
  for want in "rank 0 of 4: .*, ep 0/2, dp 0/2, ep group \[0,1\]" "rank 1 of 4: .*, ep 1/2, dp 0/2, ep group \[0,1\]" \
              "rank 2 of 4: .*, ep 0/2, dp 1/2, ep group \[2,3\]" "rank 3 of 4: .*, ep 1/2, dp 1/2, ep group \[2,3\]"; do
    grep -q "^$want\$" "$out" || { fail "EP=2 x DP=2 launch: no line matching '$want'"; ok=0; }
  done
  [[ $ok == 1 ]] && echo "ok: EP=2 x DP=2 topology"
fi
# Mpirun inside a Slurm allocation: every rank inherits SLURM_PROCID=0; ranks must still come from MPI.
timeout -k 5 120 env SLURM_JOB_ID=7 SLURM_PROCID=0 SLURM_NTASKS=2 mpirun --oversubscribe -np 2 "$bin" --ep=2 >"$out" 2>&1
rc=$?
if [[ $rc -ne 0 ]] || ! grep -q "^rank 1 of 2: .*, ep 1/2" "$out"; then
  fail "mpirun inside a Slurm job: exit status $rc"
else
  echo "ok: mpirun inside a Slurm job"
fi

exit $((failures > 0))
