// Trainer::Step (tools/training.h), the one training step, in-process: gradient accumulation averages
// micro-batches, the clip is the global-norm clip, a non-finite loss skips the update and leaves the weights
// alone, lr = 0 moves nothing, and before_clip sees the unclipped gradients of the global mean loss.
#include <cmath>
#include <map>
#include <mutex>
#include <set>

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <gtest/gtest.h>

#include "core/config.h"
#include "core/norm.h"
#include "core/optim.h"
#include "parallel/context.h"
#include "parallel/device.h"
#include "tools/training.h"

namespace hybridmoe {
namespace {

// A small MoE model; the LB and z losses are off where a test compares micro-batch splits (they are
// per-micro-batch statistics, not token means).
TrainConfig SmallConfig(const std::string& extra = "") {
  std::vector<std::string> overrides = {
      "model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } } "
      "data { seq_len: 16 micro_batch_size: 4 } optim { grad_clip: 0 warmup_steps: 0 }"};
  if (!extra.empty()) overrides.push_back(extra);
  auto c = LoadConfig("configs/tiny.textproto", overrides);
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

Batch RandomBatch(int64_t b, int64_t s, int64_t vocab, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const at::Tensor ids = at::randint(vocab, {b, s + 1}, gen, at::kLong);
  return Batch{ids.narrow(1, 0, s).contiguous(), ids.narrow(1, 1, s).contiguous()};
}

Batch Rows(const Batch& b, int64_t first, int64_t n) {
  return Batch{b.inputs.narrow(0, first, n).contiguous(), b.targets.narrow(0, first, n).contiguous()};
}

std::vector<at::Tensor> Snapshot(Trainer& t) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& p : t.params()) out.push_back(p.detach().clone());
  return out;
}

double MaxAbsDiff(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, (a[i] - b[i]).abs().max().item<double>());
  return m;
}

class TrainingTest : public ::testing::Test {
 protected:
  std::unique_ptr<ParallelContext> ctx_ = ParallelContext::CreateLocal(60);
};

TEST_F(TrainingTest, AccumulationAveragesMicroBatches) {
  const TrainConfig config = SmallConfig("model { moe { lb_loss_weight: 0 z_loss_weight: 0 } }");
  auto one = Trainer::Create(config, *ctx_);
  auto two = Trainer::Create(config, *ctx_);
  ASSERT_TRUE(one.ok() && two.ok());
  const Batch batch = RandomBatch(4, 16, 256, 7);
  const StepResult a = (*one)->Step(0, {batch});
  const StepResult b = (*two)->Step(0, {Rows(batch, 0, 2), Rows(batch, 2, 2)});
  EXPECT_NEAR(a.lm_loss, b.lm_loss, 1e-6 * a.lm_loss);
  EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-5 * a.grad_norm);
  EXPECT_TRUE(a.updated && b.updated);
  EXPECT_LT(MaxAbsDiff(Snapshot(**one), Snapshot(**two)), 1e-5);
}

TEST_F(TrainingTest, ClipsToTheGlobalNormAndReportsTheNormBefore) {
  const TrainConfig config = SmallConfig("optim { grad_clip: 0.01 }");
  auto t = Trainer::Create(config, *ctx_);
  ASSERT_TRUE(t.ok());
  double seen_before_clip = 0;
  StepOptions options;
  options.before_clip = [&] { seen_before_clip = GradNorm((*t)->params()); };
  const StepResult r = (*t)->Step(0, {RandomBatch(4, 16, 256, 3)}, options);
  ASSERT_GT(r.grad_norm, 0.01) << "the test needs a norm above the clip";
  EXPECT_NEAR(seen_before_clip, r.grad_norm, 1e-6 * r.grad_norm);
  EXPECT_NEAR(GradNorm((*t)->params()), 0.01 * r.grad_norm / (r.grad_norm + 1e-6), 1e-7);
}

TEST_F(TrainingTest, NonFiniteLossSkipsTheUpdate) {
  auto t = Trainer::Create(SmallConfig(), *ctx_);
  ASSERT_TRUE(t.ok());
  const std::vector<at::Tensor> before = Snapshot(**t);
  StepOptions poison;
  poison.poison_loss = true;
  const StepResult r = (*t)->Step(0, {RandomBatch(4, 16, 256, 5)}, poison);
  EXPECT_FALSE(r.finite_loss);
  EXPECT_FALSE(r.updated);
  EXPECT_EQ(MaxAbsDiff(before, Snapshot(**t)), 0.0);
  EXPECT_EQ((*t)->optimizer().steps_taken(), 0);
  // The next, healthy step updates.
  const StepResult ok = (*t)->Step(1, {RandomBatch(4, 16, 256, 6)});
  EXPECT_TRUE(ok.updated);
  EXPECT_GT(MaxAbsDiff(before, Snapshot(**t)), 0.0);
}

TEST_F(TrainingTest, ZeroLearningRateLeavesTheWeightsAndScheduleSetsTheRate) {
  const TrainConfig config = SmallConfig("optim { lr: 0.01 warmup_steps: 10 warmup_start_ratio: 0.1 }");
  auto t = Trainer::Create(config, *ctx_);
  ASSERT_TRUE(t.ok());
  const std::vector<at::Tensor> before = Snapshot(**t);
  StepOptions frozen;
  frozen.lr = 0.0;
  const Batch batch = RandomBatch(4, 16, 256, 9);
  const StepResult a = (*t)->Step(0, {batch}, frozen);
  EXPECT_EQ(a.lr, 0.0);
  EXPECT_EQ(MaxAbsDiff(before, Snapshot(**t)), 0.0);
  const StepResult b = (*t)->Step(0, {batch}, frozen);
  EXPECT_EQ(a.loss, b.loss);  // same weights, same batch: the same loss, bit for bit
  const StepResult c = (*t)->Step(5, {batch});
  EXPECT_DOUBLE_EQ(c.lr, LearningRate((*t)->schedule(), 5));
  EXPECT_NEAR(c.lr, 0.01 * (0.1 + 0.9 * 0.5), 1e-12);
}

// train.precision BF16: which ops see bf16. Every op of the step is observed (RecordFunction with inputs): the
// GEMMs and attention run in bf16, while the router's softmax and top-k, the norm statistics, the losses'
// reductions (cross-entropy, logsumexp), the gradient norm of the clip and AdamW see fp32 only; the masters,
// their gradients and the optimizer moments stay fp32.
// op name -> dtypes of its floating-point tensor inputs, filled by ObserveDtypes (a RecordFunction callback
// is a plain function pointer).
std::map<std::string, std::set<at::ScalarType>>& ObservedDtypes() {
  static auto* seen = new std::map<std::string, std::set<at::ScalarType>>();
  return *seen;
}

std::unique_ptr<at::ObserverContext> ObserveDtypes(const at::RecordFunction& fn) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  auto& dtypes = ObservedDtypes()[fn.name()];
  auto add = [&](const at::Tensor& x) {
    if (x.defined() && x.is_floating_point()) dtypes.insert(x.scalar_type());
  };
  for (const c10::IValue& v : fn.inputs()) {
    if (v.isTensor()) add(v.toTensor());
    if (v.isTensorList()) {
      for (const at::Tensor& x : v.toTensorVector()) add(x);
    }
  }
  return nullptr;
}

TEST_F(TrainingTest, Bf16ComputesGemmsInBf16AndKeepsRouterNormsLossesAndReductionsInFp32) {
  if (!CpuHasBf16MatrixUnits()) GTEST_SKIP() << "this CPU has no bf16 matrix units (BF16 falls back to FP32)";
  for (const std::string norm : {"strategy: HYBRID_NORM kind: RMS", "strategy: NORMFORMER kind: LAYER"}) {
    SCOPED_TRACE(norm);
    const TrainConfig config =
        SmallConfig("train { precision: BF16 } optim { grad_clip: 1.0 } model { norm { " + norm + " } }");
    const bool rms = norm.find("RMS") != std::string::npos;
    // bf16 RMSNorm runs as one fused kernel where the CPU has AVX512-BF16 (it reads bf16 and computes in fp32:
    // tests/core/norm_test checks it against the fp32 composite), else as the composite, whose rsqrt is fp32.
    const bool fused_rms = rms && FusedBf16RmsNormAvailable();
    std::vector<const char*> fp32_only = {"aten::_softmax",     "aten::topk",          "aten::logsumexp",
                                          "aten::_log_softmax", "aten::_foreach_norm", "aten::_fused_adamw_"};
    if (!fused_rms) fp32_only.push_back(rms ? "aten::rsqrt" : "aten::native_layer_norm");
    auto t = Trainer::Create(config, *ctx_);
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_EQ((*t)->model()->compute_dtype(), at::kBFloat16);
    ObservedDtypes().clear();
    const at::CallbackHandle handle = at::addGlobalCallback(
        at::RecordFunctionCallback(ObserveDtypes).needsInputs(true).scopes({at::RecordScope::FUNCTION}));
    const StepResult r = (*t)->Step(0, {RandomBatch(4, 16, 256, 3)});
    at::removeCallback(handle);
    auto& seen = ObservedDtypes();
    EXPECT_TRUE(r.updated && std::isfinite(r.loss));
    auto dtypes = [&](const std::string& op) { return seen.count(op) ? seen[op] : std::set<at::ScalarType>{}; };
    for (const char* op : {"aten::mm", "aten::_scaled_dot_product_flash_attention_for_cpu"}) {
      EXPECT_TRUE(dtypes(op).count(at::kBFloat16)) << op << " did not run in bf16";
    }
    for (const char* op : fp32_only) {
      EXPECT_TRUE(dtypes(op).count(at::kFloat)) << op << " did not run on fp32 inputs";
      EXPECT_FALSE(dtypes(op).count(at::kBFloat16)) << op << " saw bf16";
    }
    if (fused_rms) {
      EXPECT_TRUE(dtypes("hybridmoe::fused_bf16_rms_norm").count(at::kBFloat16)) << "the fused RMSNorm did not run";
      EXPECT_FALSE(dtypes("aten::rsqrt").count(at::kBFloat16)) << "aten::rsqrt saw bf16";
    }
    for (const at::Tensor& p : (*t)->params()) {
      EXPECT_EQ(p.scalar_type(), at::kFloat);
      ASSERT_TRUE(p.grad().defined());
      EXPECT_EQ(p.grad().scalar_type(), at::kFloat);
    }
    for (const auto& [name, m] : (*t)->optimizer().state()) EXPECT_EQ(m.scalar_type(), at::kFloat) << name;
  }
}

}  // namespace
}  // namespace hybridmoe
