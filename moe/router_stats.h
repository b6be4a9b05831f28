// Router load-balance statistics: derivation from raw counters, the per-step logger that writes them to
// <run_dir>/router_stats.pb (proto/router_stats.proto), reading them back, and alerts.
//
// Legend: E experts, K top-k, T tokens, R expert-parallel ranks, L MoE layers.
// Each MoE layer accumulates raw counters during forward (MoeLayerImpl::stats: counts_E, loss sums,
// entropy and top-1 sums over tokens) and its dispatcher accumulates exchange counters. At a logged step,
// RouterStatsLogger::Log packs every layer's counters into one flat vector (layout below), lets the caller
// sum it over all ranks (an MPI all-reduce; identity in one process), derives the statistics from the
// global sums, appends one record per layer, resets the counters, and returns scalar summaries for
// metrics.jsonl and TensorBoard. Every rank must call Log at the same steps (it is a collective when
// sum_over_ranks is); only a logger opened with a run directory writes.
//
// Packed layout, per layer in order: counts_E[E], lb_loss_sum, z_loss_sum, entropy_sum, top1_sum, tokens,
// dropped, forwards, rows_received_R[R], exchange_seconds_R[R] (a rank fills only slot ep_rank of the two
// R-vectors, so the sum yields the per-rank values).
//
// Definitions (load = slots of one expert, mean load = T*K/E): max_over_mean = max load / mean load;
// cv = population std of the loads / mean load; dead experts have load 0; the hottest expert's share is the
// fraction of TOKENS that picked it among their top-K (balanced: K/E; at most 1); entropy is mean over
// tokens of -sum_e p_te ln p_te (balanced softmax: ln E).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/records.h"
#include "moe/moe_layer.h"
#include "proto/router_stats.pb.h"

namespace hybridmoe {

// ---- Statistics from counts (pure) ----------------------------------------------------------------------

struct LoadStats {
  double mean_load = 0, max_load = 0, min_load = 0;
  double max_over_mean = 0, cv = 0;
  int dead_experts = 0;
  int hottest = -1;          // expert with the largest load (lowest id on ties)
  double hottest_share = 0;  // its load / tokens: the fraction of tokens that picked it
};

// `tokens` > 0; sum(counts_E) is normally tokens * K.
LoadStats ComputeLoadStats(const std::vector<int64_t>& counts_E, int64_t tokens);

// Raw counters of one layer, summed over forwards (and ranks).
struct RouterCounters {
  std::vector<int64_t> counts_E;
  double lb_loss_sum = 0, z_loss_sum = 0, entropy_sum = 0, top1_sum = 0;
  int64_t tokens = 0, dropped = 0, forwards = 0;
  std::vector<int64_t> rows_received_R;
  std::vector<double> exchange_seconds_R;
  std::vector<double> selection_bias_E;  // empty without aux-loss-free balancing
};

// A complete record (every derived field filled) from one layer's global counters; tokens > 0.
RouterStepRecord MakeRouterRecord(int64_t step, int layer, int top_k, const RouterCounters& counters);

// Aggregates over the layers of one step: router/max_over_mean (max over layers), router/cv_mean,
// router/min_over_mean (min), router/dead_experts (sum), router/entropy_mean, router/top1_mean,
// router/lb_loss, router/z_loss (means over layers), router/dropped, router/all_to_all_s (sums),
// router/ep_overload, router/dropped_fraction (max over layers), router/bias_range (max over layers of
// max - min bias, with aux-loss-free balancing); and for each layer router/layer<i>/ max_over_mean,
// dead_experts, dropped_fraction, ep_overload, and bias_min / bias_max with aux-loss-free balancing.
std::vector<std::pair<std::string, double>> SummarizeRouterRecords(const std::vector<RouterStepRecord>& records);

// ---- Logging during training ----------------------------------------------------------------------------

// This rank's counters of every layer in the packed layout above.
std::vector<double> PackRouterCounters(const std::vector<MoeLayer>& layers, int ep_rank, int ep_size);
// Inverse of PackRouterCounters after the sum (E from each layer's options). Error on a size mismatch.
absl::StatusOr<std::vector<RouterCounters>> UnpackRouterCounters(const std::vector<double>& packed,
                                                                 const std::vector<MoeLayer>& layers, int ep_size);

class RouterStatsLogger {
 public:
  // Appends to run_dir/router_stats.pb (both created if needed; a cut-off last record is repaired, see
  // core/records.h).
  // An empty run_dir makes a logger that only reduces and resets (ranks that do not write).
  static absl::StatusOr<std::unique_ptr<RouterStatsLogger>> Open(const std::string& run_dir);

  // `step` is the 1-based step of metrics.jsonl. sum_over_ranks sums the vector elementwise over all ranks
  // in place (identity or empty function in one process). Layers that routed no token since the last call
  // get no record. Resets every layer's stats and its dispatcher's counters.
  absl::StatusOr<std::vector<std::pair<std::string, double>>> Log(
      int64_t step, const std::vector<MoeLayer>& layers, int ep_rank, int ep_size,
      const std::function<void(std::vector<double>&)>& sum_over_ranks);

  const std::string& path() const { return path_; }  // empty when not writing

 private:
  std::string path_;
  std::unique_ptr<RecordWriter> writer_;
};

// ---- Reading and alerts (tools/router_stats) ------------------------------------------------------------

struct RouterStatsFile {
  std::string path;
  std::vector<RouterStepRecord> records;  // sorted by (step, layer); the last record of a repeated pair wins
  bool truncated = false;                 // the file ends in a cut-off record (a live run, or a copy taken mid-write)
  bool invalid = false;                   // garbage after the valid prefix; `records` holds that prefix
  std::string problem;                    // one line; empty when the whole file is valid
};

// Reads `path_or_run_dir` (a router_stats.pb file, or a run directory holding one). NotFound when absent;
// damage is reported in `problem`, never as an error.
absl::StatusOr<RouterStatsFile> ReadRouterStats(const std::string& path_or_run_dir);

// Why `r` is not a sane record (missing field, counts not matching num_experts or tokens * top_k, ...), or
// empty when it is.
std::string CheckRouterRecord(const RouterStepRecord& r);

struct AlertThresholds {
  double collapse_share = 0.5;     // hottest expert's token share above this (and above 2K/E)
  double min_entropy_ratio = 0.3;  // entropy_mean / ln E below this
  double imbalance_growth = 2.0;   // max_over_mean at least this times the layer's first value
  double ep_overload = 1.5;        // busiest expert-parallel rank's rows over the mean above this
  double dropped_fraction = 0.01;  // share of slots dropped by capacity above this
};

struct RouterAlert {
  int layer = 0;
  std::string kind;        // "dead_expert", "collapse_share", "collapse_entropy", "imbalance_growth",
                           // "ep_overload", "dropped_tokens"
  int expert = -1;         // the dead or hottest expert; -1 when not about one expert
  int64_t began_step = 0;  // first step of the final run of records where the condition holds
  double value = 0;        // at the latest record: share, entropy ratio, growth factor, 0 tokens
  std::string detail;      // one line for people
};

// Conditions that hold at each layer's latest record, with the step where their final run began. Records
// must be sorted by (step, layer), as ReadRouterStats returns them.
std::vector<RouterAlert> FindRouterAlerts(const std::vector<RouterStepRecord>& records,
                                          const AlertThresholds& thresholds);

}  // namespace hybridmoe
