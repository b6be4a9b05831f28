#include "tools/compare_metrics.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace hybridmoe {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A line of metrics.jsonl is a flat object: every value a number, string, boolean or null.
absl::StatusOr<MetricsRecord> ToRecord(const nlohmann::json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("JSON: expected an object");
  MetricsRecord rec;
  for (const auto& [key, value] : j.items()) {
    if (value.is_string()) {
      rec.str[key] = value.get<std::string>();
    } else if (value.is_null()) {
      rec.num[key] = kNaN;
    } else if (value.is_boolean()) {
      rec.num[key] = value.get<bool>() ? 1 : 0;
    } else if (value.is_number()) {
      rec.num[key] = value.get<double>();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("JSON: the value of \"", key, "\" is not a number, string, true, false or null"));
    }
  }
  return rec;
}

bool Finite(double v) { return std::isfinite(v); }

}  // namespace

double MetricsRecord::Get(const std::string& key) const {
  auto it = num.find(key);
  return it == num.end() ? kNaN : it->second;
}

absl::StatusOr<MetricsRecord> ParseFlatJsonObject(const std::string& line) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat("JSON at byte ", e.byte, ": ", e.what()));
  } catch (const nlohmann::json::exception& e) {  // e.g. a number out of the range of a double
    return absl::InvalidArgumentError(absl::StrCat("JSON: ", e.what()));
  }
  return ToRecord(j);
}

absl::StatusOr<RunMetrics> ReadRunMetrics(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, " does not exist or cannot be read"));
  RunMetrics run;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto rec = ParseFlatJsonObject(line);
    if (!rec.ok()) {
      ++run.unreadable_lines;
      continue;
    }
    const std::string kind = rec->str.count("kind") ? rec->str.at("kind") : "";
    if (kind == "train")
      run.train.push_back(std::move(*rec));
    else if (kind == "eval")
      run.eval.push_back(std::move(*rec));
    else if (kind == "skip")
      run.skip.push_back(std::move(*rec));
    else if (kind == "abort")
      run.abort.push_back(std::move(*rec));
  }
  return run;
}

VariantSummary Summarize(const RunMetrics& m, const SummaryOptions& options) {
  VariantSummary s;
  s.final_train_loss = s.best_val_loss = s.final_val_loss = s.tokens_to_target = kNaN;
  s.final_entropy = s.final_max_over_mean = s.mean_max_over_mean = kNaN;

  double sum = 0;
  for (auto it = m.train.rbegin(); it != m.train.rend() && s.final_window_used < options.final_window; ++it) {
    const double loss = it->Get("loss");
    if (!Finite(loss)) continue;
    sum += loss;
    ++s.final_window_used;
  }
  if (s.final_window_used > 0) s.final_train_loss = sum / s.final_window_used;

  for (const MetricsRecord& r : m.eval) {
    const double v = r.Get("val_loss");
    if (!Finite(v)) continue;
    if (!Finite(s.best_val_loss) || v < s.best_val_loss) {
      s.best_val_loss = v;
      s.best_val_step = r.Step();
    }
    s.final_val_loss = v;
  }

  // Trailing means over the last `final_window` finite losses: tokens_to_target uses the mean up to and
  // including a record, spikes compare a record with the mean of the ones before it.
  std::vector<double> recent;
  double mom_sum = 0;
  int64_t mom_n = 0;
  s.max_grad_norm = kNaN;
  const auto mean = [](const std::vector<double>& v) {
    double t = 0;
    for (double x : v) t += x;
    return t / static_cast<double>(v.size());
  };
  for (const MetricsRecord& r : m.train) {
    const double loss = r.Get("loss");
    if (Finite(loss)) {
      if (!recent.empty() && loss > options.spike_ratio * mean(recent)) ++s.loss_spikes;
      recent.push_back(loss);
      if (static_cast<int>(recent.size()) > options.final_window) recent.erase(recent.begin());
      if (options.target_loss > 0 && !Finite(s.tokens_to_target) && mean(recent) <= options.target_loss) {
        s.tokens_to_target = r.Get("tokens");
      }
    }
    const double g = r.Get("grad_norm");
    if (Finite(g) && (!Finite(s.max_grad_norm) || g > s.max_grad_norm)) s.max_grad_norm = g;
    const double mom = r.Get("router/max_over_mean");
    if (Finite(mom)) {
      mom_sum += mom;
      ++mom_n;
    }
  }
  if (mom_n > 0) s.mean_max_over_mean = mom_sum / mom_n;
  if (!m.train.empty()) {
    const MetricsRecord& last = m.train.back();
    s.last_step = last.Step();
    s.tokens = last.Get("tokens");
    s.final_entropy = last.Get("router/entropy_mean");
    s.final_max_over_mean = last.Get("router/max_over_mean");
    const double dead = last.Get("router/dead_experts");
    s.dead_experts = Finite(dead) ? static_cast<int64_t>(dead) : 0;
  }
  s.skipped_steps = static_cast<int64_t>(m.skip.size());

  if (!m.abort.empty()) {
    s.diverged = true;
    s.diverged_reason = absl::StrCat("aborted at step ", m.abort.back().Step(), " after ",
                                     static_cast<int64_t>(m.abort.back().Get("consecutive_bad_steps")),
                                     " consecutive non-finite steps");
  } else if (!m.train.empty() && !Finite(m.train.back().Get("loss"))) {
    s.diverged = true;
    s.diverged_reason = absl::StrCat("loss not finite at the last logged step ", s.last_step);
  } else if (m.train.size() > 1 && m.train.back().Get("loss") > m.train.front().Get("loss")) {
    s.diverged = true;
    s.diverged_reason =
        absl::StrCat("loss at step ", s.last_step, " is above the loss at step ", m.train.front().Step());
  }
  return s;
}

double DefaultTargetLoss(const std::vector<VariantSummary>& summaries) {
  std::vector<double> healthy, all;
  for (const VariantSummary& s : summaries) {
    if (!Finite(s.final_train_loss)) continue;
    all.push_back(s.final_train_loss);
    if (!s.diverged) healthy.push_back(s.final_train_loss);
  }
  std::vector<double>& v = healthy.empty() ? all : healthy;
  if (v.empty()) return kNaN;
  std::sort(v.begin(), v.end());
  // The upper median for an even count, so that the target is still reached by at least one run.
  return v[v.size() / 2];
}

DataOrderCheck CompareDataOrder(const std::vector<std::string>& names, const std::vector<const RunMetrics*>& runs) {
  DataOrderCheck check;
  std::map<int64_t, std::vector<std::pair<size_t, std::string>>> by_step;
  for (size_t v = 0; v < runs.size(); ++v) {
    for (const MetricsRecord& r : runs[v]->train) {
      auto it = r.str.find("data_hash");
      if (it != r.str.end()) by_step[r.Step()].emplace_back(v, it->second);
    }
  }
  for (const auto& [step, hashes] : by_step) {
    if (hashes.size() < 2) continue;
    ++check.steps_compared;
    for (const auto& [v, h] : hashes) {
      if (h != hashes[0].second && check.identical) {
        check.identical = false;
        check.detail = absl::StrCat("step ", step, ": ", names[hashes[0].first], " saw data ", hashes[0].second,
                                    " but ", names[v], " saw ", h);
      }
    }
  }
  if (check.identical) {
    check.detail = check.steps_compared == 0 ? "no step was logged with a data_hash by two or more variants"
                                             : absl::StrCat("identical data_hash at all ", check.steps_compared,
                                                            " logged steps shared by two or more variants");
  }
  return check;
}

std::vector<int64_t> StepsWithKey(const std::vector<const RunMetrics*>& runs, const std::string& key) {
  std::set<int64_t> steps;
  for (const RunMetrics* run : runs) {
    for (const MetricsRecord& r : run->train) {
      if (r.num.count(key)) steps.insert(r.Step());
    }
  }
  return {steps.begin(), steps.end()};
}

std::vector<double> BlockGradNorms(const RunMetrics& metrics, int64_t step, const std::string& part) {
  std::vector<double> out;
  for (const MetricsRecord& r : metrics.train) {
    if (r.Step() != step) continue;
    // Every block logs attn; ffn and router are absent for blocks without them (NaN here).
    for (int i = 0; r.num.count(absl::StrCat("grad_norm/block", i, "/attn")); ++i) {
      out.push_back(r.Get(absl::StrCat("grad_norm/block", i, "/", part)));
    }
    break;  // a step is logged once (a resumed run's metrics are truncated to its checkpoint)
  }
  return out;
}

}  // namespace hybridmoe
