#include "tools/training.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <optional>

#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/trace.h"
#include "parallel/device.h"

namespace hybridmoe {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

}  // namespace

absl::StatusOr<at::Device> TrainingDevice(const TrainConfig& config, const ParallelContext& ctx) {
  const int count = at::hasCUDA() ? static_cast<int>(at::getNumGPUs()) : 0;
  ASSIGN_OR_RETURN(const at::Device device,
                   ChooseDevice(config.parallel().device(), ctx.local_rank(), ctx.local_size(), count));
  SelectDevice(device);
  return device;
}

Trainer::Trainer(const TrainConfig& config, ParallelContext& ctx, at::Device device)
    : config_(config), ctx_(ctx), device_(device) {}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const TrainConfig& config, ParallelContext& ctx) {
  ASSIGN_OR_RETURN(const at::Device device, TrainingDevice(config, ctx));
  std::unique_ptr<Trainer> t(new Trainer(config, ctx, device));
  t->model_ = Transformer(TransformerOptionsFromConfig(config.model()));
  ctx.ShardExperts(t->model_);
  t->model_->reset_parameters(config.train().seed());  // on the CPU: the same initial weights on every device
  t->model_->to(device);
  t->model_->set_compute_dtype(ComputeDtype(config, device, ctx.rank() == 0));
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : t->model_->named_parameters()) {
    named.emplace_back(item.key(), item.value());
    t->params_.push_back(item.value());
  }
  AdamWOptions adam;
  adam.beta1 = config.optim().beta1();
  adam.beta2 = config.optim().beta2();
  adam.eps = config.optim().eps();
  adam.weight_decay = config.optim().weight_decay();
  t->optimizer_ = std::make_unique<AdamW>(std::move(named), adam);
  t->schedule_.lr = config.optim().lr();
  t->schedule_.warmup_steps = config.optim().warmup_steps();
  t->schedule_.warmup_start_ratio = config.optim().warmup_start_ratio();
  t->schedule_.min_lr_ratio = config.optim().min_lr_ratio();
  t->schedule_.total_steps = config.train().steps();
  return t;
}

void Trainer::SetGlobalBatchF(const std::vector<Batch>& micro_batches) {
  TraceScope scope(trace::kForward);
  std::vector<MoeLayer> layers = model_->moe_layers();
  std::vector<at::Tensor> sum;
  for (const Batch& batch : micro_batches) {
    const std::vector<at::Tensor> counts = model_->count_routing(batch.inputs.to(device_));
    if (sum.empty()) {
      sum = counts;
    } else {
      for (size_t l = 0; l < counts.size(); ++l) sum[l] = sum[l] + counts[l];
    }
  }
  // One all-reduce for every layer's counts: the global batch's.
  std::vector<double> packed;
  for (const at::Tensor& c : sum) {
    const at::Tensor host = c.to(at::kCPU).to(at::kDouble).contiguous();
    packed.insert(packed.end(), host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
  }
  ctx_.SumOverRanks(packed);
  size_t offset = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    const int64_t E = layers[l]->options.num_experts;
    at::Tensor c = at::tensor(std::vector<double>(packed.begin() + offset, packed.begin() + offset + E), at::kDouble);
    offset += E;
    if (layers[l]->options.lb_scope == LoadBalanceScope::kGlobalBatch)
      layers[l]->global_f_E = (c / c.sum()).to(device_);
  }
}

StepResult Trainer::Step(int64_t step, const std::vector<Batch>& micro_batches, const StepOptions& options) {
  TORCH_CHECK(!micro_batches.empty(), "Trainer::Step needs at least one micro-batch");
  StepResult r;
  const auto t0 = Clock::now();
  r.lr = options.lr.has_value() ? *options.lr : LearningRate(schedule_, step);
  for (at::Tensor& p : params_) p.mutable_grad().reset();
  std::vector<MoeLayer> layers = model_->moe_layers();
  if (NeedsGlobalCounts(layers)) SetGlobalBatchF(micro_batches);

  const double accum = static_cast<double>(micro_batches.size());
  // loss, lm, lb, z (means over micro-batches), non-finite flag, then the step's expert counts of every layer
  // with aux-loss-free balancing (summed over ranks by the same all-reduce).
  std::vector<double> local = {0, 0, 0, 0, 0};
  for (auto& layer : layers) layer->step_counts_E.zero_();
  for (const Batch& batch : micro_batches) {
    ModelOutput out;
    {
      TraceScope scope(trace::kForward);
      out = model_(batch.inputs.to(device_), batch.targets.to(device_));
      if (options.poison_loss) out.loss = out.loss * std::numeric_limits<double>::quiet_NaN();
    }
    {
      TraceScope scope(trace::kBackward);
      (out.loss / accum).backward();
      model_->accumulate_compute_grads();  // bf16 copies' gradients into the fp32 masters' .grad
    }
    // One device-to-host copy for the four terms (one sync on a GPU, not four).
    std::vector<at::Tensor> terms;
    for (const at::Tensor* t : {&out.loss, &out.lm_loss, &out.lb_loss, &out.z_loss}) {
      terms.push_back(t->detach().reshape({}).to(at::kDouble));
    }
    const at::Tensor host = at::stack(terms).to(at::kCPU);
    const double* values = host.data_ptr<double>();
    for (int i = 0; i < 4; ++i) {
      local[i] += values[i] / accum;
      if (!std::isfinite(values[i])) local[4] = 1;
    }
  }
  r.forward_backward_s = Seconds(t0);
  AppendBiasedCounts(layers, local);

  const auto t1 = Clock::now();
  std::optional<TraceScope> scope;
  scope.emplace(trace::kGradSync);
  ctx_.SumOverRanks(local);
  const double world = static_cast<double>(ctx_.world_size());
  r.loss = local[0] / world;
  r.lm_loss = local[1] / world;
  r.lb_loss = local[2] / world;
  r.z_loss = local[3] / world;
  r.finite_loss = local[4] == 0;
  ctx_.SyncGradients(model_);  // gradients of the global mean loss
  r.reduce_s = Seconds(t1);
  scope.reset();
  if (options.before_clip) options.before_clip();

  const auto t2 = Clock::now();
  scope.emplace(trace::kClip);
  r.grad_norm = ctx_.ClipGradNorm(model_, config_.optim().grad_clip());  // no-op when the norm is not finite
  r.clip_s = Seconds(t2);
  scope.reset();

  const auto t3 = Clock::now();
  scope.emplace(trace::kOptimizer);
  r.updated = r.finite_loss && std::isfinite(r.grad_norm);
  if (r.updated) {
    optimizer_->step(r.lr);
    UpdateSelectionBiases(layers, local);
  }
  for (auto& layer : layers) layer->global_f_E = at::Tensor();
  r.optimizer_s = Seconds(t3);
  scope.reset();
  r.total_s = Seconds(t0);
  return r;
}

bool NeedsGlobalCounts(const std::vector<MoeLayer>& layers) {
  for (const auto& layer : layers) {
    if (layer->options.lb_scope == LoadBalanceScope::kGlobalBatch) return true;
  }
  return false;
}

void AppendBiasedCounts(const std::vector<MoeLayer>& layers, std::vector<double>& packed) {
  for (const auto& layer : layers) {
    if (!layer->selection_bias.defined()) continue;
    const at::Tensor host = layer->step_counts_E.to(at::kCPU).to(at::kDouble).contiguous();
    packed.insert(packed.end(), host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
  }
}

void UpdateSelectionBiases(std::vector<MoeLayer>& layers, const std::vector<double>& packed) {
  size_t offset = packed.size();
  for (auto& layer : layers) {
    if (layer->selection_bias.defined()) offset -= layer->options.num_experts;
  }
  for (auto& layer : layers) {
    if (!layer->selection_bias.defined()) continue;
    const int64_t E = layer->options.num_experts;
    layer->update_selection_bias(
        at::tensor(std::vector<double>(packed.begin() + offset, packed.begin() + offset + E), at::kDouble));
    offset += E;
  }
}

absl::StatusOr<double> Evaluate(Transformer& model, const DataLoader& data, int64_t micro_batch_size,
                                int64_t num_batches, ParallelContext& ctx) {
  at::NoGradGuard no_grad;
  for (auto& layer : model->moe_layers()) layer->collect_stats = false;
  const int64_t world = ctx.world_size(), rounds = (num_batches + world - 1) / world;
  std::vector<double> sum = {0, 0};
  absl::Status status;
  for (int64_t r = 0; r < rounds && status.ok(); ++r) {
    const int64_t i = r * world + ctx.rank();
    auto batch = data.ValidationBatch(i < num_batches ? i : 0, micro_batch_size, num_batches);
    if (!batch.ok()) {
      status = batch.status();
      break;
    }
    const at::Device device = model->embed.device();
    const double loss = model(batch->inputs.to(device), batch->targets.to(device)).lm_loss.item<double>();
    if (i < num_batches) {
      sum[0] += loss;
      sum[1] += 1;
    }
  }
  for (auto& layer : model->moe_layers()) layer->collect_stats = true;
  RETURN_IF_ERROR(status);
  ctx.SumOverRanks(sum);
  return sum[0] / sum[1];
}

}  // namespace hybridmoe
