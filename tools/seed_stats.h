// Statistics over the seeds of a sweep (tools/compare_norms' grouped report): sample statistics, Student's t
// distribution and Welch's t-test, as pure functions (unit-tested in tests/tools/seed_stats_test.cc).
#pragma once

#include <vector>

namespace hybridmoe {

// Mean, sample standard deviation (n - 1 in the denominator; NaN for n < 2), min and max of the finite
// values; n counts them. All NaN when n == 0.
struct SampleStats {
  int n = 0;
  double mean = 0, std = 0, min = 0, max = 0;
};
SampleStats Describe(const std::vector<double>& values);

// Regularised incomplete beta function I_x(a, b) (a, b > 0, 0 <= x <= 1), by Lentz's continued fraction.
double RegularizedIncompleteBeta(double a, double b, double x);

// Two-sided p-value of Student's t distribution with df degrees of freedom (df > 0, not necessarily an
// integer): P(|T| >= |t|) = I_{df/(df+t^2)}(df/2, 1/2).
double StudentTwoSidedP(double t, double df);

// Welch's unequal-variance t-test of mean(a) - mean(b): t = (ma - mb) / sqrt(va/na + vb/nb), the
// Welch-Satterthwaite df = (va/na + vb/nb)^2 / ((va/na)^2/(na-1) + (vb/nb)^2/(nb-1)), two-sided p.
// Needs n >= 2 in both (valid = false otherwise). Both variances 0: t = +-inf and p = 0 when the means
// differ, t = 0 and p = 1 when they are equal (df = na + nb - 2).
struct WelchResult {
  bool valid = false;
  double diff = 0, t = 0, df = 0, p = 0;
};
WelchResult WelchTTest(const std::vector<double>& a, const std::vector<double>& b);

// Whether [a.min, a.max] and [b.min, b.max] intersect.
bool RangesOverlap(const SampleStats& a, const SampleStats& b);

}  // namespace hybridmoe
