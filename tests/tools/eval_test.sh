#!/bin/bash
# eval on a checkpoint written by train: its loss on the validation file equals the trainer's own final
# validation loss on the same windows (float reassociation only, 1e-5 relative), and bad checkpoints end with
# one line naming the file or tensor: a truncated model.safetensors, a tensor of the wrong shape (config says
# another width), a missing tensor.
set -uo pipefail
TRAIN="$1"
EVAL="$2"
CONFIG="$3"
MAKE_TOKENS="$4"
PY="${HYBRIDMOE_VENV:-/root/.cache/hybridmoe/venv}/bin/python"
T="${TEST_TMPDIR:-$(mktemp -d)}"
fail() { echo "FAIL: $*" >&2; exit 1; }
GPL=/usr/share/common-licenses/GPL-3
python3 "$MAKE_TOKENS" slice "$GPL" "$T/train.bin" && python3 "$MAKE_TOKENS" slice "$GPL" "$T/val.bin" 0 4097 \
  || fail "make_tokens"
"$TRAIN" --config="$CONFIG" --out_dir="$T/run" --quiet --override="
  data { train { path: \"$T/train.bin\" } validation: \"$T/val.bin\" seq_len: 32 micro_batch_size: 8 }
  model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } }
  train { steps: 15 eval_interval: 0 eval_batches: 16 } parallel { num_threads: 2 }" || fail "train"
CK="$T/run/checkpoints/step_00000015"
"$EVAL" --checkpoint="$CK" --data="$T/val.bin" --batch_size=8 >"$T/eval.out" 2>"$T/eval.err" || { cat "$T/eval.err"; fail "eval"; }
python3 - "$T/eval.out" "$T/run/metrics.jsonl" <<'PY' || fail "eval loss vs trainer"
import json, sys
ours = json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])
val = [r for r in map(json.loads, open(sys.argv[2])) if r["kind"] == "eval"][-1]["val_loss"]
# The same 128 windows: the trainer's eval_batches 16 x micro_batch_size 8 windows are spaced
# (4097 - 32 - 1) * i / 127 = 32 * i apart over the 4097 tokens of val.bin, which are eval's contiguous
# windows w*32; both score all 4096 targets with the same final weights (the last eval and the step-15
# checkpoint), so the token-mean cross-entropies differ by float reassociation only.
assert ours["windows"] == 128 and ours["tokens"] == 4096, ours
rel = abs(ours["loss"] - val) / val
assert rel < 1e-5, (ours["loss"], val, rel)
assert abs(ours["perplexity"] - 2.718281828 ** ours["loss"]) < 1e-3 * ours["perplexity"]
print("ok: eval loss %.6f (ppl %.2f) vs trainer val loss %.6f on the same windows: rel diff %.1e"
      % (ours["loss"], ours["perplexity"], val, rel))
PY
# --precision=bf16 (core/precision.h): the same windows within bf16 accuracy, and says so in its JSON; bad
# --device / --precision values are one-line errors.
"$EVAL" --checkpoint="$CK" --data="$T/val.bin" --batch_size=8 --precision=bf16 >"$T/eval_bf16.out" 2>"$T/eval.err" \
  || { cat "$T/eval.err"; fail "eval bf16"; }
python3 - "$T/eval.out" "$T/eval_bf16.out" <<'PY' || fail "eval bf16 vs fp32"
import json, sys
a, b = (json.loads([l for l in open(p) if l.startswith("{")][-1]) for p in sys.argv[1:3])
assert a["precision"] == "fp32" and b["precision"] == "bf16" and a["device"] == b["device"] == "cpu", (a, b)
rel = abs(a["loss"] - b["loss"]) / a["loss"]
assert 0 < rel < 5e-3, (a["loss"], b["loss"], rel)
print("ok: eval bf16 loss %.6f vs fp32 %.6f: rel diff %.1e" % (b["loss"], a["loss"], rel))
PY
for flag in "--device=tpu|--device (tpu) must be cpu or cuda" "--precision=fp16|--precision (fp16) must be fp32 or bf16"; do
  "$EVAL" --checkpoint="$CK" --data="$T/val.bin" "${flag%%|*}" >/dev/null 2>"$T/err" && fail "${flag%%|*} accepted"
  grep -qF -- "${flag#*|}" "$T/err" || { cat "$T/err"; fail "${flag%%|*}: message"; }
done
echo "ok: bad --device / --precision refused"
expect_error() {  # NAME PATTERN CHECKPOINT_DIR
  "$EVAL" --checkpoint="$3" --data="$T/val.bin" >/dev/null 2>"$T/err"
  [[ $? != 0 ]] || fail "$1: accepted"
  [[ $(wc -l <"$T/err") == 1 ]] && grep -qF -- "$2" "$T/err" || { cat "$T/err"; fail "$1: message"; }
  echo "ok: $1 -> $(sed "s|$T/||g" "$T/err")"
}
cp -r "$CK" "$T/cut" && truncate -s -100 "$T/cut/model.safetensors"
expect_error "truncated file" "cut/model.safetensors" "$T/cut"
cp -r "$CK" "$T/shape" && sed -i 's/expert_hidden: 32/expert_hidden: 48/' "$T/shape/config.textproto"
expect_error "wrong shape" "tensor blocks.0.moe.experts.0.w_gate has shape [32,32], the model expects [48,32]" "$T/shape"
cp -r "$CK" "$T/missing"
"$PY" - "$T/missing/model.safetensors" <<'PY'
import sys
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1]); del t["blocks.1.attn.wq"]; save_file(t, sys.argv[1], metadata={"format": "pt"})
PY
expect_error "missing tensor" "missing tensor blocks.1.attn.wq" "$T/missing"
echo PASS
