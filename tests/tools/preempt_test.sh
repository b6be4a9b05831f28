#!/bin/bash
# Stop signals through the real binary (tools/trainer.h): a run that receives SIGUSR1 or SIGTERM at a random
# step writes a checkpoint at the next step boundary and exits with status 75; --resume then finishes it with
# the losses of an uninterrupted run, bit for bit.
#  1. mpirun -np 2, EP=2: SIGUSR1 to mpirun (which forwards it to both ranks).
#  2. mpirun -np 2, EP=2: SIGUSR1 to rank 1 only: both ranks still stop at the same step.
#  3. One process: SIGTERM.
# Prints the time from the signal to the checkpoint's MANIFEST.json and to the exit.
set -uo pipefail
TRAIN="$1"
CONFIG="$2"
MAKE_TOKENS="$3"
LOSSES="$(dirname "$MAKE_TOKENS")/losses.py"
T="${TEST_TMPDIR:-$(mktemp -d)}"
export TMPDIR="$T" OMPI_MCA_btl_vader_backing_directory="$T"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset TEST_PREMATURE_EXIT_FILE XML_OUTPUT_FILE
fail() { echo "FAIL: $*" >&2; exit 1; }

python3 "$MAKE_TOKENS" slice /usr/share/common-licenses/GPL-3 "$T/train.bin" || fail "make_tokens"
STEPS=150
BASE="data { train { path: \"$T/train.bin\" } validation: \"\" seq_len: 32 micro_batch_size: 4 }
model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } }
optim { warmup_steps: 5 lr: 1e-2 } parallel { num_threads: 1 timeout_s: 60 }
train { steps: $STEPS eval_interval: 0 } logging { log_interval: 1 } checkpoint { interval: 0 save_final: false }"
EP2="parallel { expert_parallel_size: 2 }"
losses() { python3 "$LOSSES" --train_only "$1"; }  # the train records without timing fields
last_step() { python3 -c "
import json, sys
s = 0
for l in open(sys.argv[1]):
    try: r = json.loads(l)
    except ValueError: continue
    if r.get('kind') == 'train': s = r['step']
print(s)" "$1" 2>/dev/null || echo 0; }
now() { date +%s.%N; }
mtime() { python3 -c "import os, sys; print('%.3f' % os.stat(sys.argv[1]).st_mtime)" "$1"; }

MPI=(timeout 300 mpirun --oversubscribe -np 2)
"${MPI[@]}" "$TRAIN" --config="$CONFIG" --override="$BASE" --override="$EP2" --out_dir="$T/ref2" --quiet \
  >"$T/ref2.log" 2>&1 || { cat "$T/ref2.log"; fail "uninterrupted 2-rank run"; }
timeout 300 "$TRAIN" --config="$CONFIG" --override="$BASE" --out_dir="$T/ref1" --quiet >"$T/ref1.log" 2>&1 \
  || { cat "$T/ref1.log"; fail "uninterrupted 1-rank run"; }

# interrupt NAME SIGNAL TARGET LAUNCHER...: start the run, wait for a random step, send SIGNAL to TARGET
# (launcher: the launched process; rank1: the second rank only), expect exit 75 and a checkpoint.
interrupt() {
  local name="$1" sig="$2" target="$3"
  shift 3
  local dir="$T/$name" at=$((RANDOM % 60 + 10))
  "$@" --out_dir="$dir" --quiet >"$T/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 3000); do
    [[ -f "$dir/metrics.jsonl" ]] && (($(last_step "$dir/metrics.jsonl") >= at)) && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.01
  done
  local to=$pid
  if [[ $target == rank1 ]]; then
    to="$(pgrep -P "$(pgrep -P $pid -x mpirun || echo $pid)" -f "$TRAIN" | sort -n | tail -1)"
    [[ -n "$to" ]] || fail "$name: no rank process under mpirun"
  elif [[ $target == launcher ]]; then
    to="$(pgrep -P $pid -x mpirun || pgrep -P $pid -f "$TRAIN" | head -1)"  # under `timeout`
  fi
  local seen sent
  seen=$(last_step "$dir/metrics.jsonl")
  sent=$(now)
  kill -"$sig" "$to" || fail "$name: kill -$sig $to"
  wait $pid
  local rc=$? exited
  exited=$(now)
  [[ $rc == 75 ]] || { cat "$T/$name.log"; fail "$name: exit status $rc, want 75"; }
  local stop
  stop=$(grep -o "SIG[A-Z0-9]*: stopped at step [0-9]*" "$T/$name.log" | grep -o "[0-9]*$")
  [[ -n "$stop" ]] && grep -q "^\[train\] SIG$sig: stopped at step $stop with checkpoint $dir/checkpoints/step_0*$stop (written in .* s); exit status 75, continue with --resume$" "$T/$name.log" \
    || { cat "$T/$name.log"; fail "$name: stop line"; }
  ((stop >= seen && stop < STEPS)) || fail "$name: stopped at step $stop, signal sent after step $seen"
  local manifest
  manifest="$dir/checkpoints/$(printf 'step_%08d' "$stop")/MANIFEST.json"
  [[ -f "$manifest" ]] || fail "$name: no checkpoint at step $stop: $(ls "$dir/checkpoints")"
  grep -q "\"kind\": \"checkpoint\", \"step\": $stop, .*\"reason\": \"SIG$sig\"" "$dir/metrics.jsonl" || fail "$name: checkpoint record"
  (($(last_step "$dir/metrics.jsonl") == stop)) || fail "$name: metrics go past the checkpoint"
  echo "ok: $name: $sig after step $seen -> checkpoint of step $stop written $(python3 -c "print('%.3f' % ($(mtime "$manifest") - $sent))") s after the signal, exit 75 $(python3 -c "print('%.3f' % ($exited - $sent))") s after it"
}
resume_matches() {  # resume_matches NAME REF LAUNCHER...
  local name="$1" ref="$2"
  shift 2
  "$@" --resume --out_dir="$T/$name" --quiet >"$T/$name.resume.log" 2>&1 || { cat "$T/$name.resume.log"; fail "$name: resume"; }
  diff <(losses "$T/$ref/metrics.jsonl") <(losses "$T/$name/metrics.jsonl") || fail "$name: resumed losses differ from $ref"
  echo "ok: $name resumed: $(losses "$T/$name/metrics.jsonl" | wc -l) train records identical to the uninterrupted run"
}

interrupt usr1_mpirun USR1 launcher "${MPI[@]}" "$TRAIN" --config="$CONFIG" --override="$BASE" --override="$EP2"
resume_matches usr1_mpirun ref2 "${MPI[@]}" "$TRAIN"
interrupt usr1_rank1 USR1 rank1 "${MPI[@]}" "$TRAIN" --config="$CONFIG" --override="$BASE" --override="$EP2"
resume_matches usr1_rank1 ref2 "${MPI[@]}" "$TRAIN"
interrupt term_1rank TERM launcher timeout 300 "$TRAIN" --config="$CONFIG" --override="$BASE"
resume_matches term_1rank ref1 timeout 300 "$TRAIN"
echo PASS
