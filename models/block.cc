#include "models/block.h"

#include <cmath>
#include <functional>

namespace hybridmoe {

BlockLayout ResolveBlockLayout(const NormStrategyOptions& norm, int64_t layer, int64_t n_layers) {
  BlockLayout l;
  bool default_per_head = false;
  switch (norm.strategy) {
    case NormStrategy::kPreNorm: break;
    case NormStrategy::kPostNorm: l.attn_form = l.ffn_form = SubLayerForm::kPost; break;
    case NormStrategy::kQkNorm: l.q_norm = l.k_norm = true; break;
    case NormStrategy::kQkvNorm: l.q_norm = l.k_norm = l.v_norm = true; break;
    case NormStrategy::kHybridNorm:
      l.attn_form = SubLayerForm::kNone;
      l.ffn_form = SubLayerForm::kNormResidual;
      l.q_norm = l.k_norm = l.v_norm = true;
      default_per_head = true;
      break;
    case NormStrategy::kHybridNormStar:
      l.attn_form = layer == 0 ? SubLayerForm::kPre : SubLayerForm::kNone;
      l.ffn_form = layer == 0 ? SubLayerForm::kPre : SubLayerForm::kNormResidual;
      l.q_norm = l.k_norm = l.v_norm = true;
      default_per_head = true;
      break;
    case NormStrategy::kMixLn: {
      const int64_t post_blocks = std::llround(norm.mix_ln_alpha * static_cast<double>(n_layers));
      if (layer < post_blocks) l.attn_form = l.ffn_form = SubLayerForm::kPost;
      break;
    }
    case NormStrategy::kSandwich: l.attn_form = l.ffn_form = SubLayerForm::kSandwich; break;
    case NormStrategy::kDeepNorm:
      l.attn_form = l.ffn_form = SubLayerForm::kDeep;
      l.residual_alpha = std::pow(2.0 * static_cast<double>(n_layers), 0.25);
      break;
    case NormStrategy::kNormFormer:
      l.attn_form = SubLayerForm::kSandwich;
      l.head_scale = true;
      l.ffn_hidden_norm = true;
      l.ffn_residual_scale = norm.normformer_residual_scale;
      break;
  }
  l.per_head_norm = norm.per_head_qkv_norm < 0 ? default_per_head : norm.per_head_qkv_norm == 1;
  return l;
}

double ResidualInitScale(const NormStrategyOptions& norm, int64_t n_layers) {
  return norm.strategy == NormStrategy::kDeepNorm ? std::pow(8.0 * static_cast<double>(n_layers), -0.25) : 1.0;
}

const char* NormStrategyName(NormStrategy s) {
  switch (s) {
    case NormStrategy::kPreNorm: return "PRE_NORM";
    case NormStrategy::kPostNorm: return "POST_NORM";
    case NormStrategy::kQkNorm: return "QK_NORM";
    case NormStrategy::kQkvNorm: return "QKV_NORM";
    case NormStrategy::kHybridNorm: return "HYBRID_NORM";
    case NormStrategy::kHybridNormStar: return "HYBRID_NORM_STAR";
    case NormStrategy::kMixLn: return "MIX_LN";
    case NormStrategy::kSandwich: return "SANDWICH";
    case NormStrategy::kDeepNorm: return "DEEPNORM";
    case NormStrategy::kNormFormer: return "NORMFORMER";
  }
  return "?";
}

bool UsesInputNorm(SubLayerForm f) {
  return f == SubLayerForm::kPre || f == SubLayerForm::kNormResidual || f == SubLayerForm::kSandwich;
}
bool UsesOutputNorm(SubLayerForm f) {
  return f == SubLayerForm::kPost || f == SubLayerForm::kSandwich || f == SubLayerForm::kDeep;
}

namespace {

at::Tensor ApplySubLayer(SubLayerForm form, const at::Tensor& x, const std::function<at::Tensor(const at::Tensor&)>& f,
                         Norm& in_norm, Norm& out_norm, double alpha, const at::Tensor& branch_scale) {
  auto scaled = [&](const at::Tensor& y) { return branch_scale.defined() ? y * branch_scale.to(y.scalar_type()) : y; };
  switch (form) {
    case SubLayerForm::kPre: return x + scaled(f(in_norm(x)));
    case SubLayerForm::kPost: return out_norm(x + f(x));
    case SubLayerForm::kNone: return x + f(x);
    case SubLayerForm::kNormResidual: {
      const at::Tensor h = in_norm(x);
      return h + f(h);
    }
    case SubLayerForm::kSandwich: return x + out_norm(f(in_norm(x)));
    case SubLayerForm::kDeep: return out_norm(alpha * x + f(x));
  }
  TORCH_INTERNAL_ASSERT(false, "unknown sub-layer form");
}

}  // namespace

TransformerBlockImpl::TransformerBlockImpl(const BlockOptions& o) : options(o) {
  layout = ResolveBlockLayout(o.norm, o.layer, o.n_layers);
  AttentionOptions a = o.attention;
  a.q_norm = layout.q_norm;
  a.k_norm = layout.k_norm;
  a.v_norm = layout.v_norm;
  a.per_head_norm = layout.per_head_norm;
  a.head_scale = layout.head_scale;
  a.norm_kind = o.norm.kind;
  a.eps = o.norm.eps;
  attn = register_module("attn", Attention(a));

  NormOptions n(a.d_model);
  n.kind = o.norm.kind;
  n.eps = o.norm.eps;
  if (UsesInputNorm(layout.attn_form)) attn_norm = register_module("attn_norm", Norm(n));
  if (UsesOutputNorm(layout.attn_form)) attn_out_norm = register_module("attn_out_norm", Norm(n));
  if (UsesInputNorm(layout.ffn_form)) ffn_norm = register_module("ffn_norm", Norm(n));
  if (UsesOutputNorm(layout.ffn_form)) ffn_out_norm = register_module("ffn_out_norm", Norm(n));

  if (o.moe) {
    MoeOptions m = o.moe_options;
    m.hidden_norm = layout.ffn_hidden_norm;
    m.norm_kind = o.norm.kind;
    m.eps = o.norm.eps;
    moe = register_module("moe", MoeLayer(m));
  } else {
    FeedForwardOptions f = o.ffn;
    f.hidden_norm = layout.ffn_hidden_norm;
    f.norm_kind = o.norm.kind;
    f.eps = o.norm.eps;
    ffn = register_module("ffn", FeedForward(f));
  }
  if (layout.ffn_residual_scale) {
    ffn_residual_scale = register_parameter("ffn_residual_scale", at::ones({1}, ParamOptions()));
  }
}

void TransformerBlockImpl::reset_parameters(const InitPlan& plan, const std::string& prefix) {
  attn->reset_parameters(plan, prefix + "attn.");
  if (!ffn.is_empty()) ffn->reset_parameters(plan, prefix + "ffn.");
  if (!moe.is_empty()) moe->reset_parameters(plan, prefix + "moe.");
  for (Norm* n : {&attn_norm, &attn_out_norm, &ffn_norm, &ffn_out_norm}) {
    if (!n->is_empty()) (*n)->reset_parameters();
  }
  at::NoGradGuard no_grad;
  if (ffn_residual_scale.defined()) ffn_residual_scale.fill_(1.0);
}

void TransformerBlockImpl::set_compute_copies(ComputeCopies* copies) {
  attn->set_compute_copies(copies);
  if (!ffn.is_empty()) ffn->set_compute_copies(copies);
  if (!moe.is_empty()) moe->set_compute_copies(copies);
}

BlockOutput TransformerBlockImpl::forward(const at::Tensor& x_BSD, const at::Tensor& replay_experts_TK) {
  BlockOutput out;
  const at::Tensor y = ApplySubLayer(layout.attn_form, x_BSD, [&](const at::Tensor& h) { return attn(h); }, attn_norm,
                                     attn_out_norm, layout.residual_alpha, {});
  auto ffn_fn = [&](const at::Tensor& h) -> at::Tensor {
    if (!ffn.is_empty()) return ffn(h);
    MoeOutput m = moe(h.reshape({-1, h.size(-1)}), h.dim() == 3 ? h.size(1) : 0, replay_experts_TK);
    out.lb_loss = m.lb_loss;
    out.z_loss = m.z_loss;
    out.experts_TK = m.experts_TK;
    out.counts_E = m.counts_E;
    return m.y_TD.view(h.sizes());
  };
  out.x = ApplySubLayer(layout.ffn_form, y, ffn_fn, ffn_norm, ffn_out_norm, layout.residual_alpha, ffn_residual_scale);
  return out;
}

}  // namespace hybridmoe
