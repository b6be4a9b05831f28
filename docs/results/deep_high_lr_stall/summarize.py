#!/usr/bin/env python3
"""Tabulates the stall investigation (run.sh) from each run's metrics.jsonl: per setting and strategy the
final train loss (mean of the last 5 logged), its distance to the unigram entropy of the training bytes,
whether the run stalled (final loss within 0.1 nats of the unigram entropy), the FFN/expert gradient norm
per block at step 1 and at the last step (median of all blocks but the last, and the last block), and the
collapse step: the first logged step where that median fell below 1/100 of the last block's value.
Usage (from the repository root): summarize.py OUT_DIR SETTING... > summary.md"""
import json, math, os, statistics, sys

out, settings = sys.argv[1], sys.argv[2:]
UNIGRAM = json.load(open("data/corpus/manifest.json"))["train_unigram_entropy_nats"]
print(f"Unigram entropy of the training bytes: {UNIGRAM:.4f} nats.\n")
print("| setting | strategy | final train loss | - unigram | stalled | FFN grad step 1: median blocks 0..L-2 / last "
      "| FFN grad last step: median blocks 0..L-2 / last | collapse step | max grad norm |")
print("|---|---|---:|---:|---|---:|---:|---:|---:|")
for s in settings:
    d = f"{out}/{s}"
    if not os.path.isdir(d):
        print(f"| {s} | (not run) | | | | | | | |")
        continue
    for st in sorted(os.listdir(d)):
        path = f"{d}/{st}/metrics.jsonl"
        if not os.path.exists(path):
            continue
        recs = [json.loads(l) for l in open(path) if l.strip()]
        tr = [r for r in recs if r.get("kind") == "train"]
        if not tr:
            continue
        def ffn(r):
            g, b = [], 0
            while f"grad_norm/block{b}/ffn" in r:
                g.append(r[f"grad_norm/block{b}/ffn"] or float("nan"))
                b += 1
            return g
        losses = [r["loss"] for r in tr if r["loss"] is not None and math.isfinite(r["loss"])]
        final = sum(losses[-5:]) / len(losses[-5:])
        g1, gl = ffn(tr[0]), ffn(tr[-1])
        med1 = statistics.median(g1[:-1]) if len(g1) > 1 else g1[0]
        medl = statistics.median(gl[:-1]) if len(gl) > 1 else gl[0]
        collapse = next((r["step"] for r in tr if len(ffn(r)) > 1 and
                         statistics.median(ffn(r)[:-1]) < ffn(r)[-1] / 100), None)
        gmax = max(r["grad_norm"] for r in tr if r["grad_norm"] is not None)
        stalled = "yes" if final > UNIGRAM - 0.1 else "no"
        print(f"| {s} | {st} | {final:.4f} | {final - UNIGRAM:+.4f} | {stalled} | {med1:.3g} / {g1[-1]:.3g} | "
              f"{medl:.3g} / {gl[-1]:.3g} | {collapse if collapse else '-'} | {gmax:.3g} |")
