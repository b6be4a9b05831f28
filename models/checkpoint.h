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
// MANIFEST.json are never loaded. Loading verifies sizes and checksums before reading any tensor, and a
// mismatch is an error naming the file (a corrupted checkpoint never starts a run from garbage).
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

// How this process takes part in writing: shard `index` of `count` writes its experts (shard 0 also the
// replicated tensors); ranks that only replicate another shard (data-parallel copies) do not write.
// `barrier` synchronises all ranks (no-op for one process).
struct CheckpointShard {
  int index = 0;
  int count = 1;
  bool writes = true;
  bool root = true;
  std::function<void()> barrier = [] {};
};

std::string CheckpointDirName(int64_t step);  // "step_00000040"

// Writes checkpoint `state.step` under run_dir/checkpoints and keeps the newest `keep_last`.
absl::Status SaveCheckpoint(const std::string& run_dir, Transformer& model, const AdamW& optimizer,
                            const TrainConfig& config, const TrainerState& state, int keep_last,
                            const CheckpointShard& shard = {});

// The newest complete checkpoint directory (one with a MANIFEST.json), or NotFound.
absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& run_dir);

// Checks MANIFEST.json against the files (existence, size, CRC-32C).
absl::Status VerifyCheckpoint(const std::string& dir);

// Verifies `dir`, then loads weights and optimizer state into the (already sharded) model and optimizer.
absl::StatusOr<TrainerState> LoadCheckpoint(const std::string& dir, Transformer& model, AdamW& optimizer);

}  // namespace hybridmoe
