#include "moe/router.h"

#include <cmath>

#include "core/norm.h"

namespace hybridmoe {

Routing route(const at::Tensor& logits_TE, int64_t top_k, bool normalize_topk) {
  Routing r;
  r.logits_TE = at_least_fp32(logits_TE);
  r.probs_TE = at::softmax(r.logits_TE, -1);
  std::tie(r.topk_probs_TK, r.experts_TK) = at::topk(r.probs_TE, top_k, -1, /*largest=*/true, /*sorted=*/true);
  r.weights_TK = normalize_topk ? r.topk_probs_TK / r.topk_probs_TK.sum(-1, /*keepdim=*/true) : r.topk_probs_TK;
  return r;
}

at::Tensor expert_counts(const at::Tensor& experts_TK, int64_t num_experts) {
  return at::bincount(experts_TK.reshape({-1}), {}, num_experts);
}

at::Tensor load_balance_loss(const at::Tensor& probs_TE, const at::Tensor& experts_TK) {
  const int64_t E = probs_TE.size(-1);
  const at::Tensor f_E =
      expert_counts(experts_TK, E).to(probs_TE.scalar_type()) / static_cast<double>(experts_TK.numel());
  const at::Tensor P_E = probs_TE.mean(0);
  return E * (f_E * P_E).sum();
}

at::Tensor router_z_loss(const at::Tensor& logits_TE) {
  return at::logsumexp(at_least_fp32(logits_TE), {-1}).pow(2).mean();
}

int64_t expert_capacity(double capacity_factor, int64_t num_tokens, int64_t top_k, int64_t num_experts) {
  if (capacity_factor <= 0) return -1;
  return static_cast<int64_t>(
      std::ceil(capacity_factor * static_cast<double>(num_tokens * top_k) / static_cast<double>(num_experts)));
}

}  // namespace hybridmoe
