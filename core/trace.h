// Named regions of the training step, as at::RecordFunction user scopes: PyTorch's profiler (Kineto, Chrome
// traces) shows them, and tools/bench's phase timer (tools/bench_phases.h) attributes the real step's time
// by them. With no callback registered a scope costs one thread-local check.
//
// The names, and where they are opened:
//   hybridmoe::forward, hybridmoe::backward, hybridmoe::grad_sync, hybridmoe::clip, hybridmoe::optimizer
//                              tools/training.cc (Trainer::Step)
//   hybridmoe::attention       core/attention.cc        hybridmoe::dense_ffn    core/ffn.cc
//   hybridmoe::router, hybridmoe::permutation, hybridmoe::all_to_all, hybridmoe::experts   moe/moe_layer.cc
#pragma once

#include <string_view>

#include <ATen/record_function.h>

namespace hybridmoe {

namespace trace {
inline constexpr char kForward[] = "hybridmoe::forward";
inline constexpr char kBackward[] = "hybridmoe::backward";
inline constexpr char kGradSync[] = "hybridmoe::grad_sync";
inline constexpr char kClip[] = "hybridmoe::clip";
inline constexpr char kOptimizer[] = "hybridmoe::optimizer";
inline constexpr char kAttention[] = "hybridmoe::attention";
inline constexpr char kDenseFfn[] = "hybridmoe::dense_ffn";
inline constexpr char kRouter[] = "hybridmoe::router";
inline constexpr char kPermutation[] = "hybridmoe::permutation";
inline constexpr char kAllToAll[] = "hybridmoe::all_to_all";
inline constexpr char kExperts[] = "hybridmoe::experts";
}  // namespace trace

// The region lasts as long as the object; `name` must outlive it (use the constants above).
class TraceScope {
 public:
  explicit TraceScope(const char* name) : fn_(at::RecordScope::USER_SCOPE) {
    if (fn_.isActive()) fn_.before(std::string_view(name), c10::ArrayRef<const c10::IValue>{});
  }
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;

 private:
  at::RecordFunction fn_;
};

}  // namespace hybridmoe
