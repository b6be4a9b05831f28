// Where the time of a training step goes: attention, router, permutation, experts, all-to-all, dense FFN,
// optimizer (gradient sync, clip, AdamW) and everything else, forward and backward (tools/bench).
//
// The step timed is the trainer's own (Trainer::Step, tools/training.h): a RecordFunction callback follows
// the step's named regions (core/trace.h) and charges wall time exclusively to the innermost one. Inside the
// forward region each phase switch also records the autograd sequence number, so every backward node, which
// carries the sequence number of the forward op that created it, is attributed to the phase that created it;
// backward nodes are timed exclusively too (a nested node pauses its parent). Time in the forward and backward
// regions outside any phase (embedding, norms, residuals, LM head, loss; engine bookkeeping, gradient
// accumulation) counts as "other", as does the step's time outside every region (reading the losses).
#pragma once

#include <array>

#include "tools/training.h"

namespace hybridmoe {

enum class Phase { kAttention, kRouter, kPermutation, kExperts, kAllToAll, kDenseFfn, kOptimizer, kOther, kCount };
constexpr int kNumPhases = static_cast<int>(Phase::kCount);
const char* PhaseName(Phase p);

struct PhaseTimes {
  std::array<double, kNumPhases> forward{}, backward{};  // kOptimizer is kept in forward[]
  double total = 0;                                      // wall time of the whole step (StepResult::total_s)
  StepResult step;                                       // the step's own result
  double Of(Phase p) const { return forward[static_cast<int>(p)] + backward[static_cast<int>(p)]; }
};

// Runs trainer.Step(step, batches, options) with the phase timer attached (one step at a time per process).
PhaseTimes TimeStepPhases(Trainer& trainer, int64_t step, const std::vector<Batch>& batches,
                          const StepOptions& options = {});

}  // namespace hybridmoe
