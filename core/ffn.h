// Dense SwiGLU feed-forward: down(silu(gate(x)) * up(x)), no biases (docs/formulas.md section 1.4).
//
// Shapes: x [..., D] -> hidden [..., F] -> [..., D]. NormFormer adds a norm on the F-wide hidden
// activation (`hidden_norm`). Parameter names (w_gate [F, D], w_up [F, D], w_down [D, F], hidden_norm)
// are checkpoint keys. The MoE experts (moe/experts.h) compute the same function per expert.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "core/init.h"
#include "core/norm.h"
#include "core/precision.h"

namespace hybridmoe {

// The SwiGLU math on explicit weights; `hidden_norm_weight` may be undefined.
at::Tensor swiglu(const at::Tensor& x, const at::Tensor& w_gate, const at::Tensor& w_up, const at::Tensor& w_down,
                  const at::Tensor& hidden_norm_weight = {}, NormKind kind = NormKind::kRms, double eps = 1e-5);

struct FeedForwardOptions {
  int64_t d_model = 128;
  int64_t hidden = 512;
  bool hidden_norm = false;  // NormFormer
  NormKind norm_kind = NormKind::kRms;
  double eps = 1e-5;
};

class FeedForwardImpl : public torch::nn::Module {
 public:
  explicit FeedForwardImpl(const FeedForwardOptions& options);
  at::Tensor forward(const at::Tensor& x);
  void reset_parameters(const InitPlan& plan, const std::string& prefix);
  // Mixed precision (core/precision.h): registers w_gate, w_up and w_down with `copies` and computes with them.
  void set_compute_copies(ComputeCopies* copies);

  FeedForwardOptions options;
  at::Tensor w_gate, w_up, w_down;
  Norm hidden_norm{nullptr};
  ComputeCopies* compute_copies = nullptr;  // not owned; null: fp32
};
TORCH_MODULE(FeedForward);

}  // namespace hybridmoe
