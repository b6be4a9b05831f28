// Tests moe/router_stats.*: statistics of a fixed routing against hand computation (a real MoeLayer whose
// router is the identity, fed tokens whose logits are 2 at one expert and 1 at another), counts summing to
// tokens * top_k, capacity drops, the logger's file and summaries and its reset, two identical ranks,
// EP=1 against a batch split over two ranks, reading back (duplicates, semantic garbage), and the alerts on
// synthetic series with a known layer and starting step.
#include "moe/router_stats.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "gtest/gtest.h"

namespace hybridmoe {
namespace {

namespace fs = std::filesystem;

constexpr int kE = 5, kK = 2, kT = 6;
// Token t prefers expert kFirst[t] (logit 2), then kSecond[t] (logit 1); other logits are 0.
constexpr int kFirst[kT] = {0, 0, 1, 0, 2, 0};
constexpr int kSecond[kT] = {1, 2, 0, 3, 1, 1};
// By hand: expert 0 is chosen by tokens 0,1,2(2nd),3,5 -> 5; expert 1 by 0(2nd),2,4(2nd),5(2nd) -> 4;
// expert 2 by 1(2nd),4 -> 2; expert 3 by 3(2nd) -> 1; expert 4 never.
const std::vector<int64_t> kCounts = {5, 4, 2, 1, 0};

MoeLayer MakeLayer(double capacity_factor = 0) {
  MoeOptions o;
  o.d_model = kE;
  o.num_experts = kE;
  o.top_k = kK;
  o.hidden = 4;
  o.capacity_factor = capacity_factor;
  MoeLayer layer(o);
  at::NoGradGuard no_grad;
  for (auto& p : layer->parameters()) p.fill_(0.01);
  layer->router.copy_(at::eye(kE));
  return layer;
}

at::Tensor Tokens(int first, int count) {
  at::Tensor x = at::zeros({count, kE});
  for (int t = 0; t < count; ++t) {
    x[t][kFirst[first + t]] = 2.0;
    x[t][kSecond[first + t]] = 1.0;
  }
  return x;
}

// Per-token router probabilities by hand: logits (2, 1, 0, 0, 0) up to a permutation.
const double kZ = std::exp(2.0) + std::exp(1.0) + 3.0;
const double kP1 = std::exp(2.0) / kZ, kP2 = std::exp(1.0) / kZ, kP0 = 1.0 / kZ;

double HandEntropy() { return -(kP1 * std::log(kP1) + kP2 * std::log(kP2) + 3 * kP0 * std::log(kP0)); }

double HandLbLoss(int first, int count) {
  std::vector<double> f(kE, 0), P(kE, 0);
  for (int t = first; t < first + count; ++t) {
    f[kFirst[t]] += 1.0 / (count * kK);
    f[kSecond[t]] += 1.0 / (count * kK);
    for (int e = 0; e < kE; ++e) {
      P[e] += (e == kFirst[t] ? kP1 : e == kSecond[t] ? kP2 : kP0) / count;
    }
  }
  double lb = 0;
  for (int e = 0; e < kE; ++e) lb += kE * f[e] * P[e];
  return lb;
}

std::string TempDir(const std::string& name) {
  const fs::path dir = fs::path(testing::TempDir()) / "router_stats_test" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

double Summary(const std::vector<std::pair<std::string, double>>& s, const std::string& key) {
  for (const auto& [k, v] : s) {
    if (k == key) return v;
  }
  ADD_FAILURE() << "no summary " << key;
  return NAN;
}

TEST(LoadStats, HandComputed) {
  const LoadStats s = ComputeLoadStats(kCounts, kT);
  EXPECT_DOUBLE_EQ(s.mean_load, 12.0 / 5);
  EXPECT_DOUBLE_EQ(s.max_load, 5);
  EXPECT_DOUBLE_EQ(s.min_load, 0);
  EXPECT_DOUBLE_EQ(s.max_over_mean, 5 / 2.4);
  // deviations 2.6, 1.6, -0.4, -1.4, -2.4: squares sum to 17.2
  EXPECT_NEAR(s.cv, std::sqrt(17.2 / 5) / 2.4, 1e-12);
  EXPECT_EQ(s.dead_experts, 1);
  EXPECT_EQ(s.hottest, 0);
  EXPECT_DOUBLE_EQ(s.hottest_share, 5.0 / 6);
  const LoadStats even = ComputeLoadStats({3, 3, 3, 3}, 6);
  EXPECT_DOUBLE_EQ(even.max_over_mean, 1);
  EXPECT_DOUBLE_EQ(even.cv, 0);
  EXPECT_EQ(even.hottest, 0);  // lowest id on ties
}

TEST(RouterStatsLogger, FixedRoutingMatchesHandComputation) {
  MoeLayer dropless = MakeLayer(), capped = MakeLayer(/*capacity_factor=*/1.0);
  for (int i = 0; i < 2; ++i) dropless->forward(Tokens(0, kT));  // the window holds two forwards
  capped->forward(Tokens(0, kT));
  const std::string dir = TempDir("fixed");
  auto logger = RouterStatsLogger::Open(dir);
  ASSERT_TRUE(logger.ok()) << logger.status();
  auto summaries = (*logger)->Log(7, {dropless, capped}, 0, 1, nullptr);
  ASSERT_TRUE(summaries.ok()) << summaries.status();

  auto file = ReadRouterStats(dir);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE(file->problem.empty()) << file->problem;
  ASSERT_EQ(file->records.size(), 2u);
  const RouterStepRecord& a = file->records[0];
  const RouterStepRecord& b = file->records[1];
  EXPECT_EQ(a.step(), 7);
  EXPECT_EQ(a.layer(), 0);
  EXPECT_EQ(b.layer(), 1);
  EXPECT_EQ(a.tokens(), 2 * kT);
  EXPECT_EQ(a.forwards(), 2);
  EXPECT_EQ(a.top_k(), kK);
  EXPECT_EQ(a.num_experts(), kE);
  EXPECT_EQ(std::vector<int64_t>(a.counts().begin(), a.counts().end()), (std::vector<int64_t>{10, 8, 4, 2, 0}));
  int64_t sum = 0;
  for (int64_t c : a.counts()) sum += c;
  EXPECT_EQ(sum, a.tokens() * a.top_k());
  const double tol = 1e-5;  // fp32 router math
  EXPECT_NEAR(a.entropy_mean(), HandEntropy(), tol);
  EXPECT_NEAR(a.top1_mean(), kP1, tol);
  EXPECT_NEAR(a.lb_loss(), HandLbLoss(0, kT), tol);
  EXPECT_NEAR(a.z_loss(), std::log(kZ) * std::log(kZ), tol);
  EXPECT_DOUBLE_EQ(a.mean_load(), 24.0 / 5);
  EXPECT_DOUBLE_EQ(a.max_over_mean(), 5 / 2.4);
  EXPECT_NEAR(a.cv(), std::sqrt(17.2 / 5) / 2.4, 1e-12);
  EXPECT_EQ(a.min_load(), 0);
  EXPECT_EQ(a.dead_experts(), 1);
  EXPECT_EQ(a.dropped(), 0);
  EXPECT_EQ(std::vector<int64_t>(a.tokens_received_per_rank().begin(), a.tokens_received_per_rank().end()),
            std::vector<int64_t>{24});
  EXPECT_EQ(a.ep_size(), 1);

  // Capacity ceil(1.0 * 6 * 2 / 5) = 3: expert 0 drops 2 of 5, expert 1 drops 1 of 4. Counts are pre-drop.
  EXPECT_EQ(std::vector<int64_t>(b.counts().begin(), b.counts().end()), kCounts);
  EXPECT_EQ(b.dropped(), 3);
  EXPECT_EQ(b.tokens_received_per_rank(0), 12 - 3);
  EXPECT_NEAR(b.entropy_mean(), HandEntropy(), tol);

  EXPECT_DOUBLE_EQ(Summary(*summaries, "router/max_over_mean"), 5 / 2.4);
  EXPECT_DOUBLE_EQ(Summary(*summaries, "router/dead_experts"), 2);
  EXPECT_DOUBLE_EQ(Summary(*summaries, "router/dropped"), 3);
  EXPECT_DOUBLE_EQ(Summary(*summaries, "router/min_over_mean"), 0);
  EXPECT_NEAR(Summary(*summaries, "router/entropy_mean"), HandEntropy(), tol);
  EXPECT_NEAR(Summary(*summaries, "router/top1_mean"), kP1, tol);
  EXPECT_NEAR(Summary(*summaries, "router/cv_mean"), std::sqrt(17.2 / 5) / 2.4, 1e-12);
  EXPECT_DOUBLE_EQ(Summary(*summaries, "router/layer1/max_over_mean"), 5 / 2.4);

  // Log reset every counter: a second call with no forward writes nothing and summarises nothing.
  EXPECT_EQ(dropless->stats.tokens, 0);
  EXPECT_EQ(dropless->stats.counts_E.sum().item<int64_t>(), 0);
  EXPECT_EQ(capped->dispatcher->counters.rows_received, 0);
  auto empty = (*logger)->Log(8, {dropless, capped}, 0, 1, nullptr);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  EXPECT_EQ(ReadRouterStats(dir)->records.size(), 2u);
}

TEST(RouterStatsLogger, TwoIdenticalRanksDoubleCountsAndKeepMeans) {
  MoeLayer rank0 = MakeLayer(), rank1 = MakeLayer();
  rank0->forward(Tokens(0, kT));
  rank1->forward(Tokens(0, kT));
  const std::vector<double> other = PackRouterCounters({rank1}, /*ep_rank=*/1, /*ep_size=*/2);
  auto logger = RouterStatsLogger::Open(TempDir("two_ranks"));
  ASSERT_TRUE(logger.ok());
  auto sum = [&](std::vector<double>& v) {
    ASSERT_EQ(v.size(), other.size());
    for (size_t i = 0; i < v.size(); ++i) v[i] += other[i];
  };
  ASSERT_TRUE((*logger)->Log(3, {rank0}, 0, 2, sum).ok());
  auto file = ReadRouterStats((*logger)->path());
  ASSERT_TRUE(file.ok());
  ASSERT_EQ(file->records.size(), 1u);
  const RouterStepRecord& r = file->records[0];
  EXPECT_EQ(std::vector<int64_t>(r.counts().begin(), r.counts().end()), (std::vector<int64_t>{10, 8, 4, 2, 0}));
  EXPECT_EQ(r.tokens(), 2 * kT);
  EXPECT_EQ(r.forwards(), 2);
  EXPECT_NEAR(r.lb_loss(), HandLbLoss(0, kT), 1e-5);
  EXPECT_NEAR(r.entropy_mean(), HandEntropy(), 1e-5);
  EXPECT_DOUBLE_EQ(r.max_over_mean(), 5 / 2.4);
  EXPECT_EQ(std::vector<int64_t>(r.tokens_received_per_rank().begin(), r.tokens_received_per_rank().end()),
            (std::vector<int64_t>{12, 12}));
  EXPECT_EQ(r.ep_size(), 2);
}

TEST(RouterStatsLogger, BatchSplitOverTwoRanksMatchesOneRank) {
  MoeLayer whole = MakeLayer(), half0 = MakeLayer(), half1 = MakeLayer();
  whole->forward(Tokens(0, kT));
  half0->forward(Tokens(0, kT / 2));
  half1->forward(Tokens(kT / 2, kT / 2));
  auto ep1 = RouterStatsLogger::Open(TempDir("ep1"));
  auto ep2 = RouterStatsLogger::Open(TempDir("ep2"));
  ASSERT_TRUE(ep1.ok() && ep2.ok());
  ASSERT_TRUE((*ep1)->Log(1, {whole}, 0, 1, nullptr).ok());
  const std::vector<double> other = PackRouterCounters({half1}, 1, 2);
  ASSERT_TRUE((*ep2)
                  ->Log(1, {half0}, 0, 2,
                        [&](std::vector<double>& v) {
                          for (size_t i = 0; i < v.size(); ++i) v[i] += other[i];
                        })
                  .ok());
  const RouterStepRecord a = ReadRouterStats((*ep1)->path())->records.at(0);
  const RouterStepRecord b = ReadRouterStats((*ep2)->path())->records.at(0);
  EXPECT_EQ(std::vector<int64_t>(a.counts().begin(), a.counts().end()), kCounts);
  EXPECT_EQ(std::vector<int64_t>(b.counts().begin(), b.counts().end()), kCounts);
  EXPECT_EQ(a.tokens(), b.tokens());
  for (auto field : {&RouterStepRecord::max_over_mean, &RouterStepRecord::cv, &RouterStepRecord::min_load,
                     &RouterStepRecord::mean_load, &RouterStepRecord::entropy_mean, &RouterStepRecord::top1_mean,
                     &RouterStepRecord::z_loss}) {
    EXPECT_NEAR((a.*field)(), (b.*field)(), 1e-6);
  }
  EXPECT_EQ(a.dead_experts(), b.dead_experts());
  // The LB loss is the mean of what each rank optimised (its own half), as the model computes it.
  EXPECT_NEAR(b.lb_loss(), (HandLbLoss(0, kT / 2) + HandLbLoss(kT / 2, kT / 2)) / 2, 1e-5);
  EXPECT_EQ(a.tokens_received_per_rank(0), b.tokens_received_per_rank(0) + b.tokens_received_per_rank(1));
  EXPECT_EQ(b.tokens_received_per_rank(0), 6);
}

TEST(RouterStatsLogger, RejectsBadRankAndBadReduction) {
  MoeLayer layer = MakeLayer();
  layer->forward(Tokens(0, kT));
  auto logger = RouterStatsLogger::Open("");  // a rank that does not write
  ASSERT_TRUE(logger.ok());
  EXPECT_TRUE((*logger)->path().empty());
  EXPECT_FALSE((*logger)->Log(1, {layer}, 2, 2, nullptr).ok());
  auto bad = (*logger)->Log(1, {layer}, 0, 1, [](std::vector<double>& v) { v.pop_back(); });
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("expected"), std::string::npos) << bad.status();
}

RouterStepRecord Synthetic(int64_t step, int layer, std::vector<int64_t> counts, double entropy) {
  RouterCounters c;
  c.counts_E = std::move(counts);
  int64_t sum = 0;
  for (int64_t n : c.counts_E) sum += n;
  c.tokens = sum / 2;  // top-2
  c.forwards = 1;
  c.entropy_sum = entropy * static_cast<double>(c.tokens);
  c.rows_received_R = {sum};
  c.exchange_seconds_R = {0};
  return MakeRouterRecord(step, layer, 2, c);
}

TEST(RouterAlerts, CollapseDeadAndGrowthWithTheStepTheyBegan) {
  const std::vector<int64_t> even = {25, 25, 25, 25, 25, 25, 25, 25};    // 100 tokens, balanced
  const std::vector<int64_t> hot = {100, 20, 20, 20, 10, 10, 10, 10};    // expert 0: every token
  const std::vector<int64_t> hot_dead = {100, 30, 30, 20, 20, 0, 0, 0};  // and experts 5-7 dead
  const double lnE = std::log(8.0);
  std::vector<RouterStepRecord> records;
  const std::vector<std::pair<int64_t, bool>> steps = {{5, false}, {10, true}, {15, false},
                                                       {20, true}, {25, true}, {30, true}};
  for (const auto& [step, collapsed] : steps) {
    records.push_back(Synthetic(step, 0, even, 0.95 * lnE));
    const bool dead = step >= 25;
    records.push_back(Synthetic(step, 1, collapsed ? (dead ? hot_dead : hot) : even, collapsed ? 0.1 * lnE : lnE));
  }
  const std::vector<RouterAlert> alerts = FindRouterAlerts(records, AlertThresholds());
  std::map<std::string, std::vector<const RouterAlert*>> by_kind;
  for (const RouterAlert& a : alerts) {
    EXPECT_EQ(a.layer, 1) << a.kind << ": " << a.detail;
    by_kind[a.kind].push_back(&a);
  }
  ASSERT_EQ(by_kind["collapse_share"].size(), 1u);
  EXPECT_EQ(by_kind["collapse_share"][0]->began_step, 20);  // the blip at step 10 recovered at 15
  EXPECT_EQ(by_kind["collapse_share"][0]->expert, 0);
  EXPECT_DOUBLE_EQ(by_kind["collapse_share"][0]->value, 1.0);
  ASSERT_EQ(by_kind["collapse_entropy"].size(), 1u);
  EXPECT_EQ(by_kind["collapse_entropy"][0]->began_step, 20);
  EXPECT_NEAR(by_kind["collapse_entropy"][0]->value, 0.1, 1e-12);
  ASSERT_EQ(by_kind["dead_expert"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(by_kind["dead_expert"][i]->expert, 5 + i);
    EXPECT_EQ(by_kind["dead_expert"][i]->began_step, 25);
  }
  ASSERT_EQ(by_kind["imbalance_growth"].size(), 1u);
  EXPECT_EQ(by_kind["imbalance_growth"][0]->began_step, 20);
  EXPECT_DOUBLE_EQ(by_kind["imbalance_growth"][0]->value, 4.0);  // 100 / 25 against 1.0 at step 5

  // Balanced everywhere: nothing. With 4 experts top-2 the balanced share is 50% of tokens, so 70% is
  // not a collapse (the share must also exceed twice the balanced share).
  records.clear();
  for (int64_t step : {1, 2, 3}) records.push_back(Synthetic(step, 0, even, lnE));
  records.push_back(Synthetic(4, 1, {70, 50, 50, 30}, std::log(4.0)));  // expert 0: 70 of 100 tokens
  EXPECT_TRUE(FindRouterAlerts(records, AlertThresholds()).empty());
}

TEST(RouterAlerts, ExpertParallelOverloadDroppedSlotsAndTheBiasInRecordsAndSummaries) {
  RouterCounters c;
  c.counts_E = {40, 20, 20, 20};  // 50 tokens, top-2
  c.tokens = 50;
  c.forwards = 1;
  c.dropped = 4;
  c.rows_received_R = {60, 20};  // EP rank 0 holds experts 0-1: 60 rows against a mean of 40
  c.exchange_seconds_R = {0, 0};
  c.selection_bias_E = {-0.03, 0.01, 0.01, 0.01};
  std::vector<RouterStepRecord> records;
  for (int64_t step : {10, 20}) records.push_back(MakeRouterRecord(step, 0, 2, c));
  const RouterStepRecord& r = records.back();
  EXPECT_DOUBLE_EQ(r.ep_overload(), 60.0 / 40.0);
  EXPECT_DOUBLE_EQ(r.dropped_fraction(), 4.0 / 100.0);
  ASSERT_EQ(r.selection_bias_size(), 4);
  EXPECT_DOUBLE_EQ(r.selection_bias(0), -0.03);
  AlertThresholds t;
  t.ep_overload = 1.4;
  std::map<std::string, const RouterAlert*> by_kind;
  const std::vector<RouterAlert> alerts = FindRouterAlerts(records, t);
  for (const RouterAlert& a : alerts) by_kind[a.kind] = &a;
  ASSERT_TRUE(by_kind.count("ep_overload"));
  EXPECT_EQ(by_kind["ep_overload"]->began_step, 10);
  EXPECT_DOUBLE_EQ(by_kind["ep_overload"]->value, 1.5);
  EXPECT_NE(by_kind["ep_overload"]->detail.find("EP rank 0"), std::string::npos) << by_kind["ep_overload"]->detail;
  ASSERT_TRUE(by_kind.count("dropped_tokens"));
  EXPECT_DOUBLE_EQ(by_kind["dropped_tokens"]->value, 0.04);
  t.ep_overload = 1.5;  // strictly above the threshold only
  t.dropped_fraction = 0.05;
  for (const RouterAlert& a : FindRouterAlerts(records, t)) {
    EXPECT_NE(a.kind, "ep_overload");
    EXPECT_NE(a.kind, "dropped_tokens");
  }
  std::map<std::string, double> summary;
  for (const auto& [k, v] : SummarizeRouterRecords({r})) summary[k] = v;
  EXPECT_DOUBLE_EQ(summary["router/layer0/ep_overload"], 1.5);
  EXPECT_DOUBLE_EQ(summary["router/layer0/dropped_fraction"], 0.04);
  EXPECT_DOUBLE_EQ(summary["router/layer0/bias_min"], -0.03);
  EXPECT_DOUBLE_EQ(summary["router/layer0/bias_max"], 0.01);
  EXPECT_DOUBLE_EQ(summary["router/bias_range"], 0.04);
  EXPECT_DOUBLE_EQ(summary["router/ep_overload"], 1.5);
  // Without the bias there are no bias scalars.
  c.selection_bias_E.clear();
  for (const auto& [k, v] : SummarizeRouterRecords({MakeRouterRecord(30, 0, 2, c)})) {
    EXPECT_EQ(k.find("bias"), std::string::npos) << k;
  }
}

TEST(ReadRouterStats, LastDuplicateWinsAndNonsenseIsInvalid) {
  const std::string dir = TempDir("read");
  {
    auto writer = RecordWriter::Open(dir + "/router_stats.pb");
    ASSERT_TRUE(writer.ok());
    RouterStepRecord first = Synthetic(10, 0, {2, 2}, 0.5), again = Synthetic(10, 0, {4, 0}, 0.1);
    RouterStepRecord earlier = Synthetic(5, 0, {2, 2}, 0.5), broken = Synthetic(15, 0, {2, 2}, 0.5);
    broken.set_tokens(3);  // counts sum to 4 != 3 * 2
    for (const RouterStepRecord* r : {&first, &earlier, &again, &broken}) ASSERT_TRUE((*writer)->Write(*r).ok());
  }
  auto file = ReadRouterStats(dir);
  ASSERT_TRUE(file.ok());
  ASSERT_EQ(file->records.size(), 2u);
  EXPECT_EQ(file->records[0].step(), 5);
  EXPECT_EQ(file->records[1].step(), 10);
  EXPECT_EQ(file->records[1].counts(0), 4);  // the resumed run's record
  EXPECT_TRUE(file->invalid);
  EXPECT_NE(file->problem.find("invalid record at byte "), std::string::npos) << file->problem;
  EXPECT_NE(file->problem.find("counts sum to 4, expected tokens * top_k = 6; 3 valid records before it"),
            std::string::npos)
      << file->problem;
  EXPECT_EQ(ReadRouterStats(dir + "/absent").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace hybridmoe
