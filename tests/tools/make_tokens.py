#!/usr/bin/env python3
"""Token files (raw little-endian uint16, bytes as tokens) for the end-to-end tests.

  make_tokens.py bigram OUT [COUNT]         a random bigram language over all 256 byte values: each token
                                            has 4 likely successors (90 %), else any byte; seed 1234, so
                                            token frequencies are flat and no expert is favoured by the data
  make_tokens.py slice SRC OUT [START [END]]  the bytes SRC[START:END] of a text file (Python slice bounds)
"""
import random
import struct
import sys


def write(path, tokens):
    with open(path, "wb") as f:
        f.write(struct.pack("<%dH" % len(tokens), *tokens))


def main(argv):
    if len(argv) >= 2 and argv[0] == "bigram":
        count = int(argv[2]) if len(argv) > 2 else 200000
        r = random.Random(1234)
        succ = [[r.randrange(256) for _ in range(4)] for _ in range(256)]
        t, tokens = 0, []
        for _ in range(count):
            t = r.choice(succ[t]) if r.random() < 0.9 else r.randrange(256)
            tokens.append(t)
        write(argv[1], tokens)
    elif 3 <= len(argv) <= 5 and argv[0] == "slice":
        bounds = [int(v) for v in argv[3:]] + [None] * (5 - len(argv))
        write(argv[2], list(open(argv[1], "rb").read()[bounds[0]:bounds[1]]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
