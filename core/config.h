// Loading and validating a TrainConfig.
//
// LoadConfig reads a text-format file, merges each `--override` text (repeated fields in an override
// replace the file's), fills the defaults that depend on other fields, and runs ValidateConfig. Every
// error is one line naming the file or field path, the bad value and what is allowed, e.g.
//   model.moe.top_k (9) must be in [1, model.moe.num_experts (8)]
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/config.pb.h"

namespace hybridmoe {

// Parses `path` (text format) and applies `overrides` in order.
absl::StatusOr<TrainConfig> LoadConfig(const std::string& path, const std::vector<std::string>& overrides);

// Merges one override into `config` (protobuf MergeFrom), except that every repeated field the override
// sets, at any depth, replaces config's whole list instead of being appended to it (data.train,
// model.moe.router_logit_bias, ...). Scalars it sets replace config's, messages merge field by field,
// fields it does not set keep config's values. An override cannot express an empty list, so a list can be
// replaced but not cleared.
void MergeOverride(const TrainConfig& override, TrainConfig& config);

// Parses a config from text (no file); `origin` names it in errors.
absl::StatusOr<TrainConfig> ParseConfigText(const std::string& text, const std::string& origin);

// Fills fields whose default depends on others (data.train defaults to the bundled corpus).
void ResolveDefaults(TrainConfig& config);

// Every rule on every field; `world_size` is the number of ranks of the launch (1 when not distributed;
// 0 = not known yet: the rules that relate parallel.* to the launch are skipped).
// When `check_files` is set, data files must exist.
absl::Status ValidateConfig(const TrainConfig& config, int world_size = 1, bool check_files = true);
// The parallel.* rules, part of ValidateConfig and the only place they live: ParallelContext applies them
// again once MPI knows the world size. Errors name the field, the value and the valid values.
absl::Status ValidateParallelConfig(const TrainConfig& config, int world_size);

// Text-format rendering of the resolved config (written to the run directory).
std::string ConfigToText(const TrainConfig& config);

}  // namespace hybridmoe
