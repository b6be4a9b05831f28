// Causal multi-head self-attention with rotary embeddings and optional q/k/v normalisation.
//
// Shapes: x_BSD -> q,k,v [B, H, S, h_d] -> fused scaled-dot-product attention (causal) -> [B, S, D] -> W_O.
// q/k/v norms (docs/formulas.md section 1.5): FULL_WIDTH normalises the D-wide projection before the head split
// (OLMoE), PER_HEAD normalises each h_d-wide head with one weight shared by all heads (HybridNorm).
// RoPE (theta, rotate-half convention) is applied to q and k after their norms. NormFormer's
// learnable per-head scale multiplies each head's output before W_O.
// Parameter names (wq, wk, wv, wo, q_norm, k_norm, v_norm, head_scale) are checkpoint keys.
// The RoPE tables are buffers (rope_cos, rope_sin: [S_max, h_d], fp32, grown to the longest sequence seen) so
// that module->to(device) moves them; they are no checkpoint keys: checkpoints and HF export enumerate
// named_parameters() only (models/weights.cc), and the tables are a function of the options.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "core/init.h"
#include "core/norm.h"
#include "core/precision.h"

namespace hybridmoe {

// Applies rotary embeddings to x [B, H, S, h_d] with cos/sin tables [S, h_d] (rotate-half convention).
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
// cos/sin tables [S, h_d] for positions 0..S-1, in fp32, on `device`.
std::pair<at::Tensor, at::Tensor> rope_tables(int64_t seq_len, int64_t head_dim, double theta,
                                              at::Device device = at::kCPU);

struct AttentionOptions {
  int64_t d_model = 128;
  int64_t n_heads = 4;
  double rope_theta = 10000;
  bool q_norm = false;
  bool k_norm = false;
  bool v_norm = false;
  bool per_head_norm = false;  // false = FULL_WIDTH
  NormKind norm_kind = NormKind::kRms;
  double eps = 1e-5;
  bool head_scale = false;  // NormFormer
};

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionOptions& options);
  at::Tensor forward(const at::Tensor& x_BSD);
  // `prefix` is this module's name in the model (for per-parameter init seeds).
  void reset_parameters(const InitPlan& plan, const std::string& prefix);
  // Mixed precision (core/precision.h): registers {wq, wk, wv} and {wo} with `copies` and computes with them.
  void set_compute_copies(ComputeCopies* copies);

  AttentionOptions options;
  at::Tensor wq, wk, wv, wo;  // [D, D] each, y = x W^T
  Norm q_norm{nullptr}, k_norm{nullptr}, v_norm{nullptr};
  at::Tensor head_scale;                    // [H], NormFormer only
  ComputeCopies* compute_copies = nullptr;  // not owned; null: fp32

 private:
  // The first seq_len rows of the RoPE buffers, grown on the buffers' device when too short.
  std::pair<at::Tensor, at::Tensor> RopeTables(int64_t seq_len);
  at::Tensor rope_cos_, rope_sin_;  // buffers [S_max, h_d]
};
TORCH_MODULE(Attention);

}  // namespace hybridmoe
