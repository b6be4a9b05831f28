#include "core/optim.h"

#include <cmath>
#include <map>

namespace hybridmoe {

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> params, const AdamWOptions& options)
    : params_(std::move(params)), options_(options) {
  for (const auto& [name, p] : params_) {
    exp_avg_.push_back(at::zeros_like(p));
    exp_avg_sq_.push_back(at::zeros_like(p));
  }
}

void AdamW::step(double lr) {
  at::NoGradGuard no_grad;
  ++step_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  // One fused update per (device, dtype) group: ATen's _fused_adamw_ makes one pass over p, g, m, v per
  // tensor instead of seven elementwise ops. It reads the step count from a tensor, as torch.optim does.
  std::map<std::pair<std::string, at::ScalarType>, std::vector<size_t>> groups;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i].second;
    if (p.is_contiguous()) {
      groups[{p.device().str(), p.scalar_type()}].push_back(i);
      continue;
    }
    // The plain update (a non-contiguous parameter; never the case for our modules).
    const at::Tensor g = p.grad().defined() ? p.grad() : at::zeros_like(p);
    p.mul_(1.0 - lr * options_.weight_decay);
    exp_avg_[i].lerp_(g, 1.0 - b1);
    exp_avg_sq_[i].mul_(b2).addcmul_(g, g, 1.0 - b2);
    const at::Tensor denom =
        (exp_avg_sq_[i].sqrt() / std::sqrt(1.0 - std::pow(b2, static_cast<double>(step_)))).add_(options_.eps);
    p.addcdiv_(exp_avg_[i], denom, -lr / (1.0 - std::pow(b1, static_cast<double>(step_))));
  }
  for (const auto& [key, indices] : groups) {
    std::vector<at::Tensor> p, g, m, v;
    for (const size_t i : indices) {
      const at::Tensor& param = params_[i].second;
      p.push_back(param);
      g.push_back(param.grad().defined() ? param.grad().contiguous() : at::zeros_like(param));
      m.push_back(exp_avg_[i]);
      v.push_back(exp_avg_sq_[i]);
    }
    const at::Tensor step = at::full({}, static_cast<double>(step_), p[0].options().dtype(at::kFloat));
    const std::vector<at::Tensor> steps(p.size(), step);
    at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, steps, lr, b1, b2, options_.weight_decay, options_.eps,
                      /*amsgrad=*/false, /*maximize=*/false);
    // The fused kernel does not bump the parameters' version counters (as of torch 2.11); do it, so that
    // whatever keys on them (the bf16 compute copies of core/precision.h, autograd's saved-tensor check)
    // sees the update.
    for (at::Tensor& param : p) param.unsafeGetTensorImpl()->bump_version();
  }
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back(params_[i].first + ".exp_avg", exp_avg_[i]);
    out.emplace_back(params_[i].first + ".exp_avg_sq", exp_avg_sq_[i]);
  }
  return out;
}

double LearningRate(const ScheduleOptions& s, int64_t step) {
  if (step < s.warmup_steps) {
    const double frac = static_cast<double>(step) / static_cast<double>(s.warmup_steps);
    return s.lr * (s.warmup_start_ratio + (1.0 - s.warmup_start_ratio) * frac);
  }
  const double decay_steps = static_cast<double>(std::max<int64_t>(1, s.total_steps - s.warmup_steps));
  const double progress = std::min(1.0, static_cast<double>(step - s.warmup_steps) / decay_steps);
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return s.lr * (s.min_lr_ratio + (1.0 - s.min_lr_ratio) * cosine);
}

double SquaredGradNorm(const std::vector<at::Tensor>& params) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const at::Tensor& p : params) {
    if (p.grad().defined() && p.numel() > 0) grads.push_back(p.grad());
  }
  if (grads.empty()) return 0;
  // One multi-tensor kernel for the per-tensor norms and one host sync, instead of a cast, a reduction
  // and a sync per parameter; the squares are summed in double.
  const std::vector<at::Tensor> norms = at::_foreach_norm(grads, 2);
  return at::stack(norms).to(at::kDouble).pow(2).sum().item<double>();
}

double GradNorm(const std::vector<at::Tensor>& params) { return std::sqrt(SquaredGradNorm(params)); }

void ClipGradients(const std::vector<at::Tensor>& params, double norm, double max_norm) {
  if (!(max_norm > 0) || !std::isfinite(norm) || norm <= max_norm) return;
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const at::Tensor& p : params) {
    if (p.grad().defined() && p.numel() > 0) grads.push_back(p.grad());
  }
  if (!grads.empty()) at::_foreach_mul_(grads, max_norm / (norm + 1e-6));
}

double ClipGradNorm(const std::vector<at::Tensor>& params, double max_norm) {
  const double norm = GradNorm(params);
  ClipGradients(params, norm, max_norm);
  return norm;
}

}  // namespace hybridmoe
