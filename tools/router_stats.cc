// bazel-bin/tools/router_stats RUN_DIR [--layer=N] [--steps=A:B] [--format=table|csv|json|html] [--out=FILE]
//   [--step=N] [--collapse_share=0.5] [--min_entropy_ratio=0.3] [--imbalance_growth=2.0] [--ep_overload=1.5]
//   [--dropped_fraction=0.01]
// Summarises the router statistics of a run (RUN_DIR/router_stats.pb, proto/router_stats.proto; RUN_DIR may
// also be the file itself): per MoE layer imbalance, CV, entropy, dead experts, the hottest expert and the
// trend since the first selected step, plus alerts (dead experts, collapse, imbalance growth, each with the
// step where it began). csv: one row per record; json: layers, alerts and records; html: a self-contained
// page (tools/router_stats_html.h). Works on a live run (complete records only). A file that ends in a
// cut-off record gets a warning on stderr; garbage gets an error line, the valid prefix is still reported,
// and the exit status is 1.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "moe/router_stats.h"
#include "tools/cli.h"
#include "tools/router_stats_html.h"

namespace hybridmoe {
namespace {

struct Selection {
  int layer = -1;  // -1: all
  int64_t first = INT64_MIN, last = INT64_MAX;
};

double EntropyRatio(const RouterStepRecord& r) {
  return r.num_experts() > 1 ? r.entropy_mean() / std::log(static_cast<double>(r.num_experts())) : 1.0;
}

LoadStats Load(const RouterStepRecord& r) {
  return ComputeLoadStats({r.counts().begin(), r.counts().end()}, r.tokens());
}

std::string Num(double v) { return std::isfinite(v) ? absl::StrFormat("%.9g", v) : "null"; }

// First and latest record of each layer.
std::map<int, std::pair<const RouterStepRecord*, const RouterStepRecord*>> Ends(
    const std::vector<RouterStepRecord>& records) {
  std::map<int, std::pair<const RouterStepRecord*, const RouterStepRecord*>> ends;
  for (const RouterStepRecord& r : records) {
    auto [it, fresh] = ends.try_emplace(r.layer(), &r, &r);
    if (!fresh) it->second.second = &r;
  }
  return ends;
}

// (min, max) of a record's selection bias; call only when it has one.
std::pair<double, double> BiasMinMax(const RouterStepRecord& r) {
  return {*std::min_element(r.selection_bias().begin(), r.selection_bias().end()),
          *std::max_element(r.selection_bias().begin(), r.selection_bias().end())};
}

// "min..max" of the selection bias, "-" without aux-loss-free balancing.
std::string BiasRange(const RouterStepRecord& r) {
  if (r.selection_bias_size() == 0) return "-";
  const auto [lo, hi] = BiasMinMax(r);
  return absl::StrFormat("%.2g..%.2g", lo, hi);
}

std::string FormatTable(const std::string& source, const std::vector<RouterStepRecord>& records,
                        const std::vector<RouterAlert>& alerts, const AlertThresholds& t) {
  const RouterStepRecord& any = records.back();
  std::string out = absl::StrFormat("%s: %d records, steps %d to %d, %d experts, top-%d, expert-parallel %d\n", source,
                                    records.size(), records.front().step(), records.back().step(), any.num_experts(),
                                    any.top_k(), any.ep_size());
  absl::StrAppendFormat(&out, "%5s %6s %8s %17s %6s %8s %15s %6s %4s %14s %8s %8s %11s %10s\n", "layer", "step",
                        "max/mean", "trend (max/mean)", "cv", "min/mean", "entropy/lnE", "top1", "dead",
                        "hottest(share)", "dropped", "lb_loss", "ep_overload", "bias_range");
  for (const auto& [layer, ends] : Ends(records)) {
    const RouterStepRecord &first = *ends.first, &r = *ends.second;
    const LoadStats s = Load(r);
    const double change = first.max_over_mean() > 0 ? r.max_over_mean() / first.max_over_mean() - 1 : 0;
    absl::StrAppendFormat(&out, "%5d %6d %8.3f %17s %6.3f %8.3f %15s %6.3f %4d %14s %8d %8.4f %11.3f %10s\n", layer,
                          r.step(), r.max_over_mean(),
                          absl::StrFormat("%.2f->%.2f %+.0f%%", first.max_over_mean(), r.max_over_mean(), 100 * change),
                          r.cv(), r.mean_load() > 0 ? r.min_load() / r.mean_load() : 0.0,
                          absl::StrFormat("%.2f->%.2f", EntropyRatio(first), EntropyRatio(r)), r.top1_mean(),
                          r.dead_experts(), absl::StrFormat("e%d (%.1f%%)", s.hottest, 100 * s.hottest_share),
                          r.dropped(), r.lb_loss(), r.ep_overload(), BiasRange(r));
  }
  absl::StrAppendFormat(&out,
                        "alerts (collapse share > %.2f, entropy/lnE < %.2f, imbalance growth >= %.1fx, EP overload > "
                        "%.2fx, dropped > %.1f%%): %s\n",
                        t.collapse_share, t.min_entropy_ratio, t.imbalance_growth, t.ep_overload,
                        100 * t.dropped_fraction, alerts.empty() ? "none" : "");
  for (const RouterAlert& a : alerts) {
    absl::StrAppendFormat(&out, "  layer %d  %-16s since step %-6d %s\n", a.layer, a.kind, a.began_step, a.detail);
  }
  return out;
}

std::string FormatCsv(const std::vector<RouterStepRecord>& records) {
  int E = 0, R = 0;
  for (const RouterStepRecord& r : records) {
    E = std::max(E, r.counts_size());
    R = std::max(R, r.tokens_received_per_rank_size());
  }
  std::string out =
      "step,layer,num_experts,top_k,tokens,forwards,lb_loss,z_loss,mean_load,max_load,min_load,"
      "max_over_mean,cv,dead_experts,entropy_mean,entropy_ratio,top1_mean,dropped,hottest_expert,"
      "hottest_share,all_to_all_seconds,ep_overload,dropped_fraction,bias_min,bias_max";
  for (int e = 0; e < E; ++e) absl::StrAppend(&out, ",count_", e);
  for (int i = 0; i < R; ++i) absl::StrAppend(&out, ",received_rank_", i);
  out += "\n";
  for (const RouterStepRecord& r : records) {
    const LoadStats s = Load(r);
    absl::StrAppend(&out, r.step(), ",", r.layer(), ",", r.num_experts(), ",", r.top_k(), ",", r.tokens(), ",",
                    r.forwards(), ",", Num(r.lb_loss()), ",", Num(r.z_loss()), ",", Num(r.mean_load()), ",",
                    Num(r.max_load()), ",", Num(r.min_load()), ",", Num(r.max_over_mean()), ",", Num(r.cv()), ",",
                    r.dead_experts(), ",", Num(r.entropy_mean()), ",", Num(EntropyRatio(r)), ",", Num(r.top1_mean()),
                    ",", r.dropped(), ",", s.hottest, ",", Num(s.hottest_share), ",", Num(r.all_to_all_seconds()), ",",
                    Num(r.ep_overload()), ",", Num(r.dropped_fraction()), ",",
                    r.selection_bias_size() ? Num(BiasMinMax(r).first) : "", ",",
                    r.selection_bias_size() ? Num(BiasMinMax(r).second) : "");
    for (int e = 0; e < E; ++e) absl::StrAppend(&out, ",", e < r.counts_size() ? absl::StrCat(r.counts(e)) : "");
    for (int i = 0; i < R; ++i) {
      absl::StrAppend(&out, ",",
                      i < r.tokens_received_per_rank_size() ? absl::StrCat(r.tokens_received_per_rank(i)) : "");
    }
    out += "\n";
  }
  return out;
}

nlohmann::ordered_json RecordJson(const RouterStepRecord& r) {
  const LoadStats s = Load(r);
  // Non-finite doubles are written as null.
  return {{"step", r.step()},
          {"layer", r.layer()},
          {"num_experts", r.num_experts()},
          {"top_k", r.top_k()},
          {"tokens", r.tokens()},
          {"forwards", r.forwards()},
          {"lb_loss", r.lb_loss()},
          {"z_loss", r.z_loss()},
          {"mean_load", r.mean_load()},
          {"max_load", r.max_load()},
          {"min_load", r.min_load()},
          {"max_over_mean", r.max_over_mean()},
          {"cv", r.cv()},
          {"dead_experts", r.dead_experts()},
          {"entropy_mean", r.entropy_mean()},
          {"entropy_ratio", EntropyRatio(r)},
          {"top1_mean", r.top1_mean()},
          {"dropped", r.dropped()},
          {"hottest_expert", s.hottest},
          {"hottest_share", s.hottest_share},
          {"all_to_all_seconds", r.all_to_all_seconds()},
          {"ep_overload", r.ep_overload()},
          {"dropped_fraction", r.dropped_fraction()},
          {"selection_bias", std::vector<double>(r.selection_bias().begin(), r.selection_bias().end())},
          {"counts", std::vector<int64_t>(r.counts().begin(), r.counts().end())},
          {"tokens_received_per_rank",
           std::vector<int64_t>(r.tokens_received_per_rank().begin(), r.tokens_received_per_rank().end())},
          {"all_to_all_seconds_per_rank",
           std::vector<double>(r.all_to_all_seconds_per_rank().begin(), r.all_to_all_seconds_per_rank().end())}};
}

// One line per top-level key and per element of a top-level array, each value on one line: a file of
// thousands of records stays readable and greppable. Paths and messages that are not UTF-8 get U+FFFD.
std::string DumpByLine(const nlohmann::ordered_json& doc) {
  const auto dump = [](const nlohmann::ordered_json& v) {
    return v.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  };
  std::string out = "{";
  const char* sep = "\n  ";
  for (const auto& [key, value] : doc.items()) {
    absl::StrAppend(&out, sep, dump(key), ": ");
    sep = ",\n  ";
    if (!value.is_array() || value.empty()) {
      out += dump(value);
      continue;
    }
    const char* item_sep = "[\n    ";
    for (const auto& item : value) {
      absl::StrAppend(&out, item_sep, dump(item));
      item_sep = ",\n    ";
    }
    out += "\n  ]";
  }
  return out + "\n}\n";
}

std::string FormatJson(const RouterStatsFile& file, const std::vector<RouterStepRecord>& records,
                       const std::vector<RouterAlert>& alerts, const AlertThresholds& t) {
  nlohmann::ordered_json doc;
  doc["file"] = file.path;
  doc["problem"] = file.problem.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(file.problem);
  doc["truncated"] = file.truncated;
  doc["invalid"] = file.invalid;
  doc["thresholds"] = {{"collapse_share", t.collapse_share},
                       {"min_entropy_ratio", t.min_entropy_ratio},
                       {"imbalance_growth", t.imbalance_growth},
                       {"ep_overload", t.ep_overload},
                       {"dropped_fraction", t.dropped_fraction}};
  doc["num_records"] = records.size();
  doc["layers"] = nlohmann::ordered_json::array();
  for (const auto& [layer, ends] : Ends(records)) {
    doc["layers"].push_back({{"layer", layer},
                             {"first_step", ends.first->step()},
                             {"last_step", ends.second->step()},
                             {"first_max_over_mean", ends.first->max_over_mean()},
                             {"first_entropy_ratio", EntropyRatio(*ends.first)},
                             {"latest", RecordJson(*ends.second)}});
  }
  doc["alerts"] = nlohmann::ordered_json::array();
  for (const RouterAlert& a : alerts) {
    doc["alerts"].push_back({{"layer", a.layer},
                             {"kind", a.kind},
                             {"expert", a.expert},
                             {"began_step", a.began_step},
                             {"value", a.value},
                             {"detail", a.detail}});
  }
  doc["records"] = nlohmann::ordered_json::array();
  for (const RouterStepRecord& r : records) doc["records"].push_back(RecordJson(r));
  return DumpByLine(doc);
}

absl::Status ParseSteps(const std::string& spec, Selection* sel) {
  const size_t colon = spec.find(':');
  const std::string a = spec.substr(0, colon), b = colon == std::string::npos ? a : spec.substr(colon + 1);
  if ((!a.empty() && !absl::SimpleAtoi(a, &sel->first)) || (!b.empty() && !absl::SimpleAtoi(b, &sel->last)) ||
      (a.empty() && b.empty())) {
    return absl::InvalidArgumentError(
        absl::StrCat("--steps (", spec, ") must be A:B, A: or :B with integer steps (both ends included)"));
  }
  return absl::OkStatus();
}

absl::Status ParseDouble(const CommandLine& cl, const std::string& name, double* value) {
  if (!cl.Has(name)) return absl::OkStatus();
  if (!absl::SimpleAtod(cl.Get(name), value) || !std::isfinite(*value) || *value < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " (", cl.Get(name), ") must be a non-negative number"));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace hybridmoe

int main(int argc, char** argv) {
  using namespace hybridmoe;
  const std::vector<FlagSpec> specs = {
      {"layer", "only this MoE layer (0-based ordinal among MoE layers)"},
      {"steps", "only steps A:B (both included; A: and :B leave one end open)"},
      {"format", "table (default), csv (one row per record), json, html"},
      {"out", "write the report to this file instead of stdout"},
      {"step", "html: the logged step the heat map shows first (default: the latest)"},
      {"collapse_share", "alert when one expert gets more than this share of tokens (default 0.5)"},
      {"min_entropy_ratio", "alert when router entropy / ln E falls below this (default 0.3)"},
      {"imbalance_growth", "alert when max/mean load reaches this multiple of its first value (default 2.0)"},
      {"ep_overload", "alert when the busiest EP rank gets more than this multiple of the mean rows (default 1.5)"},
      {"dropped_fraction", "alert when more than this share of slots is dropped by capacity (default 0.01)"},
      {"help", "show this help", true},
  };
  auto fail = [](const std::string& message, int code = 1) {
    std::fprintf(stderr, "router_stats: %s\n", message.c_str());
    return code;
  };
  int exit_code = 0;
  auto cl = CommandLine::ParseOrExit(argc, argv, "router_stats",
                                     "router_stats RUN_DIR: summarises a run's router load-balance statistics.", specs,
                                     &exit_code);
  if (!cl) return exit_code;
  if (cl->positional().size() != 1) {
    return fail("expected exactly one RUN_DIR (or router_stats.pb file); see --help", 2);
  }
  const std::string format = cl->Get("format", "table");
  if (format != "table" && format != "csv" && format != "json" && format != "html") {
    return fail("--format (" + format + ") must be table, csv, json or html", 2);
  }
  Selection sel;
  AlertThresholds t;
  absl::Status s = ParseDouble(*cl, "collapse_share", &t.collapse_share);
  if (s.ok()) s = ParseDouble(*cl, "min_entropy_ratio", &t.min_entropy_ratio);
  if (s.ok()) s = ParseDouble(*cl, "imbalance_growth", &t.imbalance_growth);
  if (s.ok()) s = ParseDouble(*cl, "ep_overload", &t.ep_overload);
  if (s.ok()) s = ParseDouble(*cl, "dropped_fraction", &t.dropped_fraction);
  if (s.ok() && cl->Has("steps")) s = ParseSteps(cl->Get("steps"), &sel);
  auto layer = cl->GetInt("layer", -1);
  auto heat_step = cl->GetInt("step", -1);
  if (s.ok() && !layer.ok()) s = layer.status();
  if (s.ok() && !heat_step.ok()) s = heat_step.status();
  if (!s.ok()) return fail(std::string(s.message()), 2);
  sel.layer = static_cast<int>(*layer);

  auto file = ReadRouterStats(cl->positional()[0]);
  if (!file.ok()) return fail(std::string(file.status().message()));
  if (file->records.empty()) {
    return fail(file->problem.empty() ? absl::StrCat(file->path, ": no complete router records") : file->problem);
  }
  if (file->truncated) std::fprintf(stderr, "router_stats: warning: %s (run still writing?)\n", file->problem.c_str());
  if (file->invalid) std::fprintf(stderr, "router_stats: %s\n", file->problem.c_str());
  std::vector<RouterStepRecord> records;
  for (const RouterStepRecord& r : file->records) {
    if ((sel.layer < 0 || r.layer() == sel.layer) && r.step() >= sel.first && r.step() <= sel.last) {
      records.push_back(r);
    }
  }
  if (records.empty()) {
    return fail(absl::StrCat(file->path, ": no records match --layer/--steps (the file has steps ",
                             file->records.front().step(), " to ", file->records.back().step(), ")"));
  }
  const std::vector<RouterAlert> alerts = FindRouterAlerts(records, t);
  std::string text;
  if (format == "table") text = FormatTable(file->path, records, alerts, t);
  if (format == "csv") text = FormatCsv(records);
  if (format == "json") text = FormatJson(*file, records, alerts, t);
  if (format == "html") {
    HtmlReportOptions o;
    o.source = file->path;
    o.problem = file->problem;
    o.heatmap_step = *heat_step;
    o.thresholds = t;
    text = RenderRouterStatsHtml(records, alerts, o);
  }
  if (cl->Has("out")) {
    std::ofstream out(cl->Get("out"), std::ios::binary | std::ios::trunc);
    if (!(out << text) || !out.flush()) return fail("cannot write --out " + cl->Get("out"));
  } else {
    std::fputs(text.c_str(), stdout);
  }
  return file->invalid ? 1 : 0;
}
