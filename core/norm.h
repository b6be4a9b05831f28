// Normalisation layers (docs/formulas.md sections 1.1-1.2).
//
// RMSNorm:   y = g * x / sqrt(mean(x^2) + eps), statistics and the multiply by g in fp32 (at least), the
//            result cast once to the input dtype (bf16 activations stay bf16). No bias.
// LayerNorm: y = g * (x - mu) / sqrt(var + eps) + b, in fp32 (at least), cast once to the input dtype.
// The kind is a config choice independent of where norms sit (models/block.h decides that).
// Parameter names ("weight", "bias") are checkpoint keys.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace hybridmoe {

enum class NormKind { kRms, kLayer };

// Promotes half-precision types (bf16, fp16) to fp32 and leaves fp32/fp64 as they are: statistics,
// router softmax and losses run in at least fp32.
at::Tensor at_least_fp32(const at::Tensor& x);

// Free functions: the math, usable on slices (e.g. one weight row per expert).
// rms_norm of bf16 activations on a CPU with AVX512-BF16 runs one fused kernel per direction (same formula, fp32
// statistics and products; RecordFunction name "hybridmoe::fused_bf16_rms_norm"); otherwise the composite.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
// Whether this CPU runs the fused kernel (AVX-512 with AVX512-BF16).
bool FusedBf16RmsNormAvailable();
// The same as ATen ops (fp32 for bf16 inputs): the reference the fused kernel is tested against.
at::Tensor rms_norm_composite(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps);

struct NormOptions {
  NormOptions(int64_t dim) : dim(dim) {}
  int64_t dim;
  NormKind kind = NormKind::kRms;
  double eps = 1e-5;
};

class NormImpl : public torch::nn::Module {
 public:
  explicit NormImpl(const NormOptions& options);
  at::Tensor forward(const at::Tensor& x);
  void reset_parameters();

  NormOptions options;
  at::Tensor weight;
  at::Tensor bias;  // LayerNorm only; undefined for RMSNorm.
};
TORCH_MODULE(Norm);

}  // namespace hybridmoe
