// The load-balance loss under gradient accumulation (SPEC section 4: f and P are the statistics of one
// micro-batch; tools/training.h: the step's losses are means over micro-batches). Through Trainer::Step,
// the step `train` runs, with the micro-batches the trainer cuts (micro-batch m = samples m*micro ...):
//   data.grad_accum_steps 2 of micro 4:  lb_loss = (LB(mb0) + LB(mb1)) / 2, and the gradient is the mean of
//                                        the two micro-batches' gradients of their full losses;
//   one micro-batch of 8:                lb_loss = LB(mb0 ++ mb1), a different number (pooled statistics).
// LB(.) is the model's own lb_loss of a forward on the same initial weights, so the relation is exact up to
// the rounding of one division (asserted to a few ulps), not a tolerance on a similarity.
#include <cmath>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "core/config.h"
#include "parallel/context.h"
#include "tools/training.h"

namespace hybridmoe {
namespace {

constexpr int64_t kMicro = 4, kSeq = 16, kVocab = 256;

TrainConfig Config(int64_t micro, int64_t accum) {
  auto c = LoadConfig("configs/tiny.textproto",
                      {"model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 "
                       "lb_loss_weight: 0.01 z_loss_weight: 0.001 } } optim { grad_clip: 0 warmup_steps: 0 } "
                       "data { seq_len: 16 micro_batch_size: " +
                       std::to_string(micro) + " grad_accum_steps: " + std::to_string(accum) + " }"});
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

// Tokens with a skewed distribution in the second half, so the two micro-batches route differently.
Batch Tokens(int64_t first_row, int64_t rows) {
  at::Generator gen = at::detail::createCPUGenerator(11 + first_row);
  const int64_t high = first_row == 0 ? kVocab : 24;
  const at::Tensor ids = at::randint(high, {rows, kSeq + 1}, gen, at::kLong);
  return Batch{ids.narrow(1, 0, kSeq).contiguous(), ids.narrow(1, 1, kSeq).contiguous()};
}

Batch Cat(const Batch& a, const Batch& b) {
  return Batch{at::cat({a.inputs, b.inputs}), at::cat({a.targets, b.targets})};
}

std::vector<at::Tensor> Grads(Trainer& t) {
  std::vector<at::Tensor> g;
  for (const at::Tensor& p : t.params()) g.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
  return g;
}

TEST(LoadBalanceLossUnderAccumulation, IsTheMeanOfPerMicroBatchLosses) {
  at::set_num_threads(1);  // one reduction order for every forward below
  std::unique_ptr<ParallelContext> ctx = ParallelContext::CreateLocal(60);
  const Batch mb0 = Tokens(0, kMicro), mb1 = Tokens(kMicro, kMicro), both = Cat(mb0, mb1);

  // Per-micro-batch references on the initial weights (same seed as the trainers below).
  auto ref = Trainer::Create(Config(kMicro, 1), *ctx);
  ASSERT_TRUE(ref.ok()) << ref.status();
  Transformer& model = (*ref)->model();
  std::vector<double> lb, lm;
  std::vector<std::vector<at::Tensor>> grads;
  for (const Batch* b : {&mb0, &mb1, &both}) {
    for (const at::Tensor& p : (*ref)->params()) p.mutable_grad().reset();
    const ModelOutput out = model(b->inputs, b->targets);
    out.loss.backward();
    lb.push_back(out.lb_loss.item<double>());
    lm.push_back(out.lm_loss.item<double>());
    grads.push_back(Grads(**ref));
  }
  ASSERT_GT(std::abs(lb[2] - (lb[0] + lb[1]) / 2), 1e-3 * lb[2])
      << "pooled and per-micro-batch LB coincide here: the test would not tell the definitions apart";

  auto accum = Trainer::Create(Config(kMicro, 2), *ctx);
  auto big = Trainer::Create(Config(2 * kMicro, 1), *ctx);
  ASSERT_TRUE(accum.ok() && big.ok());
  const StepResult a = (*accum)->Step(0, {mb0, mb1});
  const StepResult b = (*big)->Step(0, {both});

  // The documented relation, exactly (a few ulps: x/2 + y/2 against (x + y)/2).
  EXPECT_DOUBLE_EQ(a.lb_loss, (lb[0] + lb[1]) / 2);
  EXPECT_DOUBLE_EQ(b.lb_loss, lb[2]);
  EXPECT_GT(std::abs(a.lb_loss - b.lb_loss), 1e-3 * b.lb_loss) << "accumulation pooled the router statistics";
  // The token-mean cross-entropy does not depend on the split (equal micro-batches): reassociation only.
  EXPECT_NEAR(a.lm_loss, b.lm_loss, 1e-6 * b.lm_loss);
  EXPECT_NEAR(a.lm_loss, (lm[0] + lm[1]) / 2, 1e-12 * b.lm_loss);

  // The gradient follows the same definition: the mean of the micro-batches' gradients, not the pooled one.
  const std::vector<at::Tensor> ga = Grads(**accum);
  double err = 0, pooled_gap = 0, scale = 0;
  for (size_t i = 0; i < ga.size(); ++i) {
    const at::Tensor mean = (grads[0][i] + grads[1][i]) / 2;
    err = std::max(err, (ga[i] - mean).abs().max().item<double>());
    pooled_gap = std::max(pooled_gap, (ga[i] - grads[2][i]).abs().max().item<double>());
    scale = std::max(scale, mean.abs().max().item<double>());
  }
  EXPECT_LE(err, 1e-6 * scale) << "accumulated gradient is not the mean of the micro-batch gradients";
  EXPECT_GT(pooled_gap, 1e-4 * scale) << "the pooled-batch gradient matches too: LB terms not visible";
}

}  // namespace
}  // namespace hybridmoe
