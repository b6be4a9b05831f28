#!/bin/bash
# Token file formats, gradient accumulation and TensorBoard output, through the train binary:
#  1. The same tokens as raw uint16, raw uint32, .npy (<u2 and <i8) and a Megatron indexed dataset train to
#     identical losses (sampling depends only on the seed, the step and the number of tokens).
#  2. Bad files fail with one line naming the file: id >= vocab, truncated .npy, mismatched .idx, wrong dtype.
#  3. 4 micro-batches of 2 accumulate to the update of one micro-batch of 8: grad_norm within 1e-5 relative
#     and weights after the step within 1e-6 absolute (lb_loss_weight 0: the load-balance loss is defined per
#     micro-batch, SPEC section 4; optim.eps 1 makes the first AdamW step smooth in the gradient).
#  4. The real tensorboard package reads the run's event file: same steps and values as metrics.jsonl.
set -uo pipefail
TRAIN="$1"
CONFIG="$2"
PY="${HYBRIDMOE_VENV:-/root/.cache/hybridmoe/venv}/bin/python"
T="${TEST_TMPDIR:-$(mktemp -d)}"
fail() { echo "FAIL: $*" >&2; exit 1; }

"$PY" - "$T" <<'PY'
import numpy as np, struct, sys
d = sys.argv[1]
text = open("/usr/share/common-licenses/GPL-3", "rb").read()
ids = np.frombuffer(text, dtype=np.uint8).astype(np.uint16)
ids.tofile(d + "/raw16.bin")
ids.astype(np.uint32).tofile(d + "/raw32.bin")
np.save(d + "/u2.npy", ids)
np.save(d + "/i8.npy", ids.astype(np.int64))
# Megatron indexed dataset (MMIDIDX v1, dtype code 8 = uint16): one document per paragraph.
docs = [np.frombuffer(p + b"\n\n", dtype=np.uint8).astype(np.uint16) for p in text.split(b"\n\n")]
docs[-1] = docs[-1][:-2]
assert sum(len(x) for x in docs) == len(ids)
np.concatenate(docs).tofile(d + "/mega.bin")
sizes = np.array([len(x) for x in docs], dtype=np.int32)
pointers = np.concatenate([[0], np.cumsum(sizes[:-1].astype(np.int64) * 2)]).astype(np.int64)
with open(d + "/mega.idx", "wb") as f:
    f.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8))
    f.write(struct.pack("<Q", len(sizes)) + struct.pack("<Q", len(sizes) + 1))
    f.write(sizes.tobytes() + pointers.tobytes() + np.arange(len(sizes) + 1, dtype=np.int64).tobytes())
# Broken files.
open(d + "/cut.npy", "wb").write(open(d + "/u2.npy", "rb").read()[:-7])
import shutil
shutil.copy(d + "/mega.bin", d + "/badmega.bin")
idx = bytearray(open(d + "/mega.idx", "rb").read()); idx[34:38] = struct.pack("<i", 999999)
open(d + "/badmega.idx", "wb").write(idx)
open(d + "/odd.bin", "wb").write(b"\x00" * 6)
PY
MODEL="model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } }
optim { warmup_steps: 2 lr: 1e-2 } parallel { num_threads: 2 } checkpoint { save_final: false }
train { steps: 8 eval_interval: 0 } logging { log_interval: 1 }"
run() {  # run NAME DATA_OVERRIDE [more overrides...]
  local name="$1"; shift
  "$TRAIN" --config="$CONFIG" --override="$MODEL" "${@/#/--override=}" --out_dir="$T/$name" --quiet 2>"$T/$name.err" \
    || { cat "$T/$name.err"; fail "run $name"; }
}
losses() { "$PY" -c "
import json, sys
print([r['loss'] for r in map(json.loads, open(sys.argv[1])) if r['kind'] == 'train'])" "$1/metrics.jsonl"; }

DATA() { echo "data { train { path: \"$T/$1\" } validation: \"\" seq_len: 32 micro_batch_size: 4 ${2:-} }"; }
run raw16 "$(DATA raw16.bin)"
run raw32 "$(DATA raw32.bin "dtype: UINT32")"
run npy_u2 "$(DATA u2.npy)"
run npy_i8 "$(DATA i8.npy)"
run mega "$(DATA mega.bin)"
run mega_explicit "$(DATA mega.bin "format: MEGATRON")"
ref="$(losses "$T/raw16")"
for v in raw32 npy_u2 npy_i8 mega mega_explicit; do
  [[ "$(losses "$T/$v")" == "$ref" ]] || fail "$v losses differ: $(losses "$T/$v") vs $ref"
done
echo "ok: raw16 == raw32 == npy<u2 == npy<i8 == megatron: $ref"

expect_error() {  # NAME PATTERN DATA_OVERRIDE [overrides]
  local name="$1" pattern="$2"; shift 2
  "$TRAIN" --config="$CONFIG" --override="$MODEL" "${@/#/--override=}" --out_dir="$T/err_$name" --quiet 2>"$T/err"
  [[ $? != 0 ]] || fail "$name: accepted"
  [[ $(wc -l <"$T/err") == 1 ]] && grep -qF -- "$pattern" "$T/err" || { cat "$T/err"; fail "$name: message"; }
  echo "ok: $name -> $(sed "s|$T/||g" "$T/err")"
}
expect_error vocab "raw16.bin: token" "$(DATA raw16.bin)" "model { vocab_size: 100 }"
grep -q "outside \[0, model.vocab_size = 100)" "$T/err" || fail "vocab message lacks the range"
expect_error truncated_npy "cut.npy: .npy header says shape" "$(DATA cut.npy)"
expect_error bad_index "badmega.idx lists" "$(DATA badmega.bin)"
expect_error wrong_dtype "odd.bin: size 6 bytes is not a multiple of 4" "$(DATA odd.bin "dtype: UINT32")"

# 3. Gradient accumulation.
ACC="optim { eps: 1 warmup_steps: 0 grad_clip: 0 } model { moe { lb_loss_weight: 0 } } train { steps: 1 } checkpoint { save_final: true }"
run big "$(echo "data { train { path: \"$T/raw16.bin\" } validation: \"\" seq_len: 32 micro_batch_size: 8 }")" "$ACC"
run accum "$(echo "data { train { path: \"$T/raw16.bin\" } validation: \"\" seq_len: 32 micro_batch_size: 2 grad_accum_steps: 4 }")" "$ACC"
"$PY" - "$T/big" "$T/accum" <<'PY' || fail "accumulation differs"
import json, sys
from safetensors.numpy import load_file
a, b = sys.argv[1], sys.argv[2]
ga = [r for r in map(json.loads, open(a + "/metrics.jsonl")) if r["kind"] == "train"][0]
gb = [r for r in map(json.loads, open(b + "/metrics.jsonl")) if r["kind"] == "train"][0]
# Same tokens in the same order: the trainer hashes micro-batch m = samples m*micro ... of the step, so one
# micro-batch of 8 and four of 2 must fingerprint alike (else the comparison below compares different data).
assert ga["data_hash"] == gb["data_hash"], (ga["data_hash"], gb["data_hash"])
rel = abs(ga["grad_norm"] - gb["grad_norm"]) / ga["grad_norm"]
assert rel < 1e-5, (ga["grad_norm"], gb["grad_norm"])
assert abs(ga["loss"] - gb["loss"]) < 1e-5, (ga["loss"], gb["loss"])
wa = load_file(a + "/checkpoints/step_00000001/model.safetensors")
wb = load_file(b + "/checkpoints/step_00000001/model.safetensors")
diff = max(float(abs(wa[k] - wb[k]).max()) for k in wa)
assert diff < 1e-6, diff
print("ok: accumulation 4x2 == 1x8: grad_norm rel diff %.2e, loss diff %.2e, max weight diff %.2e"
      % (rel, abs(ga["loss"] - gb["loss"]), diff))
PY

# 4. TensorBoard reads the trainer's events.
"$PY" - "$T/raw16" <<'PY' || fail "tensorboard"
import json, logging, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
run = sys.argv[1]
acc = EventAccumulator(run, size_guidance={"scalars": 0}); acc.Reload()
rows = [r for r in map(json.loads, open(run + "/metrics.jsonl")) if r["kind"] == "train"]
for tag, key in [("train/loss", "loss"), ("train/lm_loss", "lm_loss"), ("train/lb_loss", "lb_loss"),
                 ("train/z_loss", "z_loss"), ("train/grad_norm", "grad_norm"), ("train/lr", "lr"),
                 ("router/entropy_mean", "router/entropy_mean")]:
    events = acc.Scalars(tag)
    assert [e.step for e in events] == [r["step"] for r in rows], tag
    for e, r in zip(events, rows):
        assert abs(e.value - r[key]) <= 1e-6 * max(1, abs(r[key])), (tag, e.value, r[key])
print("ok: tensorboard reads %d steps of %d tags, equal to metrics.jsonl" % (len(rows), len(acc.Tags()["scalars"])))
PY
echo PASS
