// The training loop behind `train`: data -> model -> loss -> backward -> gradient sync -> clip -> AdamW ->
// schedule, with progress on stderr and the run directory on disk.
//
// Run directory (the public contract, see DESIGN.md; written by rank 0):
//   config.textproto      the resolved configuration (every default filled in)
//   metrics.jsonl         one JSON object per line: "kind": "train" per logged step (step, loss, lm_loss,
//                         lb_loss, z_loss, grad_norm, lr, tokens_per_s, router summaries, ...), "eval" per
//                         validation pass, "checkpoint" per checkpoint written, "skip"/"abort" for
//                         non-finite steps
//   events.out.tfevents.* TensorBoard scalars (train/..., val/..., router/...)
//   router_stats.pb       per-layer router statistics records (tools/router_stats reads them)
//   checkpoints/step_N/   see models/checkpoint.h
// Distributed runs (mpirun/srun) see the same global batch as one rank accumulating world_size x
// grad_accum_steps micro-batches: rank r's micro-batch m holds global samples (r * accum + m) * B ....
#pragma once

#include <string>

#include "absl/status/status.h"
#include "parallel/context.h"
#include "proto/config.pb.h"

namespace hybridmoe {

struct TrainOptions {
  std::string out_dir;
  bool resume = false;  // continue from the newest complete checkpoint in out_dir
  bool quiet = false;   // no progress lines on stderr
  // Stop (with a checkpoint) once this many steps are done, without changing the schedule of
  // train.steps; 0 = run to train.steps. For time-limited job slots and for testing resume.
  int64_t stop_at_step = 0;
};

// Trains according to `config` (already validated for ctx's world size).
absl::Status Train(const TrainConfig& config, const TrainOptions& options, ParallelContext& ctx);

// Intra-op threads for one rank: parallel.num_threads, or cores / ranks on this node.
int DefaultThreads(const TrainConfig& config, int local_ranks);

}  // namespace hybridmoe
