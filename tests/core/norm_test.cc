// core/norm.h: the fused bf16 RMSNorm kernel against the composite of ATen ops (fp32 statistics).
#include "core/norm.h"

#include <gtest/gtest.h>

#include <cstdio>

namespace hybridmoe {
namespace {

struct Pass {
  at::Tensor y, dx, dw;
};

Pass ForwardBackward(bool fused, const at::Tensor& x0, const at::Tensor& w0, const at::Tensor& g) {
  const at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
  const at::Tensor y = fused ? rms_norm(x, w, 1e-5) : rms_norm_composite(x, w, 1e-5);
  y.backward(g);
  return {y.detach(), x.grad(), w.grad()};
}

// Share of elements equal bit for bit, and the largest difference in units of the reference's bf16 spacing.
std::pair<double, double> Agreement(const at::Tensor& a, const at::Tensor& ref) {
  const at::Tensor fa = a.to(at::kFloat), fr = ref.to(at::kFloat);
  const double equal = fa.eq(fr).to(at::kDouble).mean().item<double>();
  const at::Tensor spacing = at::clamp_min(fr.abs(), 1e-30) * std::ldexp(1.0, -7);
  return {equal, ((fa - fr).abs() / spacing).max().item<double>()};
}

TEST(FusedBf16RmsNormTest, EqualsTheFp32CompositeForwardAndBackward) {
  if (!FusedBf16RmsNormAvailable()) GTEST_SKIP() << "this CPU has no AVX512-BF16: rms_norm is the composite";
  at::manual_seed(7);
  for (const std::vector<int64_t>& shape : std::vector<std::vector<int64_t>>{{4, 37, 512}, {3, 64}, {1000, 128}}) {
    SCOPED_TRACE(shape.back());
    const at::Tensor x = (at::randn(shape) * 3.0).to(at::kBFloat16);
    const at::Tensor w = at::randn({shape.back()}) * 0.5 + 1.0;
    const at::Tensor g = at::randn(shape).to(at::kBFloat16);
    const Pass fused = ForwardBackward(true, x, w, g), ref = ForwardBackward(false, x, w, g);
    EXPECT_EQ(fused.y.scalar_type(), at::kBFloat16);
    EXPECT_EQ(fused.dx.scalar_type(), at::kBFloat16);
    EXPECT_EQ(fused.dw.scalar_type(), at::kFloat);
    // The same fp32 arithmetic up to summation order: the bf16 results round the same way but for values
    // within ~1e-7 of a rounding boundary (one bf16 step apart). Statistics in bf16 would differ widely.
    const auto [y_equal, y_steps] = Agreement(fused.y, ref.y);
    EXPECT_GE(y_equal, 0.999);
    EXPECT_LE(y_steps, 1.01);
    const auto [dx_equal, dx_steps] = Agreement(fused.dx, ref.dx);
    EXPECT_GE(dx_equal, 0.999);
    // dx = r (u - x^ mean(u x^)) cancels where u ~ x^ mean: compare against the gradient's scale there.
    const double dx_err = (fused.dx.to(at::kFloat) - ref.dx.to(at::kFloat)).abs().max().item<double>();
    EXPECT_LE(dx_err, ref.dx.to(at::kFloat).abs().max().item<double>() * std::ldexp(1.0, -8));
    const double dw_rel = ((fused.dw - ref.dw).norm() / ref.dw.norm()).item<double>();
    std::printf("D %ld: y equal %.5f (max %.2f steps), dx equal %.5f (max %.2f steps, %.3g of max), dw rel %.2g\n",
                static_cast<long>(shape.back()), y_equal, y_steps, dx_equal, dx_steps,
                dx_err / ref.dx.to(at::kFloat).abs().max().item<double>(), dw_rel);
    EXPECT_LT(dw_rel, 1e-6);
  }
}

TEST(FusedBf16RmsNormTest, OtherShapesAndDtypesRunTheCompositeBitForBit) {
  at::manual_seed(8);
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    // fp32 rows of 64, and bf16 rows of 40 (not a multiple of the kernel's 16 lanes).
    const int64_t D = dtype == at::kFloat ? 64 : 40;
    const at::Tensor x = at::randn({5, D}).to(dtype), w = at::randn({D}), g = at::randn({5, D}).to(dtype);
    const Pass a = ForwardBackward(true, x, w, g), b = ForwardBackward(false, x, w, g);
    EXPECT_TRUE(a.y.equal(b.y));
    EXPECT_TRUE(a.dx.equal(b.dx));
    EXPECT_TRUE(a.dw.equal(b.dw));
  }
}

}  // namespace
}  // namespace hybridmoe
