#!/bin/bash
# End-to-end checks of bazel-bin/tools/compare_norms on a very small sweep (3 strategies, 20 steps, a
# 2-block model, generated data):
#  1. Interrupt: SIGTERM to the sweep while the second variant is between checkpoints (a fault-injection
#     pause in that variant's checkpoint writes widens the window): the first variant is complete, the
#     second half-finished, the third not started, and no train process is left behind.
#  2. Resume: the same command again finishes the sweep without rerunning the complete variant (its
#     metrics.jsonl keeps its bytes and mtime), continues the half-finished one from its checkpoint
#     (each step logged once), and a variant forced to diverge (HYBRIDMOE_FAULT_NAN_STEPS, passed to that
#     variant only through --variant_env) is reported as diverged with exit code 0, not a crash.
#  3. Fairness: every variant saw the same data at every logged step (data_hash sequences equal).
#  4. The numbers of summary.csv, report.md and grad_norms.csv equal values recomputed here, independently,
#     from each variant's metrics.jsonl (tolerance: 1e-9 relative for CSV, 5e-5 for the 4-decimal table).
#  5. A third run reruns nothing (the diverged variant included); bad input ends with one line.
set -uo pipefail
CMP="$1"
TRAIN="$2"
CONFIG="$3"
T="${TEST_TMPDIR:-$(mktemp -d)}"
fail() { echo "FAIL: $*" >&2; exit 1; }

python3 - "$T" <<'PY'
import struct, sys
text = (b"The quick brown fox jumps over the lazy dog. " * 700 +
        b"Sphinx of black quartz, judge my vow. " * 700 + b"Pack my box with five dozen liquor jugs. " * 700)
open(sys.argv[1] + "/train.bin", "wb").write(struct.pack("<%dH" % len(text), *text))
open(sys.argv[1] + "/val.bin", "wb").write(struct.pack("<%dH" % 4000, *text[-4000:]))
PY
BASE="data { train { path: \"$T/train.bin\" } validation: \"$T/val.bin\" seq_len: 32 micro_batch_size: 4 }
model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } }
optim { warmup_steps: 5 lr: 1e-2 } parallel { num_threads: 1 }
train { steps: 20 eval_interval: 10 eval_batches: 2 } logging { log_interval: 5 } checkpoint { interval: 5 keep_last: 2 }"
OUT="$T/sweep"
# POST_NORM is poisoned at steps 8-12: five non-finite steps in a row (train.max_consecutive_bad_steps).
sweep() {  # EXEC=exec makes a backgrounded call's $! the sweep's own pid
  ${EXEC:-} "$CMP" --config="$CONFIG" --train_bin="$TRAIN" --out="$OUT" --strategies=PRE_NORM,HYBRID_NORM,POST_NORM \
    --override="$BASE" --final_window=2 --variant_env=POST_NORM:HYBRIDMOE_FAULT_NAN_STEPS=8,9,10,11,12 "$@"
}
stamp() { echo "$(md5sum <"$1") $(stat -c %y "$1")"; }
alive() { pgrep -f -- "--out_dir=$OUT/$1" >/dev/null; }

# 1. Interrupt.
EXEC=exec sweep --variant_env=HYBRID_NORM:HYBRIDMOE_FAULT_PAUSE_IN_CHECKPOINT_S=3 >"$T/run1.out" 2>"$T/run1.err" &
pid=$!
for _ in $(seq 1 1200); do
  [[ -f "$OUT/HYBRID_NORM/checkpoints/step_00000005/MANIFEST.json" ]] && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
[[ -f "$OUT/HYBRID_NORM/checkpoints/step_00000005/MANIFEST.json" ]] || { cat "$T/run1.err"; fail "second variant never checkpointed"; }
kill -TERM $pid
wait $pid
rc=$?
[[ $rc != 0 ]] || fail "interrupted sweep exited 0"
for _ in $(seq 1 100); do alive HYBRID_NORM || break; sleep 0.1; done
alive HYBRID_NORM && fail "train of HYBRID_NORM still running after the sweep was terminated"
grep -q '"status": "complete"' "$OUT/PRE_NORM/sweep_status.json" || fail "PRE_NORM not complete after run 1"
[[ -d "$OUT/HYBRID_NORM/checkpoints/step_00000020" ]] && fail "HYBRID_NORM finished: the interrupt came too late"
[[ -e "$OUT/POST_NORM" ]] && fail "POST_NORM started before HYBRID_NORM finished"
pre_stamp=$(stamp "$OUT/PRE_NORM/metrics.jsonl")
echo "ok: interrupted (exit $rc): PRE_NORM complete, HYBRID_NORM half-finished, POST_NORM not started"

# 2. Resume.
sleep 1.1  # a rewrite within the same second could keep the mtime; the md5 is checked too
sweep >"$T/run2.out" 2>"$T/run2.err"
rc=$?
[[ $rc == 0 ]] || { cat "$T/run2.err"; fail "resumed sweep failed (exit $rc)"; }
cat "$T/run2.err"
grep -q "1/3 PRE_NORM: already complete; not rerun" "$T/run2.err" || fail "PRE_NORM not reported as complete"
[[ $(stamp "$OUT/PRE_NORM/metrics.jsonl") == "$pre_stamp" ]] || fail "PRE_NORM was rerun (metrics.jsonl changed)"
grep -q "2/3 HYBRID_NORM: resuming" "$T/run2.err" || fail "HYBRID_NORM not resumed"
grep -q "resuming from .*step_000000[12]*[05]" "$OUT/HYBRID_NORM/train.log" || fail "train did not resume from a checkpoint"
grep -q "3/3 POST_NORM: diverged in" "$T/run2.err" || fail "POST_NORM divergence not reported"
grep -q '"status": "diverged"' "$OUT/POST_NORM/sweep_status.json" || fail "no diverged marker"
for f in report.md report.html summary.csv curves.csv grad_norms.csv; do [[ -s "$OUT/$f" ]] || fail "no $f"; done
echo "ok: resumed: PRE_NORM untouched, HYBRID_NORM continued, POST_NORM diverged and reported"

# 3 + 4. Data order and the report's numbers, recomputed from metrics.jsonl.
python3 - "$OUT" <<'PY' || fail "report numbers / data order"
import csv, json, math, re, sys
out = sys.argv[1]
names = ["PRE_NORM", "HYBRID_NORM", "POST_NORM"]
runs = {}
for n in names:
    recs = [json.loads(l) for l in open(f"{out}/{n}/metrics.jsonl")]
    runs[n] = {k: [r for r in recs if r["kind"] == k] for k in ("train", "eval", "skip", "abort")}

# Each logged step appears once, the resumed run included.
for n in names:
    steps = [r["step"] for r in runs[n]["train"]]
    assert steps == sorted(set(steps)), (n, steps)
assert [r["step"] for r in runs["HYBRID_NORM"]["train"]] == [1, 5, 10, 15, 20]

# Same data order: identical data_hash at every step logged by two variants, and not trivially constant.
seqs = {n: [(r["step"], r["data_hash"]) for r in runs[n]["train"]] for n in names}
assert seqs["PRE_NORM"] == seqs["HYBRID_NORM"], seqs
assert seqs["POST_NORM"] == seqs["PRE_NORM"][:len(seqs["POST_NORM"])] and len(seqs["POST_NORM"]) == 3, seqs
assert len({h for _, h in seqs["PRE_NORM"]}) == 5
print("ok: data_hash identical across variants at", [s for s, _ in seqs["PRE_NORM"]])

def fin(x): return x is not None and math.isfinite(x)
def summary(n, target):
    tr, ev = runs[n]["train"], runs[n]["eval"]
    last = [r["loss"] for r in tr if fin(r["loss"])][-2:]
    vals = [(e["val_loss"], e["step"]) for e in ev if fin(e["val_loss"])]
    finite = [(r["loss"], r["tokens"]) for r in tr if fin(r["loss"])]
    smooth = [(sum(l for l, _ in finite[max(0, i - 1):i + 1]) / len(finite[max(0, i - 1):i + 1]), t)
              for i, (_, t) in enumerate(finite)]  # trailing mean of the last 2 (= --final_window) losses
    reach = [t for m, t in smooth if target is not None and m <= target]
    spikes = sum(1 for i in range(1, len(finite))
                 if finite[i][0] > 1.2 * sum(l for l, _ in finite[max(0, i - 2):i]) / len(finite[max(0, i - 2):i]))
    return {
        "final_train_loss": sum(last) / len(last),
        "best_val_loss": min(vals)[0] if vals else None, "best_val_step": min(vals)[1] if vals else None,
        "final_val_loss": vals[-1][0] if vals else None,
        "tokens_to_target": reach[0] if reach else None,
        "skipped_steps": len(runs[n]["skip"]), "loss_spikes": spikes,
        "diverged": 1 if runs[n]["abort"] else 0,
        "max_grad_norm": max(r["grad_norm"] for r in tr if fin(r["grad_norm"])),
    }
healthy = sorted(summary(n, None)["final_train_loss"] for n in names if not runs[n]["abort"])
target = healthy[len(healthy) // 2]
want = {n: summary(n, target) for n in names}
assert want["POST_NORM"]["diverged"] == 1 and want["POST_NORM"]["skipped_steps"] == 5, want["POST_NORM"]
assert want["PRE_NORM"]["tokens_to_target"] is not None or want["HYBRID_NORM"]["tokens_to_target"] is not None

rows = {r["strategy"]: r for r in csv.DictReader(open(f"{out}/summary.csv"))}
assert list(rows) == names, list(rows)
def close(a, b, tol):
    if b is None: return a in ("", "-", "not reached")
    return abs(float(a) - b) <= tol * max(1.0, abs(b))
for n in names:
    r = rows[n]
    assert close(r["target_loss"], target, 1e-9), (r["target_loss"], target)
    for k, v in want[n].items():
        assert close(r[k], v, 1e-9), (n, k, r[k], v)
    assert r["status"] == ("diverged" if n == "POST_NORM" else "complete"), r
print("ok: summary.csv equals the recomputed numbers; target loss %.4f" % target)

# The markdown results table: strategy, status, final loss, best val (step), final val, tokens, skipped, ..., diverged.
md = open(f"{out}/report.md").read()
table = md.split("## Results")[1].split("\n\n")[1].splitlines()[2:]
assert len(table) == 3, table
for line in table:
    c = [x.strip() for x in line.strip("|").split("|")]
    n, w = c[0], want[c[0]]
    assert close(c[2], w["final_train_loss"], 5e-5), (n, c[2])
    best = None if c[3] == "-" else re.match(r"([\d.]+) \((\d+)\)", c[3]).groups()
    assert (best is None) == (w["best_val_loss"] is None), (n, c[3])
    if best:
        assert close(best[0], w["best_val_loss"], 5e-5) and int(best[1]) == w["best_val_step"], (n, c[3])
    assert close(c[4], w["final_val_loss"], 5e-5), (n, c[4])
    assert close(c[5], w["tokens_to_target"], 0), (n, c[5])
    assert int(c[6]) == w["skipped_steps"] and int(c[7]) == w["loss_spikes"], (n, c[6], c[7])
    assert c[9] == ("yes" if w["diverged"] else "no"), (n, c[9])
print("ok: report.md table equals the recomputed numbers")

# Gradient-norm profile: default steps first/middle/last logged = 1, 10, 20; values from the train records.
g = list(csv.DictReader(open(f"{out}/grad_norms.csv")))
assert sorted({int(r["step"]) for r in g}) == [1, 10, 20], {r["step"] for r in g}
by_step = {n: {r["step"]: r for r in runs[n]["train"]} for n in names}
checked = 0
for r in g:
    rec = by_step[r["strategy"]].get(int(r["step"]))
    for part in ("attn", "ffn", "router"):
        v = rec.get(f"grad_norm/block{r['block']}/{part}") if rec else None
        assert close(r[part], v if fin(v) else None, 1e-9), (r, part, v)
        checked += 1
assert checked >= 2 * 3 * 2 * 3, checked
print("ok: grad_norms.csv equals the per-block gradient norms in metrics.jsonl (%d values)" % checked)

html = open(f"{out}/report.html").read()
assert html.count("<svg") >= 6 and "<script" not in html and "src=" not in html and "href=" not in html
assert "POST_NORM" in html and "polyline" in html
print("ok: report.html is self-contained with %d SVG charts" % html.count("<svg"))
PY

# 5. Nothing is rerun by a third run; bad input.
stamps() { for n in PRE_NORM HYBRID_NORM POST_NORM; do stamp "$OUT/$n/metrics.jsonl"; done; }
before=$(stamps)
sweep >"$T/run3.out" 2>"$T/run3.err" || { cat "$T/run3.err"; fail "third run failed"; }
[[ $(stamps) == "$before" ]] || fail "a finished variant was rerun by the third run"
grep -q "3/3 POST_NORM: diverged in an earlier run" "$T/run3.err" || { cat "$T/run3.err"; fail "diverged variant not skipped"; }
echo "ok: third run reran nothing"

expect_error() {
  local name="$1" pattern="$2"; shift 2
  "$@" >"$T/out" 2>"$T/err"
  [[ $? != 0 ]] || fail "$name: exit code 0"
  [[ $(wc -l <"$T/err") == 1 ]] && grep -qF -- "$pattern" "$T/err" || { cat "$T/err"; fail "$name: message"; }
  echo "ok: $name -> $(cat "$T/err")"
}
expect_error "unknown strategy" "unknown strategy 'PRE_NROM'; valid: PRE_NORM,POST_NORM" \
  "$CMP" --config="$CONFIG" --train_bin="$TRAIN" --out="$T/bad" --strategies=PRE_NROM
expect_error "changed config on resume" "$OUT/PRE_NORM/config.textproto differs from this sweep's config" \
  sweep --override='train { steps: 30 }'
[[ $(stamps) == "$before" ]] || fail "a refused resume changed a variant"
echo PASS
