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

void RouterStats::add(const Routing& r, const at::Tensor& counts, const at::Tensor& lb_loss, const at::Tensor& z_loss,
                      int64_t dropped_slots) {
  at::NoGradGuard no_grad;
  const at::Device device = r.probs_TE.device();
  if (!counts_E.defined() || counts_E.device() != device) {
    counts_E = counts_E.defined() ? counts_E.to(device) : at::zeros({r.probs_TE.size(1)}, r.experts_TK.options());
  }
  if (!sums_4.defined() || sums_4.device() != device) {
    sums_4 = sums_4.defined() ? sums_4.to(device) : at::zeros({4}, r.probs_TE.options().dtype(at::kDouble));
  }
  counts_E += counts;
  const at::Tensor entropy = -(r.probs_TE * at::log(r.probs_TE.clamp_min(1e-30))).sum();
  const at::Tensor top1 = r.probs_TE.amax(1).sum();
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
  if (o.bias_update_rate > 0)
    selection_bias = register_buffer("selection_bias", at::zeros({o.num_experts}, ParamOptions()));
  if (o.shared_hidden > 0) {
    FeedForwardOptions f;
    f.d_model = o.d_model;
    f.hidden = o.shared_hidden;
    f.hidden_norm = o.hidden_norm;
    f.norm_kind = o.norm_kind;
    f.eps = o.eps;
    shared_expert = register_module("shared_expert", FeedForward(f));
    if (o.shared_gate)
      shared_expert_gate = register_parameter("shared_expert_gate", at::empty({o.d_model}, ParamOptions()));
  }
  set_dispatcher(d ? std::move(d) : std::make_shared<LocalDispatcher>(o.num_experts));
  stats.counts_E = at::zeros({o.num_experts}, at::kLong);
  step_counts_E = at::zeros({o.num_experts}, at::kLong);
}

RouterOptions MoeLayerImpl::router_options() const {
  RouterOptions r;
  r.top_k = options.top_k;
  r.score = options.score;
  r.normalize_topk = options.normalize_topk;
  r.softmax_after_topk = options.softmax_after_topk;
  return r;
}

void MoeLayerImpl::set_compute_copies(ComputeCopies* copies) {
  experts->set_compute_copies(copies);
  if (!shared_expert.is_empty()) shared_expert->set_compute_copies(copies);
}

void MoeLayerImpl::update_selection_bias(const at::Tensor& global_counts_E) {
  if (!selection_bias.defined()) return;
  at::NoGradGuard no_grad;
  selection_bias.copy_(hybridmoe::update_selection_bias(selection_bias, global_counts_E, options.bias_update_rate));
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
  if (!shared_expert.is_empty()) shared_expert->reset_parameters(plan, prefix + "shared_expert.");
  if (shared_expert_gate.defined()) {
    trunc_normal_(shared_expert_gate, plan.std_in, InitSeed(plan.seed, prefix + "shared_expert_gate"));
  }
  if (selection_bias.defined() && !selection_bias.is_meta()) {
    at::NoGradGuard no_grad;
    selection_bias.zero_();
  }
}

MoeOutput MoeLayerImpl::forward(const at::Tensor& x_TD, int64_t seq_len, const at::Tensor& replay_experts_TK) {
  const int64_t T = x_TD.size(0), E = options.num_experts, K = options.top_k;
  // A training forward counts once; eval forwards, counting passes and replays do not.
  const bool counting = collect_stats && training_forward && !replay_experts_TK.defined();
  std::optional<TraceScope> scope;  // core/trace.h: one region per phase, for profilers and tools/bench
  scope.emplace(trace::kRouter);
  // fp32 router (also with bf16 activations): logits, scores, top-k and the losses.
  at::Tensor logits_TE = at::matmul(at_least_fp32(x_TD), router.t());
  if (router_logit_bias.defined()) logits_TE = logits_TE + router_logit_bias.to(logits_TE.scalar_type());
  const Routing r = route(logits_TE, router_options(), selection_bias, replay_experts_TK);
  at::Tensor counts_E;
  {
    at::NoGradGuard no_grad;
    counts_E = expert_counts(r.experts_TK, E);
  }
  scope.reset();
  scope.emplace(trace::kPermutation);
  const Permutation p = permute_by_expert(r.experts_TK, r.weights_TK, r.topk_probs_TK, E,
                                          expert_capacity(options.capacity_factor, T, K, E));
  const at::Tensor x_SD = x_TD.index_select(0, p.token_S);
  scope.reset();
  scope.emplace(trace::kAllToAll);
  dispatcher->count_rows = counting;
  dispatcher->count_time = collect_stats && training_forward;
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
  if (!shared_expert.is_empty()) {
    at::Tensor shared = shared_expert(x_TD);
    if (shared_expert_gate.defined()) {
      // The gate is a D -> 1 projection, computed in fp32 like the router.
      const at::Tensor g_T = at::sigmoid(at::matmul(at_least_fp32(x_TD), shared_expert_gate));
      shared = shared * g_T.unsqueeze(1).to(shared.scalar_type());
    }
    out.y_TD = out.y_TD + shared;
  }
  scope.emplace(trace::kRouter);
  switch (options.lb_scope) {
    case LoadBalanceScope::kMicroBatch:
      out.lb_loss =
          load_balance_loss_with_f(r.probs_TE, counts_E.to(r.probs_TE.scalar_type()) / static_cast<double>(T * K));
      break;
    case LoadBalanceScope::kGlobalBatch:
      out.lb_loss = global_f_E.defined() ? load_balance_loss_with_f(r.probs_TE, global_f_E)
                                         : load_balance_loss_with_f(r.probs_TE, counts_E.to(r.probs_TE.scalar_type()) /
                                                                                    static_cast<double>(T * K));
      break;
    case LoadBalanceScope::kSequence:
      out.lb_loss = sequence_load_balance_loss(r.probs_TE, r.experts_TK, seq_len > 0 ? seq_len : T);
      break;
  }
  out.z_loss = router_z_loss(r.logits_TE);
  out.experts_TK = r.experts_TK;
  out.counts_E = counts_E;

  if (keep_router_logits) last_router_logits = r.logits_TE.detach();
  if (counting) {
    at::NoGradGuard no_grad;
    stats.add(r, counts_E, out.lb_loss, out.z_loss, p.dropped);
    if (step_counts_E.device() != counts_E.device()) step_counts_E = step_counts_E.to(counts_E.device());
    step_counts_E += counts_E;
  }
  return out;
}

}  // namespace hybridmoe
