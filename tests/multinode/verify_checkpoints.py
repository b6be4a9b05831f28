#!/usr/bin/env python3
"""Checks every checkpoint of a run directory against its MANIFEST.json (byte size and CRC-32C of each file),
independently of the C++ loader. Directories being written (.tmp-*) are ignored; a directory named step_N
without a MANIFEST.json, or any mismatch, is damage. Prints one line per checkpoint; exit 1 on any damage.

  verify_checkpoints.py RUN_DIR [MIN_CHECKPOINTS]
"""
import json
import os
import sys

TABLE = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    TABLE.append(c)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value

run, need = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
root = os.path.join(run, "checkpoints")
names = sorted(n for n in os.listdir(root) if n.startswith("step_")) if os.path.isdir(root) else []
damaged = 0
for name in names:
    d = os.path.join(root, name)
    try:
        files = json.load(open(os.path.join(d, "MANIFEST.json")))["files"]
        for f, want in files.items():
            data = open(os.path.join(d, f), "rb").read()
            if len(data) != want["bytes"] or crc32c(data) != want["crc32c"]:
                raise ValueError("%s: %d bytes, CRC-32C %08x; MANIFEST.json says %d, %08x"
                                 % (f, len(data), crc32c(data), want["bytes"], want["crc32c"]))
        print("intact: %s (%d files)" % (d, len(files)))
    except Exception as e:  # noqa: BLE001 - any failure is damage
        print("DAMAGED: %s: %s" % (d, e))
        damaged += 1
if damaged or len(names) < need:
    print("%d damaged, %d checkpoints (want at least %d)" % (damaged, len(names), need))
    sys.exit(1)
