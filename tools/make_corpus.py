#!/usr/bin/env python3
"""Assembles HybridMoE's bundled English corpus from text that Debian packages install.

Sources (all plain English prose written by people):
  * fortunes, fortunes-min: /usr/share/games/fortunes/<topic> (quotations, jokes, literature),
    one document per '%'-separated fortune; the ASCII-art collections are skipped.
  * dict-jargon: The Jargon File (/usr/share/dictd/jargon.dict.dz), one document per entry.
  * dict-devil: Ambrose Bierce's The Devil's Dictionary (/usr/share/dictd/devil.dict.dz), one per entry.

Tokens are bytes (vocabulary 256) of the UTF-8 text, documents joined by a blank line. Every 20th document
goes to validation, the rest to training, so both splits cover every source. Files are raw little-endian
uint16 token streams (the OLMo / nanoGPT `.bin` layout), plus manifest.json with sizes and the unigram
entropy of the training split (the loss a model that ignores context would reach).
"""
import argparse
import base64
import collections
import gzip
import json
import math
import os
import struct

FORTUNE_DIR = "/usr/share/games/fortunes"
DICT_DIR = "/usr/share/dictd"
SKIP_FORTUNES = {"art", "ascii-art"}
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dict_number(s):
    n = 0
    for c in s:
        n = n * 64 + B64.index(c)
    return n


def fortune_documents():
    for name in sorted(os.listdir(FORTUNE_DIR)):
        path = os.path.join(FORTUNE_DIR, name)
        if "." in name or name in SKIP_FORTUNES or not os.path.isfile(path) or os.path.islink(path):
            continue
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        for doc in text.split("\n%\n"):
            doc = doc.strip("%\n ")
            if len(doc) > 20:
                yield "fortunes/" + name, doc


def dict_documents(name):
    with gzip.open(os.path.join(DICT_DIR, name + ".dict.dz"), "rb") as f:
        body = f.read()
    with open(os.path.join(DICT_DIR, name + ".index"), encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or parts[0].startswith("00-database"):
                continue
            start, length = dict_number(parts[1]), dict_number(parts[2])
            doc = body[start:start + length].decode("utf-8", errors="replace").strip()
            if len(doc) > 20:
                yield "dict/" + name, doc


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/corpus")
    ap.add_argument("--val_every", type=int, default=20)
    args = ap.parse_args()

    docs = list(fortune_documents()) + list(dict_documents("jargon")) + list(dict_documents("devil"))
    if not docs:
        raise SystemExit("make_corpus: no source text found; run tools/setup.sh to install fortunes/dict-*")
    splits = {"train": bytearray(), "val": bytearray()}
    per_source = collections.Counter()
    for i, (source, doc) in enumerate(docs):
        split = "val" if i % args.val_every == args.val_every - 1 else "train"
        splits[split] += doc.encode("utf-8") + b"\n\n"
        per_source[source if source.startswith("dict/") else "fortunes"] += 1

    os.makedirs(args.out, exist_ok=True)
    manifest = {"tokenizer": "bytes", "vocab_size": 256, "dtype": "uint16", "documents": len(docs),
                "documents_per_source": dict(per_source)}
    for split, data in splits.items():
        tmp = os.path.join(args.out, split + ".bin.tmp")
        with open(tmp, "wb") as f:
            f.write(struct.pack("<%dH" % len(data), *data))
        os.replace(tmp, os.path.join(args.out, split + ".bin"))
        manifest[split + "_tokens"] = len(data)
    counts = collections.Counter(splits["train"])
    total = len(splits["train"])
    manifest["train_unigram_entropy_nats"] = -sum(c / total * math.log(c / total) for c in counts.values())
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    print(json.dumps(manifest, sort_keys=True))


if __name__ == "__main__":
    main()
