// Routing features inside Trainer::Step (tools/training.h), in-process: a training forward counts its routing
// exactly once (not again in activation checkpointing's recompute, not in eval forwards or the global-batch
// counting pass); the recompute replays the forward's choice of experts (no top-k in backward); the global-batch
// LB loss is E sum_e f_e P_e with f from the whole step; the aux-loss-free bias moves by the step's counts.
#include <atomic>
#include <cmath>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>
#include <gtest/gtest.h>

#include "core/config.h"
#include "moe/router.h"
#include "parallel/context.h"
#include "tools/training.h"

namespace hybridmoe {
namespace {

TrainConfig Config(const std::string& extra) {
  auto c = LoadConfig("configs/tiny.textproto",
                      {"model { d_model: 32 n_layers: 3 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } "
                       "} data { seq_len: 16 micro_batch_size: 4 } optim { warmup_steps: 0 }",
                       extra});
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

Batch RandomBatch(int64_t b, int64_t s, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const at::Tensor ids = at::randint(256, {b, s + 1}, gen, at::kLong);
  return Batch{ids.narrow(1, 0, s).contiguous(), ids.narrow(1, 1, s).contiguous()};
}

std::atomic<int> topk_calls{0};
std::unique_ptr<at::ObserverContext> CountTopK(const at::RecordFunction& fn) {
  if (std::string(fn.name()) == "aten::topk") ++topk_calls;
  return nullptr;
}

class RoutingTrainingTest : public ::testing::Test {
 protected:
  std::unique_ptr<ParallelContext> ctx_ = ParallelContext::CreateLocal(60);
};

TEST_F(RoutingTrainingTest, ATrainingForwardCountsOnceAndEvalAndCountingPassesNever) {
  const TrainConfig config =
      Config("model { activation_checkpointing: true moe { lb_loss_scope: GLOBAL_BATCH bias_update_rate: 0.01 } }");
  auto t = Trainer::Create(config, *ctx_);
  ASSERT_TRUE(t.ok()) << t.status();
  const StepResult r = (*t)->Step(0, {RandomBatch(4, 16, 1), RandomBatch(4, 16, 2)});
  ASSERT_TRUE(r.updated);
  const std::vector<MoeLayer> layers = (*t)->model()->moe_layers();
  ASSERT_EQ(layers.size(), 3u);
  for (const MoeLayer& layer : layers) {
    EXPECT_EQ(layer->stats.forwards, 2);                                 // two micro-batches, recompute not counted
    EXPECT_EQ(layer->stats.counts_E.sum().item<int64_t>(), 2 * 64 * 2);  // T = 64 tokens, K = 2
    EXPECT_EQ(layer->stats.tokens, 2 * 64);
    EXPECT_TRUE(at::equal(layer->step_counts_E, layer->stats.counts_E));
  }
  {
    at::NoGradGuard no_grad;  // an eval forward
    (*t)->model()->forward(RandomBatch(4, 16, 3).inputs, RandomBatch(4, 16, 3).targets);
  }
  (*t)->model()->count_routing(RandomBatch(4, 16, 4).inputs);
  for (const MoeLayer& layer : layers) EXPECT_EQ(layer->stats.forwards, 2);
}

TEST_F(RoutingTrainingTest, RecomputeReplaysTheForwardsChoiceOfExperts) {
  for (const bool checkpointing : {false, true}) {
    SCOPED_TRACE(checkpointing ? "activation checkpointing" : "plain");
    const TrainConfig config =
        Config(std::string("model { activation_checkpointing: ") + (checkpointing ? "true" : "false") + " }");
    auto t = Trainer::Create(config, *ctx_);
    ASSERT_TRUE(t.ok()) << t.status();
    topk_calls = 0;
    const at::CallbackHandle handle = at::addGlobalCallback(
        at::RecordFunctionCallback(CountTopK).needsInputs(false).scopes({at::RecordScope::FUNCTION}));
    (*t)->Step(0, {RandomBatch(4, 16, 5)});
    at::removeCallback(handle);
    EXPECT_EQ(topk_calls.load(), 3) << "one top-k per MoE layer and forward; the recompute must replay it";
  }
}

TEST_F(RoutingTrainingTest, GlobalBatchLoadBalanceLossUsesTheStepsCounts) {
  const std::string losses = "model { moe { lb_loss_weight: 1 z_loss_weight: 0 lb_loss_scope: ";
  const std::vector<Batch> micro = {RandomBatch(4, 16, 11), RandomBatch(4, 16, 12)};
  // The reference, from the routing of both micro-batches at the initial weights.
  auto ref = Trainer::Create(Config(losses + "GLOBAL_BATCH } }"), *ctx_);
  ASSERT_TRUE(ref.ok());
  std::vector<MoeLayer> layers = (*ref)->model()->moe_layers();
  std::vector<std::vector<Routing>> routed(layers.size());
  {
    at::NoGradGuard no_grad;
    for (auto& layer : layers) layer->keep_router_logits = true;
    for (const Batch& b : micro) {
      (*ref)->model()->forward(b.inputs);
      for (size_t l = 0; l < layers.size(); ++l) {
        routed[l].push_back(route(layers[l]->last_router_logits, layers[l]->router_options()));
      }
    }
  }
  double want = 0, want_micro = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    const at::Tensor counts = expert_counts(routed[l][0].experts_TK, 4) + expert_counts(routed[l][1].experts_TK, 4);
    const at::Tensor f = counts.to(at::kDouble) / counts.sum().to(at::kDouble);
    for (const Routing& r : routed[l]) {
      want += 4 * (f * r.probs_TE.mean(0).to(at::kDouble)).sum().item<double>() / 2;
      want_micro += load_balance_loss(r.probs_TE, r.experts_TK).item<double>() / 2;
    }
  }
  want /= layers.size();
  want_micro /= layers.size();
  auto global = Trainer::Create(Config(losses + "GLOBAL_BATCH } }"), *ctx_);
  auto local = Trainer::Create(Config(losses + "MICRO_BATCH } }"), *ctx_);
  const StepResult g = (*global)->Step(0, micro), m = (*local)->Step(0, micro);
  EXPECT_NEAR(g.lb_loss, want, 1e-6 * want);
  EXPECT_NEAR(m.lb_loss, want_micro, 1e-6 * want_micro);
  EXPECT_GT(std::abs(want - want_micro), 1e-4 * want) << "the two scopes should differ on this batch";
  EXPECT_EQ(g.lm_loss, m.lm_loss);  // the same forward otherwise
}

TEST_F(RoutingTrainingTest, SelectionBiasMovesByTheStepsCountsAfterEachUpdate) {
  auto t = Trainer::Create(Config("model { moe { bias_update_rate: 0.01 lb_loss_weight: 0 } }"), *ctx_);
  ASSERT_TRUE(t.ok());
  std::vector<MoeLayer> layers = (*t)->model()->moe_layers();
  at::Tensor expected_bias;
  for (int step = 0; step < 3; ++step) {
    std::vector<at::Tensor> before;
    for (auto& layer : layers) before.push_back(layer->selection_bias.clone());
    for (auto& layer : layers) layer->stats.reset();
    ASSERT_TRUE((*t)->Step(step, {RandomBatch(4, 16, 20 + step), RandomBatch(4, 16, 30 + step)}).updated);
    for (size_t l = 0; l < layers.size(); ++l) {
      const at::Tensor want = update_selection_bias(before[l], layers[l]->stats.counts_E, 0.01);
      EXPECT_TRUE(at::allclose(layers[l]->selection_bias, want, 0, 1e-7)) << layers[l]->selection_bias << want;
      EXPECT_NEAR(layers[l]->selection_bias.sum().item<double>(), 0, 1e-6);
      EXPECT_GT(layers[l]->selection_bias.abs().sum().item<double>(), 0);
    }
  }
  // A skipped update (non-finite loss) leaves the bias alone.
  const at::Tensor kept = layers[0]->selection_bias.clone();
  StepOptions poison;
  poison.poison_loss = true;
  EXPECT_FALSE((*t)->Step(3, {RandomBatch(4, 16, 40)}, poison).updated);
  EXPECT_TRUE(at::equal(layers[0]->selection_bias, kept));
}

}  // namespace
}  // namespace hybridmoe
