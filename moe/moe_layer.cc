#include "moe/moe_layer.h"

#include <optional>

#include "core/trace.h"
#include "moe/router.h"

namespace hybridmoe {

void RouterStats::reset() {
  if (counts_E.defined()) counts_E.zero_();
  if (sums_4.defined()) sums_4.zero_();
  tokens = dropped = forwards = 0;
}

void RouterStats::add(const Routing& r, const at::Tensor& lb_loss, const at::Tensor& z_loss, int64_t dropped_slots) {
  at::NoGradGuard no_grad;
  const at::Device device = r.probs_TE.device();
  if (!counts_E.defined() || counts_E.device() != device) {
    counts_E = counts_E.defined() ? counts_E.to(device) : at::zeros({r.probs_TE.size(1)}, r.experts_TK.options());
  }
  if (!sums_4.defined() || sums_4.device() != device) {
    sums_4 = sums_4.defined() ? sums_4.to(device) : at::zeros({4}, r.probs_TE.options().dtype(at::kDouble));
  }
  counts_E += expert_counts(r.experts_TK, counts_E.size(0));
  const at::Tensor entropy = -(r.probs_TE * at::log(r.probs_TE.clamp_min(1e-30))).sum();
  const at::Tensor top1 = r.topk_probs_TK.select(1, 0).sum();
  sums_4 += at::stack({lb_loss.detach().reshape({}), z_loss.detach().reshape({}), entropy, top1}).to(at::kDouble);
  tokens += r.probs_TE.size(0);
  dropped += dropped_slots;
  forwards += 1;
}

std::vector<double> RouterStats::sums() const {
  if (!sums_4.defined()) return {0, 0, 0, 0};
  const at::Tensor host = sums_4.to(at::kCPU).contiguous();
  return std::vector<double>(host.data_ptr<double>(), host.data_ptr<double>() + 4);
}

MoeLayerImpl::MoeLayerImpl(const MoeOptions& o, std::shared_ptr<TokenDispatcher> d) : options(o) {
  router = register_parameter("router", at::empty({o.num_experts, o.d_model}, ParamOptions()));
  if (!o.router_logit_bias.empty()) {
    TORCH_CHECK(static_cast<int64_t>(o.router_logit_bias.size()) == o.num_experts, "router_logit_bias has ",
                o.router_logit_bias.size(), " values for ", o.num_experts, " experts");
    router_logit_bias = register_buffer("router_logit_bias", at::tensor(o.router_logit_bias, at::kDouble));
  }
  set_dispatcher(d ? std::move(d) : std::make_shared<LocalDispatcher>(o.num_experts));
  stats.counts_E = at::zeros({o.num_experts}, at::kLong);
}

void MoeLayerImpl::set_dispatcher(std::shared_ptr<TokenDispatcher> d) {
  dispatcher = std::move(d);
  ExpertsOptions e;
  e.num_local_experts = dispatcher->num_local_experts();
  e.first_expert = dispatcher->first_local_expert();
  e.d_model = options.d_model;
  e.hidden = options.hidden;
  e.hidden_norm = options.hidden_norm;
  e.norm_kind = options.norm_kind;
  e.eps = options.eps;
  if (experts.is_empty()) {
    experts = register_module("experts", GroupedExperts(e));
  } else if (experts->options.first_expert != e.first_expert ||
             experts->options.num_local_experts != e.num_local_experts) {
    experts = replace_module("experts", GroupedExperts(e));
  }
}

void MoeLayerImpl::reset_parameters(const InitPlan& plan, const std::string& prefix) {
  trunc_normal_(router, plan.std_in, InitSeed(plan.seed, prefix + "router"));
  experts->reset_parameters(plan, prefix + "experts.");
}

MoeOutput MoeLayerImpl::forward(const at::Tensor& x_TD) {
  const int64_t T = x_TD.size(0), E = options.num_experts, K = options.top_k;
  std::optional<TraceScope> scope;  // core/trace.h: one region per phase, for profilers and tools/bench
  scope.emplace(trace::kRouter);
  // fp32 router (also with bf16 activations): logits, softmax, top-k and both losses.
  at::Tensor logits_TE = at::matmul(at_least_fp32(x_TD), router.t());
  if (router_logit_bias.defined()) logits_TE = logits_TE + router_logit_bias.to(logits_TE.scalar_type());
  const Routing r = route(logits_TE, K, options.normalize_topk);
  scope.reset();
  scope.emplace(trace::kPermutation);
  const Permutation p = permute_by_expert(r.experts_TK, r.weights_TK, r.topk_probs_TK, E,
                                          expert_capacity(options.capacity_factor, T, K, E));
  const at::Tensor x_SD = x_TD.index_select(0, p.token_S);
  scope.reset();
  scope.emplace(trace::kAllToAll);
  std::vector<int64_t> local_counts;
  const at::Tensor x_local = dispatcher->dispatch(x_SD, p.counts_E, local_counts);
  scope.reset();
  scope.emplace(trace::kExperts);
  const at::Tensor local_y = experts(x_local, local_counts);
  scope.reset();
  scope.emplace(trace::kAllToAll);
  const at::Tensor y_back = dispatcher->combine(local_y);
  scope.reset();
  scope.emplace(trace::kPermutation);
  const at::Tensor y_SD = y_back * p.weight_S.unsqueeze(1).to(x_TD.scalar_type());
  MoeOutput out;
  out.y_TD = at::zeros_like(x_TD).index_add_(0, p.token_S, y_SD);  // in place: no copy of the zeros
  scope.reset();
  scope.emplace(trace::kRouter);
  out.lb_loss = load_balance_loss(r.probs_TE, r.experts_TK);
  out.z_loss = router_z_loss(r.logits_TE);

  if (keep_router_logits) last_router_logits = r.logits_TE.detach();
  if (collect_stats) stats.add(r, out.lb_loss, out.z_loss, p.dropped);
  return out;
}

}  // namespace hybridmoe
