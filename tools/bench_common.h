// Shared pieces of tools/bench: statistics over repeated timings, the machine's fp32 matmul peak measured
// in-process, FLOP accounting, resident memory and the bench's fixed batch. The step that tools/bench times
// is the trainer's own (Trainer::Step, tools/training.h).
//
// Every figure that tools/bench reports as a ratio is taken within one process, with the same intra-op
// threads, interleaving the two sides round by round (A B A B ...), so that other load on the machine hits
// both sides alike; the median over rounds is reported, and the spread (min, max) beside it.
//
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "core/data.h"
#include "proto/config.pb.h"

namespace hybridmoe {

using BenchClock = std::chrono::steady_clock;
double SecondsSince(BenchClock::time_point since);

struct Summary {
  double median = 0, min = 0, max = 0;
  int n = 0;
};
Summary Summarize(std::vector<double> values);

// Best fp32 GEMM rate (FLOP/s) of at::mm on n x n x n for n in `sizes`, at the current at::get_num_threads(),
// each size timed `reps` times after one warm-up (best of the reps: the machine's own limit right now).
double MeasureMatmulPeak(const std::vector<int64_t>& sizes = {1024, 2048}, int reps = 3,
                         at::ScalarType dtype = at::kFloat);

// Model FLOPs per token for training (3x forward): models/accounting.h's PaLM convention (full attention)
// and the causally halved variant (only keys at or before the query count).
struct FlopCount {
  double per_token_train = 0;
  double per_token_train_causal = 0;
};
FlopCount CountFlops(const TrainConfig& config);

// Peak resident memory of this process (VmHWM) in bytes; 0 if unknown.
int64_t PeakResidentBytes();

// A fixed batch of `batch` sequences: from the config's training data, or uniform random tokens.
absl::StatusOr<Batch> BenchBatch(const TrainConfig& config, int64_t batch, int64_t first, bool random_tokens);

}  // namespace hybridmoe
