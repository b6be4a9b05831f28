// Router math as pure functions of tensors (docs/formulas.md section 4).
//
// Legend: T tokens, D model width, E experts, K top-k, B sequences of S tokens (T = B S).
//   logits_TE = x_TD W_g^T                      (W_g: [E, D], no bias), in fp32 (fp64 stays fp64)
//   scores s_TE: SOFTMAX  s = softmax(logits) over all E (OLMoE)
//                SIGMOID  s = sigmoid(logits)           (DeepSeek-V3)
//   probs_TE  = s normalised over E (s itself for SOFTMAX): the router distribution of the LB loss and statistics
//   experts_TK = topk_e(s_te + b_e)             b: the aux-loss-free selection bias (0 when off); it changes which
//                                               experts are chosen, never the gate weights
//   weights_TK: SOFTMAX                 s_tk, divided by sum_k s_tk when normalize_topk
//               SOFTMAX + after_topk    softmax over the K chosen logits
//               SIGMOID                 s_tk / sum_k s_tk
//   LB  = E * sum_e f_e * P_e, f_e = share of the T*K assignments routed to e, P_e = mean_t probs_te
//         (1 under perfectly uniform routing; gradient flows through P only). Scopes: the micro-batch;
//         the global batch (f from the step's counts over all ranks and micro-batches, P from the micro-batch);
//         per sequence (f and P of each sequence, LB averaged over the B sequences).
//   Z   = mean_t (logsumexp_e logits_te)^2
//   bias update (once per optimizer step, c = the step's global counts): b += rate * sign(mean(c) - c); b -= mean(b)
// Statistics for users (moe/router_stats.h) are computed from the same tensors outside the step.
#pragma once

#include <ATen/ATen.h>

namespace hybridmoe {

enum class RouterScore { kSoftmax, kSigmoid };

struct RouterOptions {
  int64_t top_k = 2;
  RouterScore score = RouterScore::kSoftmax;
  bool normalize_topk = false;      // SOFTMAX: renormalise the chosen probabilities (SIGMOID always does)
  bool softmax_after_topk = false;  // SOFTMAX: weights = softmax over the chosen logits
};

struct Routing {
  at::Tensor logits_TE;      // fp32
  at::Tensor probs_TE;       // fp32, the router distribution (rows sum to 1)
  at::Tensor topk_probs_TK;  // fp32, probs of the chosen experts (capacity priority)
  at::Tensor weights_TK;     // fp32, gate weights of the chosen experts
  at::Tensor experts_TK;     // int64, in order of decreasing selection score
};

// Routes tokens from router logits (any float dtype; computed in fp32). `selection_bias_E` (optional) is added to
// the scores for the choice only. `replay_experts_TK` (optional) is a choice made earlier for the same tokens
// (activation checkpointing's recompute): it is used as it is, no top-k runs, and the weights are recomputed
// from the logits with the gradient they carry.
Routing route(const at::Tensor& logits_TE, const RouterOptions& options, const at::Tensor& selection_bias_E = {},
              const at::Tensor& replay_experts_TK = {});
// OLMoE's router: softmax scores, no bias.
Routing route(const at::Tensor& logits_TE, int64_t top_k, bool normalize_topk);

// Tokens routed to each expert: int64 [E] (before any capacity drop).
at::Tensor expert_counts(const at::Tensor& experts_TK, int64_t num_experts);

// Load-balance loss of one layer, E * sum_e f_e P_e (unweighted; the model applies w_lb).
at::Tensor load_balance_loss(const at::Tensor& probs_TE, const at::Tensor& experts_TK);
// The same with f given (global-batch scope): f_E sums to 1, P from probs_TE.
at::Tensor load_balance_loss_with_f(const at::Tensor& probs_TE, const at::Tensor& f_E);
// Sequence-wise: the loss of each of the T / seq_len sequences (consecutive rows), averaged.
at::Tensor sequence_load_balance_loss(const at::Tensor& probs_TE, const at::Tensor& experts_TK, int64_t seq_len);

// Router z-loss of one layer, mean_t logsumexp(logits_t)^2 (unweighted).
at::Tensor router_z_loss(const at::Tensor& logits_TE);

// The aux-loss-free bias after one update from counts_E (any numeric dtype): bias + rate * sign(mean - count),
// recentred to mean 0. Same dtype and device as bias_E.
at::Tensor update_selection_bias(const at::Tensor& bias_E, const at::Tensor& counts_E, double rate);

// Capacity per expert for capacity factor C: ceil(C * T * K / E); -1 (dropless) when C == 0.
int64_t expert_capacity(double capacity_factor, int64_t num_tokens, int64_t top_k, int64_t num_experts);

}  // namespace hybridmoe
