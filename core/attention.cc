#include "core/attention.h"

#include <torch/csrc/autograd/custom_function.h>

#include "core/trace.h"

namespace hybridmoe {

std::pair<at::Tensor, at::Tensor> rope_tables(int64_t seq_len, int64_t head_dim, double theta, at::Device device) {
  const at::TensorOptions f64 = at::TensorOptions(at::kDouble).device(device);
  const at::Tensor inv_freq =
      at::pow(theta, at::arange(0, head_dim, 2, f64) / static_cast<double>(head_dim)).reciprocal();
  const at::Tensor angles = at::outer(at::arange(seq_len, f64), inv_freq);  // [S, h_d/2]
  const at::Tensor full = at::cat({angles, angles}, -1);                    // [S, h_d]
  return {full.cos().to(at::kFloat), full.sin().to(at::kFloat)};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Exchanges the two halves of the last dim: [x1, x2] -> [x2, x1].
at::Tensor SwapHalves(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// Rotate-half RoPE as y = x * cos + swap(x) * sin_signed with sin_signed = [-sin1, sin2], so that forward
// and backward are three elementwise passes each: swap is its own adjoint and swap(sin_signed) =
// -sin_signed, hence dx = g * cos - swap(g) * sin_signed. The tables broadcast against x and get no gradient.
class Rope : public torch::autograd::Function<Rope> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin_signed) {
    ctx->save_for_backward({cos, sin_signed});
    return at::addcmul(x * cos, SwapHalves(x), sin_signed);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list t = ctx->get_saved_variables();
    const at::Tensor& g = grads[0];
    return {at::addcmul(g * t[0], SwapHalves(g), t[1], /*value=*/-1), at::Tensor(), at::Tensor()};
  }
};

// cos and sin tables (any shape that broadcasts against x) -> RoPE of x.
at::Tensor Rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = sin.size(-1) / 2;
  const at::Tensor s = sin.to(x.scalar_type());
  const at::Tensor sin_signed = at::cat({-s.narrow(-1, 0, half), s.narrow(-1, half, half)}, -1);
  return Rope::apply(x, cos.to(x.scalar_type()), sin_signed);
}

}  // namespace

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) { return Rotate(x, cos, sin); }

AttentionImpl::AttentionImpl(const AttentionOptions& o) : options(o) {
  TORCH_CHECK(o.d_model % o.n_heads == 0, "d_model must be divisible by n_heads");
  const int64_t d = o.d_model;
  wq = register_parameter("wq", at::empty({d, d}, ParamOptions()));
  wk = register_parameter("wk", at::empty({d, d}, ParamOptions()));
  wv = register_parameter("wv", at::empty({d, d}, ParamOptions()));
  wo = register_parameter("wo", at::empty({d, d}, ParamOptions()));
  NormOptions norm_options(o.per_head_norm ? d / o.n_heads : d);
  norm_options.kind = o.norm_kind;
  norm_options.eps = o.eps;
  if (o.q_norm) q_norm = register_module("q_norm", Norm(norm_options));
  if (o.k_norm) k_norm = register_module("k_norm", Norm(norm_options));
  if (o.v_norm) v_norm = register_module("v_norm", Norm(norm_options));
  if (o.head_scale) head_scale = register_parameter("head_scale", at::ones({o.n_heads}, ParamOptions()));
  rope_cos_ = register_buffer("rope_cos", at::empty({0, d / o.n_heads}, ParamOptions()));
  rope_sin_ = register_buffer("rope_sin", at::empty({0, d / o.n_heads}, ParamOptions()));
}

std::pair<at::Tensor, at::Tensor> AttentionImpl::RopeTables(int64_t seq_len) {
  if (rope_cos_.size(0) < seq_len) {
    // set_data (as module->to() does) keeps the registered buffers these tensors, and leaves views of the old
    // tables that a live graph saved untouched.
    auto [cos, sin] = rope_tables(seq_len, rope_cos_.size(1), options.rope_theta, rope_cos_.device());
    rope_cos_.set_data(cos.to(rope_cos_.scalar_type()));
    rope_sin_.set_data(sin.to(rope_sin_.scalar_type()));
  }
  return {rope_cos_.narrow(0, 0, seq_len), rope_sin_.narrow(0, 0, seq_len)};
}

void AttentionImpl::reset_parameters(const InitPlan& plan, const std::string& prefix) {
  trunc_normal_(wq, plan.std_in, InitSeed(plan.seed, prefix + "wq"));
  trunc_normal_(wk, plan.std_in, InitSeed(plan.seed, prefix + "wk"));
  trunc_normal_(wv, plan.std_in * plan.residual_scale, InitSeed(plan.seed, prefix + "wv"));
  trunc_normal_(wo, plan.std_out * plan.residual_scale, InitSeed(plan.seed, prefix + "wo"));
  at::NoGradGuard no_grad;
  for (Norm* n : {&q_norm, &k_norm, &v_norm}) {
    if (!n->is_empty()) (*n)->reset_parameters();
  }
  if (head_scale.defined()) head_scale.fill_(1.0);
}

void AttentionImpl::set_compute_copies(ComputeCopies* copies) {
  compute_copies = copies;
  if (copies == nullptr) return;
  copies->AddGroup({wq, wk, wv});
  copies->AddGroup({wo});
}

at::Tensor AttentionImpl::forward(const at::Tensor& x_BSD) {
  TraceScope scope(trace::kAttention);
  const int64_t B = x_BSD.size(0), S = x_BSD.size(1), D = options.d_model, H = options.n_heads, hd = D / H;
  // One GEMM for q, k and v (x read once; in backward one GEMM for dx instead of three and two sums).
  const at::Tensor w_qkv = compute_copies != nullptr ? compute_copies->Get(wq) : at::cat({wq, wk, wv}, 0);
  const at::Tensor qkv = at::matmul(x_BSD, w_qkv.t());  // [B, S, 3D]
  auto split = [&](int64_t i, Norm& norm) {
    at::Tensor y = qkv.narrow(-1, i * D, D);
    if (!norm.is_empty() && !options.per_head_norm) y = norm(y);
    y = y.view({B, S, H, hd});
    if (!norm.is_empty() && options.per_head_norm) y = norm(y);
    return y;  // [B, S, H, h_d]
  };
  at::Tensor q = split(0, q_norm), k = split(1, k_norm), v = split(2, v_norm);
  // RoPE in the [B, S, H, h_d] layout the projection wrote (tables [S, 1, h_d]); SDPA takes the transposes.
  const auto [cos_S, sin_S] = RopeTables(S);
  const at::Tensor cos = cos_S.unsqueeze(1), sin = sin_S.unsqueeze(1);
  q = Rotate(q, cos, sin).transpose(1, 2);
  k = Rotate(k, cos, sin).transpose(1, 2);
  v = v.transpose(1, 2);
  at::Tensor out = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true);
  if (head_scale.defined()) out = out * head_scale.view({1, H, 1, 1}).to(out.scalar_type());
  return at::matmul(out.transpose(1, 2).reshape({B, S, D}), ComputeWeight(compute_copies, wo).t());
}

}  // namespace hybridmoe
