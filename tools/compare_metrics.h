// Reading one run's metrics.jsonl and reducing it to the numbers of a norm-strategy comparison
// (tools/compare_norms). Pure functions of the file contents, no LibTorch.
//
// metrics.jsonl holds one flat JSON object per line (tools/trainer.h): numbers, strings, booleans and
// null (the trainer writes non-finite numbers as null; they read back here as NaN), parsed by nlohmann-json
// (strings are UTF-8, \u escapes included). Lines cut short by a kill are ignored and counted. Records are grouped by
// their "kind": train, eval, skip, abort.
//
// Definitions used by the comparison report (docs/compare_norms.md repeats them):
//   final train loss  mean of `loss` over the last `final_window` train records with a finite loss
//   smoothed loss     at a train record: the mean of the last `final_window` finite losses up to it
//                     (per-batch losses of a mixed corpus vary by +-10%, the same batches for every variant)
//   best / final val  minimum / last finite `val_loss` over the eval records
//   tokens to target  `tokens` of the first train record whose smoothed loss is <= target (NaN: never);
//                     at the last record the smoothed loss is the final train loss
//   skipped steps     number of "skip" records (steps whose loss or gradients were not finite)
//   loss spikes       train records whose loss exceeds spike_ratio x the smoothed loss of the record before
//   diverged          the trainer aborted ("abort" record / "training diverged" exit), or the last logged
//                     loss is not finite, or it is above the first logged loss (training blew up)
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hybridmoe {

// One metrics.jsonl line: numeric fields (null -> NaN, true/false -> 1/0) and string fields.
struct MetricsRecord {
  std::map<std::string, double> num;
  std::map<std::string, std::string> str;
  double Get(const std::string& key) const;  // NaN when absent
  int64_t Step() const { return static_cast<int64_t>(Get("step")); }
};

// Parses one flat JSON object; an error names what is wrong (at which byte for malformed JSON). A nested
// object or array is an error.
absl::StatusOr<MetricsRecord> ParseFlatJsonObject(const std::string& line);

struct RunMetrics {
  std::vector<MetricsRecord> train, eval, skip, abort;
  int64_t unreadable_lines = 0;
};

// Reads `path` (NotFound if it does not exist).
absl::StatusOr<RunMetrics> ReadRunMetrics(const std::string& path);

struct SummaryOptions {
  int final_window = 5;
  double target_loss = 0;  // tokens_to_target is computed only when > 0
  double spike_ratio = 1.2;
};

struct VariantSummary {
  double final_train_loss = 0;  // NaN when no finite loss was logged
  int final_window_used = 0;
  double best_val_loss = 0, final_val_loss = 0;
  int64_t best_val_step = 0;
  double tokens_to_target = 0;  // NaN: target not reached
  int64_t last_step = 0;        // last logged train step
  double tokens = 0;            // tokens seen at last_step
  int64_t skipped_steps = 0;
  int64_t loss_spikes = 0;
  double max_grad_norm = 0;  // over finite logged values
  bool diverged = false;
  std::string diverged_reason;  // empty unless diverged
  double final_entropy = 0, final_max_over_mean = 0, mean_max_over_mean = 0;
  int64_t dead_experts = 0;  // router/dead_experts of the last train record
};

VariantSummary Summarize(const RunMetrics& metrics, const SummaryOptions& options);

// The default target loss: the median of the finite final train losses of variants that did not diverge
// (all variants when every one diverged), so at least one variant reaches it. NaN when none is finite.
double DefaultTargetLoss(const std::vector<VariantSummary>& summaries);

// Same data order across runs: the data_hash of every train step logged by all runs must agree.
struct DataOrderCheck {
  bool identical = true;
  int64_t steps_compared = 0;
  std::string detail;  // the first difference, or what was compared
};
DataOrderCheck CompareDataOrder(const std::vector<std::string>& names, const std::vector<const RunMetrics*>& runs);

// The train steps (sorted) at which `key` was logged by at least one run.
std::vector<int64_t> StepsWithKey(const std::vector<const RunMetrics*>& runs, const std::string& key);

// Per-block values of `grad_norm/block<i>/<part>` (part: attn, ffn, router) in the train record of `step`;
// empty when that step was not logged with per-layer gradient norms.
std::vector<double> BlockGradNorms(const RunMetrics& metrics, int64_t step, const std::string& part);

}  // namespace hybridmoe
