// Token permutation and the TokenDispatcher seam between routing and the experts.
//
// Legend: T tokens, D width, E experts (global), K top-k, S = routed slots kept (T*K when dropless).
// permute_by_expert() turns top-k choices into a permutation that groups slots by expert (stable, so
// slots of one expert keep token order; in capacity mode each expert keeps its highest-probability
// slots). The MoE layer gathers x_TD rows into x_SD, the dispatcher moves them to the rank(s) owning
// the experts and back, and the layer scatters the weighted outputs back onto tokens.
// A dispatcher owns no parameters. LocalDispatcher (one process, all experts) is the identity; the
// expert-parallel all-to-all dispatcher lives in parallel/ and is plugged in from outside.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

namespace hybridmoe {

struct Permutation {
  at::Tensor slot_S;              // int64: index into the flattened [T*K] assignments, grouped by expert
  at::Tensor token_S;             // int64: token of each kept slot (slot_S / K)
  at::Tensor weight_S;            // gate weight of each kept slot
  std::vector<int64_t> counts_E;  // kept slots per expert, sum = S
  int64_t dropped = 0;            // slots dropped by capacity
};

// capacity < 0 means dropless. `priority_TK` orders slots of an over-full expert (highest kept).
Permutation permute_by_expert(const at::Tensor& experts_TK, const at::Tensor& weights_TK, const at::Tensor& priority_TK,
                              int64_t num_experts, int64_t capacity);

// Accumulated by dispatcher implementations between resets (read outside forward, for router statistics).
struct DispatchCounters {
  double exchange_seconds = 0;  // wall time spent in token exchanges (all-to-all), forward and backward
  int64_t rows_received = 0;    // rows this rank's experts received in dispatch()
  int64_t rows_sent = 0;        // rows this rank sent away in dispatch()
  void reset() { *this = DispatchCounters(); }
};

class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  DispatchCounters counters;
  // Set by the MoE layer before each dispatch(): rows are counted for training forwards only (not for eval
  // forwards, counting passes or activation checkpointing's recompute), exchange time for training forwards,
  // their recompute and their backward.
  bool count_rows = true, count_time = true;
  // x_SD: slots sorted by global expert with `counts_E` slots per expert. Returns the rows this rank's
  // experts process, grouped by local expert, and their per-local-expert counts in `local_counts`.
  virtual at::Tensor dispatch(const at::Tensor& x_SD, const std::vector<int64_t>& counts_E,
                              std::vector<int64_t>& local_counts) = 0;
  // Inverse of the last dispatch(): expert outputs in dispatch()'s output layout -> x_SD's layout.
  virtual at::Tensor combine(const at::Tensor& y) = 0;
  virtual int64_t first_local_expert() const = 0;
  virtual int64_t num_local_experts() const = 0;
};

// Single process, every expert local: dispatch and combine are the identity.
class LocalDispatcher : public TokenDispatcher {
 public:
  explicit LocalDispatcher(int64_t num_experts) : num_experts_(num_experts) {}
  at::Tensor dispatch(const at::Tensor& x_SD, const std::vector<int64_t>& counts_E,
                      std::vector<int64_t>& local_counts) override;
  at::Tensor combine(const at::Tensor& y) override { return y; }
  int64_t first_local_expert() const override { return 0; }
  int64_t num_local_experts() const override { return num_experts_; }

 private:
  int64_t num_experts_;
};

}  // namespace hybridmoe
