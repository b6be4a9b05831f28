// The report of a norm-strategy sweep (tools/compare_norms): a markdown page, a self-contained HTML page
// with inline SVG charts (no scripts, no external resources), and the raw numbers as CSV.
//
// Everything is rendered from a SweepReport: one VariantResult per strategy (its metrics.jsonl as read by
// tools/compare_metrics.h and the summary computed from it) plus the sweep's setup. The numbers in the
// tables are exactly the VariantSummary fields (markdown rounds to 4 decimals, CSV prints 10 significant
// digits; a missing or non-finite value is an empty CSV cell and "-" in the tables).
//
// Files (written by the caller): report.md, report.html, summary.csv (one row per variant),
// curves.csv (one row per variant and logged step: train and router values, val_loss at eval steps),
// grad_norms.csv (one row per variant, chosen step and block: attn, ffn, router gradient norms).
//
// Seeds and depths (compare_norms --seeds / --depths): a variant is one (depth, strategy, seed) run. The
// runs of one (depth, strategy) form a group; the report then adds groups.csv and sections with the mean
// and spread over seeds per group, each group against the baseline strategy of its depth (Welch's
// t-test on the final train losses and whether the seed ranges overlap), loss curves with min-max bands,
// final loss against depth, and the per-block gradient norms of the attention and FFN/expert weights
// (mean over seeds, min-max band) at the chosen steps.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "tools/compare_metrics.h"
#include "tools/seed_stats.h"

namespace hybridmoe {

struct VariantResult {
  std::string strategy;
  std::string label;  // the run directory relative to the sweep (= strategy in a single-seed sweep)
  int64_t depth = 0;  // model.n_layers of the run
  uint64_t seed = 0;  // train.seed of the run
  // complete | diverged (train stopped on non-finite steps) | failed (any other error) | incomplete | not run
  std::string status;
  std::string message;  // train's error line for diverged/failed variants
  double wall_s = 0;    // NaN when unknown
  RunMetrics metrics;
  VariantSummary summary;
};

struct SweepReport {
  std::string title;
  std::vector<std::pair<std::string, std::string>> setup;  // label, value (plain text)
  std::vector<VariantResult> variants;
  SummaryOptions summary_options;  // target_loss included
  std::string target_rule;         // how target_loss was chosen
  std::vector<int64_t> grad_steps;
  int64_t num_experts = 0;  // for the balanced-routing entropy reference ln(E)
  // Unigram entropy of the training tokens (nats), when the data's manifest states it: the loss of a model
  // that learned the token frequencies only. NaN = unknown (no column).
  double unigram_entropy = std::numeric_limits<double>::quiet_NaN();
  DataOrderCheck data_order;
  // Seeds / depths mode: groups sections, banded curves. Off: the single-seed report as before.
  bool grouped = false;
  std::string baseline;  // strategy every group is compared with (grouped mode)
  double alpha = 0.05;   // significance level of the Welch test
};

// One (depth, strategy) group of a seeds/depths sweep.
struct GroupResult {
  int64_t depth = 0;
  std::string strategy;
  std::vector<size_t> runs;  // indices into SweepReport::variants
  // Runs that diverged / completed without diverging; the others (not run, incomplete, failed) are left out.
  int diverged = 0, complete = 0;
  SampleStats final_loss, final_val;  // over the complete runs
  std::vector<double> losses;         // those final train losses
  // Against the baseline group of the same depth (empty verdict for the baseline itself).
  WelchResult welch;
  bool ranges_overlap = true;
  std::string verdict;
};
std::vector<GroupResult> Groups(const SweepReport& report);
std::string GroupsCsv(const SweepReport& report);

std::string ReportMarkdown(const SweepReport& report);
std::string ReportHtml(const SweepReport& report);
std::string SummaryCsv(const SweepReport& report);
std::string CurvesCsv(const SweepReport& report);
std::string GradNormsCsv(const SweepReport& report);

// "3m05s", "1h02m", "12.3s"; "-" for NaN.
std::string FormatWall(double seconds);

}  // namespace hybridmoe
