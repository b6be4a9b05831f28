// AdamW with decoupled weight decay (PyTorch semantics), the warmup + cosine schedule, and global
// gradient-norm clipping.
//
// Update for each parameter p with gradient g at step t (1-based):
//   p <- p * (1 - lr * wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
//   p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// Weight decay applies to every parameter (docs/formulas.md section 7.1). A parameter whose gradient is undefined
// (e.g. an expert that saw no token) is treated as having a zero gradient, so every rank's state evolves
// identically. State tensors are named after their parameters (checkpoint keys: <name>.exp_avg, ...).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

namespace hybridmoe {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

class AdamW {
 public:
  AdamW(std::vector<std::pair<std::string, at::Tensor>> params, const AdamWOptions& options);
  void step(double lr);
  int64_t steps_taken() const { return step_; }
  void set_steps_taken(int64_t step) { step_ = step; }
  // name -> state tensor, for checkpoints ("<param>.exp_avg", "<param>.exp_avg_sq").
  std::vector<std::pair<std::string, at::Tensor>> state() const;
  const std::vector<std::pair<std::string, at::Tensor>>& params() const { return params_; }

 private:
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_;
  AdamWOptions options_;
  int64_t step_ = 0;
};

struct ScheduleOptions {
  double lr = 3e-3;
  int64_t warmup_steps = 0;
  double warmup_start_ratio = 0.1;
  double min_lr_ratio = 0.1;
  int64_t total_steps = 1;
};

// Learning rate for 0-based `step`: linear warmup from warmup_start_ratio * lr to lr over warmup_steps,
// then cosine decay to min_lr_ratio * lr at total_steps.
double LearningRate(const ScheduleOptions& s, int64_t step);

// Gradient norms and clipping: the only implementation (ParallelContext computes the global norm over its
// ranks with SquaredGradNorm and clips with ClipGradients).
// Sum of squared gradient entries, accumulated in fp64 (undefined gradients count as zero).
double SquaredGradNorm(const std::vector<at::Tensor>& params);
// L2 norm of the gradients of `params` (one process).
double GradNorm(const std::vector<at::Tensor>& params);
// Clipping by global norm: when max_norm > 0 and `norm` (the global gradient norm, however computed) is
// finite and above max_norm, every gradient is scaled by max_norm / (norm + 1e-6); otherwise nothing changes.
void ClipGradients(const std::vector<at::Tensor>& params, double norm, double max_norm);
// GradNorm + ClipGradients for one process; returns the norm before clipping.
double ClipGradNorm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace hybridmoe
