// Router math as pure functions of tensors (docs/formulas.md section 4, OLMoE semantics).
//
// Legend: T tokens, D model width, E experts, K top-k.
//   logits_TE = x_TD W_g^T            (W_g: [E, D], no bias)
//   probs_TE  = softmax(logits_TE)    over all E, in fp32 (fp64 stays fp64)
//   (weights_TK, experts_TK) = topk(probs_TE, K), optionally renormalised to sum to 1
//   LB  = E * sum_e f_e * P_e, f_e = share of the T*K assignments routed to e, P_e = mean_t probs_te
//         (1 under perfectly uniform routing; gradient flows through P only)
//   Z   = mean_t (logsumexp_e logits_te)^2
// Statistics for users (moe/router_stats.h) are computed from the same tensors outside the step.
#pragma once

#include <ATen/ATen.h>

namespace hybridmoe {

struct Routing {
  at::Tensor logits_TE;      // fp32
  at::Tensor probs_TE;       // fp32
  at::Tensor topk_probs_TK;  // fp32, router probabilities of the chosen experts (capacity priority)
  at::Tensor weights_TK;     // fp32, gate weights of the chosen experts (topk_probs, renormalised if asked)
  at::Tensor experts_TK;     // int64
};

// Routes tokens from router logits (any float dtype; computed in fp32).
Routing route(const at::Tensor& logits_TE, int64_t top_k, bool normalize_topk);

// Tokens routed to each expert: int64 [E] (before any capacity drop).
at::Tensor expert_counts(const at::Tensor& experts_TK, int64_t num_experts);

// Load-balance loss of one layer, E * sum_e f_e P_e (unweighted; the model applies w_lb).
at::Tensor load_balance_loss(const at::Tensor& probs_TE, const at::Tensor& experts_TK);

// Router z-loss of one layer, mean_t logsumexp(logits_t)^2 (unweighted).
at::Tensor router_z_loss(const at::Tensor& logits_TE);

// Capacity per expert for capacity factor C: ceil(C * T * K / E); -1 (dropless) when C == 0.
int64_t expert_capacity(double capacity_factor, int64_t num_tokens, int64_t top_k, int64_t num_experts);

}  // namespace hybridmoe
