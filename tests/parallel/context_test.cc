// ParallelContext with a tiny Transformer at EP = --ep (world = EP x DP) against one process that
// accumulates every rank's micro-batch (loss averaged): same gradients after SyncGradients, same GradNorm,
// and the same loss curve over 20 AdamW steps with clipping. The reference runs on every rank.
// Tolerances: gradients 1e-5 (absolute, relative to max(1, |ref|)), norms and losses 1e-5 relative.
#include "parallel/context.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include "core/optim.h"
#include "parallel/communicator.h"
#include "tests/parallel/mpi_gtest_main.h"

namespace hybridmoe {
namespace {

constexpr double kTol = 1e-5;
constexpr uint64_t kSeed = 11;
constexpr int64_t kBatch = 2, kSeq = 6, kVocab = 32;

TrainConfig Config() {
  TrainConfig c;
  ModelConfig* m = c.mutable_model();
  m->set_vocab_size(kVocab);
  m->set_d_model(16);
  m->set_n_layers(3);
  m->set_n_heads(2);
  m->set_dense_hidden(24);
  m->mutable_moe()->set_num_experts(4);
  m->mutable_moe()->set_top_k(2);
  m->mutable_moe()->set_expert_hidden(12);
  m->mutable_moe()->set_every_n_layers(1);
  m->mutable_init()->set_std(0.2);  // uneven routing, visible gradients
  c.mutable_parallel()->set_expert_parallel_size(IntTestFlag("ep", 1));
  c.mutable_parallel()->set_timeout_s(60);
  return c;
}

// Micro-batch m of step s: (inputs, targets), identical on every rank.
std::pair<at::Tensor, at::Tensor> MicroBatch(int step, int m) {
  at::manual_seed(100 * step + m + 1);
  const at::Tensor tokens = at::randint(kVocab, {kBatch, kSeq + 1}, at::kLong);
  return {tokens.narrow(1, 0, kSeq), tokens.narrow(1, 1, kSeq)};
}

Transformer Model() {
  Transformer model(TransformerOptionsFromConfig(Config().model()));
  return model;
}

bool IsExpert(const std::string& name) { return name.find(".moe.experts.") != std::string::npos; }

double SquaredNorm(Transformer& model) {
  double sum = 0;
  for (const at::Tensor& p : model->parameters()) {
    if (p.grad().defined()) sum += p.grad().to(at::kDouble).pow(2).sum().item<double>();
  }
  return sum;
}

std::unique_ptr<ParallelContext> MakeContext() {
  auto ctx = ParallelContext::Create(Config());
  EXPECT_TRUE(ctx.ok()) << ctx.status();
  return ctx.ok() ? std::move(ctx).value() : nullptr;
}

TEST(ParallelContext, TopologyFromMpi) {
  const std::unique_ptr<ParallelContext> ctx = MakeContext();
  ASSERT_NE(ctx, nullptr);
  const int ep = IntTestFlag("ep", 1), W = WorldSize(), r = WorldRank();
  EXPECT_EQ(ctx->rank(), r);
  EXPECT_EQ(ctx->world_size(), W);
  EXPECT_EQ(ctx->ep_size(), ep);
  EXPECT_EQ(ctx->dp_size(), W / ep);
  EXPECT_EQ(ctx->ep_rank(), r % ep);  // mpirun's block placement on one node
  EXPECT_EQ(ctx->dp_rank(), r / ep);
  EXPECT_EQ(ctx->local_size(), W);
  EXPECT_EQ(ctx->local_rank(), r);
  EXPECT_FALSE(ctx->node_name().empty());
  EXPECT_EQ(ctx->ep_group()->size(), ep);
  EXPECT_EQ(ctx->dp_group()->size(), W / ep);
  for (int e = 0; e < ep; ++e) EXPECT_EQ(ctx->ep_group()->world_rank(e), (r / ep) * ep + e);
  EXPECT_EQ(ParallelContext::IsRankZero(), r == 0);

  std::vector<double> values = {1.0 * r, 2.0};
  ctx->SumOverRanks(values);
  EXPECT_EQ(values[0], W * (W - 1) / 2.0);
  EXPECT_EQ(values[1], 2.0 * W);
  EXPECT_EQ(ctx->MaxOverRanks(r == W - 1 ? 5.0 : -1.0), 5.0);
  const std::vector<std::string> gathered = ctx->GatherToRoot(std::string(r, 'x'));
  if (r == 0) {
    ASSERT_EQ(static_cast<int>(gathered.size()), W);
    for (int i = 0; i < W; ++i) EXPECT_EQ(gathered[i], std::string(i, 'x'));
  } else {
    EXPECT_TRUE(gathered.empty());
  }
  ctx->Barrier();
}

TEST(ParallelContext, GradientsAndNormMatchOneRankOverAllMicroBatches) {
  const std::unique_ptr<ParallelContext> ctx = MakeContext();
  ASSERT_NE(ctx, nullptr);
  const int W = ctx->world_size();

  Transformer ref = Model();
  ref->reset_parameters(kSeed);
  double ref_loss = 0;
  for (int m = 0; m < W; ++m) {
    auto [inputs, targets] = MicroBatch(0, m);
    const at::Tensor loss = ref(inputs, targets).loss / W;
    loss.backward();
    ref_loss += loss.item<double>();
  }

  Transformer model = Model();
  ctx->ShardExperts(model);
  model->reset_parameters(kSeed);
  auto [inputs, targets] = MicroBatch(0, ctx->rank());
  const at::Tensor loss = model(inputs, targets).loss;
  loss.backward();
  ctx->SyncGradients(model);

  const auto ref_params = ref->named_parameters();
  const int64_t L = 4 / ctx->ep_size(), first = ctx->ep_rank() * L;
  for (const auto& item : model->named_parameters()) {
    SCOPED_TRACE(item.key());
    ASSERT_TRUE(item.value().grad().defined());
    at::Tensor want = ref_params[item.key()].grad();
    if (IsExpert(item.key())) want = want.narrow(0, first, L);
    const at::Tensor& got = item.value().grad();
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LE((got - want).abs().max().item<double>(), kTol * std::max(1.0, want.abs().max().item<double>()));
  }
  const double want_norm = std::sqrt(SquaredNorm(ref));
  EXPECT_NEAR(ctx->GradNorm(model), want_norm, kTol * want_norm);
  std::vector<double> total = {loss.item<double>()};
  ctx->SumOverRanks(total);
  EXPECT_NEAR(total[0] / W, ref_loss, kTol * ref_loss);
}

TEST(ParallelContext, LossCurveMatchesOneRankOver20Steps) {
  const std::unique_ptr<ParallelContext> ctx = MakeContext();
  ASSERT_NE(ctx, nullptr);
  const int W = ctx->world_size(), steps = 20;
  const double lr = 1e-2, clip = 1.0;
  AdamWOptions adam;

  auto named = [](Transformer& m) {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto& item : m->named_parameters()) out.emplace_back(item.key(), item.value());
    return out;
  };
  auto zero_grads = [](Transformer& m) {
    for (const at::Tensor& p : m->parameters()) p.mutable_grad() = at::Tensor();
  };

  Transformer ref = Model();
  ref->reset_parameters(kSeed);
  AdamW ref_opt(named(ref), adam);
  std::vector<at::Tensor> ref_params = ref->parameters();
  std::vector<double> ref_curve, ref_norms;
  for (int s = 0; s < steps; ++s) {
    zero_grads(ref);
    double loss_sum = 0;
    for (int m = 0; m < W; ++m) {
      auto [inputs, targets] = MicroBatch(s + 1, m);
      const at::Tensor loss = ref(inputs, targets).loss / W;
      loss.backward();
      loss_sum += loss.item<double>();
    }
    ref_norms.push_back(ClipGradNorm(ref_params, clip));
    ref_opt.step(lr);
    ref_curve.push_back(loss_sum);
  }

  Transformer model = Model();
  ctx->ShardExperts(model);
  model->reset_parameters(kSeed);
  AdamW opt(named(model), adam);
  double worst = 0;
  for (int s = 0; s < steps; ++s) {
    zero_grads(model);
    auto [inputs, targets] = MicroBatch(s + 1, ctx->rank());
    const at::Tensor loss = model(inputs, targets).loss;
    loss.backward();
    ctx->SyncGradients(model);
    const double norm = ctx->ClipGradNorm(model, clip);
    opt.step(lr);
    std::vector<double> total = {loss.item<double>()};
    ctx->SumOverRanks(total);
    const double global = total[0] / W;
    EXPECT_NEAR(global, ref_curve[s], kTol * ref_curve[s]) << "step " << s;
    worst = std::max(worst, std::abs(global - ref_curve[s]) / ref_curve[s]);
    EXPECT_NEAR(norm, ref_norms[s], kTol * ref_norms[s]) << "step " << s;
  }
  EXPECT_LT(ref_curve.back(), ref_curve.front()) << "the reference run should learn something";
  if (ctx->rank() == 0) {
    std::printf("loss %.6f -> %.6f over %d steps; largest relative difference from one rank: %.2e\n", ref_curve.front(),
                ref_curve.back(), steps, worst);
  }
}

}  // namespace
}  // namespace hybridmoe
