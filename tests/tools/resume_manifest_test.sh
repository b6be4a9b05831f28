#!/bin/bash
# train --resume when the newest checkpoint's MANIFEST.json is absent or corrupt (models/checkpoint.cc:
# VerifyCheckpoint reads the manifest; --resume falls back to the newest intact checkpoint, saying so):
#  1. No MANIFEST.json in the newest directory (an incomplete checkpoint): the run resumes from the one before
#     and ends with the losses of an uninterrupted run.
#  2. A MANIFEST.json that is not valid JSON, or has no "files" entry: not loaded; --resume falls back to the
#     checkpoint before with one warning line naming that manifest and the fault (never silently: that would
#     drop steps without saying so) and ends with the losses of an uninterrupted run.
#  3. The same fault when the older checkpoint is damaged too: refused with one line, nothing changed.
set -uo pipefail
TRAIN="$1"
CONFIG="$2"
MAKE_TOKENS="$3"
LOSSES="$(dirname "$MAKE_TOKENS")/losses.py"
T="${TEST_TMPDIR:-$(mktemp -d)}"
fail() { echo "FAIL: $*" >&2; exit 1; }

python3 "$MAKE_TOKENS" slice /usr/share/common-licenses/GPL-3 "$T/train.bin" || fail "make_tokens"
BASE="data { train { path: \"$T/train.bin\" } validation: \"\" seq_len: 32 micro_batch_size: 4 }
model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } }
optim { warmup_steps: 5 lr: 1e-2 } parallel { num_threads: 2 }
train { steps: 20 eval_interval: 0 } logging { log_interval: 5 } checkpoint { interval: 10 keep_last: 3 }"
losses() { python3 "$LOSSES" --train_only "$1"; }  # the train records without timing fields
snapshot() { (cd "$1" && find . -type f | sort | xargs md5sum); }

"$TRAIN" --config="$CONFIG" --override="$BASE" --out_dir="$T/straight" --quiet || fail "straight run"
ls "$T/straight/checkpoints" | tr '\n' ' ' | grep -q "^step_00000010 step_00000020 $" \
  || fail "expected checkpoints 10 and 20: $(ls "$T/straight/checkpoints")"

# 1. Newest checkpoint without a manifest: skipped.
cp -r "$T/straight" "$T/nomanifest"
rm "$T/nomanifest/checkpoints/step_00000020/MANIFEST.json"
"$TRAIN" --resume --override="$BASE" --out_dir="$T/nomanifest" 2>"$T/nomanifest.log" \
  || { cat "$T/nomanifest.log"; fail "resume past a manifest-less checkpoint"; }
grep -q "resuming from .*step_00000010 (step 10)" "$T/nomanifest.log" || { cat "$T/nomanifest.log"; fail "did not fall back to step 10"; }
diff <(losses "$T/straight/metrics.jsonl") <(losses "$T/nomanifest/metrics.jsonl") || fail "losses after fallback differ"
echo "ok: no MANIFEST.json in step_00000020 -> resumed from step 10, identical losses"

# 2. Newest manifest corrupt: one warning line, fallback to step 10.
expect_fallback() {  # NAME MANIFEST_CONTENT PATTERN
  local dir="$T/$1"
  cp -r "$T/straight" "$dir"
  printf '%s' "$2" >"$dir/checkpoints/step_00000020/MANIFEST.json"
  "$TRAIN" --resume --override="$BASE" --out_dir="$dir" --quiet 2>"$T/err" || { cat "$T/err"; fail "$1: resume"; }
  [[ $(wc -l <"$T/err") == 1 ]] && grep -qF -- "step_00000020/MANIFEST.json: $3" "$T/err" &&
    grep -q "resuming from .*step_00000010 (step 10)" "$T/err" || { cat "$T/err"; fail "$1: warning line"; }
  diff <(losses "$T/straight/metrics.jsonl") <(losses "$dir/metrics.jsonl") || fail "$1: losses after fallback differ"
  echo "ok: $1 -> $(sed "s|$T/||g" "$T/err")"
}
expect_fallback truncated_json '{"files": {"model.safetensors": {"bytes": 12' "not valid JSON"
expect_fallback no_files '{"format": 1}' 'no "files" entry'

# 3. Both manifests corrupt: refused with one line, nothing changed.
dir="$T/both"
cp -r "$T/straight" "$dir"
printf '{"format": 1}' >"$dir/checkpoints/step_00000020/MANIFEST.json"
printf '{"format": 1}' >"$dir/checkpoints/step_00000010/MANIFEST.json"
before="$(snapshot "$dir")"
"$TRAIN" --resume --override="$BASE" --override='train { steps: 30 }' --out_dir="$dir" --quiet 2>"$T/err"
[[ $? != 0 ]] || fail "both: corrupt manifests accepted"
[[ $(wc -l <"$T/err") == 1 ]] && grep -qF -- 'step_00000020/MANIFEST.json: no "files" entry' "$T/err" ||
  { cat "$T/err"; fail "both: message"; }
[[ "$(snapshot "$dir")" == "$before" ]] || fail "both: a refused resume changed the run directory"
echo "ok: both -> $(sed "s|$T/||g" "$T/err")"
echo PASS
