// The measurement sections of tools/bench that run inside one process (see tools/bench.cc for the report):
//   MoeVsDense    block 0's MoE layer forward + backward against a dense SwiGLU FFN with the same active
//                 FLOPs (hidden = top_k * expert_hidden) on the same tokens (the embedded bench batch,
//                 RMS-normalised), plus the grouped experts alone on the slots routing gives those tokens;
//                 the three alternate round by round and the ratios are per-round medians.
//   PhaseShares   the median of `rounds` steps of the trainer timed by phase (tools/bench_phases.h), at lr = 0
//                 so that the weights do not move: the timed step's loss must equal an untimed step's on the
//                 same weights (the timer observes, it does not change the math).
//   ChildMemory   the body of `bench --child_memory=0|1`: a fresh process that trains 3 steps with or without
//                 activation checkpointing and prints its peak resident memory (VmHWM is per process, so
//                 the two settings are compared in two children); RunChild starts one and parses its JSON.
//   PrintTable    the human-readable table (stderr) of a finished report: one line per figure, the issue's
//                 targets beside the figures they apply to, a warning when a rank was pinned to fewer cores
//                 than it runs threads.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "proto/config.pb.h"
#include "tools/bench_common.h"
#include "tools/training.h"

namespace hybridmoe {

using Json = nlohmann::ordered_json;

Json ToJson(const Summary& s);
std::string CpuModel();
double LoadAverage();  // 1-minute load average
std::string NowUtc();

// One training step (Trainer::Step) on `batch` at the configured peak rate optim.lr, or at `lr`; the
// step's result (StepResult::total_s is the time the bench reports).
StepResult BenchStep(Trainer& trainer, const Batch& batch, std::optional<double> lr = std::nullopt);

Json MoeVsDense(Trainer& trainer, const at::Tensor& inputs, int rounds);
Json PhaseShares(Trainer& trainer, const Batch& batch, int rounds);

absl::StatusOr<Json> RunChild(const std::vector<std::string>& args);
int ChildMemory(const TrainConfig& config, bool checkpointing, int threads, bool random_tokens);

void PrintTable(const Json& report);

}  // namespace hybridmoe
