// The routing options of issue 16 against hand-computed values (moe/router.h, moe/moe_layer.h): sigmoid scores,
// top-k-then-softmax, the aux-loss-free selection bias and its update, replayed routing, the global-batch and
// sequence-wise load-balance losses, the shared expert, and when a forward counts its routing.
#include <cmath>

#include <gtest/gtest.h>

#include "core/ffn.h"
#include "moe/moe_layer.h"
#include "moe/router.h"

namespace hybridmoe {
namespace {

at::Tensor T(std::vector<double> v, std::vector<int64_t> shape) { return at::tensor(v, at::kDouble).reshape(shape); }
double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

TEST(RoutingFeaturesTest, SigmoidScoresNormaliseTheChosenK) {
  // One token, three experts, logits 1, -1, 2: scores sigmoid(.), top-2 = experts 2, 0.
  RouterOptions o;
  o.top_k = 2;
  o.score = RouterScore::kSigmoid;
  const Routing r = route(T({1, -1, 2}, {1, 3}), o);
  const double s0 = sigmoid(1), s1 = sigmoid(-1), s2 = sigmoid(2);
  EXPECT_EQ(r.experts_TK[0][0].item<int64_t>(), 2);
  EXPECT_EQ(r.experts_TK[0][1].item<int64_t>(), 0);
  EXPECT_NEAR(r.weights_TK[0][0].item<double>(), s2 / (s2 + s0), 1e-12);
  EXPECT_NEAR(r.weights_TK[0][1].item<double>(), s0 / (s2 + s0), 1e-12);
  // The router distribution of the LB loss: the scores normalised over all experts.
  EXPECT_NEAR(r.probs_TE[0][1].item<double>(), s1 / (s0 + s1 + s2), 1e-12);
  EXPECT_NEAR(r.topk_probs_TK[0][0].item<double>(), s2 / (s0 + s1 + s2), 1e-12);
}

TEST(RoutingFeaturesTest, TopKThenSoftmaxIsASoftmaxOverTheChosenLogits) {
  RouterOptions o;
  o.top_k = 2;
  o.softmax_after_topk = true;
  const Routing r = route(T({0.5, 3, 1, -2}, {1, 4}), o);
  EXPECT_EQ(r.experts_TK[0][0].item<int64_t>(), 1);
  EXPECT_EQ(r.experts_TK[0][1].item<int64_t>(), 2);
  const double z = std::exp(3.0) + std::exp(1.0);
  EXPECT_NEAR(r.weights_TK[0][0].item<double>(), std::exp(3.0) / z, 1e-12);
  EXPECT_NEAR(r.weights_TK[0][1].item<double>(), std::exp(1.0) / z, 1e-12);
  // Not the renormalised full softmax's probabilities... which are equal here by construction: check the
  // difference from the plain softmax instead.
  const double full = std::exp(3.0) / (z + std::exp(0.5) + std::exp(-2.0));
  EXPECT_GT(r.weights_TK[0][0].item<double>() - full, 1e-3);
}

TEST(RoutingFeaturesTest, SelectionBiasChangesTheChoiceNotTheWeights) {
  // softmax(1, 0, 0): p0 > p1 = p2. A bias of +0.5 on expert 2 makes top-1 pick it, with weight p2.
  RouterOptions o;
  o.top_k = 1;
  const at::Tensor logits = T({1, 0, 0}, {1, 3});
  const Routing plain = route(logits, o);
  EXPECT_EQ(plain.experts_TK[0][0].item<int64_t>(), 0);
  const Routing biased = route(logits, o, T({-0.25, -0.25, 0.5}, {3}));
  EXPECT_EQ(biased.experts_TK[0][0].item<int64_t>(), 2);
  const double z = std::exp(1.0) + 2;
  EXPECT_NEAR(biased.weights_TK[0][0].item<double>(), 1 / z, 1e-12);
  EXPECT_TRUE(at::allclose(biased.probs_TE, plain.probs_TE));  // the LB loss's distribution is unbiased
}

TEST(RoutingFeaturesTest, ReplayedRoutingIsUsedAsItIs) {
  RouterOptions o;
  o.top_k = 2;
  at::Tensor logits = T({2, 1, 0, 3, 0, 1}, {2, 3}).set_requires_grad(true);
  const at::Tensor replay = at::tensor({1L, 2L, 2L, 0L}).reshape({2, 2});  // not the top-2 of either token
  const Routing r = route(logits, o, {}, replay);
  EXPECT_TRUE(at::equal(r.experts_TK, replay));
  const at::Tensor p = at::softmax(logits.detach(), -1);
  EXPECT_NEAR(r.weights_TK[0][0].item<double>(), p[0][1].item<double>(), 1e-12);
  EXPECT_NEAR(r.weights_TK[1][1].item<double>(), p[1][0].item<double>(), 1e-12);
  r.weights_TK.sum().backward();  // the weights carry the gradient of the recomputed logits
  EXPECT_GT(logits.grad().abs().sum().item<double>(), 0);
  EXPECT_THROW(route(logits, o, {}, at::zeros({2, 1}, at::kLong)), c10::Error);
}

TEST(RoutingFeaturesTest, BiasUpdateBySign) {
  // counts 6, 2, 4, 4 (mean 4): signs -1, +1, 0, 0; with rate 0.1 from b = (0.3, 0, -0.1, -0.2):
  // (0.2, 0.1, -0.1, -0.2), mean 0 already.
  const at::Tensor b = update_selection_bias(T({0.3, 0, -0.1, -0.2}, {4}), at::tensor({6L, 2L, 4L, 4L}), 0.1);
  EXPECT_TRUE(at::allclose(b, T({0.2, 0.1, -0.1, -0.2}, {4}), 0, 1e-12)) << b;
  // Recentred: from zeros, counts 5, 1, 3 (mean 3) give (-0.1, 0.1, 0) -> mean 0.
  const at::Tensor c = update_selection_bias(at::zeros({3}, at::kFloat), at::tensor({5L, 1L, 3L}), 0.1);
  EXPECT_EQ(c.scalar_type(), at::kFloat);
  EXPECT_NEAR(c[0].item<double>(), -0.1, 1e-7);
  EXPECT_NEAR(c[1].item<double>(), 0.1, 1e-7);
  // Not already centred: counts 1, 1, 4 -> (+0.1, +0.1, -0.1) - 1/30.
  const at::Tensor d = update_selection_bias(at::zeros({3}, at::kDouble), at::tensor({1L, 1L, 4L}), 0.1);
  EXPECT_NEAR(d[0].item<double>(), 0.1 - 0.1 / 3, 1e-12);
  EXPECT_NEAR(d[2].item<double>(), -0.1 - 0.1 / 3, 1e-12);
  EXPECT_NEAR(d.sum().item<double>(), 0, 1e-12);
}

TEST(RoutingFeaturesTest, SequenceLoadBalanceLossByHand) {
  // Two sequences of two tokens, E = 2, top-1.
  // Sequence 0: probs (0.75, 0.25), (0.5, 0.5), both to expert 0: f = (1, 0), P = (0.625, 0.375): LB = 1.25.
  // Sequence 1: probs (0.2, 0.8), (0.6, 0.4), to experts 1 and 0: f = (0.5, 0.5), P = (0.4, 0.6): LB = 1.0.
  const at::Tensor probs = T({0.75, 0.25, 0.5, 0.5, 0.2, 0.8, 0.6, 0.4}, {4, 2});
  const at::Tensor experts = at::tensor({0L, 0L, 1L, 0L}).reshape({4, 1});
  EXPECT_NEAR(sequence_load_balance_loss(probs, experts, 2).item<double>(), (1.25 + 1.0) / 2, 1e-12);
  // One sequence of four: the micro-batch loss: f = (0.75, 0.25), P = (0.5125, 0.4875).
  EXPECT_NEAR(sequence_load_balance_loss(probs, experts, 4).item<double>(), 2 * (0.75 * 0.5125 + 0.25 * 0.4875), 1e-12);
  EXPECT_NEAR(load_balance_loss(probs, experts).item<double>(), 2 * (0.75 * 0.5125 + 0.25 * 0.4875), 1e-12);
  // Given f (global scope): E * sum f_e P_e.
  EXPECT_NEAR(load_balance_loss_with_f(probs, T({0.1, 0.9}, {2})).item<double>(), 2 * (0.1 * 0.5125 + 0.9 * 0.4875),
              1e-12);
  EXPECT_THROW(sequence_load_balance_loss(probs, experts, 3), c10::Error);
}

MoeOptions SmallMoe() {
  MoeOptions o;
  o.d_model = 6;
  o.num_experts = 4;
  o.top_k = 2;
  o.hidden = 5;
  return o;
}

void Init(MoeLayerImpl& m, uint64_t seed) {
  InitPlan plan;
  plan.seed = seed;
  plan.std_in = plan.std_out = 0.5;
  m.reset_parameters(plan, "moe.");
}

TEST(RoutingFeaturesTest, SharedExpertAddsAGatedDenseSwiGlu) {
  MoeOptions o = SmallMoe();
  o.shared_hidden = 7;
  o.shared_gate = true;
  MoeLayer with(o);
  with->to(at::kDouble);
  Init(*with, 5);
  MoeLayer routed_only(SmallMoe());
  routed_only->to(at::kDouble);
  {
    at::NoGradGuard no_grad;
    routed_only->router.copy_(with->router);
    for (const char* leaf : {"w_gate", "w_up", "w_down"}) {
      routed_only->experts->named_parameters()[leaf].copy_(with->experts->named_parameters()[leaf]);
    }
  }
  const at::Tensor x = at::randn({9, 6}, at::kDouble);
  const at::Tensor y = with(x).y_TD;
  const at::Tensor g = at::sigmoid(at::matmul(x, with->shared_expert_gate)).unsqueeze(1);
  const FeedForward& s = with->shared_expert;
  const at::Tensor want = routed_only(x).y_TD + g * swiglu(x, s->w_gate, s->w_up, s->w_down);
  EXPECT_TRUE(at::allclose(y, want, 1e-12, 1e-12)) << (y - want).abs().max();
  // Parameter names (checkpoint keys) and counts.
  std::set<std::string> names;
  for (const auto& item : with->named_parameters()) names.insert(item.key());
  EXPECT_TRUE(names.count("shared_expert.w_gate") && names.count("shared_expert.w_down") &&
              names.count("shared_expert_gate"));
  // Without the gate: y = routed + shared.
  o.shared_gate = false;
  MoeLayer ungated(o);
  ungated->to(at::kDouble);
  Init(*ungated, 5);
  const FeedForward& u = ungated->shared_expert;
  EXPECT_EQ(ungated->named_parameters().find("shared_expert_gate"), nullptr);
  const at::Tensor routed = ungated(x).y_TD - swiglu(x, u->w_gate, u->w_up, u->w_down);
  EXPECT_TRUE(at::allclose(routed, routed_only(x).y_TD, 1e-12, 1e-12));
}

TEST(RoutingFeaturesTest, OnlyTrainingForwardsCountAndReplaysDoNot) {
  MoeOptions o = SmallMoe();
  o.bias_update_rate = 0.01;
  MoeLayer m(o);
  Init(*m, 3);
  const at::Tensor x = at::randn({10, 6});
  MoeOutput first = m(x);
  EXPECT_EQ(m->stats.forwards, 1);
  EXPECT_EQ(m->step_counts_E.sum().item<int64_t>(), 20);
  m->training_forward = false;  // an eval forward or a counting pass
  MoeOutput eval = m(x);
  EXPECT_EQ(m->stats.forwards, 1);
  EXPECT_TRUE(at::equal(eval.counts_E, first.counts_E));
  m->training_forward = true;
  m(x, 0, first.experts_TK);  // activation checkpointing's recompute
  EXPECT_EQ(m->stats.forwards, 1);
  EXPECT_EQ(m->step_counts_E.sum().item<int64_t>(), 20);
  EXPECT_EQ(m->stats.counts_E.sum().item<int64_t>(), 20);
  // The bias update uses the counts it is given, and the choice moves away from the busiest expert.
  const at::Tensor counts = first.counts_E;
  const int64_t busiest = counts.argmax().item<int64_t>();
  m->update_selection_bias(counts);
  EXPECT_LT(m->selection_bias[busiest].item<double>(), 0);
  EXPECT_NEAR(m->selection_bias.sum().item<double>(), 0, 1e-6);
}

TEST(RoutingFeaturesTest, GlobalScopeUsesTheGivenF) {
  MoeOptions o = SmallMoe();
  o.lb_scope = LoadBalanceScope::kGlobalBatch;
  MoeLayer m(o);
  m->to(at::kDouble);
  Init(*m, 4);
  const at::Tensor x = at::randn({8, 6}, at::kDouble);
  const at::Tensor local = m(x).lb_loss;  // no global f: the micro-batch's own
  const Routing r = route(at::matmul(x, m->router.t()), m->router_options());
  EXPECT_NEAR(local.item<double>(), load_balance_loss(r.probs_TE, r.experts_TK).item<double>(), 1e-12);
  m->global_f_E = T({0.4, 0.3, 0.2, 0.1}, {4});
  const at::Tensor P = r.probs_TE.mean(0);
  const double want = 4 * (0.4 * P[0] + 0.3 * P[1] + 0.2 * P[2] + 0.1 * P[3]).item<double>();
  EXPECT_NEAR(m(x).lb_loss.item<double>(), want, 1e-12);
}

}  // namespace
}  // namespace hybridmoe
