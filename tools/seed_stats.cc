#include "tools/seed_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace hybridmoe {

SampleStats Describe(const std::vector<double>& values) {
  SampleStats s;
  double sum = 0;
  s.min = INFINITY;
  s.max = -INFINITY;
  for (double v : values) {
    if (!std::isfinite(v)) continue;
    ++s.n;
    sum += v;
    s.min = std::min(s.min, v);
    s.max = std::max(s.max, v);
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (s.n == 0) {
    s.mean = s.std = s.min = s.max = nan;
    return s;
  }
  s.mean = sum / s.n;
  double ss = 0;
  for (double v : values) {
    if (std::isfinite(v)) ss += (v - s.mean) * (v - s.mean);
  }
  s.std = s.n >= 2 ? std::sqrt(ss / (s.n - 1)) : nan;
  return s;
}

namespace {

// Continued fraction of the incomplete beta function (modified Lentz), converges for x < (a+1)/(a+b+2).
double BetaContinuedFraction(double a, double b, double x) {
  constexpr double kTiny = 1e-300, kEps = 1e-15;
  const double qab = a + b, qap = a + 1, qam = a - 1;
  double c = 1, d = 1 - qab * x / qap;
  if (std::fabs(d) < kTiny) d = kTiny;
  d = 1 / d;
  double h = d;
  for (int m = 1; m <= 500; ++m) {
    const int m2 = 2 * m;
    double aa = m * (b - m) * x / ((qam + m2) * (a + m2));
    d = 1 + aa * d;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = 1 + aa / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1 / d;
    h *= d * c;
    aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
    d = 1 + aa * d;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = 1 + aa / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1 / d;
    const double del = d * c;
    h *= del;
    if (std::fabs(del - 1) < kEps) break;
  }
  return h;
}

}  // namespace

double RegularizedIncompleteBeta(double a, double b, double x) {
  if (!(a > 0) || !(b > 0) || !(x >= 0) || !(x <= 1)) return std::numeric_limits<double>::quiet_NaN();
  if (x == 0) return 0;
  if (x == 1) return 1;
  const double front =
      std::exp(std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x));
  if (x < (a + 1) / (a + b + 2)) return front * BetaContinuedFraction(a, b, x) / a;
  return 1 - front * BetaContinuedFraction(b, a, 1 - x) / b;
}

double StudentTwoSidedP(double t, double df) {
  if (std::isnan(t) || !(df > 0)) return std::numeric_limits<double>::quiet_NaN();
  if (std::isinf(t)) return 0;
  return RegularizedIncompleteBeta(df / 2, 0.5, df / (df + t * t));
}

WelchResult WelchTTest(const std::vector<double>& a, const std::vector<double>& b) {
  WelchResult w;
  const SampleStats sa = Describe(a), sb = Describe(b);
  if (sa.n < 2 || sb.n < 2) return w;
  w.valid = true;
  w.diff = sa.mean - sb.mean;
  const double va = sa.std * sa.std / sa.n, vb = sb.std * sb.std / sb.n;
  if (va + vb == 0) {
    w.df = sa.n + sb.n - 2;
    w.t = w.diff == 0 ? 0 : std::copysign(INFINITY, w.diff);
    w.p = w.diff == 0 ? 1 : 0;
    return w;
  }
  w.t = w.diff / std::sqrt(va + vb);
  w.df = (va + vb) * (va + vb) / (va * va / (sa.n - 1) + vb * vb / (sb.n - 1));
  w.p = StudentTwoSidedP(w.t, w.df);
  return w;
}

bool RangesOverlap(const SampleStats& a, const SampleStats& b) { return a.min <= b.max && b.min <= a.max; }

}  // namespace hybridmoe
