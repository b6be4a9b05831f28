// Where the time of a training step goes: attention, router, permutation, experts, all-to-all, dense FFN,
// optimizer and everything else, forward and backward (tools/bench).
//
// The forward pass is re-enacted here op for op from the model's public pieces (embedding, each block's
// norms and sub-layer form as models/block.h's layout says, Attention, the MoE layer's router, permutation,
// dispatcher and GroupedExperts, final norm, LM head, losses) with a wall-clock switch at every phase
// boundary. Each switch also records the autograd sequence number, so every backward node, which carries
// the sequence number of the forward op that created it, is attributed to the phase that created it: a
// RecordFunction callback on BACKWARD_FUNCTION times each node exclusively (a nested node pauses its parent).
// Backward time outside any node (engine bookkeeping) and gradient accumulation count as "other".
// The re-enacted loss must equal TransformerImpl::forward's (checked by the caller): it is the same math,
// so a difference means the model changed and this file has to follow.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "models/transformer.h"

namespace hybridmoe {

enum class Phase { kAttention, kRouter, kPermutation, kExperts, kAllToAll, kDenseFfn, kOptimizer, kOther, kCount };
constexpr int kNumPhases = static_cast<int>(Phase::kCount);
const char* PhaseName(Phase p);

struct PhaseTimes {
  std::array<double, kNumPhases> forward{}, backward{};
  double optimizer = 0;  // gradient sync + clip + AdamW (kept in forward[kOptimizer] as well)
  double total = 0;      // wall time of the whole step
  double loss = 0;       // re-enacted loss (compare with the model's)
  double Of(Phase p) const { return forward[static_cast<int>(p)] + backward[static_cast<int>(p)]; }
};

// Runs forward (re-enacted, timed by phase) and backward of `model` on (inputs, targets), leaving the
// gradients in place. The caller times the optimizer and adds it to the result.
PhaseTimes TimePhasesForwardBackward(Transformer& model, const at::Tensor& inputs, const at::Tensor& targets);

}  // namespace hybridmoe
