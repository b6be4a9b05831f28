// The statistics of compare_norms --seeds (tools/compare_report.h): sample statistics, the regularised
// incomplete beta function, Student's t p-values, Welch's t-test and the per-group verdicts. Expected values
// are closed forms (I_x(1,1) = x, I_x(a,1) = x^a; Student's t with 1 and 2 degrees of freedom), the
// two-sided 5% points of t tables (df 4: 2.776445, df 10: 2.228139, df 30: 2.042272), and for Welch's test
// on a = {1,2,3,4}, b = {2,4,6,8,10} the values worked out by hand: means 2.5 and 6, variances 5/3 and 10,
// t = -3.5 / sqrt(5/12 + 2) = -2.2514363, df = (29/12)^2 / ((5/12)^2/3 + 2^2/4) = 5.5207877, and
// p = 1 - 2 * integral_0^|t| of the t density (Simpson's rule, 200000 intervals) = 0.0691336.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tools/compare_report.h"
#include "tools/seed_stats.h"

namespace hybridmoe {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

TEST(SeedStats, DescribeIgnoresNonFiniteValues) {
  const SampleStats s = Describe({1, 2, kNaN, 3, 4, INFINITY});
  EXPECT_EQ(s.n, 4);
  EXPECT_DOUBLE_EQ(s.mean, 2.5);
  EXPECT_NEAR(s.std, std::sqrt(5.0 / 3.0), 1e-12);  // sample std, n - 1
  EXPECT_EQ(s.min, 1);
  EXPECT_EQ(s.max, 4);
  const SampleStats one = Describe({7});
  EXPECT_EQ(one.n, 1);
  EXPECT_EQ(one.mean, 7);
  EXPECT_TRUE(std::isnan(one.std));
  const SampleStats none = Describe({kNaN});
  EXPECT_EQ(none.n, 0);
  EXPECT_TRUE(std::isnan(none.mean) && std::isnan(none.min) && std::isnan(none.max));
}

TEST(SeedStats, IncompleteBetaClosedForms) {
  for (double x : {0.0, 0.1, 0.37, 0.5, 0.9, 1.0}) {
    EXPECT_NEAR(RegularizedIncompleteBeta(1, 1, x), x, 1e-12) << x;
    EXPECT_NEAR(RegularizedIncompleteBeta(3, 1, x), x * x * x, 1e-12) << x;
    EXPECT_NEAR(RegularizedIncompleteBeta(1, 2, x), 1 - (1 - x) * (1 - x), 1e-12) << x;
  }
  EXPECT_NEAR(RegularizedIncompleteBeta(4.5, 4.5, 0.5), 0.5, 1e-12);
  EXPECT_TRUE(std::isnan(RegularizedIncompleteBeta(1, 1, 1.5)));
  EXPECT_TRUE(std::isnan(RegularizedIncompleteBeta(0, 1, 0.5)));
}

TEST(SeedStats, StudentPValues) {
  const double pi = std::acos(-1.0);
  for (double t : {0.0, 0.3, 1.0, 2.5, 12.0}) {
    EXPECT_NEAR(StudentTwoSidedP(t, 1), 1 - 2 / pi * std::atan(t), 1e-10) << t;  // Cauchy
    EXPECT_NEAR(StudentTwoSidedP(-t, 2), 1 - t / std::sqrt(t * t + 2), 1e-10) << t;
  }
  EXPECT_NEAR(StudentTwoSidedP(2.776445, 4), 0.05, 1e-6);
  EXPECT_NEAR(StudentTwoSidedP(2.228139, 10), 0.05, 1e-6);
  EXPECT_NEAR(StudentTwoSidedP(2.042272, 30), 0.05, 1e-6);
  EXPECT_NEAR(StudentTwoSidedP(1.959964, 1e7), 0.05, 1e-6);     // the normal limit
  EXPECT_NEAR(StudentTwoSidedP(1.5, 3.7), 0.2135981692, 1e-8);  // non-integer df (Simpson's rule)
  EXPECT_EQ(StudentTwoSidedP(INFINITY, 3), 0);
  EXPECT_TRUE(std::isnan(StudentTwoSidedP(1, 0)));
}

TEST(SeedStats, WelchHandComputed) {
  const WelchResult w = WelchTTest({1, 2, 3, 4}, {2, 4, 6, 8, 10});
  ASSERT_TRUE(w.valid);
  EXPECT_DOUBLE_EQ(w.diff, -3.5);
  EXPECT_NEAR(w.t, -2.2514363231593695, 1e-12);
  EXPECT_NEAR(w.df, 5.520787746170677, 1e-12);
  EXPECT_NEAR(w.p, 0.06913359319239365, 1e-8);
  const WelchResult swapped = WelchTTest({2, 4, 6, 8, 10}, {1, 2, 3, 4});
  EXPECT_NEAR(swapped.t, 2.2514363231593695, 1e-12);
  EXPECT_NEAR(swapped.p, w.p, 1e-14);
}

TEST(SeedStats, WelchEdgeCases) {
  EXPECT_FALSE(WelchTTest({1}, {2, 3}).valid);        // one seed: no spread to compare with
  EXPECT_FALSE(WelchTTest({1, kNaN}, {2, 3}).valid);  // non-finite values do not count
  const WelchResult apart = WelchTTest({1, 1, 1}, {2, 2, 2});
  ASSERT_TRUE(apart.valid);
  EXPECT_EQ(apart.p, 0);
  EXPECT_TRUE(std::isinf(apart.t) && apart.t < 0);
  const WelchResult same = WelchTTest({1, 1}, {1, 1});
  EXPECT_EQ(same.p, 1);
  EXPECT_EQ(same.t, 0);
}

TEST(SeedStats, RangesOverlap) {
  EXPECT_TRUE(RangesOverlap(Describe({1, 3}), Describe({2, 5})));
  EXPECT_TRUE(RangesOverlap(Describe({1, 3}), Describe({3, 5})));  // touching counts as overlapping
  EXPECT_FALSE(RangesOverlap(Describe({1, 2}), Describe({2.5, 5})));
  EXPECT_FALSE(RangesOverlap(Describe({2.5, 5}), Describe({1, 2})));
}

VariantResult MakeRun(const std::string& strategy, int64_t depth, double loss, bool diverged = false) {
  VariantResult v;
  v.strategy = strategy;
  v.depth = depth;
  v.status = diverged ? "diverged" : "complete";
  v.summary.final_train_loss = loss;
  v.summary.final_val_loss = loss + 0.01;
  v.summary.diverged = diverged;
  return v;
}

TEST(SeedStats, GroupsAndVerdicts) {
  SweepReport r;
  r.baseline = "PRE_NORM";
  for (double l : {2.80, 2.82, 2.81}) r.variants.push_back(MakeRun("PRE_NORM", 4, l));
  r.variants.push_back(MakeRun("PRE_NORM", 4, 9.0));  // still running: left out of the statistics
  r.variants.back().status = "incomplete";
  for (double l : {3.27, 3.28, 3.275}) r.variants.push_back(MakeRun("POST_NORM", 4, l));    // clearly worse
  for (double l : {2.79, 2.83, 2.805}) r.variants.push_back(MakeRun("HYBRID_NORM", 4, l));  // inside the spread
  r.variants.push_back(MakeRun("MIX_LN", 4, NAN, true));                                    // every seed diverged
  r.variants.push_back(MakeRun("MIX_LN", 4, NAN, true));
  r.variants.push_back(MakeRun("PRE_NORM", 12, 2.9));  // one seed only at depth 12
  r.variants.push_back(MakeRun("POST_NORM", 12, 3.3));
  const std::vector<GroupResult> g = Groups(r);
  ASSERT_EQ(g.size(), 6u);
  EXPECT_EQ(g[0].strategy, "PRE_NORM");
  EXPECT_EQ(g[0].verdict, "baseline");
  EXPECT_EQ(g[0].runs.size(), 4u);
  EXPECT_EQ(g[0].complete, 3);
  EXPECT_EQ(g[0].diverged, 0);
  EXPECT_NEAR(g[0].final_loss.mean, 2.81, 1e-12);
  EXPECT_NEAR(g[0].final_loss.std, 0.01, 1e-12);
  EXPECT_NEAR(g[0].final_val.mean, 2.82, 1e-12);

  EXPECT_EQ(g[1].strategy, "POST_NORM");
  EXPECT_NEAR(g[1].welch.diff, 3.275 - 2.81, 1e-12);
  // t = 0.465 / sqrt(0.01^2/3 + 0.005^2/3), df = (1.25e-4/3)^2 / ((1e-4/3)^2/2 + (2.5e-5/3)^2/2) = 2.941176
  EXPECT_NEAR(g[1].welch.t, 0.465 / std::sqrt(1.25e-4 / 3), 1e-9);
  EXPECT_NEAR(g[1].welch.df, 50.0 / 17.0, 1e-9);
  EXPECT_LT(g[1].welch.p, 1e-4);
  EXPECT_FALSE(g[1].ranges_overlap);
  EXPECT_EQ(g[1].verdict.rfind("higher loss than PRE_NORM (Welch p ", 0), 0u) << g[1].verdict;

  EXPECT_EQ(g[2].strategy, "HYBRID_NORM");
  EXPECT_TRUE(g[2].ranges_overlap);
  EXPECT_GT(g[2].welch.p, 0.5);
  EXPECT_EQ(g[2].verdict.rfind("no significant difference", 0), 0u) << g[2].verdict;

  EXPECT_EQ(g[3].strategy, "MIX_LN");
  EXPECT_EQ(g[3].diverged, 2);
  EXPECT_EQ(g[3].final_loss.n, 0);
  EXPECT_EQ(g[3].verdict, "worse: every seed diverged (PRE_NORM did not)");

  EXPECT_EQ(g[4].depth, 12);
  EXPECT_EQ(g[5].verdict.rfind("n/a: fewer than 2 non-diverged seeds", 0), 0u) << g[5].verdict;

  const std::string csv = GroupsCsv(r);
  EXPECT_NE(csv.find("\n4,POST_NORM,3,3,0,3.275,"), std::string::npos) << csv;
  EXPECT_NE(csv.find("\n4,MIX_LN,2,0,2,,,,,,,PRE_NORM,,,,,,worse"), std::string::npos) << csv;
}

}  // namespace
}  // namespace hybridmoe
