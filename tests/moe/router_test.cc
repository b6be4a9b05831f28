// Router math, losses and token permutation against hand-computed values (moe/router.h, moe/dispatcher.h).
#include "moe/router.h"

#include <cmath>

#include <gtest/gtest.h>

#include "moe/dispatcher.h"

namespace hybridmoe {
namespace {

at::Tensor T(std::vector<float> v, std::vector<int64_t> shape) { return at::tensor(v).reshape(shape); }

TEST(RouterTest, SoftmaxTopKWithoutRenormalisation) {
  // Two tokens, three experts.
  const at::Tensor logits = T({0.f, 1.f, 2.f, 3.f, 0.f, 0.f}, {2, 3});
  const Routing r = route(logits, 2, /*normalize_topk=*/false);
  const double z0 = 1 + std::exp(1.0) + std::exp(2.0);
  EXPECT_NEAR(r.probs_TE[0][2].item<double>(), std::exp(2.0) / z0, 1e-6);
  EXPECT_EQ(r.experts_TK[0][0].item<int64_t>(), 2);
  EXPECT_EQ(r.experts_TK[0][1].item<int64_t>(), 1);
  EXPECT_EQ(r.experts_TK[1][0].item<int64_t>(), 0);
  EXPECT_NEAR(r.weights_TK[0][1].item<double>(), std::exp(1.0) / z0, 1e-6);
  const double z1 = std::exp(3.0) + 2;
  EXPECT_NEAR(r.weights_TK[1][0].item<double>(), std::exp(3.0) / z1, 1e-6);
  EXPECT_EQ(r.probs_TE.scalar_type(), at::kFloat);
}

TEST(RouterTest, RenormalisedTopKSumsToOne) {
  const Routing r = route(T({0.f, 1.f, 2.f, 3.f, 0.f, 0.f}, {2, 3}), 2, /*normalize_topk=*/true);
  EXPECT_NEAR(r.weights_TK.sum(-1)[0].item<double>(), 1.0, 1e-6);
  const double e1 = std::exp(1.0), e2 = std::exp(2.0);
  EXPECT_NEAR(r.weights_TK[0][0].item<double>(), e2 / (e1 + e2), 1e-6);
  // Priorities for capacity stay the raw probabilities.
  EXPECT_NEAR(r.topk_probs_TK[0][0].item<double>(), e2 / (1 + e1 + e2), 1e-6);
}

TEST(RouterTest, LoadBalanceLossByHand) {
  // probs (T=2, E=2): [0.75, 0.25], [0.5, 0.5]; top-1 picks expert 0 for both.
  const at::Tensor probs = T({0.75f, 0.25f, 0.5f, 0.5f}, {2, 2});
  const at::Tensor experts = at::tensor({0L, 0L}).reshape({2, 1});
  // f = [1, 0], P = [0.625, 0.375] -> LB = 2 * (1 * 0.625) = 1.25
  EXPECT_NEAR(load_balance_loss(probs, experts).item<double>(), 1.25, 1e-6);
  // Uniform routing gives exactly 1.
  const at::Tensor uniform = at::full({4, 4}, 0.25);
  const at::Tensor spread = at::tensor({0L, 1L, 2L, 3L, 1L, 2L, 3L, 0L}).reshape({4, 2});
  EXPECT_NEAR(load_balance_loss(uniform, spread).item<double>(), 1.0, 1e-6);
}

TEST(RouterTest, LoadBalanceGradientFlowsThroughProbabilitiesOnly) {
  at::Tensor logits = T({1.f, 0.f, 0.f, 2.f}, {2, 2}).set_requires_grad(true);
  const Routing r = route(logits, 1, false);
  load_balance_loss(r.probs_TE, r.experts_TK).backward();
  // f = [0.5, 0.5]; d/dlogits of E * sum_e f_e mean_t p_te = sum_e f_e * sum_t dp_te/dlogit = 0 for equal f.
  EXPECT_NEAR(logits.grad().abs().max().item<double>(), 0.0, 1e-7);
}

TEST(RouterTest, ZLossByHand) {
  const at::Tensor logits = T({0.f, 0.f, 1.f, 2.f}, {2, 2});
  const double l0 = std::log(2.0), l1 = std::log(std::exp(1.0) + std::exp(2.0));
  EXPECT_NEAR(router_z_loss(logits).item<double>(), (l0 * l0 + l1 * l1) / 2, 1e-6);
}

TEST(RouterTest, Capacity) {
  EXPECT_EQ(expert_capacity(0, 10, 2, 4), -1);
  EXPECT_EQ(expert_capacity(1.0, 10, 2, 4), 5);
  EXPECT_EQ(expert_capacity(1.25, 10, 2, 4), 7);  // ceil(6.25)
}

TEST(PermutationTest, DroplessGroupsByExpertStably) {
  // T=3, K=2: token0 -> (1, 0), token1 -> (0, 2), token2 -> (1, 2)
  const at::Tensor experts = at::tensor({1L, 0L, 0L, 2L, 1L, 2L}).reshape({3, 2});
  const at::Tensor w = T({.6f, .4f, .7f, .3f, .5f, .5f}, {3, 2});
  const Permutation p = permute_by_expert(experts, w, w, 3, -1);
  EXPECT_EQ(p.counts_E, (std::vector<int64_t>{2, 2, 2}));
  EXPECT_TRUE(at::equal(p.slot_S, at::tensor({1L, 2L, 0L, 4L, 3L, 5L})));
  EXPECT_TRUE(at::equal(p.token_S, at::tensor({0L, 1L, 0L, 2L, 1L, 2L})));
  EXPECT_TRUE(at::allclose(p.weight_S, at::tensor({.4f, .7f, .6f, .5f, .3f, .5f})));
  EXPECT_EQ(p.dropped, 0);
}

TEST(PermutationTest, CapacityDropsLowestProbabilityOverflow) {
  // Four tokens, top-1, all to expert 0 with probabilities .9 .5 .7 .6; capacity 2 keeps tokens 0 and 2.
  const at::Tensor experts = at::zeros({4, 1}, at::kLong);
  const at::Tensor w = T({.9f, .5f, .7f, .6f}, {4, 1});
  const Permutation p = permute_by_expert(experts, w, w, 2, 2);
  EXPECT_EQ(p.counts_E, (std::vector<int64_t>{2, 0}));
  EXPECT_EQ(p.dropped, 2);
  EXPECT_TRUE(at::equal(p.token_S, at::tensor({0L, 2L})));
}

}  // namespace
}  // namespace hybridmoe
