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
#  6. Seeds and depths: 2 strategies x 2 seeds x 2 depths (10 steps) into DIR/depth_L/STRATEGY/seed_S/, one
#     depth's POST_NORM given lr 10 (--variant_override) so that it really diverges; the report has the
#     seed/depth sections, bands and verdicts, groups.csv equals the mean/std/Welch values recomputed here
#     from summary.csv, the diverged group is reported (exit 0), the data order follows the seed, and bad
#     --seeds/--depths/--baseline values end with one line.
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

# 6. Seeds and depths.
OUT2="$T/grouped"
grouped() {
  "$CMP" --config="$CONFIG" --train_bin="$TRAIN" --out="$OUT2" --strategies=PRE_NORM,POST_NORM --seeds=7,8 \
    --depths=1,2 --baseline=PRE_NORM --override="$BASE" --override='train { steps: 10 } checkpoint { interval: 0 }' \
    --variant_override='depth_2/POST_NORM:optim { lr: 10 warmup_steps: 0 }' --final_window=2 "$@"
}
grouped >"$T/g.out" 2>"$T/g.err"
rc=$?
[[ $rc == 0 ]] || { cat "$T/g.err"; fail "seeds/depths sweep failed (exit $rc)"; }
grep -q "8/8 depth_2/POST_NORM/seed_8: complete" "$T/g.err" || { cat "$T/g.err"; fail "last run not reported"; }
for f in report.md report.html summary.csv groups.csv grad_norms.csv; do [[ -s "$OUT2/$f" ]] || fail "no $f"; done
python3 - "$OUT2" <<'PY' || fail "seeds/depths report"
import csv, json, math, re, sys
out = sys.argv[1]
runs = list(csv.DictReader(open(f"{out}/summary.csv")))
assert len(runs) == 8, len(runs)
first = {}
for r in runs:
    d, s, seed = r["depth"], r["strategy"], r["seed"]
    assert r["run"] == f"depth_{d}/{s}/seed_{seed}", r["run"]
    cfg = open(f"{out}/{r['run']}/config.textproto").read()
    assert re.search(rf"\bn_layers: {d}\b", cfg) and re.search(rf"\bseed: {seed}\b", cfg), r["run"]
    recs = [json.loads(l) for l in open(f"{out}/{r['run']}/metrics.jsonl")]
    first[(d, s, seed)] = next(x["data_hash"] for x in recs if x["kind"] == "train")
    # lr 10 blows depth 2's POST_NORM up (loss ~5 -> ~50, finite): diverged = last loss above the first.
    assert r["status"] == "complete", (r["run"], r["status"])
    assert r["diverged"] == ("1" if (d, s) == ("2", "POST_NORM") else "0"), (r["run"], r["diverged"])
# Data order: the seed decides it, not the strategy or the depth.
for seed in ("7", "8"):
    assert len({h for (d, s, sd), h in first.items() if sd == seed}) == 1, first
assert first[("1", "PRE_NORM", "7")] != first[("1", "PRE_NORM", "8")], first

def stats(v):
    m = sum(v) / len(v)
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
groups = {(g["depth"], g["strategy"]): g for g in csv.DictReader(open(f"{out}/groups.csv"))}
assert sorted(groups) == [("1", "POST_NORM"), ("1", "PRE_NORM"), ("2", "POST_NORM"), ("2", "PRE_NORM")], groups
loss = {k: [float(r["final_train_loss"]) for r in runs if (r["depth"], r["strategy"]) == k] for k in groups}
for k, g in groups.items():
    if k == ("2", "POST_NORM"):
        continue
    m, sd = stats(loss[k])
    assert abs(float(g["final_train_loss_mean"]) - m) < 1e-9 and abs(float(g["final_train_loss_std"]) - sd) < 1e-9, g
    assert float(g["final_train_loss_min"]) == min(loss[k]) and float(g["final_train_loss_max"]) == max(loss[k]), g
a, b = loss[("1", "POST_NORM")], loss[("1", "PRE_NORM")]
(ma, sa), (mb, sb) = stats(a), stats(b)
t = (ma - mb) / math.sqrt(sa * sa / 2 + sb * sb / 2)
df = (sa * sa / 2 + sb * sb / 2) ** 2 / ((sa * sa / 2) ** 2 + (sb * sb / 2) ** 2)
g = groups[("1", "POST_NORM")]
assert abs(float(g["welch_t"]) - t) < 1e-6 * max(1, abs(t)) and abs(float(g["welch_df"]) - df) < 1e-6, (g, t, df)
assert 0 <= float(g["welch_p"]) <= 1 and g["ranges_overlap"] in ("0", "1"), g
assert g["verdict"].startswith(("lower loss", "higher loss", "no significant difference")), g
assert groups[("1", "PRE_NORM")]["verdict"] == "baseline"
bad = groups[("2", "POST_NORM")]
assert bad["diverged"] == "2" and bad["verdict"] == "worse: every seed diverged (PRE_NORM did not)", bad

md = open(f"{out}/report.md").read()
for section in ("## Seeds: mean and spread per strategy", "### 1 blocks", "### 2 blocks", "## Depth",
                "## Gradient norms per block (mean over seeds)", "### 2 blocks, step 1",
                "worse: every seed diverged", "depth_2/POST_NORM/seed_8 diverged"):
    assert section in md, section
html = open(f"{out}/report.html").read()
# Bands: the loss and val curves of 4 groups (polygons), the 1-block gradient profiles (one point: a bar).
assert html.count('<polygon class="band"') >= 8 and "<script" not in html, html.count('<polygon class="band"')
assert html.count('<line class="band"') >= 4, html.count('<line class="band"')
for title in ("Training loss, 2 blocks (mean over seeds, band min..max)", "Final train loss against depth",
              "Attention gradient norm per block, 1 blocks, step 1", "FFN/expert gradient norm per block, 2 blocks"):
    assert title in html, title
gn = list(csv.DictReader(open(f"{out}/grad_norms.csv")))
assert {(r["depth"], r["seed"]) for r in gn} == {(d, s) for d in "12" for s in "78"}
print("ok: seeds/depths: 8 runs, groups.csv = recomputed mean/std/Welch, diverged group reported, bands in the HTML")
PY
echo "ok: seeds/depths sweep ($(grep -c . "$OUT2/groups.csv") lines of groups.csv)"
bad() { "$CMP" --config="$CONFIG" --train_bin="$TRAIN" --out="$T/bad2" --strategies=PRE_NORM,POST_NORM "$@"; }
expect_error "bad --seeds" "--seeds (0) must be a count N >= 1" bad --seeds=0
expect_error "repeated seed" "--seeds (3,3) must be a count N >= 1 or a comma-separated list of distinct seeds" \
  bad --seeds=3,3
expect_error "bad --depths" "--depths (4,x) must be a comma-separated list of distinct block counts >= 1" \
  bad --depths=4,x
expect_error "bad --baseline" "--baseline (SANDWICH) must be one of --strategies (PRE_NORM,POST_NORM)" \
  bad --baseline=SANDWICH
echo PASS
