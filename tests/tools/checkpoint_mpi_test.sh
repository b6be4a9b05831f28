#!/bin/bash
# Checkpoints of a 2-rank run (mpirun -np 2, EP=2) through the real binary (models/checkpoint.h):
#  1. A flipped byte in the shard file that rank 1 verifies (model-00001-of-00002): rank 0 reports it in the
#     one warning line, both ranks fall back to the older checkpoint, and the losses equal an uninterrupted run's.
#  2. Checkpoint deadline: rank 1's shard write takes 5 s (fault injection) under parallel.timeout_s 2; the
#     data-size deadline (2 s + bytes at HYBRIDMOE_CHECKPOINT_MIN_MB_PER_S=0.01) covers it: the run finishes.
#     (With a plain barrier rank 0 would give up after 2 s.)
#  3. The same write past its deadline (floor 1000 MB/s, so about 2 s): the job ends non-zero with one line
#     naming rank 1, and no checkpoint is published.
#  4. One read per file: a resume under strace (each rank traced). Every rank opens each checkpoint file it
#     needs once (the tensor files memory-mapped, never read() too; verification checksums the pieces the
#     load reads), and opens its own shard's model and optimizer files; the losses equal the straight run's.
set -uo pipefail
TRAIN="$1"
CONFIG="$2"
MAKE_TOKENS="$3"
LOSSES="$(dirname "$MAKE_TOKENS")/losses.py"
T="${TEST_TMPDIR:-$(mktemp -d)}"
export TMPDIR="$T" OMPI_MCA_btl_vader_backing_directory="$T"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset TEST_PREMATURE_EXIT_FILE XML_OUTPUT_FILE
fail() { echo "FAIL: $*" >&2; exit 1; }

python3 "$MAKE_TOKENS" slice /usr/share/common-licenses/GPL-3 "$T/train.bin" || fail "make_tokens"
BASE="data { train { path: \"$T/train.bin\" } validation: \"\" seq_len: 32 micro_batch_size: 4 }
model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } }
optim { warmup_steps: 5 lr: 1e-2 } parallel { num_threads: 1 expert_parallel_size: 2 }
train { steps: 20 eval_interval: 0 } logging { log_interval: 2 } checkpoint { interval: 10 keep_last: 2 }"
MPI=(timeout 300 mpirun --oversubscribe -np 2)
losses() { python3 "$LOSSES" --train_only "$1"; }  # the train records without timing fields

"${MPI[@]}" "$TRAIN" --config="$CONFIG" --override="$BASE" --out_dir="$T/straight" --quiet >"$T/straight.log" 2>&1 \
  || { cat "$T/straight.log"; fail "straight run"; }

# 1. Damage in rank 1's shard.
cp -r "$T/straight" "$T/shard1"
shard="$T/shard1/checkpoints/step_00000020/model-00001-of-00002.safetensors"
python3 - "$shard" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 0x10; open(p, "wb").write(b)
PY
"${MPI[@]}" "$TRAIN" --resume --out_dir="$T/shard1" --quiet >"$T/shard1.log" 2>&1 || { cat "$T/shard1.log"; fail "resume"; }
[[ $(wc -l <"$T/shard1.log") == 1 ]] && grep -q "^\[train\] warning: checkpoint $T/shard1/checkpoints/step_00000020 is damaged (checkpoint file $shard: CRC-32C .* does not match MANIFEST.json .*); resuming from $T/shard1/checkpoints/step_00000010 (step 10)" \
  "$T/shard1.log" || { cat "$T/shard1.log"; fail "warning line"; }
diff <(losses "$T/straight/metrics.jsonl") <(losses "$T/shard1/metrics.jsonl") || fail "losses after the fallback differ"
echo "ok: damaged shard of rank 1 -> $(sed "s|$T/||g" "$T/shard1.log"); losses identical"

# 2. A slow shard write within the data-size deadline.
SLOW="parallel { timeout_s: 2 } train { steps: 10 }"
start=$(date +%s.%N)
HYBRIDMOE_FAULT_PAUSE_IN_SHARD_WRITE_S=5 HYBRIDMOE_CHECKPOINT_MIN_MB_PER_S=0.01 "${MPI[@]}" "$TRAIN" --config="$CONFIG" \
  --override="$BASE" --override="$SLOW" --out_dir="$T/slow" --quiet >"$T/slow.log" 2>&1 || { cat "$T/slow.log"; fail "slow write"; }
[[ -f "$T/slow/checkpoints/step_00000010/MANIFEST.json" ]] || fail "slow write: no checkpoint"
secs=$(grep -o '"kind": "checkpoint", "step": 10, [^}]*"seconds": [0-9.]*' "$T/slow/metrics.jsonl" | grep -o '[0-9.]*$')
python3 -c "import sys; sys.exit(0 if float('$secs') >= 5 else 1)" || fail "slow write: checkpoint took $secs s, the pause is 5 s"
echo "ok: rank 1 writes for ${secs} s under parallel.timeout_s 2: checkpoint written, run finished"

# 3. Past the deadline.
HYBRIDMOE_FAULT_PAUSE_IN_SHARD_WRITE_S=8 HYBRIDMOE_CHECKPOINT_MIN_MB_PER_S=1000 "${MPI[@]}" "$TRAIN" --config="$CONFIG" \
  --override="$BASE" --override="$SLOW" --out_dir="$T/stuck" --quiet >"$T/stuck.log" 2>&1
rc=$?
((rc != 0 && rc != 124)) || { cat "$T/stuck.log"; fail "stuck write: exit status $rc"; }
grep "^train: " "$T/stuck.log" >"$T/stuck.err"
[[ $(wc -l <"$T/stuck.err") == 1 ]] && grep -q "^train: checkpoint: writing the shards of $T/stuck/checkpoints/.tmp-step_00000010 did not finish within its deadline on rank 1 .*still busy: rank 1; is the file system stuck?$" \
  "$T/stuck.err" || { cat "$T/stuck.log"; fail "stuck write: message"; }
[[ ! -d "$T/stuck/checkpoints/step_00000010" ]] || fail "stuck write: checkpoint published"
echo "ok: stuck write -> $(sed "s|$T/||g" "$T/stuck.err") (exit $rc)"

# 4. Each file read once per load on each rank.
cp -r "$T/straight" "$T/reads"
rm -r "$T/reads/checkpoints/step_00000020"
"${MPI[@]}" bash -c 'exec strace -f -qq -e trace=openat,open,read,pread64,close -o "$0.$OMPI_COMM_WORLD_RANK" "$@"' \
  "$T/trace" "$TRAIN" --resume --out_dir="$T/reads" --quiet >"$T/reads.log" 2>&1 || { cat "$T/reads.log"; fail "traced resume"; }
diff <(losses "$T/straight/metrics.jsonl") <(losses "$T/reads/metrics.jsonl") || fail "traced resume: losses differ"
python3 - "$T/trace" "$T/reads/checkpoints/step_00000010" <<'PY' || fail "file reads"
import collections, re, sys
prefix, ckpt = sys.argv[1], sys.argv[2] + "/"
call = re.compile(r'^(\d+)\s+(openat|open|read|pread64|close)\((.*)\)\s+=\s+(-?\d+)')
for rank in (0, 1):
    opens, read_bytes, fds = collections.Counter(), collections.Counter(), {}
    for line in open(f"{prefix}.{rank}"):
        m = call.match(line)
        if not m:
            continue
        pid, name, args, ret = m.group(1), m.group(2), m.group(3), int(m.group(4))
        if name in ("openat", "open"):
            path = re.search(r'"([^"]*)"', args).group(1)
            if ret >= 0:
                fds[(pid, ret)] = path
                if path.startswith(ckpt):
                    opens[path[len(ckpt):]] += 1
        elif name == "close":
            fds.pop((pid, int(args.split(",")[0])), None)
        elif ret > 0:
            path = fds.get((pid, int(args.split(",")[0])), "")
            if path.startswith(ckpt):
                read_bytes[path[len(ckpt):]] += ret
    tensors = {f: n for f, n in opens.items() if f.endswith(".safetensors")}
    mine = [f"model-0000{rank}-of-00002.safetensors", f"optimizer-0000{rank}-of-00002.safetensors"]
    print(f"rank {rank}: opens {dict(sorted(opens.items()))}; read() bytes of tensor files "
          f"{ {f: read_bytes[f] for f in tensors if read_bytes[f]} }")
    assert all(opens[f] == 1 for f in mine), f"rank {rank} opened its own shard files {[opens[f] for f in mine]} times"
    assert all(n == 1 for n in opens.values()), f"rank {rank} opened a checkpoint file more than once: {opens}"
    assert not any(read_bytes[f] for f in tensors), f"rank {rank} read() tensor files besides mapping them"
PY
echo "ok: traced resume: each rank opened each checkpoint file once (tensor files mapped only); losses identical"
echo PASS
