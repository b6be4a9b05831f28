#include "moe/router_stats.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/files.h"
#include "core/status.h"

namespace hybridmoe {
namespace {

constexpr int kScalarsPerLayer = 7;  // lb, z, entropy, top1, tokens, dropped, forwards

double UnixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

template <typename T>
double Sum(const std::vector<T>& v) {
  double s = 0;
  for (const T& x : v) s += static_cast<double>(x);
  return s;
}

}  // namespace

LoadStats ComputeLoadStats(const std::vector<int64_t>& counts_E, int64_t tokens) {
  LoadStats s;
  const size_t E = counts_E.size();
  if (E == 0) return s;
  s.mean_load = Sum(counts_E) / static_cast<double>(E);
  s.max_load = static_cast<double>(counts_E[0]);
  s.min_load = s.max_load;
  s.hottest = 0;
  double squares = 0;
  for (size_t e = 0; e < E; ++e) {
    const double c = static_cast<double>(counts_E[e]);
    if (c > s.max_load) {
      s.max_load = c;
      s.hottest = static_cast<int>(e);
    }
    s.min_load = std::min(s.min_load, c);
    s.dead_experts += counts_E[e] == 0;
    squares += (c - s.mean_load) * (c - s.mean_load);
  }
  if (s.mean_load > 0) {
    s.max_over_mean = s.max_load / s.mean_load;
    s.cv = std::sqrt(squares / static_cast<double>(E)) / s.mean_load;
  }
  if (tokens > 0) s.hottest_share = s.max_load / static_cast<double>(tokens);
  return s;
}

RouterStepRecord MakeRouterRecord(int64_t step, int layer, int top_k, const RouterCounters& c) {
  RouterStepRecord r;
  r.set_step(step);
  r.set_layer(layer);
  r.set_num_experts(static_cast<int>(c.counts_E.size()));
  r.set_top_k(top_k);
  r.set_tokens(c.tokens);
  r.set_forwards(c.forwards);
  for (int64_t n : c.counts_E) r.add_counts(n);
  const double forwards = std::max<int64_t>(c.forwards, 1), tokens = std::max<int64_t>(c.tokens, 1);
  r.set_lb_loss(c.lb_loss_sum / forwards);
  r.set_z_loss(c.z_loss_sum / forwards);
  const LoadStats s = ComputeLoadStats(c.counts_E, c.tokens);
  r.set_mean_load(s.mean_load);
  r.set_max_load(s.max_load);
  r.set_min_load(s.min_load);
  r.set_max_over_mean(s.max_over_mean);
  r.set_cv(s.cv);
  r.set_dead_experts(s.dead_experts);
  r.set_entropy_mean(c.entropy_sum / tokens);
  r.set_top1_mean(c.top1_sum / tokens);
  r.set_dropped(c.dropped);
  double slowest = 0;
  for (int64_t n : c.rows_received_R) r.add_tokens_received_per_rank(n);
  for (double t : c.exchange_seconds_R) {
    r.add_all_to_all_seconds_per_rank(t);
    slowest = std::max(slowest, t);
  }
  r.set_all_to_all_seconds(slowest);
  r.set_ep_size(static_cast<int>(c.rows_received_R.size()));
  const double received = Sum(c.rows_received_R);
  double busiest = 0;
  for (int64_t n : c.rows_received_R) busiest = std::max(busiest, static_cast<double>(n));
  r.set_ep_overload(received > 0 ? busiest * static_cast<double>(c.rows_received_R.size()) / received : 1.0);
  r.set_dropped_fraction(static_cast<double>(c.dropped) / (tokens * std::max(top_k, 1)));
  for (double b : c.selection_bias_E) r.add_selection_bias(b);
  r.set_wall_time(UnixSeconds());
  return r;
}

std::vector<std::pair<std::string, double>> SummarizeRouterRecords(const std::vector<RouterStepRecord>& records) {
  std::vector<std::pair<std::string, double>> out;
  if (records.empty()) return out;
  double max_mom = 0, min_mom = INFINITY, cv = 0, dead = 0, entropy = 0, top1 = 0, lb = 0, z = 0, dropped = 0, a2a = 0;
  double overload = 0, dropped_fraction = 0, bias_range = 0;
  bool biased = false;
  auto bias_min_max = [](const RouterStepRecord& r) {
    return std::make_pair(*std::min_element(r.selection_bias().begin(), r.selection_bias().end()),
                          *std::max_element(r.selection_bias().begin(), r.selection_bias().end()));
  };
  for (const RouterStepRecord& r : records) {
    max_mom = std::max(max_mom, r.max_over_mean());
    min_mom = std::min(min_mom, r.mean_load() > 0 ? r.min_load() / r.mean_load() : 0.0);
    cv += r.cv();
    dead += r.dead_experts();
    entropy += r.entropy_mean();
    top1 += r.top1_mean();
    lb += r.lb_loss();
    z += r.z_loss();
    dropped += static_cast<double>(r.dropped());
    a2a += r.all_to_all_seconds();
    overload = std::max(overload, r.ep_overload());
    dropped_fraction = std::max(dropped_fraction, r.dropped_fraction());
    if (r.selection_bias_size() > 0) {
      const auto [lo, hi] = bias_min_max(r);
      bias_range = std::max(bias_range, hi - lo);
      biased = true;
    }
  }
  const double n = static_cast<double>(records.size());
  out = {{"router/max_over_mean", max_mom},    {"router/min_over_mean", min_mom},
         {"router/cv_mean", cv / n},           {"router/dead_experts", dead},
         {"router/entropy_mean", entropy / n}, {"router/top1_mean", top1 / n},
         {"router/lb_loss", lb / n},           {"router/z_loss", z / n},
         {"router/dropped", dropped},          {"router/all_to_all_s", a2a},
         {"router/ep_overload", overload},     {"router/dropped_fraction", dropped_fraction}};
  if (biased) out.emplace_back("router/bias_range", bias_range);
  for (const RouterStepRecord& r : records) {
    const std::string layer = absl::StrCat("router/layer", r.layer(), "/");
    out.emplace_back(layer + "max_over_mean", r.max_over_mean());
    out.emplace_back(layer + "dead_experts", r.dead_experts());
    out.emplace_back(layer + "dropped_fraction", r.dropped_fraction());
    out.emplace_back(layer + "ep_overload", r.ep_overload());
    if (r.selection_bias_size() > 0) {
      const auto [lo, hi] = bias_min_max(r);
      out.emplace_back(layer + "bias_min", lo);
      out.emplace_back(layer + "bias_max", hi);
    }
  }
  return out;
}

std::vector<double> PackRouterCounters(const std::vector<MoeLayer>& layers, int ep_rank, int ep_size) {
  std::vector<double> packed;
  for (const MoeLayer& layer : layers) {
    const RouterStats& s = layer->stats;
    const at::Tensor counts = s.counts_E.to(at::kCPU).to(at::kLong).contiguous();
    const int64_t* c = counts.data_ptr<int64_t>();
    for (int64_t e = 0; e < counts.numel(); ++e) packed.push_back(static_cast<double>(c[e]));
    const std::vector<double> sums = s.sums();
    packed.insert(packed.end(), {sums[0], sums[1], sums[2], sums[3], static_cast<double>(s.tokens),
                                 static_cast<double>(s.dropped), static_cast<double>(s.forwards)});
    const DispatchCounters& d = layer->dispatcher->counters;
    const size_t received = packed.size();
    packed.resize(packed.size() + 2 * static_cast<size_t>(ep_size), 0.0);
    packed[received + ep_rank] = static_cast<double>(d.rows_received);
    packed[received + ep_size + ep_rank] = d.exchange_seconds;
  }
  return packed;
}

absl::StatusOr<std::vector<RouterCounters>> UnpackRouterCounters(const std::vector<double>& packed,
                                                                 const std::vector<MoeLayer>& layers, int ep_size) {
  size_t expected = 0;
  for (const MoeLayer& layer : layers) expected += layer->options.num_experts + kScalarsPerLayer + 2 * ep_size;
  if (packed.size() != expected) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "router statistics: packed counters have %d values after the reduction, expected %d (%d layers, ep_size %d)",
        packed.size(), expected, layers.size(), ep_size));
  }
  std::vector<RouterCounters> out;
  size_t i = 0;
  auto next = [&] { return packed[i++]; };
  auto next_int = [&] { return static_cast<int64_t>(std::llround(packed[i++])); };
  for (const MoeLayer& layer : layers) {
    RouterCounters c;
    for (int64_t e = 0; e < layer->options.num_experts; ++e) c.counts_E.push_back(next_int());
    c.lb_loss_sum = next();
    c.z_loss_sum = next();
    c.entropy_sum = next();
    c.top1_sum = next();
    c.tokens = next_int();
    c.dropped = next_int();
    c.forwards = next_int();
    for (int r = 0; r < ep_size; ++r) c.rows_received_R.push_back(next_int());
    for (int r = 0; r < ep_size; ++r) c.exchange_seconds_R.push_back(next());
    out.push_back(std::move(c));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<RouterStatsLogger>> RouterStatsLogger::Open(const std::string& run_dir) {
  std::unique_ptr<RouterStatsLogger> logger(new RouterStatsLogger());
  if (run_dir.empty()) return logger;
  if (absl::Status s = MakeDirs(run_dir); !s.ok()) {
    return absl::PermissionDeniedError(absl::StrCat("router statistics: ", s.message()));
  }
  logger->path_ = run_dir + "/router_stats.pb";
  ASSIGN_OR_RETURN(logger->writer_, RecordWriter::Open(logger->path_));
  return logger;
}

absl::StatusOr<std::vector<std::pair<std::string, double>>> RouterStatsLogger::Log(
    int64_t step, const std::vector<MoeLayer>& layers, int ep_rank, int ep_size,
    const std::function<void(std::vector<double>&)>& sum_over_ranks) {
  if (ep_size < 1 || ep_rank < 0 || ep_rank >= ep_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("router statistics: ep_rank %d must be in [0, ep_size %d)", ep_rank, ep_size));
  }
  std::vector<double> packed = PackRouterCounters(layers, ep_rank, ep_size);
  if (sum_over_ranks) sum_over_ranks(packed);
  ASSIGN_OR_RETURN(std::vector<RouterCounters> counters, UnpackRouterCounters(packed, layers, ep_size));
  for (const MoeLayer& layer : layers) {
    layer.ptr()->stats.reset();  // holders share the module: const vector, mutable layers
    layer.ptr()->dispatcher->counters.reset();
  }
  std::vector<RouterStepRecord> records;
  std::vector<std::string> payloads;
  for (size_t l = 0; l < counters.size(); ++l) {
    if (counters[l].tokens <= 0) continue;
    if (const at::Tensor& b = layers[l]->selection_bias; b.defined()) {  // replicated: this rank's copy
      const at::Tensor host = b.to(at::kCPU).to(at::kDouble).contiguous();
      counters[l].selection_bias_E.assign(host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
    }
    records.push_back(
        MakeRouterRecord(step, static_cast<int>(l), static_cast<int>(layers[l]->options.top_k), counters[l]));
    payloads.push_back(records.back().SerializeAsString());
  }
  if (writer_ && !payloads.empty()) RETURN_IF_ERROR(writer_->WriteAll(payloads));
  return SummarizeRouterRecords(records);
}

std::string CheckRouterRecord(const RouterStepRecord& r) {
  if (!r.has_step() || !r.has_layer() || !r.has_num_experts() || !r.has_top_k() || !r.has_tokens()) {
    return "a router record needs step, layer, num_experts, top_k and tokens";
  }
  if (r.layer() < 0 || r.num_experts() < 1 || r.top_k() < 1 || r.top_k() > r.num_experts() || r.tokens() < 1) {
    return absl::StrFormat(
        "layer %d, num_experts %d, top_k %d, tokens %d out of range (need layer >= 0, "
        "1 <= top_k <= num_experts, tokens >= 1)",
        r.layer(), r.num_experts(), r.top_k(), r.tokens());
  }
  if (r.counts_size() != r.num_experts()) {
    return absl::StrFormat("counts has %d entries but num_experts is %d", r.counts_size(), r.num_experts());
  }
  int64_t sum = 0;
  for (int64_t c : r.counts()) {
    if (c < 0) return absl::StrFormat("negative expert count %d", c);
    sum += c;
  }
  if (sum != r.tokens() * r.top_k()) {
    return absl::StrFormat("counts sum to %d, expected tokens * top_k = %d", sum, r.tokens() * r.top_k());
  }
  return "";
}

absl::StatusOr<RouterStatsFile> ReadRouterStats(const std::string& path_or_run_dir) {
  RouterStatsFile out;
  out.path = path_or_run_dir;
  if (IsDirectory(path_or_run_dir)) out.path += "/router_stats.pb";
  absl::StatusOr<RecordFile> file = ReadRecordFile(out.path);
  if (!file.ok()) {
    return absl::NotFoundError(absl::StrFormat(
        "%s: no router statistics (was the run trained with logging { router_stats: true }?)", out.path));
  }
  std::vector<RouterStepRecord> parsed = ParseRecords<RouterStepRecord>(&*file, out.path);
  for (size_t i = 0; i < parsed.size(); ++i) {
    const std::string why = CheckRouterRecord(parsed[i]);
    if (!why.empty()) {
      MarkInvalid(&*file, i, out.path, why);
      parsed.resize(i);
      break;
    }
  }
  std::map<std::pair<int64_t, int>, RouterStepRecord> latest;
  for (RouterStepRecord& r : parsed) latest[{r.step(), r.layer()}] = std::move(r);
  for (auto& [key, r] : latest) out.records.push_back(std::move(r));
  out.truncated = file->truncated;
  out.invalid = file->invalid;
  out.problem = file->problem;
  return out;
}

std::vector<RouterAlert> FindRouterAlerts(const std::vector<RouterStepRecord>& records, const AlertThresholds& t) {
  std::map<int, std::vector<const RouterStepRecord*>> by_layer;
  for (const RouterStepRecord& r : records) by_layer[r.layer()].push_back(&r);
  std::vector<RouterAlert> alerts;
  for (const auto& [layer, series] : by_layer) {
    const RouterStepRecord& last = *series.back();
    const int E = last.num_experts(), K = last.top_k();
    // Start of the final run of records satisfying `holds` (which holds at the latest record).
    auto began = [&](const std::function<bool(const RouterStepRecord&)>& holds) {
      size_t i = series.size() - 1;
      while (i > 0 && holds(*series[i - 1])) --i;
      return series[i]->step();
    };
    auto add = [&](const char* kind, int expert, int64_t step, double value, std::string detail) {
      alerts.push_back(RouterAlert{layer, kind, expert, step, value, std::move(detail)});
    };
    for (int e = 0; e < E; ++e) {
      auto dead = [e](const RouterStepRecord& r) { return e < r.counts_size() && r.counts(e) == 0; };
      if (!dead(last)) continue;
      const int64_t since = began(dead);
      add("dead_expert", e, since, 0, absl::StrFormat("expert %d received no tokens since step %d", e, since));
    }
    auto share_collapsed = [&](const RouterStepRecord& r) {
      const LoadStats s = ComputeLoadStats({r.counts().begin(), r.counts().end()}, r.tokens());
      return s.hottest_share > t.collapse_share && s.hottest_share > 2.0 * r.top_k() / r.num_experts();
    };
    if (share_collapsed(last)) {
      const LoadStats s = ComputeLoadStats({last.counts().begin(), last.counts().end()}, last.tokens());
      const int64_t since = began(share_collapsed);
      add("collapse_share", s.hottest, since, s.hottest_share,
          absl::StrFormat("expert %d gets %.1f%% of tokens (balanced %.1f%%, threshold %.1f%%) since step %d",
                          s.hottest, 100 * s.hottest_share, 100.0 * K / E, 100 * t.collapse_share, since));
    }
    auto entropy_ratio = [](const RouterStepRecord& r) {
      return r.num_experts() > 1 ? r.entropy_mean() / std::log(static_cast<double>(r.num_experts())) : 1.0;
    };
    auto entropy_collapsed = [&](const RouterStepRecord& r) { return entropy_ratio(r) < t.min_entropy_ratio; };
    if (entropy_collapsed(last)) {
      const int64_t since = began(entropy_collapsed);
      add("collapse_entropy", -1, since, entropy_ratio(last),
          absl::StrFormat("router entropy %.3f nats = %.2f x ln %d (threshold %.2f) since step %d", last.entropy_mean(),
                          entropy_ratio(last), E, t.min_entropy_ratio, since));
    }
    if (last.ep_size() > 1 && last.ep_overload() > t.ep_overload) {
      const int64_t since = began([&](const RouterStepRecord& r) { return r.ep_overload() > t.ep_overload; });
      int busiest = 0;
      for (int r = 0; r < last.tokens_received_per_rank_size(); ++r) {
        if (last.tokens_received_per_rank(r) > last.tokens_received_per_rank(busiest)) busiest = r;
      }
      add("ep_overload", -1, since, last.ep_overload(),
          absl::StrFormat("EP rank %d receives %.2fx the mean rows of the %d expert-parallel ranks (threshold "
                          "%.2fx) since step %d",
                          busiest, last.ep_overload(), last.ep_size(), t.ep_overload, since));
    }
    if (last.dropped_fraction() > t.dropped_fraction) {
      const int64_t since = began([&](const RouterStepRecord& r) { return r.dropped_fraction() > t.dropped_fraction; });
      add("dropped_tokens", -1, since, last.dropped_fraction(),
          absl::StrFormat("%.1f%% of slots dropped by capacity (threshold %.1f%%) since step %d",
                          100 * last.dropped_fraction(), 100 * t.dropped_fraction, since));
    }
    const double baseline = series.front()->max_over_mean();
    auto grown = [&](const RouterStepRecord& r) {
      return baseline > 0 && r.max_over_mean() >= t.imbalance_growth * baseline;
    };
    if (series.size() > 1 && grown(last)) {
      const int64_t since = began(grown);
      add("imbalance_growth", -1, since, last.max_over_mean() / baseline,
          absl::StrFormat("max/mean load %.2f is %.1fx its value %.2f at step %d (threshold %.1fx), since step %d",
                          last.max_over_mean(), last.max_over_mean() / baseline, baseline, series.front()->step(),
                          t.imbalance_growth, since));
    }
  }
  return alerts;
}

}  // namespace hybridmoe
