#include "moe/experts.h"

namespace hybridmoe {

GroupedExpertsImpl::GroupedExpertsImpl(const ExpertsOptions& o) : options(o) {
  const int64_t E = o.num_local_experts, D = o.d_model, F = o.hidden;
  w_gate = register_parameter("w_gate", at::empty({E, F, D}));
  w_up = register_parameter("w_up", at::empty({E, F, D}));
  w_down = register_parameter("w_down", at::empty({E, D, F}));
  if (o.hidden_norm) {
    hidden_norm = register_parameter("hidden_norm", at::ones({E, F}));
    if (o.norm_kind == NormKind::kLayer) hidden_norm_bias = register_parameter("hidden_norm_bias", at::zeros({E, F}));
  }
}

void GroupedExpertsImpl::reset_parameters(const InitPlan& plan, const std::string& prefix) {
  at::NoGradGuard no_grad;
  for (int64_t e = 0; e < options.num_local_experts; ++e) {
    const int64_t global = options.first_expert + e;
    trunc_normal_(w_gate[e], plan.std_in * plan.residual_scale, InitSeed(plan.seed, prefix + "w_gate", global));
    trunc_normal_(w_up[e], plan.std_in * plan.residual_scale, InitSeed(plan.seed, prefix + "w_up", global));
    trunc_normal_(w_down[e], plan.std_out * plan.residual_scale, InitSeed(plan.seed, prefix + "w_down", global));
  }
  if (hidden_norm.defined()) hidden_norm.fill_(1.0);
  if (hidden_norm_bias.defined()) hidden_norm_bias.zero_();
}

at::Tensor GroupedExpertsImpl::forward(const at::Tensor& x_SD, const std::vector<int64_t>& counts) {
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == options.num_local_experts, "expected ", options.num_local_experts,
              " expert counts, got ", counts.size());
  // unbind/split: their backward is one stack/cat, not one full-size scatter per expert.
  const std::vector<at::Tensor> x_e = x_SD.split_with_sizes(counts, 0);
  const std::vector<at::Tensor> gate = w_gate.unbind(0), up = w_up.unbind(0), down = w_down.unbind(0);
  std::vector<at::Tensor> norm_w, norm_b;
  if (hidden_norm.defined()) norm_w = hidden_norm.unbind(0);
  if (hidden_norm_bias.defined()) norm_b = hidden_norm_bias.unbind(0);
  std::vector<at::Tensor> y_e;
  y_e.reserve(counts.size());
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] == 0) continue;
    at::Tensor h = at::silu(at::mm(x_e[e], gate[e].t())) * at::mm(x_e[e], up[e].t());
    if (!norm_w.empty()) {
      h = options.norm_kind == NormKind::kRms
              ? rms_norm(h, norm_w[e], options.eps)
              : at::layer_norm(h, {h.size(-1)}, norm_w[e], norm_b[e], options.eps);
    }
    y_e.push_back(at::mm(h, down[e].t()));
  }
  if (y_e.empty()) return x_SD.new_zeros({0, options.d_model});
  return y_e.size() == 1 ? y_e[0] : at::cat(y_e, 0);
}

}  // namespace hybridmoe
