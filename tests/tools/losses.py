#!/usr/bin/env python3
"""Prints the train and eval records of a metrics.jsonl without their timing fields, one per line, so that two
runs can be compared with diff (resume and precision tests).

  losses.py METRICS_JSONL
"""
import json
import sys

TIMING = ("tokens_per_s", "elapsed_s")

for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["kind"] in ("train", "eval"):
        print({k: v for k, v in r.items() if k not in TIMING and not k.startswith("router/all_to_all")})
