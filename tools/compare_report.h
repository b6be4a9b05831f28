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
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "tools/compare_metrics.h"

namespace hybridmoe {

struct VariantResult {
  std::string strategy;
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
};

std::string ReportMarkdown(const SweepReport& report);
std::string ReportHtml(const SweepReport& report);
std::string SummaryCsv(const SweepReport& report);
std::string CurvesCsv(const SweepReport& report);
std::string GradNormsCsv(const SweepReport& report);

// "3m05s", "1h02m", "12.3s"; "-" for NaN.
std::string FormatWall(double seconds);

}  // namespace hybridmoe
