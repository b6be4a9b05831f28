#include "moe/router.h"

#include <cmath>

#include <ATen/core/grad_mode.h>

#include "core/norm.h"

namespace hybridmoe {

Routing route(const at::Tensor& logits_TE, const RouterOptions& o, const at::Tensor& selection_bias_E,
              const at::Tensor& replay_experts_TK) {
  Routing r;
  r.logits_TE = at_least_fp32(logits_TE);
  at::Tensor scores_TE;
  if (o.score == RouterScore::kSigmoid) {
    scores_TE = at::sigmoid(r.logits_TE);
    r.probs_TE = scores_TE / scores_TE.sum(-1, /*keepdim=*/true);
  } else {
    scores_TE = r.probs_TE = at::softmax(r.logits_TE, -1);
  }
  if (replay_experts_TK.defined()) {
    TORCH_CHECK(replay_experts_TK.dim() == 2 && replay_experts_TK.size(0) == r.logits_TE.size(0) &&
                    replay_experts_TK.size(1) == o.top_k,
                "replayed routing has shape ", replay_experts_TK.sizes(), ", expected [", r.logits_TE.size(0), ", ",
                o.top_k, "]");
    r.experts_TK = replay_experts_TK;
  } else if (selection_bias_E.defined()) {
    at::NoGradGuard no_grad;
    r.experts_TK = std::get<1>(at::topk(scores_TE + selection_bias_E.to(scores_TE.scalar_type()), o.top_k, -1,
                                        /*largest=*/true, /*sorted=*/true));
  } else {
    at::NoGradGuard no_grad;
    r.experts_TK = std::get<1>(at::topk(scores_TE, o.top_k, -1, /*largest=*/true, /*sorted=*/true));
  }
  r.topk_probs_TK = r.probs_TE.gather(1, r.experts_TK);
  if (o.score == RouterScore::kSigmoid) {
    const at::Tensor chosen = scores_TE.gather(1, r.experts_TK);
    r.weights_TK = chosen / chosen.sum(-1, /*keepdim=*/true);
  } else if (o.softmax_after_topk) {
    r.weights_TK = at::softmax(r.logits_TE.gather(1, r.experts_TK), -1);
  } else {
    r.weights_TK = o.normalize_topk ? r.topk_probs_TK / r.topk_probs_TK.sum(-1, /*keepdim=*/true) : r.topk_probs_TK;
  }
  return r;
}

Routing route(const at::Tensor& logits_TE, int64_t top_k, bool normalize_topk) {
  RouterOptions o;
  o.top_k = top_k;
  o.normalize_topk = normalize_topk;
  return route(logits_TE, o);
}

at::Tensor expert_counts(const at::Tensor& experts_TK, int64_t num_experts) {
  return at::bincount(experts_TK.reshape({-1}), {}, num_experts);
}

at::Tensor load_balance_loss(const at::Tensor& probs_TE, const at::Tensor& experts_TK) {
  const int64_t E = probs_TE.size(-1);
  const at::Tensor f_E =
      expert_counts(experts_TK, E).to(probs_TE.scalar_type()) / static_cast<double>(experts_TK.numel());
  return load_balance_loss_with_f(probs_TE, f_E);
}

at::Tensor load_balance_loss_with_f(const at::Tensor& probs_TE, const at::Tensor& f_E) {
  const int64_t E = probs_TE.size(-1);
  return E * (f_E.to(probs_TE.scalar_type()) * probs_TE.mean(0)).sum();
}

at::Tensor sequence_load_balance_loss(const at::Tensor& probs_TE, const at::Tensor& experts_TK, int64_t seq_len) {
  const int64_t T = probs_TE.size(0), E = probs_TE.size(1), K = experts_TK.size(1);
  TORCH_CHECK(seq_len > 0 && T % seq_len == 0, "sequence load-balance loss: ", T, " tokens are not whole sequences of ",
              seq_len);
  const int64_t B = T / seq_len;
  const at::Tensor experts_BN = experts_TK.reshape({B, seq_len * K});
  const at::Tensor counts_BE =
      at::zeros({B, E}, probs_TE.options()).scatter_add_(1, experts_BN, at::ones_like(experts_BN, probs_TE.options()));
  const at::Tensor f_BE = counts_BE / static_cast<double>(seq_len * K);
  const at::Tensor P_BE = probs_TE.reshape({B, seq_len, E}).mean(1);
  return E * (f_BE * P_BE).sum(1).mean();
}

at::Tensor router_z_loss(const at::Tensor& logits_TE) {
  return at::logsumexp(at_least_fp32(logits_TE), {-1}).pow(2).mean();
}

at::Tensor update_selection_bias(const at::Tensor& bias_E, const at::Tensor& counts_E, double rate) {
  at::NoGradGuard no_grad;
  const at::Tensor c = counts_E.to(at::kDouble).to(bias_E.device());
  const at::Tensor b = bias_E.to(at::kDouble) + rate * at::sign(c.mean() - c);
  return (b - b.mean()).to(bias_E.scalar_type());
}

int64_t expert_capacity(double capacity_factor, int64_t num_tokens, int64_t top_k, int64_t num_experts) {
  if (capacity_factor <= 0) return -1;
  return static_cast<int64_t>(
      std::ceil(capacity_factor * static_cast<double>(num_tokens * top_k) / static_cast<double>(num_experts)));
}

}  // namespace hybridmoe
