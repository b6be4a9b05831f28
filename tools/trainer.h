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

// Stop signals (preemption, the end of a job slot): SIGTERM and SIGUSR1. Once InstallStopSignalHandlers ran,
// such a signal delivered to any rank only sets a flag; at the next step boundary every rank learns of it
// (a one-value all-reduce per step), a checkpoint of that step is written (unless one was just written) and
// Train returns OK with TrainOutcome::stop_signal set; `train` then exits with kExitStopped. A signal during
// the last step lets the run finish (exit 0). Under mpirun: mpirun forwards SIGUSR1 to every rank; SIGTERM
// sent to mpirun reaches the ranks only after odls_base_sigkill_timeout seconds (default 1) and is followed
// by SIGKILL as long again, so use SIGUSR1 there (README "Launching with mpirun and Slurm").
constexpr int kExitStopped = 75;  // EX_TEMPFAIL: checkpoint written, continue with --resume
void InstallStopSignalHandlers();

struct TrainOutcome {
  int stop_signal = 0;  // the signal that stopped the run (0: it ran to the end or to --stop_at_step)
  int64_t step = 0;     // steps completed (the step of the last checkpoint when stopped by a signal)
};

struct TrainOptions {
  std::string out_dir;
  // Continue from the newest intact checkpoint in out_dir: a damaged newer one (checksum, size, missing
  // file or manifest) is moved aside to checkpoints/damaged-step_N with one warning line naming both; when
  // no checkpoint is intact the run is refused with the first damage found.
  bool resume = false;
  bool quiet = false;  // no progress lines on stderr
  // Stop (with a checkpoint) once this many steps are done, without changing the schedule of
  // train.steps; 0 = run to train.steps. For time-limited job slots and for testing resume.
  int64_t stop_at_step = 0;
};

// Trains according to `config` (already validated for ctx's world size).
absl::Status Train(const TrainConfig& config, const TrainOptions& options, ParallelContext& ctx,
                   TrainOutcome* outcome = nullptr);

// The config of the run in `out_dir` for --resume without --config: out_dir/config.textproto, else that of
// its newest complete checkpoint; "" when the directory holds neither.
std::string RunConfigPath(const std::string& out_dir);

// Intra-op threads for one rank: parallel.num_threads, or cores / ranks on this node.
int DefaultThreads(const TrainConfig& config, int local_ranks);

}  // namespace hybridmoe
