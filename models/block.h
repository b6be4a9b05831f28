// The transformer block, where the norm strategy is interpreted - in exactly one place.
//
// ResolveBlockLayout() maps (strategy, block index, depth) to a BlockLayout: the form of each of the two
// sub-layers (docs/formulas.md section 2.1) plus the attention/FFN extras the strategy asks for. TransformerBlock only
// follows the layout, so the FFN slot can be dense or MoE independently of the strategy.
//   kPre           Y = X + s * F(N(X))
//   kPost          Y = N(X + F(X))
//   kNone          Y = X + F(X)
//   kNormResidual  Y = N(X) + F(N(X))            (HybridNorm's FFN side)
//   kSandwich      Y = X + N2(F(N1(X)))          (Peri-LN; NormFormer's attention side)
//   kDeep          Y = N(alpha * X + F(X))       (DeepNorm)
// Norm names: `attn_norm`/`ffn_norm` are the norms on (or replacing) the sub-layer input, and
// `attn_out_norm`/`ffn_out_norm` the ones after F or after the residual add. They are checkpoint keys.
#pragma once

#include <string>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "core/attention.h"
#include "core/ffn.h"
#include "core/init.h"
#include "core/norm.h"
#include "moe/moe_layer.h"

namespace hybridmoe {

enum class NormStrategy {
  kPreNorm,
  kPostNorm,
  kQkNorm,
  kQkvNorm,
  kHybridNorm,
  kHybridNormStar,
  kMixLn,
  kSandwich,
  kDeepNorm,
  kNormFormer,
};

enum class SubLayerForm { kPre, kPost, kNone, kNormResidual, kSandwich, kDeep };

struct NormStrategyOptions {
  NormStrategy strategy = NormStrategy::kHybridNorm;
  NormKind kind = NormKind::kRms;
  double eps = 1e-5;
  int per_head_qkv_norm = -1;  // -1: the strategy's own granularity; 0 full width; 1 per head
  double mix_ln_alpha = 0.25;
  bool normformer_residual_scale = false;
};

struct BlockLayout {
  SubLayerForm attn_form = SubLayerForm::kPre;
  SubLayerForm ffn_form = SubLayerForm::kPre;
  bool q_norm = false, k_norm = false, v_norm = false, per_head_norm = false;
  bool head_scale = false;          // NormFormer
  bool ffn_hidden_norm = false;     // NormFormer
  bool ffn_residual_scale = false;  // NormFormer (optional)
  double residual_alpha = 1.0;      // DeepNorm's alpha = (2L)^(1/4)
};

BlockLayout ResolveBlockLayout(const NormStrategyOptions& norm, int64_t layer, int64_t n_layers);
// Whether a sub-layer of this form has a norm on (or replacing) its input, and one after F or the add.
bool UsesInputNorm(SubLayerForm form);
bool UsesOutputNorm(SubLayerForm form);
// DeepNorm's init scale (8L)^(-1/4) for v, out and FFN weights; 1 for every other strategy.
double ResidualInitScale(const NormStrategyOptions& norm, int64_t n_layers);
const char* NormStrategyName(NormStrategy s);

struct BlockOptions {
  int64_t layer = 0;
  int64_t n_layers = 1;
  AttentionOptions attention;
  NormStrategyOptions norm;
  bool moe = false;
  FeedForwardOptions ffn;  // when !moe
  MoeOptions moe_options;  // when moe
};

struct BlockOutput {
  at::Tensor x;
  at::Tensor lb_loss;  // undefined for dense blocks
  at::Tensor z_loss;
  at::Tensor experts_TK;  // MoE blocks: the router's choice (replayed by activation checkpointing's recompute)
  at::Tensor counts_E;    // MoE blocks: slots routed to each expert
};

class TransformerBlockImpl : public torch::nn::Module {
 public:
  explicit TransformerBlockImpl(const BlockOptions& options);
  // replay_experts_TK: for an MoE block, the choice of experts of an earlier forward of the same input.
  BlockOutput forward(const at::Tensor& x_BSD, const at::Tensor& replay_experts_TK = {});
  void reset_parameters(const InitPlan& plan, const std::string& prefix);
  // Mixed precision: the attention's, FFN's or experts' GEMM weights compute from `copies` (core/precision.h).
  void set_compute_copies(ComputeCopies* copies);

  BlockOptions options;
  BlockLayout layout;
  Attention attn{nullptr};
  FeedForward ffn{nullptr};
  MoeLayer moe{nullptr};
  Norm attn_norm{nullptr}, attn_out_norm{nullptr}, ffn_norm{nullptr}, ffn_out_norm{nullptr};
  at::Tensor ffn_residual_scale;  // [1], NormFormer option
};
TORCH_MODULE(TransformerBlock);

}  // namespace hybridmoe
