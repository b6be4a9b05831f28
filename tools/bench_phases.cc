#include "tools/bench_phases.h"

#include <ATen/SequenceNumber.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "core/trace.h"

namespace hybridmoe {
namespace {

using Clock = std::chrono::steady_clock;

enum class Region { kNone, kForward, kBackward, kUpdate };

// What a named region of core/trace.h is: a region of the step or a phase inside the forward.
struct Named {
  const char* name;
  Region region;  // kNone: a phase
  Phase phase;
};
constexpr Named kNamed[] = {
    {trace::kForward, Region::kForward, Phase::kOther},        {trace::kBackward, Region::kBackward, Phase::kOther},
    {trace::kGradSync, Region::kUpdate, Phase::kOptimizer},    {trace::kClip, Region::kUpdate, Phase::kOptimizer},
    {trace::kOptimizer, Region::kUpdate, Phase::kOptimizer},   {trace::kAttention, Region::kNone, Phase::kAttention},
    {trace::kDenseFfn, Region::kNone, Phase::kDenseFfn},       {trace::kRouter, Region::kNone, Phase::kRouter},
    {trace::kPermutation, Region::kNone, Phase::kPermutation}, {trace::kAllToAll, Region::kNone, Phase::kAllToAll},
    {trace::kExperts, Region::kNone, Phase::kExperts},
};
const Named* FindNamed(const char* name) {
  for (const Named& n : kNamed) {
    if (std::strcmp(n.name, name) == 0) return &n;
  }
  return nullptr;
}

// The phase of each range of autograd sequence numbers created in the forward region.
struct SeqRanges {
  std::vector<std::pair<int64_t, Phase>> starts;  // (first sequence number, phase), ascending
  Phase Find(int64_t seq) const {
    if (seq < 0 || starts.empty() || seq < starts.front().first) return Phase::kOther;
    auto it = std::upper_bound(starts.begin(), starts.end(), std::make_pair(seq, Phase::kCount),
                               [](const auto& a, const auto& b) { return a.first < b.first; });
    return std::prev(it)->second;
  }
};

// The timer's state (RecordFunction callbacks are plain function pointers, hence one global).
struct Timer {
  struct Frame {
    Region region;
    Phase phase;
  };
  std::mutex mu;
  PhaseTimes* times = nullptr;
  SeqRanges ranges;
  std::vector<Frame> stack;
  Clock::time_point since;

  Region region() const { return stack.empty() ? Region::kNone : stack.back().region; }
  // Charges the time since the last event to the innermost frame (the step's time outside every region
  // counts as forward "other").
  void Charge(Clock::time_point now) {
    const double dt = std::chrono::duration<double>(now - since).count();
    since = now;
    const Frame top = stack.empty() ? Frame{Region::kNone, Phase::kOther} : stack.back();
    (top.region == Region::kBackward ? times->backward : times->forward)[static_cast<int>(top.phase)] += dt;
  }
  void MarkSequence(Phase p) { ranges.starts.emplace_back(static_cast<int64_t>(at::sequence_number::peek()), p); }
};
Timer* g_timer = nullptr;

std::unique_ptr<at::ObserverContext> OnStart(const at::RecordFunction& fn) {
  Timer* t = g_timer;
  if (t == nullptr) return nullptr;
  std::lock_guard<std::mutex> lock(t->mu);
  t->Charge(Clock::now());
  if (fn.scope() == at::RecordScope::BACKWARD_FUNCTION) {
    t->stack.push_back({Region::kBackward, t->ranges.Find(fn.seqNr())});
    return nullptr;
  }
  const Named* named = FindNamed(fn.name());
  const Timer::Frame parent = t->stack.empty() ? Timer::Frame{Region::kNone, Phase::kOther} : t->stack.back();
  if (named != nullptr && named->region != Region::kNone) {
    t->stack.push_back({named->region, named->phase});
  } else if (named != nullptr && parent.region == Region::kForward) {
    t->stack.push_back({Region::kForward, named->phase});
    t->MarkSequence(named->phase);
  } else {
    // Another user scope, or a phase recomputed inside backward (activation checkpointing): the time stays
    // with the enclosing frame.
    t->stack.push_back(parent);
  }
  return nullptr;
}

void OnEnd(const at::RecordFunction& fn, at::ObserverContext*) {
  Timer* t = g_timer;
  if (t == nullptr) return;
  std::lock_guard<std::mutex> lock(t->mu);
  t->Charge(Clock::now());
  if (t->stack.empty()) return;
  t->stack.pop_back();
  if (fn.scope() != at::RecordScope::BACKWARD_FUNCTION && t->region() == Region::kForward) {
    t->MarkSequence(t->stack.back().phase);  // ops after the phase belong to the enclosing one
  }
}

}  // namespace

const char* PhaseName(Phase p) {
  switch (p) {
    case Phase::kAttention: return "attention";
    case Phase::kRouter: return "router";
    case Phase::kPermutation: return "permutation";
    case Phase::kExperts: return "experts";
    case Phase::kAllToAll: return "all_to_all";
    case Phase::kDenseFfn: return "dense_ffn";
    case Phase::kOptimizer: return "optimizer";
    case Phase::kOther: return "other";
    case Phase::kCount: break;
  }
  return "?";
}

PhaseTimes TimeStepPhases(Trainer& trainer, int64_t step, const std::vector<Batch>& batches,
                          const StepOptions& options) {
  PhaseTimes times;
  Timer timer;
  timer.times = &times;
  timer.since = Clock::now();
  g_timer = &timer;
  auto handle = at::addGlobalCallback(at::RecordFunctionCallback(OnStart, OnEnd)
                                          .scopes({at::RecordScope::USER_SCOPE, at::RecordScope::BACKWARD_FUNCTION}));
  times.step = trainer.Step(step, batches, options);
  at::removeCallback(handle);
  {
    std::lock_guard<std::mutex> lock(timer.mu);
    timer.Charge(Clock::now());
    g_timer = nullptr;
  }
  times.total = times.step.total_s;
  return times;
}

}  // namespace hybridmoe
