// Grouped SwiGLU experts: the experts of one rank, computed over contiguous per-expert slices.
//
// Legend: S slots (rows), D width, F expert hidden width, E_local experts on this rank.
// Weights are stacked per expert: w_gate_EFD, w_up_EFD [E_local, F, D], w_down_EDF [E_local, D, F].
// forward(x_SD, counts) runs one GEMM chain per non-empty expert on its slice (rows already grouped by
// expert); no per-token work. Expert e of this module is global expert first_expert + e, which is the id
// used for initialisation seeds and checkpoint keys, so results do not depend on the sharding.
// NormFormer's hidden norm has one weight row per expert (hidden_norm [E_local, F]).
#pragma once

#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "core/init.h"
#include "core/norm.h"
#include "core/precision.h"

namespace hybridmoe {

struct ExpertsOptions {
  int64_t num_local_experts = 8;
  int64_t first_expert = 0;
  int64_t d_model = 128;
  int64_t hidden = 256;
  bool hidden_norm = false;
  NormKind norm_kind = NormKind::kRms;
  double eps = 1e-5;
};

class GroupedExpertsImpl : public torch::nn::Module {
 public:
  explicit GroupedExpertsImpl(const ExpertsOptions& options);
  // x_SD rows grouped by local expert, counts[e] rows for expert e (sum = S). Returns y_SD.
  at::Tensor forward(const at::Tensor& x_SD, const std::vector<int64_t>& counts);
  void reset_parameters(const InitPlan& plan, const std::string& prefix);
  // Mixed precision (core/precision.h): registers w_gate, w_up and w_down with `copies` and computes with them.
  void set_compute_copies(ComputeCopies* copies);

  ExpertsOptions options;
  at::Tensor w_gate, w_up, w_down;
  ComputeCopies* compute_copies = nullptr;   // not owned; null: fp32
  at::Tensor hidden_norm, hidden_norm_bias;  // NormFormer only ([E_local, F]; bias for LayerNorm)
};
TORCH_MODULE(GroupedExperts);

}  // namespace hybridmoe
