// Training checkpoints: everything needed to continue a run bit for bit.
//
// Layout of <run_dir>/checkpoints/step_<8 digits>/:
//   model.safetensors          weights (file keys of models/weights.h: experts by global id), or shards
//   optimizer.safetensors      AdamW moments, "<weight key>.exp_avg" / ".exp_avg_sq" (same key scheme)
//                              (with several expert-parallel shards: model-<i>-of-<n>.safetensors ... plus
//                              model.safetensors.index.json / optimizer.safetensors.index.json)
//   trainer_state.json         step, optimizer steps, skipped-step counters, seed (data order is a pure
//                              function of seed and step, so the step is the data position)
//   config.textproto           the run's resolved config
//   MANIFEST.json              byte size and CRC-32C of every other file; written last
// A checkpoint is written into checkpoints/.tmp-step_<N>/ and renamed into place only when complete, so
// a process killed at any moment leaves the previous checkpoints intact; directories without a valid
// MANIFEST.json are never loaded. Loading checks sizes before reading any tensor and checksums as it reads,
// and a mismatch is an error naming the file (a corrupted checkpoint never starts a run from garbage).
//
// Several processes (mpirun/srun): the work is spread so that no rank reads what another rank wrote or
// verifies what another rank verifies.
//   Saving: each writing rank writes its shard files and checksums them itself (re-reading only its own
//   files); the sizes, CRCs and tensor names travel to the root in one small gather, and the root writes the
//   indexes, trainer_state.json, config.textproto and MANIFEST.json and renames the directory.
//   Verifying: every file is checksummed by exactly one rank: a shard's files by the ranks that hold that
//   shard (they read it whole when loading at the same expert-parallel degree; its model and optimizer files
//   go to different data-parallel replicas when there are several), other files by the root; a checkpoint
//   written at another degree spreads its shard files round-robin over all ranks. The verdicts
//   are combined by one small all-reduce, so every rank reaches the same answer.
//   Loading: each rank reads only the tensors it holds (memory-mapped), once: the files it verifies are
//   checksummed in the same pass that loads them (bytes it does not load are read for the checksum only).
// Checkpoint deadline: a rank busy with checkpoint I/O keeps answering a small all-reduce every 0.25 s while
// the others wait, so a dead rank is still noticed within parallel.timeout_s, while the I/O itself may take
//   parallel.timeout_s + (bytes this rank reads and writes in that phase) / 10 MB/s
// before the job gives up with one line naming the ranks still busy (10 MB/s: the floor bandwidth;
// HYBRIDMOE_CHECKPOINT_MIN_MB_PER_S overrides it). A plain barrier would give the I/O parallel.timeout_s only,
// which the flagship's ~83 GB of fp32 state cannot meet.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/optim.h"
#include "models/transformer.h"
#include "proto/config.pb.h"

namespace hybridmoe {

struct TrainerState {
  int64_t step = 0;             // completed training steps
  int64_t optimizer_steps = 0;  // AdamW updates taken (steps minus skipped ones)
  int64_t skipped_steps = 0;
  int64_t consecutive_bad_steps = 0;
  uint64_t seed = 0;
};

// How this process takes part in a checkpoint: shard `index` of `count` writes its experts (shard 0 also the
// replicated tensors); ranks that only replicate another shard (data-parallel copies) do not write. The
// defaults describe one process. Every operation below that takes a CheckpointShard is collective: all
// `world` ranks call it with the same arguments (their own CheckpointShard) and get the same verdict.
struct CheckpointShard {
  int index = 0;     // expert-parallel rank
  int count = 1;     // expert-parallel size
  int replica = 0;   // data-parallel rank: replica 0 of each shard writes it
  int replicas = 1;  // data-parallel size
  bool root = true;  // world rank 0: writes the manifest and the shared files
  int rank = 0;      // world rank and size
  int world = 1;
  double timeout_s = 300;  // parallel.timeout_s (see "Checkpoint deadline" above)
  // Element-wise sum over all ranks, in place (the small collective that combines verdicts).
  std::function<void(std::vector<double>&)> sum = [](std::vector<double>&) {};
  // Each rank's bytes on the root, in rank order; other ranks get an empty vector.
  std::function<std::vector<std::string>(const std::string&)> gather = [](const std::string& bytes) {
    return std::vector<std::string>{bytes};
  };
};

std::string CheckpointDirName(int64_t step);  // "step_00000040"

// Writes checkpoint `state.step` under run_dir/checkpoints and keeps the newest `keep_last`.
absl::Status SaveCheckpoint(const std::string& run_dir, Transformer& model, const AdamW& optimizer,
                            const TrainConfig& config, const TrainerState& state, int keep_last,
                            const CheckpointShard& shard = {});

// Every checkpoint directory (step_*, whether complete or not), newest first.
std::vector<std::string> ListCheckpoints(const std::string& run_dir);

// The newest complete checkpoint directory (one with a MANIFEST.json), or NotFound.
absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& run_dir);

// Renames a damaged checkpoint directory .../step_N to .../damaged-step_N (damaged-step_N.1, ... if taken),
// out of the step_* namespace: never loaded or pruned again. Returns the new path.
absl::StatusOr<std::string> SetAsideCheckpoint(const std::string& dir);

// Checks MANIFEST.json against the files (existence, size, CRC-32C), each file on one rank (see above),
// without loading anything (LoadCheckpoint verifies as it loads; this is for tools that only check).
// OK on every rank, or on every rank an error with the status code of the first problem; the root's
// message names the file (DataLoss / NotFound: the checkpoint is damaged).
absl::Status VerifyCheckpoint(const std::string& dir, const CheckpointShard& shard = {});

// Loads weights and optimizer state into the (already sharded) model and optimizer, verifying the files in
// the same pass: each rank reads each file it needs once (memory-mapped, tensor by tensor), checksumming the
// bytes as it copies them, and checks the files assigned to it as VerifyCheckpoint would (sizes before
// anything is read, checksums at the end). OK on every rank, or on every rank the same error (DataLoss /
// NotFound when the checkpoint is damaged). On error the model and optimizer hold a mix of old and new
// values: load another checkpoint (which overwrites every tensor) or stop.
absl::StatusOr<TrainerState> LoadCheckpoint(const std::string& dir, Transformer& model, AdamW& optimizer,
                                            const CheckpointShard& shard = {});

}  // namespace hybridmoe
