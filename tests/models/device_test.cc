// No tensor of the forward (and backward) path is created on a fixed device: the model follows
// module->to(device) and the inputs' device, so it runs on a GPU the way it runs here.
// The fake accelerator of tests/models/fake_device.h proves it without a GPU: host memory, and CUDA's
// same-device check in every operator. Attention, a dense model and a dense + MoE model with a router logit
// bias (with and without activation checkpointing) run forward there, with the CPU run's outputs and losses.
// Backward is not run: LibTorch's autograd engine needs stream and event support of a device (the CUDA
// run of tools/gpu/check.sh covers it).
// `meta` cannot serve: LibTorch's C++ has no meta kernel for where.self (RMS norm) or index_select (the
// embedding), and routing reads expert counts on the host.
// Every case first runs once on the CPU, so that state cached in a first forward (the RoPE tables) exists
// before module->to() - the order in which a trainer meets it.
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "core/attention.h"
#include "models/transformer.h"
#include "models/weights.h"
#include "tests/models/fake_device.h"

namespace hybridmoe {
namespace {

using testing::FakeDevice;

TransformerOptions Tiny(int64_t moe_every_n_layers) {
  TransformerOptions o;
  o.vocab_size = 32;
  o.d_model = 16;
  o.n_layers = 2;
  o.n_heads = 2;
  o.dense_hidden = 24;
  o.moe_every_n_layers = moe_every_n_layers;
  o.moe.d_model = 16;
  o.moe.num_experts = 4;
  o.moe.top_k = 2;
  o.moe.hidden = 8;
  o.moe.router_logit_bias = {0.5, 0.0, -0.5, 0.25};
  return o;
}

void ExpectAllOn(torch::nn::Module& m, const at::Device& device, bool grads) {
  for (const auto& b : m.named_buffers()) EXPECT_EQ(b.value().device(), device) << "buffer " << b.key();
  for (const auto& p : m.named_parameters()) {
    EXPECT_EQ(p.value().device(), device) << "parameter " << p.key();
    if (grads) {
      ASSERT_TRUE(p.value().grad().defined()) << "no gradient for " << p.key();
      EXPECT_EQ(p.value().grad().device(), device) << "gradient of " << p.key();
    }
  }
}

TEST(DeviceTest, FakeDeviceRejectsMixedDevicesLikeCuda) {
  const at::Tensor a = at::ones({3}, at::TensorOptions().device(FakeDevice()));
  EXPECT_EQ((a + a).device(), FakeDevice());
  EXPECT_DOUBLE_EQ((a * at::scalar_tensor(2.0)).sum().item<double>(), 6.0);  // 0-dim CPU scalars are fine
  EXPECT_THROW(a + at::ones({3}), c10::Error);
  EXPECT_EQ(at::bincount(at::tensor({0, 2, 2}, at::kLong).to(FakeDevice())).to(at::kCPU)[2].item<int64_t>(), 2);
}

TEST(DeviceTest, AttentionFollowsTheModule) {
  for (bool per_head : {false, true}) {
    AttentionOptions o;
    o.d_model = 16;
    o.n_heads = 2;
    o.q_norm = o.k_norm = true;
    o.per_head_norm = per_head;
    Attention attn(o);
    InitPlan plan;
    attn->reset_parameters(plan, "attn.");
    const at::Tensor x_cpu = at::randn({2, 7, 16});
    const at::Tensor y5_cpu = attn(x_cpu.narrow(1, 0, 5));  // RoPE tables built on the CPU
    attn->to(FakeDevice());
    const at::Tensor y5 = attn(x_cpu.narrow(1, 0, 5).to(FakeDevice()));  // the moved tables
    const at::Tensor y7 = attn(x_cpu.to(FakeDevice()));                  // tables grown on the device
    EXPECT_EQ(y7.device(), FakeDevice());
    EXPECT_TRUE(at::allclose(y5.to(at::kCPU), y5_cpu, 1e-6, 1e-6));
    attn->to(at::kCPU);
    EXPECT_TRUE(at::allclose(y7.to(at::kCPU), attn(x_cpu), 1e-6, 1e-6));
    attn->to(FakeDevice());
    ExpectAllOn(*attn, FakeDevice(), /*grads=*/false);
  }
}

TEST(DeviceTest, DenseModelForward) {
  Transformer model(Tiny(/*moe_every_n_layers=*/0));
  model->reset_parameters(1);
  const at::Tensor tokens = at::randint(0, 32, {2, 6}, at::kLong);
  const double cpu_loss = model(tokens, tokens).loss.item<double>();
  model->to(FakeDevice());
  const ModelOutput out = model(tokens.to(FakeDevice()), tokens.to(FakeDevice()));
  EXPECT_EQ(out.loss.device(), FakeDevice());
  EXPECT_NEAR(out.loss.item<double>(), cpu_loss, 1e-6);
  ExpectAllOn(*model, FakeDevice(), /*grads=*/false);
}

TEST(DeviceTest, MoeModelOnFakeDeviceMatchesCpu) {
  for (bool checkpointing : {false, true}) {
    TransformerOptions o = Tiny(/*moe_every_n_layers=*/1);
    o.activation_checkpointing = checkpointing;
    Transformer model(o);
    model->reset_parameters(3);
    const at::Tensor tokens = at::randint(0, 32, {2, 6}, at::kLong);
    const at::Tensor targets = at::randint(0, 32, {2, 6}, at::kLong);
    const double cpu_loss = model(tokens, targets).loss.item<double>();
    model->zero_grad();
    model->to(FakeDevice());
    const ModelOutput out = model(tokens.to(FakeDevice()), targets.to(FakeDevice()));
    EXPECT_EQ(out.logits.device(), FakeDevice());
    EXPECT_NEAR(out.loss.item<double>(), cpu_loss, 1e-6) << "checkpointing " << checkpointing;
    ExpectAllOn(*model, FakeDevice(), /*grads=*/false);
    for (const MoeLayer& moe : model->moe_layers()) {
      EXPECT_EQ(moe->stats.counts_E.device(), FakeDevice());
      EXPECT_GT(moe->stats.counts_E.sum().item<int64_t>(), 0);
    }
  }
}

// The device-following tables are buffers, never checkpoint or export keys.
TEST(DeviceTest, BuffersAreNoWeightKeys) {
  Transformer model(Tiny(/*moe_every_n_layers=*/1));
  model(at::zeros({1, 4}, at::kLong));
  std::set<std::string> buffers;
  for (const auto& b : model->named_buffers()) buffers.insert(b.key());
  EXPECT_TRUE(buffers.count("blocks.0.attn.rope_cos")) << "buffers: " << buffers.size();
  EXPECT_TRUE(buffers.count("blocks.0.moe.router_logit_bias"));
  for (const WeightSlot& s : ModelWeightSlots(model)) {
    EXPECT_EQ(s.key.find("rope"), std::string::npos) << s.key;
    EXPECT_EQ(s.key.find("logit_bias"), std::string::npos) << s.key;
  }
}

}  // namespace
}  // namespace hybridmoe
