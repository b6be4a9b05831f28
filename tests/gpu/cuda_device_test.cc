// A tiny HybridNorm MoE transformer on a real CUDA device against the same model on the CPU: forward and
// backward, with and without activation checkpointing, in fp32 (the default) and in bf16 mixed precision
// (set_compute_dtype(kBFloat16), models/transformer.h) against the CPU's fp32. Every parameter, gradient and
// buffer must live on the device, be finite, and agree with the CPU run: fp32 loss within 1e-4 relative, the
// whole gradient's cosine similarity above 0.9999 and every parameter's above 0.999; bf16 within 2%, 0.99 and
// 0.9. The printed figures go to tools/gpu/check.sh's log.
// Skips when the process sees no CUDA device (the CPU build, and the CUDA build on a machine without one).
#include <cmath>
#include <cstdio>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include "models/transformer.h"
#include "proto/config.pb.h"

namespace hybridmoe {
namespace {

Transformer TinyMoe(bool checkpointing) {
  ModelConfig c;
  c.set_vocab_size(64);
  c.set_d_model(32);
  c.set_n_layers(3);
  c.set_n_heads(2);
  c.set_max_seq_len(32);
  c.mutable_norm()->set_strategy(NormConfig::HYBRID_NORM);
  c.mutable_moe()->set_num_experts(4);
  c.mutable_moe()->set_top_k(2);
  c.mutable_moe()->set_expert_hidden(16);
  c.mutable_init()->set_scheme(InitConfig::MEGATRON);
  c.set_activation_checkpointing(checkpointing);
  Transformer model(TransformerOptionsFromConfig(c));
  model->reset_parameters(7);  // on the CPU, as the trainer does: identical weights on both sides
  return model;
}

double Cosine(const at::Tensor& a, const at::Tensor& b) {
  const double na = a.norm().item<double>(), nb = b.norm().item<double>();
  if (na == 0 && nb == 0) return 1.0;
  return (a * b).sum().item<double>() / (na * nb + 1e-30);
}

TEST(CudaDeviceTest, MatmulMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Tensor a = at::randn({256, 256}, at::kFloat), b = at::randn({256, 256}, at::kFloat);
  const at::Tensor cpu = at::matmul(a, b);
  const at::Tensor gpu = at::matmul(a.cuda(), b.cuda());
  EXPECT_TRUE(gpu.is_cuda());
  const double err = (gpu.cpu() - cpu).abs().max().item<double>();
  std::printf("%d CUDA device(s); fp32 256^3 matmul max |cuda - cpu| %.3g\n", static_cast<int>(at::getNumGPUs()), err);
  EXPECT_LT(err, 5e-2);  // TF32 would stay far below this too
}

struct Tolerance {
  double loss_rel, total_cosine, parameter_cosine;
};

void ExpectMatchesCpu(bool checkpointing, bool bf16) {
  const at::Device cuda(at::kCUDA, 0);
  const Tolerance tol = bf16 ? Tolerance{2e-2, 0.99, 0.9} : Tolerance{1e-4, 0.9999, 0.999};
  at::manual_seed(11);
  const at::Tensor tokens = at::randint(0, 64, {4, 24}, at::kLong);
  const at::Tensor targets = at::randint(0, 64, {4, 24}, at::kLong);

  Transformer cpu = TinyMoe(checkpointing);
  const ModelOutput ref = cpu(tokens, targets);
  ref.loss.backward();

  Transformer gpu = TinyMoe(checkpointing);
  gpu->to(cuda);
  if (bf16) gpu->set_compute_dtype(at::kBFloat16);
  const ModelOutput out = gpu(tokens.to(cuda), targets.to(cuda));
  ASSERT_TRUE(out.loss.is_cuda());
  out.loss.backward();
  if (bf16) gpu->accumulate_compute_grads();

  const double l_cpu = ref.loss.item<double>(), l_gpu = out.loss.item<double>();
  ASSERT_TRUE(std::isfinite(l_gpu));
  EXPECT_LT(std::abs(l_gpu - l_cpu) / std::abs(l_cpu), tol.loss_rel) << "cpu " << l_cpu << " cuda " << l_gpu;

  for (const auto& b : gpu->named_buffers()) EXPECT_EQ(b.value().device(), cuda) << "buffer " << b.key();
  const auto p_cpu = cpu->named_parameters();
  const auto p_gpu = gpu->named_parameters();
  ASSERT_EQ(p_cpu.size(), p_gpu.size());
  std::vector<at::Tensor> all_cpu, all_gpu;
  double worst = 1.0;
  for (size_t i = 0; i < p_gpu.size(); ++i) {
    const std::string& name = p_gpu[i].key();
    const at::Tensor& p = p_gpu[i].value();
    EXPECT_EQ(p.device(), cuda) << name;
    EXPECT_EQ(p.scalar_type(), at::kFloat) << name << ": parameters stay fp32 masters";
    ASSERT_TRUE(p.grad().defined()) << "no gradient for " << name;
    EXPECT_EQ(p.grad().device(), cuda) << name;
    const at::Tensor g = p.grad().cpu().to(at::kDouble).flatten();
    const at::Tensor r = p_cpu[i].value().grad().to(at::kDouble).flatten();
    EXPECT_TRUE(at::isfinite(g).all().item<bool>()) << name;
    const double cos = Cosine(g, r);
    worst = std::min(worst, cos);
    EXPECT_GT(cos, tol.parameter_cosine) << name;
    all_cpu.push_back(r);
    all_gpu.push_back(g);
  }
  const double total = Cosine(at::cat(all_gpu), at::cat(all_cpu));
  EXPECT_GT(total, tol.total_cosine);
  for (const MoeLayer& moe : gpu->moe_layers()) EXPECT_EQ(moe->stats.counts_E.device(), cuda);
  std::printf("%s, checkpointing %d: loss cpu %.6f cuda %.6f (rel %.2e); gradient cosine all %.7f, worst %.7f\n",
              bf16 ? "bf16" : "fp32", checkpointing, l_cpu, l_gpu, std::abs(l_gpu - l_cpu) / std::abs(l_cpu), total,
              worst);
}

TEST(CudaDeviceTest, MoeForwardBackwardMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (bool checkpointing : {false, true}) {
    SCOPED_TRACE(checkpointing ? "fp32, activation checkpointing" : "fp32");
    ExpectMatchesCpu(checkpointing, /*bf16=*/false);
  }
}

TEST(CudaDeviceTest, Bf16MixedPrecisionMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (bool checkpointing : {false, true}) {
    SCOPED_TRACE(checkpointing ? "bf16, activation checkpointing" : "bf16");
    ExpectMatchesCpu(checkpointing, /*bf16=*/true);
  }
}

}  // namespace
}  // namespace hybridmoe
