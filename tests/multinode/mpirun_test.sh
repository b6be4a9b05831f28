#!/bin/bash
# The train binary on two simulated hosts (tools/multinode/hosts.sh: network namespaces joined by a veth pair,
# each with its own hostname), mpirun started on node0 with an rsh agent entering node1, 2 ranks per host:
#  1. EP=2 (node-local) x DP=2 (across the hosts) and 2. EP=4 spanning both hosts each reproduce the 1-rank
#     loss curve (loss, lm, lb, z) within 1e-5 relative over 20 steps with the same global batch (16 sequences);
#     the hosts' traffic went through the veth; the run directory's topology.json names both hosts, their ranks
#     and the EP / DP groups;
#  3. EP=4 with router_logit_bias sending every token to node0's experts (node1's ranks compute zero rows):
#     the 1-rank curve with the same bias, within 1e-5, and no hang.
#   mpirun_test.sh <train> <config> <hosts.sh> <rsh.sh>
set -uo pipefail
TRAIN="$(realpath "$1")"; CONFIG="$(realpath "$2")"
source "$(dirname "$0")/lib.sh" "$3" "$4"
need_hosts ep2_dp2_two_hosts ep4_two_hosts ep4_host_starved

run() {  # run NAME RANKS EP ACCUM [extra args]: 1 rank here, 4 ranks over the two hosts
  local name="$1" np="$2" ep="$3" accum="$4"; shift 4
  local launcher=()
  ((np > 1)) && launcher=("${MPIRUN[@]}" -np "$np")
  timeout -k 5 300 "${launcher[@]}" "$TRAIN" --config="$CONFIG" --override="$BASE" \
    --override="parallel { expert_parallel_size: $ep } data { grad_accum_steps: $accum }" \
    --out_dir="$T/$name" --quiet "$@" >"$T/$name.log" 2>&1 || { show "$T/$name.log"; fail "run $name"; }
}
# check_topology RUN EP_GROUPS DP_GROUPS
check_topology() {
  python3 - "$T/$1/topology.json" "$2" "$3" <<'PY' || fail "$1: topology.json"
import json, sys
t = json.load(open(sys.argv[1]))
want = {"world_size": 4, "num_hosts": 2, "launcher": "mpirun",
        "hosts": [{"name": "node0", "ranks": [0, 1]}, {"name": "node1", "ranks": [2, 3]}],
        "ep_groups": json.loads(sys.argv[2]), "dp_groups": json.loads(sys.argv[3])}
for k, v in want.items():
    assert t[k] == v, "%s: %r, expected %r" % (k, t[k], v)
for r in t["ranks"]:
    assert r["host"] == "node%d" % (r["rank"] // 2) and r["local_rank"] == r["rank"] % 2, r
print("hosts %s, EP groups %s, DP groups %s" % (
    ", ".join("%s %s" % (h["name"], h["ranks"]) for h in t["hosts"]), t["ep_groups"], t["dp_groups"]))
PY
}

run one 1 1 4
rx0=$(veth_rx_bytes)
run ep2dp2 4 2 1
rx1=$(veth_rx_bytes)
echo "ok: EP=2 x DP=2 on two hosts vs 1 rank: $(compare "$T/one" "$T/ep2dp2" || fail "ep2dp2 differs from 1 rank")"
echo "ok: topology.json: $(check_topology ep2dp2 "[[0,1],[2,3]]" "[[0,2],[1,3]]")"
(( rx1 - rx0 > 100000 )) || fail "node0's veth received $((rx1 - rx0)) bytes: the hosts did not talk over it"
echo "ok: node0's veth received $((rx1 - rx0)) bytes during the EP=2 x DP=2 run"

run ep4 4 4 1
echo "ok: EP=4 spanning two hosts vs 1 rank: $(compare "$T/one" "$T/ep4" || fail "ep4 differs from 1 rank")"
echo "ok: topology.json: $(check_topology ep4 "[[0,1,2,3]]" "[[0],[1],[2],[3]]")"

# Experts 2 and 3 (EP ranks 2, 3: node1) get no token at all.
STARVE="model { moe { router_logit_bias: [0, 0, -100, -100] } }"
run one_starved 1 1 4 --override="$STARVE"
run ep4_starved 4 4 1 --override="$STARVE"
echo "ok: EP=4 with node1's experts starved vs 1 rank: $(compare "$T/one_starved" "$T/ep4_starved" ||
  fail "ep4_starved differs from 1 rank")"
! compare "$T/one" "$T/one_starved" >/dev/null 2>&1 || fail "router_logit_bias changed nothing"
echo PASS
