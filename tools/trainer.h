// The training loop behind `train` (and, later, sweeps): data -> model -> loss -> backward -> clip ->
// AdamW -> schedule, with progress on stderr, metrics.jsonl and the resolved config in the run directory.
//
// Run directory layout (the public contract, see DESIGN.md):
//   config.textproto  the resolved configuration (every default filled in)
//   metrics.jsonl     one JSON object per logged step ("kind": "train") and per evaluation ("kind": "eval")
#pragma once

#include <string>

#include "absl/status/status.h"
#include "proto/config.pb.h"

namespace hybridmoe {

struct TrainOptions {
  std::string out_dir;
  bool quiet = false;  // no progress lines on stderr
};

// Trains according to `config` (already validated). Returns an error Status for bad data or a run
// directory that already holds a run.
absl::Status Train(const TrainConfig& config, const TrainOptions& options);

// Intra-op threads for one rank: parallel.num_threads, or cores / ranks on this node.
int DefaultThreads(const TrainConfig& config);

}  // namespace hybridmoe
