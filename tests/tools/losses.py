#!/usr/bin/env python3
"""Prints the train and eval records of a metrics.jsonl without their timing fields, one per line, so that two
runs can be compared with diff (resume, preemption, checkpoint and precision tests).

  losses.py [--train_only] METRICS_JSONL
"""
import json
import sys

TIMING = ("tokens_per_s", "elapsed_s")

args = sys.argv[1:]
kinds = ("train",) if args[0] == "--train_only" else ("train", "eval")
for line in open(args[-1]):
    r = json.loads(line)
    if r["kind"] in kinds:
        print({k: v for k, v in r.items() if k not in TIMING and not k.startswith("router/all_to_all")})
