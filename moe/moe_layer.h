// The MoE layer: Router -> permutation -> TokenDispatcher -> GroupedExperts -> weighted un-permute.
//
// Legend: T tokens, D width, E experts, K top-k, S kept slots.
// forward(x_TD) returns y_TD = sum_k w_tk * Expert_{e_tk}(x_t) and the layer's unweighted load-balance
// and z losses (docs/formulas.md section 4; under expert parallelism f and P are this rank's micro-batch). Routing
// counters accumulate into `stats` (buffers read and reset outside forward, by the trainer).
// The dispatcher defaults to LocalDispatcher; the trainer swaps in the expert-parallel one.
#pragma once

#include <memory>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "core/init.h"
#include "core/norm.h"
#include "moe/dispatcher.h"
#include "moe/experts.h"

namespace hybridmoe {

struct MoeOptions {
  int64_t d_model = 128;
  int64_t num_experts = 8;
  int64_t top_k = 2;
  int64_t hidden = 256;
  bool normalize_topk = false;
  double capacity_factor = 0;             // 0 = dropless
  std::vector<double> router_logit_bias;  // fixed per-expert logit bias (empty = none)
  bool hidden_norm = false;               // NormFormer
  NormKind norm_kind = NormKind::kRms;
  double eps = 1e-5;
};

struct MoeOutput {
  at::Tensor y_TD;
  at::Tensor lb_loss;  // scalar, unweighted
  at::Tensor z_loss;   // scalar, unweighted
};

struct Routing;

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
  // Adds one forward's routing (r over `tokens` tokens) and its unweighted losses.
  void add(const Routing& r, const at::Tensor& lb_loss, const at::Tensor& z_loss, int64_t dropped_slots);
  // Host values of sums_4 (one copy): {lb_loss_sum, z_loss_sum, entropy_sum, top1_prob_sum}.
  std::vector<double> sums() const;
};

class MoeLayerImpl : public torch::nn::Module {
 public:
  explicit MoeLayerImpl(const MoeOptions& options, std::shared_ptr<TokenDispatcher> dispatcher = nullptr);
  MoeOutput forward(const at::Tensor& x_TD);
  void reset_parameters(const InitPlan& plan, const std::string& prefix);
  // Replaces the dispatcher (and the local expert shard) - used by expert parallelism.
  void set_dispatcher(std::shared_ptr<TokenDispatcher> dispatcher);

  MoeOptions options;
  at::Tensor router;  // [E, D]
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
