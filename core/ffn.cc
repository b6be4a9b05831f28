#include "core/ffn.h"

#include "core/trace.h"

namespace hybridmoe {

at::Tensor swiglu(const at::Tensor& x, const at::Tensor& w_gate, const at::Tensor& w_up, const at::Tensor& w_down,
                  const at::Tensor& hidden_norm_weight, NormKind kind, double eps) {
  at::Tensor h = at::silu(at::matmul(x, w_gate.t())) * at::matmul(x, w_up.t());
  if (hidden_norm_weight.defined()) {
    // Per-expert NormFormer norms are RMS or LayerNorm without bias (one weight row per expert).
    h = kind == NormKind::kRms ? rms_norm(h, hidden_norm_weight, eps)
                               : layer_norm(h, hidden_norm_weight, at::Tensor(), eps);
  }
  return at::matmul(h, w_down.t());
}

FeedForwardImpl::FeedForwardImpl(const FeedForwardOptions& o) : options(o) {
  w_gate = register_parameter("w_gate", at::empty({o.hidden, o.d_model}, ParamOptions()));
  w_up = register_parameter("w_up", at::empty({o.hidden, o.d_model}, ParamOptions()));
  w_down = register_parameter("w_down", at::empty({o.d_model, o.hidden}, ParamOptions()));
  if (o.hidden_norm) {
    NormOptions n(o.hidden);
    n.kind = o.norm_kind;
    n.eps = o.eps;
    hidden_norm = register_module("hidden_norm", Norm(n));
  }
}

void FeedForwardImpl::reset_parameters(const InitPlan& plan, const std::string& prefix) {
  trunc_normal_(w_gate, plan.std_in * plan.residual_scale, InitSeed(plan.seed, prefix + "w_gate"));
  trunc_normal_(w_up, plan.std_in * plan.residual_scale, InitSeed(plan.seed, prefix + "w_up"));
  trunc_normal_(w_down, plan.std_out * plan.residual_scale, InitSeed(plan.seed, prefix + "w_down"));
  if (!hidden_norm.is_empty()) hidden_norm->reset_parameters();
}

void FeedForwardImpl::set_compute_copies(ComputeCopies* copies) {
  compute_copies = copies;
  if (copies == nullptr) return;
  for (const at::Tensor& w : {w_gate, w_up, w_down}) copies->AddGroup({w});
}

at::Tensor FeedForwardImpl::forward(const at::Tensor& x) {
  TraceScope scope(trace::kDenseFfn);
  const at::Tensor &gate = ComputeWeight(compute_copies, w_gate), &up = ComputeWeight(compute_copies, w_up),
                   &down = ComputeWeight(compute_copies, w_down);
  if (hidden_norm.is_empty()) return swiglu(x, gate, up, down);
  at::Tensor h = at::silu(at::matmul(x, gate.t())) * at::matmul(x, up.t());
  return at::matmul(hidden_norm(h), down.t());
}

}  // namespace hybridmoe
