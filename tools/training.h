// The training step of HybridMoE, the only one: `train` (tools/trainer.cc), `bench` (tools/bench.cc, so its
// figures are this step's), `compare_norms` (through `train`) and in-process tests all call Trainer::Step.
//
// One step, as data (the files that do each part):
//   this rank's micro-batches [B, S] (core/data.cc, chosen by the caller)
//   for each micro-batch: Transformer forward (models/transformer.cc, blocks in models/block.cc, MoE layers in
//     moe/moe_layer.cc with the expert-parallel all-to-all of parallel/ep_dispatcher.cc) -> loss / accum ->
//     backward (gradients accumulate)
//   -> the four loss terms summed over ranks (ParallelContext::SumOverRanks): the global means
//   -> gradient all-reduce (ParallelContext::SyncGradients, parallel/grad_sync.cc): gradients of the global
//      mean loss
//   -> global gradient norm and clip by it (ParallelContext::ClipGradNorm; the math in core/optim.cc)
//   -> AdamW at the schedule's learning rate (core/optim.cc), unless a loss or the norm is non-finite: then
//      the update is skipped and the step says so (the caller counts skips and decides when to abort)
//   -> aux-loss-free balancing (model.moe.bias_update_rate): each MoE layer's selection bias updated from the
//      step's expert counts, summed over ranks and micro-batches (they travel in the loss terms' all-reduce)
// With the global-batch LB scope (model.moe.lb_loss_scope GLOBAL_BATCH) a counting pass comes first: a forward
// of every micro-batch without a graph (Transformer::count_routing), whose counts, summed over ranks, give each
// layer's f for the whole step (one more forward per step).
// Gradients stay in place after a step (the next step resets them), so a caller can inspect them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "core/data.h"
#include "core/optim.h"
#include "models/transformer.h"
#include "parallel/context.h"
#include "proto/config.pb.h"

namespace hybridmoe {

struct StepOptions {
  std::optional<double> lr;  // the schedule's rate for the step when unset (bench times updates with lr = 0)
  bool poison_loss = false;  // fault injection: multiply the loss by NaN (tests the non-finite path)
  // Called after the gradient all-reduce, before clipping: the gradients of the global mean loss as they are
  // (the trainer's per-block gradient norms). It may run collectives: every rank calls it.
  std::function<void()> before_clip;
};

struct StepResult {
  // Means over ranks and micro-batches (the loss of the global batch).
  double loss = 0, lm_loss = 0, lb_loss = 0, z_loss = 0;
  double grad_norm = 0;     // global, before clipping
  double lr = 0;            // the rate used (or that would have been used, when the update was skipped)
  bool finite_loss = true;  // every rank's every loss term finite
  bool updated = false;     // AdamW ran (losses and grad_norm finite)
  // Wall time of the parts of the step on this rank, seconds.
  double forward_backward_s = 0, reduce_s = 0, clip_s = 0, optimizer_s = 0, total_s = 0;
};

class Trainer {
 public:
  // Builds the model of `config` with its experts sharded by `ctx`, initialises it from train.seed on the CPU
  // (the same weights on every device and layout), moves it to parallel.device (error when CUDA is asked for
  // and none is usable) and creates AdamW and the schedule from optim.*.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const TrainConfig& config, ParallelContext& ctx);

  // One optimizer step (see the top of this file) on this rank's micro-batches of step `step` (0-based; it
  // sets the learning rate). Every rank must call it with the same number of micro-batches.
  StepResult Step(int64_t step, const std::vector<Batch>& micro_batches, const StepOptions& options = {});

  Transformer& model() { return model_; }
  AdamW& optimizer() { return *optimizer_; }
  const std::vector<at::Tensor>& params() const { return params_; }
  const ScheduleOptions& schedule() const { return schedule_; }
  const at::Device& device() const { return device_; }
  ParallelContext& ctx() { return ctx_; }

 private:
  Trainer(const TrainConfig& config, ParallelContext& ctx, at::Device device);
  // The global-batch LB scope's counting pass over this rank's micro-batches (see the top of this file).
  void SetGlobalBatchF(const std::vector<Batch>& micro_batches);

  TrainConfig config_;
  ParallelContext& ctx_;
  at::Device device_;
  Transformer model_{nullptr};
  std::unique_ptr<AdamW> optimizer_;
  std::vector<at::Tensor> params_;
  ScheduleOptions schedule_;
};

// The device a rank trains on: parallel.device, error when CUDA is asked for and none is usable.
absl::StatusOr<at::Device> TrainingDevice(const TrainConfig& config, const ParallelContext& ctx);

// Whether any layer has the global-batch LB scope.
bool NeedsGlobalCounts(const std::vector<MoeLayer>& layers);
// Appends the step counts (step_counts_E) of each layer with a selection bias, in layer order.
void AppendBiasedCounts(const std::vector<MoeLayer>& layers, std::vector<double>& packed);
// Updates those layers' biases from the last counts AppendBiasedCounts packed (at the end of `packed`).
void UpdateSelectionBiases(std::vector<MoeLayer>& layers, const std::vector<double>& packed);

// Mean validation loss over `num_batches` batches of data.validation, every rank running the same number of
// forwards (expert parallelism exchanges tokens in each one); router statistics are not collected.
absl::StatusOr<double> Evaluate(Transformer& model, const DataLoader& data, int64_t micro_batch_size,
                                int64_t num_batches, ParallelContext& ctx);

}  // namespace hybridmoe
