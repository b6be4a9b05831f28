#!/bin/bash
# Checkpoints and resume through the train binary:
#  1. 40 steps straight == 20 steps + --resume + 20 steps, metrics.jsonl losses bit for bit (2 threads).
#  2. SIGKILL while a checkpoint is being written: the previous checkpoint stays intact, the half-written
#     one is ignored, and --resume continues to the same final losses.
#  3. Corrupted checkpoints (flipped byte, missing file) with no intact one left are refused with a message
#     naming the newest damaged file, and nothing already written changes (the fallback to an older intact
#     checkpoint is //tests/tools:resume_damaged_test).
#  4. Non-finite losses: steps are skipped and logged, and the run stops after max_consecutive_bad_steps.
set -uo pipefail
TRAIN="$1"
CONFIG="$2"
MAKE_TOKENS="$3"
LOSSES="$(dirname "$MAKE_TOKENS")/losses.py"
T="${TEST_TMPDIR:-$(mktemp -d)}"
fail() { echo "FAIL: $*" >&2; exit 1; }

GPL=/usr/share/common-licenses/GPL-3
python3 "$MAKE_TOKENS" slice "$GPL" "$T/train.bin" && python3 "$MAKE_TOKENS" slice "$GPL" "$T/val.bin" -3000 \
  || fail "make_tokens"
BASE="data { train { path: \"$T/train.bin\" } validation: \"$T/val.bin\" seq_len: 32 micro_batch_size: 4 }
model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } }
optim { warmup_steps: 5 lr: 1e-2 } parallel { num_threads: 2 }
train { steps: 40 eval_interval: 10 eval_batches: 2 } logging { log_interval: 5 } checkpoint { interval: 10 keep_last: 2 }"
losses() { python3 "$LOSSES" "$1"; }  # the train/eval records without timing fields

"$TRAIN" --config="$CONFIG" --override="$BASE" --out_dir="$T/straight" --quiet || fail "straight run"
"$TRAIN" --config="$CONFIG" --override="$BASE" --stop_at_step=20 --out_dir="$T/split" --quiet || fail "first half"
[[ -d "$T/split/checkpoints/step_00000020" ]] || fail "no checkpoint at step 20"
"$TRAIN" --resume --override="$BASE" --out_dir="$T/split" --quiet 2>"$T/resume.log" || { cat "$T/resume.log"; fail "resume"; }
diff <(losses "$T/straight/metrics.jsonl") <(losses "$T/split/metrics.jsonl") || fail "resumed losses differ"
echo "ok: 40 straight == 20 + resume + 20 ($(losses "$T/straight/metrics.jsonl" | wc -l) records identical)"
ls "$T/straight/checkpoints" | tr '\n' ' ' | grep -q "^step_00000030 step_00000040 $" || fail "keep_last 2: $(ls "$T/straight/checkpoints")"

# 2. Kill -9 inside the checkpoint write of step 20 (a fault-injection pause widens the window).
HYBRIDMOE_FAULT_PAUSE_IN_CHECKPOINT_S=3 "$TRAIN" --config="$CONFIG" --override="$BASE" --out_dir="$T/killed" --quiet &
pid=$!
for _ in $(seq 1 600); do [[ -d "$T/killed/checkpoints/.tmp-step_00000010" ]] && break; sleep 0.1; done
# The first checkpoint (step 10) pauses too: let it through by waiting for its rename, then kill in step 20's.
for _ in $(seq 1 600); do [[ -d "$T/killed/checkpoints/step_00000010" ]] && break; sleep 0.1; done
for _ in $(seq 1 600); do [[ -f "$T/killed/checkpoints/.tmp-step_00000020/optimizer.safetensors" ]] && break; sleep 0.1; done
kill -9 $pid
wait $pid 2>/dev/null
[[ -d "$T/killed/checkpoints/.tmp-step_00000020" ]] || fail "kill did not hit the checkpoint write"
[[ ! -d "$T/killed/checkpoints/step_00000020" ]] || fail "half-written checkpoint was published"
"$TRAIN" --resume --override="$BASE" --out_dir="$T/killed" 2>"$T/killed.log" || { cat "$T/killed.log"; fail "resume after kill"; }
grep -q "resuming from .*step_00000010" "$T/killed.log" || { cat "$T/killed.log"; fail "did not resume from step 10"; }
diff <(losses "$T/straight/metrics.jsonl") <(losses "$T/killed/metrics.jsonl") || fail "losses after kill+resume differ"
echo "ok: SIGKILL during checkpoint write -> resumed from step 10, identical losses"

# 3. Corruption: flip one byte of both checkpoints' weights (step 30 too, so that no intact one is left);
#    then, with step 40's weights restored, delete its optimizer file.
cp -r "$T/straight" "$T/corrupt"
for s in 30 40; do
python3 - "$T/corrupt/checkpoints/step_000000$s/model.safetensors" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 0x10; open(p, "wb").write(b)
PY
done
before=$(md5sum "$T/corrupt/metrics.jsonl")
"$TRAIN" --resume --override="$BASE" --override='train { steps: 50 }' --out_dir="$T/corrupt" --quiet 2>"$T/err"
[[ $? != 0 ]] || fail "corrupted checkpoint accepted"
[[ $(wc -l <"$T/err") == 1 ]] && grep -q "step_00000040/model.safetensors: CRC-32C .* does not match" "$T/err" || { cat "$T/err"; fail "message"; }
echo "ok: flipped byte -> $(cat "$T/err")"
cp "$T/straight/checkpoints/step_00000040/model.safetensors" "$T/corrupt/checkpoints/step_00000040/"
rm "$T/corrupt/checkpoints/step_00000040/optimizer.safetensors"
"$TRAIN" --resume --override="$BASE" --override='train { steps: 50 }' --out_dir="$T/corrupt" --quiet 2>"$T/err"
[[ $? != 0 ]] && grep -q "optimizer.safetensors is missing" "$T/err" || { cat "$T/err"; fail "missing file"; }
echo "ok: missing file -> $(cat "$T/err")"
[[ $(md5sum "$T/corrupt/metrics.jsonl") == "$before" ]] || fail "metrics.jsonl changed by a refused resume"

# 4. Non-finite steps (fault injection poisons the loss of chosen steps): two in a row are skipped and
#    training continues; three in a row stop the run with a clear message.
HYBRIDMOE_FAULT_NAN_STEPS=7,8 "$TRAIN" --config="$CONFIG" --override="$BASE" --override='train { max_consecutive_bad_steps: 3 }' \
  --out_dir="$T/skip" 2>"$T/err" || { cat "$T/err"; fail "two bad steps stopped the run"; }
[[ $(grep -c "update skipped" "$T/err") == 2 ]] || { cat "$T/err"; fail "expected 2 skipped steps"; }
grep -q '"step": 40, .*"skipped_steps": 2' "$T/skip/metrics.jsonl" || fail "skipped_steps not counted"
echo "ok: 2 non-finite steps skipped, run finished"
HYBRIDMOE_FAULT_NAN_STEPS=12,13,14 "$TRAIN" --config="$CONFIG" --override="$BASE" --override='train { max_consecutive_bad_steps: 3 }' \
  --out_dir="$T/diverge" 2>"$T/err"
[[ $? != 0 ]] || fail "divergence did not stop the run"
tail -1 "$T/err" | grep -q "training diverged: 3 consecutive steps with non-finite loss or gradients (last: step 14" || { cat "$T/err"; fail "divergence message"; }
grep -q '"kind": "skip"' "$T/diverge/metrics.jsonl" && grep -q '"kind": "abort"' "$T/diverge/metrics.jsonl" || fail "skip/abort not logged"
[[ -d "$T/diverge/checkpoints/step_00000010" ]] || fail "checkpoint before divergence lost"
echo "ok: divergence -> $(tail -1 "$T/err")"
echo PASS
