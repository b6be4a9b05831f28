// The MoE layer: Router -> permutation -> TokenDispatcher -> GroupedExperts -> weighted un-permute, plus an
// optional shared expert.
//
// Legend: T tokens, D width, E experts, K top-k, S kept slots.
// forward(x_TD) returns y_TD = sum_k w_tk * Expert_{e_tk}(x_t) [+ g_t * Shared(x_t)] and the layer's unweighted
// load-balance and z losses (docs/formulas.md section 4; the LB scope decides whose f and P: this rank's
// micro-batch, the step's global counts, or each sequence). The router choices are in moe/router.h.
// Counting: a training forward (training_forward, set by the Transformer from the grad mode) adds its routing
// to `stats` and `step_counts_E` exactly once; eval forwards, the global-scope counting pass and the recompute of
// activation checkpointing (which replays the forward's choice of experts) add nothing.
// The dispatcher defaults to LocalDispatcher; the trainer swaps in the expert-parallel one.
#pragma once

#include <memory>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "core/ffn.h"
#include "core/init.h"
#include "core/norm.h"
#include "moe/dispatcher.h"
#include "moe/experts.h"
#include "moe/router.h"

namespace hybridmoe {

enum class LoadBalanceScope { kMicroBatch, kGlobalBatch, kSequence };

struct MoeOptions {
  int64_t d_model = 128;
  int64_t num_experts = 8;
  int64_t top_k = 2;
  int64_t hidden = 256;
  bool normalize_topk = false;
  RouterScore score = RouterScore::kSoftmax;
  bool softmax_after_topk = false;
  double bias_update_rate = 0;  // > 0: aux-loss-free balancing (selection_bias)
  LoadBalanceScope lb_scope = LoadBalanceScope::kMicroBatch;
  int64_t shared_hidden = 0;  // shared expert width; 0 = none
  bool shared_gate = false;
  double capacity_factor = 0;             // 0 = dropless
  std::vector<double> router_logit_bias;  // fixed per-expert logit bias (empty = none)
  bool hidden_norm = false;               // NormFormer
  NormKind norm_kind = NormKind::kRms;
  double eps = 1e-5;
};

struct MoeOutput {
  at::Tensor y_TD;
  at::Tensor lb_loss;     // scalar, unweighted
  at::Tensor z_loss;      // scalar, unweighted
  at::Tensor experts_TK;  // the choice of experts (int64), for a replay
  at::Tensor counts_E;    // int64 [E]: slots routed to each expert by this forward
};

// Routing counters since the last reset (no grad). The tensor sums stay on the router's device and are
// only read on the host when statistics are logged, so collecting them adds no device synchronisation.
struct RouterStats {
  at::Tensor counts_E;  // int64 [E]: slots routed to each expert (before capacity drops)
  at::Tensor sums_4;    // float64 [4]: sums over forwards of the LB loss and the z-loss, and over tokens of
                        // the router softmax entropy (nats) and of the largest router probability
  int64_t tokens = 0;
  int64_t dropped = 0;
  int64_t forwards = 0;
  void reset();
  // Adds one forward's routing (r over `tokens` tokens, counts_E = expert_counts(r.experts_TK)) and its losses.
  void add(const Routing& r, const at::Tensor& counts_E, const at::Tensor& lb_loss, const at::Tensor& z_loss,
           int64_t dropped_slots);
  // Host values of sums_4 (one copy): {lb_loss_sum, z_loss_sum, entropy_sum, top1_prob_sum}.
  std::vector<double> sums() const;
};

class MoeLayerImpl : public torch::nn::Module {
 public:
  explicit MoeLayerImpl(const MoeOptions& options, std::shared_ptr<TokenDispatcher> dispatcher = nullptr);
  // seq_len: tokens per sequence (rows are whole sequences; 0 = one sequence of T), for the SEQUENCE scope.
  // replay_experts_TK: the choice of an earlier forward of the same tokens (activation checkpointing).
  MoeOutput forward(const at::Tensor& x_TD, int64_t seq_len = 0, const at::Tensor& replay_experts_TK = {});
  void reset_parameters(const InitPlan& plan, const std::string& prefix);
  // Replaces the dispatcher (and the local expert shard) - used by expert parallelism.
  void set_dispatcher(std::shared_ptr<TokenDispatcher> dispatcher);
  // Mixed precision: the experts' and the shared expert's GEMM weights compute from `copies`.
  void set_compute_copies(ComputeCopies* copies);
  // The aux-loss-free update from the step's global counts (sum over ranks of step_counts_E); no-op when off.
  void update_selection_bias(const at::Tensor& global_counts_E);
  RouterOptions router_options() const;

  MoeOptions options;
  at::Tensor router;  // [E, D]
  // Aux-loss-free balancing: buffer [E] (fp32, mean 0), undefined when bias_update_rate is 0. Not a parameter
  // (no gradient, no optimizer state), but model state: saved in model files and checkpoints (models/weights.h).
  at::Tensor selection_bias;
  FeedForward shared_expert{nullptr};  // shared_hidden > 0
  at::Tensor shared_expert_gate;       // [D], shared_gate
  // Slots routed to each expert by training forwards since the trainer last read and zeroed it (int64 [E]).
  at::Tensor step_counts_E;
  // GLOBAL_BATCH scope: f of the current step (float64 [E], sums to 1), set by the trainer before the step's
  // training forwards; undefined: the micro-batch's own f.
  at::Tensor global_f_E;
  // Whether the current forward is a training forward (the Transformer sets it on every call).
  bool training_forward = true;
  // Buffer [E] (float64) from options.router_logit_bias, undefined when that is empty: it follows
  // module->to(device) and is no checkpoint key (checkpoints enumerate parameters only).
  at::Tensor router_logit_bias;
  GroupedExperts experts{nullptr};
  std::shared_ptr<TokenDispatcher> dispatcher;
  RouterStats stats;
  bool collect_stats = true;
  // When set, forward() keeps the fp32 router logits [T, E] of the last call (parity checks, eval dumps).
  bool keep_router_logits = false;
  at::Tensor last_router_logits;
};
TORCH_MODULE(MoeLayer);

}  // namespace hybridmoe
