#!/bin/bash
# A real Slurm run of tools/slurm/train.sbatch on a one-node cluster started here (munged, slurmctld,
# slurmd via tools/slurm/local_cluster.sh; 2 CPUs, jobs of 2 tasks), compared with plain mpirun:
#  1. srun --mpi=pmix job stopped at step 8, then the same job again: it resumes by itself to step 16;
#  2. LAUNCHER=mpirun job (mpirun inside the allocation), 16 steps straight;
#  3. `mpirun --oversubscribe -np 2` outside Slurm, 16 steps straight;
#  every train/eval record of 1 and 2 equals 3's (1e-6 relative; expected bit for bit), each job's output
#  names 2 ranks (EP 2 x DP 1) and holds no error line; and a job whose training fails ends sbatch --wait
#  with a non-zero status. The cluster is always stopped, and no daemon of it may survive the test.
#    slurm_test.sh <train binary> <train.sbatch> <local_cluster.sh> <config>
set -uo pipefail
abspath() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
TRAIN="$(abspath "$1")"
SBATCH_SCRIPT="$(abspath "$2")"
CLUSTER="$(abspath "$3")"
CONFIG="$(abspath "$4")"
T="${TEST_TMPDIR:-$(mktemp -d)}"
export TMPDIR="$T" OMPI_MCA_btl_vader_backing_directory="$T"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset OMP_NUM_THREADS SLURM_CONF
STEP_TIMEOUT=300
CL=""       # the cluster's directory, once created
waiting=""  # the PID of a running `timeout sbatch --wait`

fail() { echo "FAIL: $*" >&2; exit 1; }
show() { echo "--- $1:" >&2; cat "$1" >&2; echo "---" >&2; }
cleanup() {
  local rc=$?
  trap - EXIT TERM INT
  [[ -n "$waiting" ]] && kill -TERM "$waiting" 2>/dev/null
  [[ -z "$CL" ]] && exit $rc
  "$CLUSTER" stop "$CL"
  if [[ $rc != 0 ]]; then
    for f in "$CL"/log/*.log; do [[ -f "$f" ]] && { echo "--- tail of $f:" >&2; tail -n 25 "$f" >&2; }; done
    [[ -n "${TEST_UNDECLARED_OUTPUTS_DIR:-}" ]] && cp -r "$CL/log" "$TEST_UNDECLARED_OUTPUTS_DIR/slurm_logs"
  fi
  rm -rf "$CL"
  exit $rc
}
trap cleanup EXIT
trap 'echo "slurm_test.sh: interrupted" >&2; exit 143' TERM INT

[[ "$(id -u)" == 0 ]] || fail "needs root: local_cluster.sh runs slurmd and munged as root"
for b in sbatch srun slurmctld slurmd munged mpirun; do
  command -v "$b" >/dev/null || PATH="$PATH:/usr/sbin" command -v "$b" >/dev/null ||
    fail "$b not found; tools/setup.sh installs slurm-wlm, munge and openmpi-bin"
done

# Tiny data (64 KiB of English-like bytes as uint16) and a tiny EP=2 model, 16 steps.
python3 - "$T" <<'PY'
import struct, sys
text = (b"The quick brown fox jumps over the lazy dog. " * 800 +
        b"Sphinx of black quartz, judge my vow. " * 800)
open(sys.argv[1] + "/train.bin", "wb").write(struct.pack("<%dH" % len(text), *text))
open(sys.argv[1] + "/val.bin", "wb").write(struct.pack("<%dH" % 4000, *text[:4000]))
PY
OVERRIDES="data { train { path: \"$T/train.bin\" } validation: \"$T/val.bin\" seq_len: 32 micro_batch_size: 4 }
model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } }
optim { warmup_steps: 4 lr: 1e-2 } train { steps: 16 eval_interval: 8 eval_batches: 2 }
logging { log_interval: 2 } checkpoint { interval: 8 } parallel { expert_parallel_size: 2 num_threads: 1 }"

# The cluster: a private directory under /tmp (short: UNIX sockets live there), random ports.
CL="$(mktemp -d /tmp/hmoe-slurm.XXXXXX)" || fail "mktemp"
t0=$SECONDS
"$CLUSTER" start "$CL" --cpus=2 >"$T/cluster.env" || fail "local_cluster.sh start failed"
source "$T/cluster.env"
echo "ok: cluster up in $((SECONDS - t0)) s: $(sinfo -h -o '%P %D %c %T' 2>&1)"

# submit NAME [VAR=VALUE...]: runs train.sbatch with `sbatch --wait` (2 tasks on the one node);
# sets $job_rc and $job_out (the job's output file; must exist).
submit() {
  local name="$1"; shift
  rm -f "$T/$name".*.out
  local t0=$SECONDS
  env CONFIG="$CONFIG" OVERRIDES="$OVERRIDES" TRAIN_BIN="$TRAIN" "$@" \
    timeout -k 10 "$STEP_TIMEOUT" sbatch --wait --parsable --nodes=1 --ntasks-per-node=2 --time=10 \
    --job-name="$name" --output="$T/$name.%j.out" "$SBATCH_SCRIPT" >"$T/$name.sbatch" 2>&1 &
  waiting=$!
  wait $waiting  # in the background, so that SIGTERM (bazel's timeout) reaches the trap at once
  job_rc=$?
  waiting=""
  [[ $job_rc == 124 || $job_rc == 137 ]] && { cat "$T/$name.sbatch"; squeue; fail "$name: no result within $STEP_TIMEOUT s"; }
  job_out="$(ls "$T/$name".*.out 2>/dev/null | head -n 1)"
  [[ -n "$job_out" ]] || { cat "$T/$name.sbatch"; sinfo -R; fail "$name: the job wrote no output file (launch failure?)"; }
  echo "$name: job $(head -n 1 "$T/$name.sbatch"), sbatch --wait status $job_rc after $((SECONDS - t0)) s"
}
# check_job NAME: status 0, finished, 2 ranks of EP 2, no error lines.
check_job() {
  [[ $job_rc == 0 ]] || { show "$job_out"; fail "$1: sbatch --wait status $job_rc"; }
  grep -q "^\[sbatch\] training finished" "$job_out" || { show "$job_out"; fail "$1: no 'training finished' line"; }
  grep -q "| 2 ranks (EP 2 x DP 1) |" "$job_out" || { show "$job_out"; fail "$1: training did not run on 2 ranks"; }
  if grep -iE "error|fatal|abort|warn|segmentation|killed" "$job_out"; then show "$job_out"; fail "$1: error lines in the job output"; fi
}

submit srun_part1 OUT_DIR="$T/srun" TRAIN_ARGS=--stop_at_step=8
check_job srun_part1
grep -q "stopped at step 8" "$job_out" || { show "$job_out"; fail "srun_part1: did not stop at step 8"; }
grep -q "launcher srun --mpi=pmix" "$job_out" || { show "$job_out"; fail "srun_part1: not launched by srun --mpi=pmix"; }
submit srun_part2 OUT_DIR="$T/srun"
check_job srun_part2
grep -q "resuming from .*step_00000008" "$job_out" || { show "$job_out"; fail "srun_part2: did not resume from step 8"; }
echo "ok: srun --mpi=pmix job stopped at step 8; the resubmitted job resumed by itself"

submit mpirun_job OUT_DIR="$T/mpirun_in_slurm" LAUNCHER=mpirun
check_job mpirun_job
grep -q "launcher mpirun" "$job_out" || { show "$job_out"; fail "mpirun_job: not launched by mpirun"; }
echo "ok: LAUNCHER=mpirun job"

# A failing run (EP 4 does not divide 2 ranks) must fail the job, not look like success.
submit failing OUT_DIR="$T/failing" TRAIN_ARGS="--override=parallel{expert_parallel_size:4}"
[[ $job_rc != 0 ]] || { show "$job_out"; fail "failing: sbatch --wait status 0 for a failed training"; }
grep -q "expert_parallel_size (4)" "$job_out" && grep -q "^\[sbatch\] training failed" "$job_out" ||
  { show "$job_out"; fail "failing: output lacks the error or the 'training failed' line"; }
echo "ok: a failing training fails the job (status $job_rc): $(grep -m1 "expert_parallel_size (4)" "$job_out")"

t0=$SECONDS
"$CLUSTER" stop "$CL" || fail "local_cluster.sh stop failed"
left="$(ps -eo stat=,pid=,args= | awk '$1 !~ /^Z/' | grep -F "$CL" | grep -v grep)"
[[ -z "$left" ]] || fail "processes of the cluster survived stop: $left"
conf="$SLURM_CONF"
unset SLURM_CONF  # so that only the cluster's own processes (step daemons, job tasks) carry it below
for d in /proc/[0-9]*; do
  tr '\0' '\n' 2>/dev/null <"$d/environ" | grep -qxF "SLURM_CONF=$conf" || continue
  [[ "$(awk '{print $3}' "$d/stat" 2>/dev/null)" == Z ]] && continue
  fail "a process of the cluster survived stop: ${d#/proc/} $(tr '\0' ' ' 2>/dev/null <"$d/cmdline")"
done
echo "ok: cluster stopped in $((SECONDS - t0)) s, no process of it left"

# The reference: plain mpirun, no Slurm.
timeout -k 10 "$STEP_TIMEOUT" mpirun --oversubscribe -np 2 "$TRAIN" --config="$CONFIG" --override="$OVERRIDES" \
  --out_dir="$T/mpirun" --quiet >"$T/mpirun.log" 2>&1 || { show "$T/mpirun.log"; fail "mpirun -np 2 run failed"; }

python3 - "$T/mpirun/metrics.jsonl" "$T/srun/metrics.jsonl" "$T/mpirun_in_slurm/metrics.jsonl" <<'PY' ||
import json, sys
TIMING = ("tokens_per_s", "elapsed_s", "router/all_to_all_s")
def records(path):
    rows = [json.loads(l) for l in open(path)]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows if r["kind"] in ("train", "eval")]
ref = records(sys.argv[1])
steps = [(r["kind"], r["step"]) for r in ref]
assert ("train", 16) in steps and ("eval", 16) in steps, steps
for path in sys.argv[2:]:
    got = records(path)
    assert [(r["kind"], r["step"]) for r in got] == steps, (path, [(r["kind"], r["step"]) for r in got], steps)
    worst = 0.0
    for a, b in zip(ref, got):
        assert a.keys() == b.keys(), (path, a["step"], sorted(a.keys() ^ b.keys()))
        for k, x in a.items():
            y = b[k]
            if isinstance(x, float) or isinstance(y, float):
                rel = abs(x - y) / max(abs(x), 1e-12)
                worst = max(worst, rel)
                assert rel <= 1e-6, "%s: %s step %d %s: %r vs mpirun %r" % (path, a["kind"], a["step"], k, y, x)
            else:
                assert x == y, "%s: %s step %d %s: %r vs mpirun %r" % (path, a["kind"], a["step"], k, y, x)
    print("ok: %s: %d records match mpirun -np 2 (worst relative difference %.3g; final loss %.4f)"
          % (path.split("/")[-2], len(got), worst, [r for r in got if r["kind"] == "train"][-1]["loss"]))
PY
  fail "metrics differ from the mpirun run"
echo "PASS"
