// AdamW with decoupled weight decay (PyTorch semantics), the warmup + cosine schedule, and global
// gradient-norm clipping.
//
// Update for each parameter p with gradient g at step t (1-based):
//   p <- p * (1 - lr * wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
//   p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// Weight decay applies to every parameter (SPEC's recipe). A parameter whose gradient is undefined
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

// Global L2 norm of the gradients (undefined gradients count as zero).
double GradNorm(const std::vector<at::Tensor>& params);
// Scales gradients so their global norm is at most max_norm (max_norm <= 0: no-op); returns the norm before.
double ClipGradNorm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace hybridmoe
