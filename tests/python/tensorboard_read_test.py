"""Reads event files written by core/tensorboard.cc with the real TensorBoard package.

tensorboard_write_scalars (C++) writes known scalars; this test recomputes the same formulas in Python and
checks what TensorBoard's own loaders see: every record passes TensorBoard's CRC checks (its raw record
reader), EventAccumulator finds exactly the expected tags, steps, wall times and values (float32: relative
tolerance 1e-6, zero exact), and TensorBoard logs nothing about truncated or corrupt records. A negative
control flips one byte in a copy of the file and checks that the same log capture does see the data loss,
so a silent failure of the capture cannot pass the test.
"""

import argparse
import logging
import os
import re
import shutil
import socket
import subprocess
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat import tf
from tensorboard.compat.proto import event_pb2

NUM_STEPS = 50
VAL_EVERY = 5
REL_TOL = 1e-6  # float32 simple_value vs. the float64 formula
DATA_LOSS_PATTERN = re.compile(r"truncat|data ?loss|crc|corrupt|fail", re.IGNORECASE)


def loss(s):
    return 2.0 + 8.0 / (1.0 + 0.1 * s)


def expected_scalars():
    """tag -> list of (step, wall_time, value), mirroring tensorboard_write_scalars.cc."""
    out = {"loss": [], "lm_loss": [], "lr": [], "val_loss": []}
    for s in range(1, NUM_STEPS + 1):
        wall = 1.7e9 + s
        out["loss"].append((s, wall, loss(s)))
        out["lm_loss"].append((s, wall, loss(s) - 0.001 * s))
        out["lr"].append((s, wall, 3e-4 * min((s - 1) / 10.0, 1.0)))
        if s % VAL_EVERY == 0:
            out["val_loss"].append((s, wall + 0.5, loss(s) + 0.125))
    return out


class LogCapture(logging.Handler):
    """Collects every record of the 'tensorboard' logger, DEBUG included (its data-loss notes are DEBUG)."""

    def __init__(self, run_dir):
        super().__init__(level=logging.DEBUG)
        self.run_dir = run_dir  # removed from messages before matching: only TensorBoard's words count
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        self.logger = logging.getLogger("tensorboard")
        self.old_level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.old_level)

    def problems(self):
        messages = [(r.levelno, r.getMessage().replace(self.run_dir, "<run_dir>")) for r in self.records]
        return [m for level, m in messages if level >= logging.WARNING or DATA_LOSS_PATTERN.search(m)]


def load(run_dir):
    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.SCALARS: 0})
    with LogCapture(run_dir) as capture:
        acc.Reload()
    return acc, capture.problems()


def read_raw_records(path):
    """Every record via TensorBoard's raw TFRecord reader; raises on a CRC failure or truncation."""
    reader = tf.pywrap_tensorflow.PyRecordReader_New(tf.compat.as_bytes(path), 0, b"", None)
    records = []
    while True:
        try:
            reader.GetNext()
        except tf.errors.OutOfRangeError:
            return records
        records.append(reader.record())


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def check_file(path):
    name = os.path.basename(path)
    pattern = r"events\.out\.tfevents\.\d{10}\." + re.escape(socket.gethostname()) + r"\.test"
    check(re.fullmatch(pattern, name), f"event file name {name!r} does not match {pattern!r}")

    if tf.__version__ == "stub":  # the raw reader below is TensorBoard's own CRC-checking one
        try:
            records = read_raw_records(path)
        except tf.errors.DataLossError as e:
            fail(f"TensorBoard's record reader rejected {path}: {e}")
        want = 1 + NUM_STEPS + NUM_STEPS // VAL_EVERY
        check(len(records) == want, f"{len(records)} records in {path}, expected {want}")
        first = event_pb2.Event.FromString(records[0])
        check(first.file_version == "brain.Event:2", f"first record file_version {first.file_version!r}")
    else:
        print("note: TensorFlow is installed; skipping the stub raw-record pass")


def check_scalars(acc, problems):
    check(not problems, f"TensorBoard logged data-loss/warnings: {problems}")
    want = expected_scalars()
    tags = sorted(acc.Tags()[event_accumulator.SCALARS])
    check(tags == sorted(want), f"scalar tags {tags}, expected {sorted(want)}")
    worst = 0.0
    for tag, points in want.items():
        got = acc.Scalars(tag)
        check([e.step for e in got] == [p[0] for p in points],
              f"{tag}: steps {[e.step for e in got]}, expected {[p[0] for p in points]}")
        for e, (step, wall, value) in zip(got, points):
            check(e.wall_time == wall, f"{tag} step {step}: wall_time {e.wall_time!r}, expected {wall!r}")
            if value == 0.0:
                check(e.value == 0.0, f"{tag} step {step}: value {e.value!r}, expected exactly 0")
                continue
            rel = abs(e.value - value) / abs(value)
            worst = max(worst, rel)
            check(rel <= REL_TOL,
                  f"{tag} step {step}: value {e.value!r}, expected {value!r} (rel err {rel:.2e})")
    return worst


def negative_control(path, tmp):
    """A corrupted copy must be noticed by the same log capture and lose scalars."""
    bad_dir = os.path.join(tmp, "flipped_byte_run")
    os.makedirs(bad_dir)
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle] ^= 0x40
    with open(os.path.join(bad_dir, os.path.basename(path)), "wb") as f:
        f.write(data)
    acc, problems = load(bad_dir)
    loaded = len(acc.Scalars("loss")) if "loss" in acc.Tags()[event_accumulator.SCALARS] else 0
    check(problems, "negative control: a flipped byte produced no data-loss log line; the capture is blind")
    check(loaded < NUM_STEPS, f"negative control: {loaded} loss points loaded from a corrupted file")
    return problems[0], loaded


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--writer", required=True)
    parser.add_argument("--tmp", required=True)
    args = parser.parse_args()

    run_dir = os.path.join(args.tmp, "tb_run")
    shutil.rmtree(run_dir, ignore_errors=True)
    out = subprocess.run([args.writer, run_dir, str(NUM_STEPS)], capture_output=True, text=True)
    check(out.returncode == 0, f"writer failed ({out.returncode}): {out.stderr.strip()}")
    files = os.listdir(run_dir)
    check(len(files) == 1, f"expected one event file in {run_dir}, found {files}")
    path = os.path.join(run_dir, files[0])
    check(out.stdout.strip() == path, f"writer reported {out.stdout.strip()!r}, directory holds {path!r}")

    check_file(path)
    acc, problems = load(run_dir)
    worst = check_scalars(acc, problems)
    message, loaded = negative_control(path, args.tmp)
    print(f"PASS: tensorboard {__import__('tensorboard').__version__} (tf {tf.__version__}) read "
          f"{NUM_STEPS} steps x 4 tags, worst rel err {worst:.2e}; corrupted copy: {loaded} loss points, "
          f"logged {message!r}")


if __name__ == "__main__":
    main()
