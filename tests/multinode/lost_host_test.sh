#!/bin/bash
# A lost host: the train binary runs EP=4 over two simulated hosts (every step crosses them), and node1 is
# lost, either every rank on it SIGKILLed (MODE kill) or its link cut (MODE cut: its veth goes down inside
# its namespace), either mid-run after a few checkpoints (WHEN step) or as soon as its ranks exist, while
# MPI and the communicators start up (WHEN startup). The ranks on node0 must exit within parallel.timeout_s
# plus a margin, the job must fail (mpirun non-zero), the output must name the lost ranks (2 and 3, or node1)
# or, at start-up, the stage that never finished, and every checkpoint on disk must match its MANIFEST.json.
# Prints the measured times (lost host -> node0's ranks gone -> mpirun gone).
#   lost_host_test.sh <train> <config> <hosts.sh> <rsh.sh> <verify_checkpoints.py> kill|cut step|startup
set -uo pipefail
TRAIN="$(realpath "$1")"; CONFIG="$(realpath "$2")"; VERIFY="$(realpath "$5")"; MODE="$6"; WHEN="$7"
source "$(dirname "$0")/lib.sh" "$3" "$4"
need_hosts "lost_host_${MODE}_${WHEN}"
TIMEOUT_S=10
MARGIN_S=15
# A cut at start-up: mpirun's keepalive (lib.sh) could end the job before the ranks' start-up deadline; here it
# is 60 s, so that what is tested is the ranks' own deadline (parallel/context.cc's start-up watchdog).
[[ "$MODE" == cut && "$WHEN" == startup ]] && export OMPI_MCA_oob_tcp_keepalive_time=60

train_pids() { for p in $("$HOSTS" pids "$H" "$1"); do [[ "$(cat /proc/$p/comm 2>/dev/null)" == train ]] && echo "$p"; done; }
now() { date +%s.%N; }
steps_done() {  # train records in the run's metrics.jsonl so far
  python3 -c "import json, sys; print(sum(json.loads(l).get('kind') == 'train' for l in open(sys.argv[1]) if l.strip()))" \
    "$out/metrics.jsonl" 2>/dev/null || echo 0
}
since() { python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$2"; }

out="$T/run"
timeout -k 5 300 "${MPIRUN[@]}" -np 4 \
  "$TRAIN" --config="$CONFIG" --override="$BASE" \
  --override="parallel { expert_parallel_size: 4 timeout_s: $TIMEOUT_S } data { grad_accum_steps: 1 }
              train { steps: 100000 } checkpoint { interval: 4 keep_last: 3 }" \
  --out_dir="$out" >"$T/run.log" 2>&1 &
job=$!

deadline=$((SECONDS + 120))
if [[ "$WHEN" == step ]]; then  # after the checkpoint of step 8, mid-run
  until (( $(steps_done) >= 10 )); do
    kill -0 $job 2>/dev/null || { show "$T/run.log"; fail "the run ended before node1 was lost"; }
    ((SECONDS < deadline)) || { show "$T/run.log"; fail "no 10 steps within 120 s"; }
    sleep 0.1
  done
else  # as soon as node1's ranks exist: before or while MPI and the communicators start
  until [[ -n "$(train_pids node1)" ]]; do
    kill -0 $job 2>/dev/null || { show "$T/run.log"; fail "the run ended before node1 was lost"; }
    ((SECONDS < deadline)) || { show "$T/run.log"; fail "node1's ranks did not start within 120 s"; }
    sleep 0.02
  done
fi
survivors="$(train_pids node0)"
[[ -n "$survivors" ]] || fail "no rank on node0"
t0=$(now)
if [[ "$MODE" == kill ]]; then
  kill -KILL $(train_pids node1)
else
  "$HOSTS" cut "$H" node1 || fail "could not cut node1's link"
fi
echo "node1 lost ($MODE, $WHEN) after $(steps_done) steps"
while :; do
  left=""
  for p in $survivors; do kill -0 "$p" 2>/dev/null && [[ "$(cat /proc/$p/comm 2>/dev/null)" == train ]] && left+=" $p"; done
  [[ -z "$left" ]] && break
  (( $(since "$t0" "$(now)" | cut -d. -f1) < 120 )) || break
  sleep 0.05
done
t_ranks=$(now)
# mpirun itself: after a cut at start-up (its daemon on node1 may never have reported back) OpenMPI 4.1.4's
# mpirun stays in its abort however its keepalive and start-up timeouts are set (measured: still there after
# 5 minutes); that case notes it and ends mpirun after the margin, every other case requires mpirun to end.
mpirun_bound=$((TIMEOUT_S + MARGIN_S + 10))
while kill -0 $job 2>/dev/null && (( $(since "$t0" "$(now)" | cut -d. -f1) < mpirun_bound )); do sleep 0.1; done
# After a cut mid-run, mpirun can also hang in its own abort once the ranks on node0 are gone: its daemon logs
# "ORTE_ERROR_LOG: Data unpack would read past end of buffer in file .../orte/util/show_help.c" and stays
# (2 of 18 runs hung on 2026-12-02; the one with a log: ranks gone after 10 s, mpirun segfaulted on SIGTERM). That OpenMPI
# defect is noted and mpirun ended; any other mpirun still alive is a failure.
mpirun_stuck="" mpirun_excused=""
if kill -0 $job 2>/dev/null; then
  if [[ "$MODE" == cut && "$WHEN" == startup ]]; then
    echo "note: mpirun still runs $mpirun_bound s after the cut, its ranks on node0 gone; ending it (SIGTERM)"
    mpirun_excused=1
  elif [[ "$MODE" == cut && -z "$left" ]] && grep -q "ORTE_ERROR_LOG: .*show_help\.c" "$T/run.log"; then
    echo "note: mpirun hangs in its abort (its show_help unpack error) $mpirun_bound s after the cut, its ranks on" \
      "node0 gone; ending it (SIGTERM)"
    mpirun_excused=1
  else  # a failure, reported below with the run's log (without this the test waited into Bazel's timeout)
    mpirun_stuck="mpirun still ran $mpirun_bound s after node1 was lost (ranks left on node0:${left:- none})"
    echo "$mpirun_stuck; ending it"
  fi
  kill -TERM $job
  for _ in $(seq 50); do kill -0 $job 2>/dev/null || break; sleep 0.1; done
  kill -KILL $job 2>/dev/null
fi
wait $job
rc=$?
t_job=$(now)
echo "node0's ranks gone $(since "$t0" "$t_ranks") s after the loss, mpirun $(since "$t0" "$t_job") s (status $rc)" \
  "(parallel.timeout_s $TIMEOUT_S)"
[[ -z "$left" ]] || { show "$T/run.log"; fail "node0's ranks$left still ran 120 s after node1 was lost"; }
[[ -z "$mpirun_stuck" ]] || { show "$T/run.log"; fail "$mpirun_stuck"; }
# (137: mpirun's own status when a rank died of SIGKILL; a `timeout` expiry is caught by the time check below.)
[[ $rc != 0 ]] || { show "$T/run.log"; fail "mpirun exit status 0"; }
python3 -c "import sys; sys.exit(float(sys.argv[1]) > float(sys.argv[2]))" "$(since "$t0" "$t_ranks")" \
  $((TIMEOUT_S + MARGIN_S)) || { show "$T/run.log"; fail "node0's ranks took longer than $TIMEOUT_S + $MARGIN_S s"; }
[[ -n "$mpirun_excused" ]] ||
  python3 -c "import sys; sys.exit(float(sys.argv[1]) > float(sys.argv[2]))" "$(since "$t0" "$t_job")" $((mpirun_bound + 1)) ||
  { show "$T/run.log"; fail "mpirun took longer than $mpirun_bound s"; }
# The ranks' own line ("ranks 2, 3 are unresponsive or dead") or mpirun's, whichever spoke first: "process rank
# 2 ... on node node1 exited on signal 9" for a kill, "Remote daemon: ... on node node1" when its keepalive
# noticed the cut first (topology.json says which ranks node1 held).
named="$(grep -E "ranks? ([0-9]+, )*[23]\b.*(unresponsive|dead)|process rank [23] .*node1|Remote daemon:.* on node node1|start-up did not complete" "$T/run.log" | head -n 2)"
if [[ "$MODE" == cut && "$WHEN" == startup ]]; then  # the ranks' own start-up deadline must have spoken
  named="$(grep -E "^rank [01]: launch: start-up" "$T/run.log" | head -n 2)"
fi
[[ -n "$named" ]] || { show "$T/run.log"; fail "the output names neither the lost ranks nor the start-up stage"; }
echo "ok: the job's output says: $(head -n 1 <<<"$named")"
if [[ "$WHEN" == step ]]; then
  "$VERIFY" "$out" 2 || fail "a checkpoint is damaged"
  echo "ok: every checkpoint matches its MANIFEST.json"
else
  (( $(steps_done) == 0 )) || echo "note: training had started before node1 was lost"
  [[ ! -d "$out/checkpoints" ]] || "$VERIFY" "$out" 0 || fail "a checkpoint is damaged"
fi
echo PASS
