// AdamW, the learning-rate schedule and gradient clipping against independent reference computations.
#include "core/optim.h"

#include <cmath>

#include <gtest/gtest.h>

namespace hybridmoe {
namespace {

TEST(AdamWTest, TwoStepsMatchScalarReference) {
  const std::vector<double> p0 = {0.5, -1.25, 2.0}, g1 = {0.1, -0.3, 0.0}, g2 = {-0.2, 0.05, 1.5};
  at::Tensor p = at::tensor(p0, at::kDouble).set_requires_grad(true);
  AdamWOptions o;
  o.beta1 = 0.9;
  o.beta2 = 0.95;
  o.eps = 1e-8;
  o.weight_decay = 0.1;
  AdamW opt({{"p", p}}, o);
  const double lrs[2] = {1e-2, 5e-3};
  const std::vector<double>* grads[2] = {&g1, &g2};
  // Scalar reference, written from the update rule.
  std::vector<double> ref = p0, m(3, 0), v(3, 0);
  for (int t = 1; t <= 2; ++t) {
    p.mutable_grad() = at::tensor(*grads[t - 1], at::kDouble);
    opt.step(lrs[t - 1]);
    for (int i = 0; i < 3; ++i) {
      const double g = (*grads[t - 1])[i];
      ref[i] *= 1 - lrs[t - 1] * o.weight_decay;
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
      const double mhat = m[i] / (1 - std::pow(o.beta1, t)), vhat = v[i] / (1 - std::pow(o.beta2, t));
      ref[i] -= lrs[t - 1] * mhat / (std::sqrt(vhat) + o.eps);
    }
  }
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(p[i].item<double>(), ref[i], 1e-12) << i;
  EXPECT_EQ(opt.steps_taken(), 2);
  EXPECT_EQ(opt.state().size(), 2u);
}

TEST(AdamWTest, UndefinedGradientActsAsZero) {
  at::Tensor a = at::ones({2}).set_requires_grad(true);
  at::Tensor b = at::ones({2}).set_requires_grad(true);
  AdamWOptions o;
  o.weight_decay = 0.5;
  AdamW opt({{"a", a}, {"b", b}}, o);
  a.mutable_grad() = at::zeros({2});
  opt.step(0.1);
  EXPECT_TRUE(at::allclose(a, b));
  EXPECT_NEAR(a[0].item<double>(), 0.95, 1e-7);  // decay only
}

TEST(ScheduleTest, WarmupThenCosine) {
  ScheduleOptions s;
  s.lr = 1.0;
  s.warmup_steps = 10;
  s.warmup_start_ratio = 0.1;
  s.min_lr_ratio = 0.1;
  s.total_steps = 110;
  EXPECT_NEAR(LearningRate(s, 0), 0.1, 1e-12);
  EXPECT_NEAR(LearningRate(s, 5), 0.55, 1e-12);
  EXPECT_NEAR(LearningRate(s, 10), 1.0, 1e-12);
  EXPECT_NEAR(LearningRate(s, 60), 0.1 + 0.9 * 0.5, 1e-12);  // halfway through the cosine
  EXPECT_NEAR(LearningRate(s, 110), 0.1, 1e-12);
  EXPECT_NEAR(LearningRate(s, 500), 0.1, 1e-12);
}

TEST(ClipTest, ScalesToMaxNormAndReportsNormBefore) {
  at::Tensor a = at::zeros({2}).set_requires_grad(true), b = at::zeros({1}).set_requires_grad(true),
             c = at::zeros({1}).set_requires_grad(true);
  a.mutable_grad() = at::tensor({3.f, 0.f});
  b.mutable_grad() = at::tensor({4.f});
  // c has no gradient.
  EXPECT_NEAR(ClipGradNorm({a, b, c}, 1.0), 5.0, 1e-6);
  EXPECT_NEAR(GradNorm({a, b, c}), 1.0, 1e-5);
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-5);
  EXPECT_NEAR(ClipGradNorm({a, b}, 0.0), 1.0, 1e-5);  // disabled
}

}  // namespace
}  // namespace hybridmoe
