#include "core/norm.h"

#include "core/init.h"

namespace hybridmoe {

at::Tensor at_least_fp32(const at::Tensor& x) {
  return at::isReducedFloatingType(x.scalar_type()) ? x.to(at::kFloat) : x;
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor x32 = at_least_fp32(x);
  const at::Tensor normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return (weight * normed).to(x.scalar_type());
}

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  return at::layer_norm(at_least_fp32(x), {x.size(-1)}, weight, bias, eps).to(x.scalar_type());
}

NormImpl::NormImpl(const NormOptions& options) : options(options) {
  weight = register_parameter("weight", at::ones({options.dim}, ParamOptions()));
  if (options.kind == NormKind::kLayer) bias = register_parameter("bias", at::zeros({options.dim}, ParamOptions()));
}

void NormImpl::reset_parameters() {
  if (weight.is_meta()) return;
  at::NoGradGuard no_grad;
  weight.fill_(1.0);
  if (bias.defined()) bias.zero_();
}

at::Tensor NormImpl::forward(const at::Tensor& x) {
  switch (options.kind) {
    case NormKind::kRms: return rms_norm(x, weight, options.eps);
    case NormKind::kLayer: return layer_norm(x, weight, bias, options.eps);
  }
  TORCH_INTERNAL_ASSERT(false, "unknown norm kind");
}

}  // namespace hybridmoe
