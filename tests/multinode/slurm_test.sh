#!/bin/bash
# Slurm across two simulated hosts: tools/slurm/two_host_cluster.sh starts slurmctld + slurmd on node0 and a
# slurmd on node1 (network namespaces joined by a veth pair, each with its own hostname and /tmp). Then
# `sbatch --nodes=2 --ntasks-per-node=2 tools/slurm/train.sbatch` (srun --mpi=pmix) trains EP=2 x DP=2 for 8
# steps; every train record (loss, lm, lb, z) equals mpirun's on the same two hosts (1e-6 relative; expected
# bit for bit), its topology.json names node0 with ranks 0-1 and node1 with 2-3 (local ranks from MPI's
# shared-memory split: srun sets no OMPI_COMM_WORLD_LOCAL_RANK), and the job output says 4 ranks, EP 2 x DP 2.
# Kept cheap (8 steps): the cluster's start and the job cost a few seconds each.
#   slurm_test.sh <train> <config> <hosts.sh> <rsh.sh> <train.sbatch> <two_host_cluster.sh>
set -uo pipefail
TRAIN="$(realpath "$1")"; CONFIG="$(realpath "$2")"
SBATCH_SCRIPT="$(realpath "$5")"; CLUSTER="$(realpath "$6")"
source "$(dirname "$0")/lib.sh" "$3" "$4"
export HOSTS_SH="$HOSTS"
unset SLURM_CONF
CL=""
cleanup() {
  local rc=$?
  trap - EXIT
  if [[ -n "$CL" ]]; then
    [[ $rc != 0 ]] && for f in "$CL"/log/*.log; do [[ -f "$f" ]] && { echo "--- tail of $f:" >&2; tail -n 15 "$f" >&2; }; done
    "$CLUSTER" stop "$CL"
    rm -rf "$CL"
  fi
  exit $rc
}
if ! why="$("$HOSTS" check 2>&1)"; then
  skip_all "two simulated hosts need network namespaces: $why" slurm_two_hosts
  exit 0
fi
for b in sbatch srun slurmctld slurmd munged; do
  command -v "$b" >/dev/null || PATH="$PATH:/usr/sbin" command -v "$b" >/dev/null ||
    fail "$b not found; tools/setup.sh installs slurm-wlm and munge"
done
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 143' TERM INT
# Not under /tmp: each slurmd gets a private /tmp.
CL="$(mktemp -d /var/tmp/hmoe2h.XXXXXX)" || fail "mktemp"
rmdir "$CL"
t0=$SECONDS
"$CLUSTER" start "$CL" >"$T/cluster.env" || fail "two_host_cluster.sh start failed"
source "$T/cluster.env"
H="$HYBRIDMOE_HOSTS_DIR"
set_mpirun
echo "ok: two-node cluster up in $((SECONDS - t0)) s: $(on_host node0 sinfo -h -o '%P %D %T %N' 2>&1)"

# Each slurmd has a private /tmp: what the job reads must not live there (a checkout under /tmp, as in a CI
# clone, would hide configs/tiny.textproto from the job). The config goes into the test's directory.
cp "$CONFIG" "$T/config.textproto" || fail "copy the config"
CONFIG="$T/config.textproto"
for f in "$T" "$TRAIN"; do
  [[ "$f" != /tmp/* ]] || fail "$f is under /tmp, which the simulated hosts' slurmd replace with a private one"
done

# One override (train.sbatch takes one): lib.sh's tiny model, EP=2 x DP=2, 8 steps.
RUN="data { train { path: \"$T/train.bin\" } validation: \"\" seq_len: 32 micro_batch_size: 4 grad_accum_steps: 1 }
model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } }
optim { warmup_steps: 3 lr: 1e-2 } parallel { num_threads: 1 timeout_s: 60 expert_parallel_size: 2 }
train { steps: 8 } logging { log_interval: 1 } checkpoint { interval: 4 }"
t0=$SECONDS
( cd "$T" && on_host node0 env CONFIG="$CONFIG" OVERRIDES="$RUN" TRAIN_BIN="$TRAIN" OUT_DIR="$T/srun" \
    timeout -k 10 300 sbatch --wait --parsable --nodes=2 --ntasks-per-node=2 --time=10 --job-name=two_hosts \
    --output="$T/srun.%j.out" "$SBATCH_SCRIPT" >"$T/sbatch.log" 2>&1 )
rc=$?
out="$(ls "$T"/srun.*.out 2>/dev/null | head -n 1)"
[[ -n "$out" ]] || { show "$T/sbatch.log"; fail "the job wrote no output (sbatch status $rc)"; }
[[ $rc == 0 ]] || { show "$out"; fail "sbatch --wait status $rc"; }
grep -q "^\[sbatch\] training finished" "$out" || { show "$out"; fail "no 'training finished' line"; }
grep -q "launcher srun --mpi=pmix" "$out" || { show "$out"; fail "not launched by srun --mpi=pmix"; }
grep -q "4 tasks on 2 node(s)" "$out" || { show "$out"; fail "the job did not get 4 tasks on 2 nodes"; }
grep -q "| 4 ranks (EP 2 x DP 2) |" "$out" || { show "$out"; fail "training did not run on 4 ranks, EP 2 x DP 2"; }
echo "ok: sbatch --nodes=2 --ntasks-per-node=2 job $(head -n 1 "$T/sbatch.log") finished in $((SECONDS - t0)) s"
python3 - "$T/srun/topology.json" <<'PY' || fail "topology.json of the srun job"
import json, sys
t = json.load(open(sys.argv[1]))
assert t["launcher"].startswith("srun"), t["launcher"]
assert t["hosts"] == [{"name": "node0", "ranks": [0, 1]}, {"name": "node1", "ranks": [2, 3]}], t["hosts"]
assert t["ep_groups"] == [[0, 1], [2, 3]] and t["dp_groups"] == [[0, 2], [1, 3]], t
print("ok: topology.json: launcher %r, hosts %s" % (t["launcher"], t["hosts"]))
PY

# The same run under mpirun on the same two hosts (outside Slurm).
timeout -k 5 300 "${MPIRUN[@]}" -np 4 "$TRAIN" --config="$CONFIG" --override="$RUN" --out_dir="$T/mpirun" \
  --quiet >"$T/mpirun.log" 2>&1 || { show "$T/mpirun.log"; fail "mpirun on the two hosts failed"; }
echo "ok: srun --mpi=pmix on two hosts vs mpirun on two hosts: $(compare "$T/mpirun" "$T/srun" 1e-6 ||
  fail "the Slurm job's losses differ from mpirun's")"
echo PASS
