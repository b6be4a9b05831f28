#include "core/norm.h"

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>

#include "core/init.h"

namespace hybridmoe {
namespace {

// RMSNorm of bf16 rows with fp32 statistics, forward and backward each one kernel over the rows (AVX-512;
// the composite below takes about 15 passes over an fp32 copy). Same formula as rms_norm (docs/formulas.md
// 1.1): r = 1 / sqrt(mean(x^2) + eps), y = bf16(w * x * r), every product and sum in fp32. Backward, with
// x^ = x * r and u = g * w: dw = sum over rows of g * x^ (fp32), dx = bf16(r * (u - x^ * mean(u * x^))).
constexpr int64_t kLanes = 16;

// GCC 12 warns about the _mm512_undefined_* placeholders inside its own intrinsics (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

__attribute__((target("avx512f"))) inline __m512 LoadBf16(const c10::BFloat16* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

__attribute__((target("avx512f,avx512bf16"))) inline void StoreBf16(c10::BFloat16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}

__attribute__((target("avx512f,avx512bf16"))) void RmsRowsForward(const c10::BFloat16* x, const float* w,
                                                                  c10::BFloat16* y, float* r, int64_t rows, int64_t D,
                                                                  double eps) {
  for (int64_t n = 0; n < rows; ++n, x += D, y += D) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += kLanes) {
      const __m512 v = LoadBf16(x + d);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    const float rn = 1.0f / std::sqrt(_mm512_reduce_add_ps(acc) / static_cast<float>(D) + static_cast<float>(eps));
    r[n] = rn;
    const __m512 vr = _mm512_set1_ps(rn);
    for (int64_t d = 0; d < D; d += kLanes) {
      StoreBf16(y + d, _mm512_mul_ps(_mm512_mul_ps(LoadBf16(x + d), vr), _mm512_loadu_ps(w + d)));
    }
  }
}

__attribute__((target("avx512f,avx512bf16"))) void RmsRowsBackward(const c10::BFloat16* g, const c10::BFloat16* x,
                                                                   const float* w, const float* r, c10::BFloat16* dx,
                                                                   float* dw, int64_t rows, int64_t D) {
  for (int64_t n = 0; n < rows; ++n, g += D, x += D, dx += D) {
    const __m512 vr = _mm512_set1_ps(r[n]);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += kLanes) {
      const __m512 xh = _mm512_mul_ps(LoadBf16(x + d), vr);
      acc = _mm512_fmadd_ps(_mm512_mul_ps(LoadBf16(g + d), _mm512_loadu_ps(w + d)), xh, acc);
    }
    const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(acc) / static_cast<float>(D));
    for (int64_t d = 0; d < D; d += kLanes) {
      const __m512 gv = LoadBf16(g + d), xh = _mm512_mul_ps(LoadBf16(x + d), vr);
      const __m512 u = _mm512_mul_ps(gv, _mm512_loadu_ps(w + d));
      StoreBf16(dx + d, _mm512_mul_ps(vr, _mm512_fnmadd_ps(xh, mean, u)));
      _mm512_storeu_ps(dw + d, _mm512_fmadd_ps(gv, xh, _mm512_loadu_ps(dw + d)));
    }
  }
}

#pragma GCC diagnostic pop

class FusedBf16RmsNorm : public torch::autograd::Function<FusedBf16RmsNorm> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            double eps) {
    RECORD_FUNCTION("hybridmoe::fused_bf16_rms_norm", std::vector<c10::IValue>({x, weight}));
    const int64_t D = x.size(-1), rows = x.numel() / D;
    const at::Tensor xc = x.contiguous(), w = weight.contiguous();
    at::Tensor y = at::empty_like(xc), r = at::empty({rows}, x.options().dtype(at::kFloat));
    const auto* xp = xc.data_ptr<c10::BFloat16>();
    auto* yp = y.data_ptr<c10::BFloat16>();
    const float* wp = w.data_ptr<float>();
    float* rp = r.data_ptr<float>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      RmsRowsForward(xp + begin * D, wp, yp + begin * D, rp + begin, end - begin, D, eps);
    });
    ctx->save_for_backward({xc, w, r});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &r = saved[2];
    const at::Tensor g = grads[0].to(at::kBFloat16).contiguous();
    const int64_t D = x.size(-1), rows = x.numel() / D;
    at::Tensor dx = at::empty_like(x);
    // One dw row per chunk of rows, summed at the end: no two threads add into the same floats.
    const int64_t grain = std::max<int64_t>(64, (rows + 4 * at::get_num_threads() - 1) / (4 * at::get_num_threads()));
    const int64_t chunks = (rows + grain - 1) / grain;
    at::Tensor dw_parts = at::zeros({std::max<int64_t>(chunks, 1), D}, w.options());
    const auto *gp = g.data_ptr<c10::BFloat16>(), *xp = x.data_ptr<c10::BFloat16>();
    auto* dxp = dx.data_ptr<c10::BFloat16>();
    const float *wp = w.data_ptr<float>(), *rp = r.data_ptr<float>();
    float* dwp = dw_parts.data_ptr<float>();
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t begin = c * grain, end = std::min(rows, begin + grain);
        RmsRowsBackward(gp + begin * D, xp + begin * D, wp, rp + begin, dxp + begin * D, dwp + c * D, end - begin, D);
      }
    });
    return {dx, dw_parts.sum(0), at::Tensor()};
  }
};

// The fused kernel's domain: bf16 rows of a multiple of 16 on a CPU with AVX512-BF16, an fp32 weight.
bool UseFusedBf16RmsNorm(const at::Tensor& x, const at::Tensor& weight) {
  return x.scalar_type() == at::kBFloat16 && x.device().is_cpu() && weight.scalar_type() == at::kFloat &&
         weight.dim() == 1 && x.dim() >= 1 && x.size(-1) == weight.size(0) && x.size(-1) % kLanes == 0 &&
         x.numel() > 0 && !weight.is_meta() && FusedBf16RmsNormAvailable();
}

}  // namespace

bool FusedBf16RmsNormAvailable() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  return has;
}

at::Tensor at_least_fp32(const at::Tensor& x) {
  return at::isReducedFloatingType(x.scalar_type()) ? x.to(at::kFloat) : x;
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (UseFusedBf16RmsNorm(x, weight)) return FusedBf16RmsNorm::apply(x, weight, eps);
  return rms_norm_composite(x, weight, eps);
}

at::Tensor rms_norm_composite(const at::Tensor& x, const at::Tensor& weight, double eps) {
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
