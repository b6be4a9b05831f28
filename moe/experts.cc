#include "moe/experts.h"

#include <torch/csrc/autograd/custom_function.h>

namespace hybridmoe {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Row counts per expert change every step. oneDNN, which runs reduced-precision GEMMs on the CPU, generates and
// caches one kernel per shape, so a bf16 step with fresh counts spends most of its time generating kernels
// (measured: a bf16 [n, 128] x [128, 256] GEMM 148 us at a fixed n, 948 us with n new each call; fp32 runs MKL,
// no per-shape kernels). For reduced-precision CPU GEMMs the varying dimension n is split into a multiple of
// kRowBlock and a remainder, two GEMMs from a bounded set of shapes; fp32 and CUDA stay one GEMM.
constexpr int64_t kRowBlock = 64;

bool SplitVaryingDim(const at::Tensor& t, int64_t n) {
  return n > kRowBlock && n % kRowBlock != 0 && t.is_cpu() && at::isReducedFloatingType(t.scalar_type());
}

// out = a @ b with a varying number of rows (a [n, K], out [n, N]); `out` is a view (rows of a buffer).
// accumulate: out += a @ b.
void MmInto(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate = false) {
  auto mm = [&](at::Tensor o, const at::Tensor& x) { accumulate ? o.addmm_(x, b) : at::mm_out(o, x, b); };
  const int64_t n = a.size(0);
  if (!SplitVaryingDim(a, n)) return mm(out, a);
  const int64_t head = n / kRowBlock * kRowBlock;
  mm(out.narrow(0, 0, head), a.narrow(0, 0, head));
  mm(out.narrow(0, head, n - head), a.narrow(0, head, n - head));
}

// out = a @ b reducing over a varying count (a [M, n], b [n, N]): one expert's weight gradient.
void MmReduceInto(at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = a.size(1);
  if (!SplitVaryingDim(a, n)) {
    at::mm_out(out, a, b);
    return;
  }
  const int64_t head = n / kRowBlock * kRowBlock;
  at::mm_out(out, a.narrow(1, 0, head), b.narrow(0, 0, head));
  out.addmm_(a.narrow(1, head, n - head), b.narrow(0, head, n - head));
}

// The SwiGLU experts without hidden norm, forward and backward written out: every GEMM writes straight
// into its rows of one [S, *] buffer or into its expert's slice of the weight gradient (no per-expert
// slices, cat or stack), and only x, gate and up are kept for backward (h = silu(gate) * up is recomputed,
// one elementwise pass, instead of storing silu(gate) and h as well).
class GroupedSwiGlu : public torch::autograd::Function<GroupedSwiGlu> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_SD, const at::Tensor& w_gate_EFD,
                            const at::Tensor& w_up_EFD, const at::Tensor& w_down_EDF,
                            const std::vector<int64_t>& counts) {
    const int64_t S = x_SD.size(0), D = w_gate_EFD.size(2), F = w_gate_EFD.size(1);
    const at::Tensor x = x_SD.contiguous();
    at::Tensor gate_SF = at::empty({S, F}, x.options()), up_SF = at::empty({S, F}, x.options());
    at::Tensor y_SD = at::empty({S, D}, x.options());
    ForEachExpert(counts, [&](int64_t e, int64_t off, int64_t n) {
      const at::Tensor x_e = x.narrow(0, off, n);
      MmInto(gate_SF.narrow(0, off, n), x_e, w_gate_EFD.select(0, e).t());
      MmInto(up_SF.narrow(0, off, n), x_e, w_up_EFD.select(0, e).t());
    });
    const at::Tensor h_SF = at::silu(gate_SF).mul_(up_SF);
    ForEachExpert(counts, [&](int64_t e, int64_t off, int64_t n) {
      MmInto(y_SD.narrow(0, off, n), h_SF.narrow(0, off, n), w_down_EDF.select(0, e).t());
    });
    ctx->save_for_backward({x, w_gate_EFD, w_up_EFD, w_down_EDF, gate_SF, up_SF});
    ctx->saved_data["counts"] = counts;
    return y_SD;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w_gate = saved[1], &w_up = saved[2], &w_down = saved[3], &gate = saved[4],
                     &up = saved[5];
    const std::vector<int64_t> counts = ctx->saved_data["counts"].toIntVector();
    const at::Tensor dy = grads[0].contiguous();
    const at::Tensor silu = at::silu(gate), h = silu * up;
    at::Tensor dh = at::empty_like(gate);
    at::Tensor g_down = at::empty_like(w_down), g_gate = at::empty_like(w_gate), g_up = at::empty_like(w_up);
    ForEachExpert(counts, [&](int64_t e, int64_t off, int64_t n) {
      const at::Tensor dy_e = dy.narrow(0, off, n);
      MmInto(dh.narrow(0, off, n), dy_e, w_down.select(0, e));
      MmReduceInto(g_down.select(0, e), dy_e.t(), h.narrow(0, off, n));
    });
    const at::Tensor d_up = dh * silu;
    at::silu_backward_out(dh, dh.mul_(up), gate);  // dh now holds d(gate)
    at::Tensor dx = at::empty_like(x);
    ForEachExpert(counts, [&](int64_t e, int64_t off, int64_t n) {
      const at::Tensor x_e = x.narrow(0, off, n), dg_e = dh.narrow(0, off, n), du_e = d_up.narrow(0, off, n);
      MmReduceInto(g_gate.select(0, e), dg_e.t(), x_e);
      MmReduceInto(g_up.select(0, e), du_e.t(), x_e);
      at::Tensor dx_e = dx.narrow(0, off, n);
      MmInto(dx_e, dg_e, w_gate.select(0, e));
      MmInto(dx_e, du_e, w_up.select(0, e), /*accumulate=*/true);
    });
    for (size_t e = 0; e < counts.size(); ++e) {
      if (counts[e] > 0) continue;
      g_gate.select(0, e).zero_();
      g_up.select(0, e).zero_();
      g_down.select(0, e).zero_();
    }
    return {dx, g_gate, g_up, g_down, at::Tensor()};
  }

 private:
  template <typename Fn>
  static void ForEachExpert(const std::vector<int64_t>& counts, Fn&& fn) {
    int64_t off = 0;
    for (size_t e = 0; e < counts.size(); ++e) {
      if (counts[e] > 0) fn(static_cast<int64_t>(e), off, counts[e]);
      off += counts[e];
    }
  }
};

}  // namespace

GroupedExpertsImpl::GroupedExpertsImpl(const ExpertsOptions& o) : options(o) {
  const int64_t E = o.num_local_experts, D = o.d_model, F = o.hidden;
  w_gate = register_parameter("w_gate", at::empty({E, F, D}, ParamOptions()));
  w_up = register_parameter("w_up", at::empty({E, F, D}, ParamOptions()));
  w_down = register_parameter("w_down", at::empty({E, D, F}, ParamOptions()));
  if (o.hidden_norm) {
    hidden_norm = register_parameter("hidden_norm", at::ones({E, F}, ParamOptions()));
    if (o.norm_kind == NormKind::kLayer)
      hidden_norm_bias = register_parameter("hidden_norm_bias", at::zeros({E, F}, ParamOptions()));
  }
}

void GroupedExpertsImpl::reset_parameters(const InitPlan& plan, const std::string& prefix) {
  at::NoGradGuard no_grad;
  for (int64_t e = 0; e < options.num_local_experts; ++e) {
    const int64_t global = options.first_expert + e;
    trunc_normal_(w_gate[e], plan.std_in * plan.residual_scale, InitSeed(plan.seed, prefix + "w_gate", global));
    trunc_normal_(w_up[e], plan.std_in * plan.residual_scale, InitSeed(plan.seed, prefix + "w_up", global));
    trunc_normal_(w_down[e], plan.std_out * plan.residual_scale, InitSeed(plan.seed, prefix + "w_down", global));
  }
  if (hidden_norm.defined() && !hidden_norm.is_meta()) hidden_norm.fill_(1.0);
  if (hidden_norm_bias.defined() && !hidden_norm_bias.is_meta()) hidden_norm_bias.zero_();
}

void GroupedExpertsImpl::set_compute_copies(ComputeCopies* copies) {
  compute_copies = copies;
  if (copies == nullptr) return;
  for (const at::Tensor& w : {w_gate, w_up, w_down}) copies->AddGroup({w});
}

at::Tensor GroupedExpertsImpl::forward(const at::Tensor& x_SD, const std::vector<int64_t>& counts) {
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == options.num_local_experts, "expected ", options.num_local_experts,
              " expert counts, got ", counts.size());
  int64_t rows = 0;
  for (const int64_t c : counts) rows += c;
  TORCH_CHECK(rows == x_SD.size(0), "expert counts sum to ", rows, " but x_SD has ", x_SD.size(0), " rows");
  const at::Tensor &w_gate_EFD = ComputeWeight(compute_copies, w_gate), &w_up_EFD = ComputeWeight(compute_copies, w_up),
                   &w_down_EDF = ComputeWeight(compute_copies, w_down);
  TORCH_CHECK(x_SD.scalar_type() == w_gate_EFD.scalar_type(), "experts: rows are ", x_SD.scalar_type(),
              " but the expert weights compute in ", w_gate_EFD.scalar_type());
  if (!hidden_norm.defined()) return GroupedSwiGlu::apply(x_SD, w_gate_EFD, w_up_EFD, w_down_EDF, counts);
  // NormFormer's per-expert hidden norm: the same GEMM chain through autograd.
  // unbind/split: their backward is one stack/cat, not one full-size scatter per expert.
  const std::vector<at::Tensor> x_e = x_SD.split_with_sizes(counts, 0);
  const std::vector<at::Tensor> gate = w_gate_EFD.unbind(0), up = w_up_EFD.unbind(0), down = w_down_EDF.unbind(0);
  std::vector<at::Tensor> norm_w, norm_b;
  if (hidden_norm.defined()) norm_w = hidden_norm.unbind(0);
  if (hidden_norm_bias.defined()) norm_b = hidden_norm_bias.unbind(0);
  std::vector<at::Tensor> y_e;
  y_e.reserve(counts.size());
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] == 0) continue;
    at::Tensor h = at::silu(at::mm(x_e[e], gate[e].t())) * at::mm(x_e[e], up[e].t());
    if (!norm_w.empty()) {
      h = options.norm_kind == NormKind::kRms ? rms_norm(h, norm_w[e], options.eps)
                                              : layer_norm(h, norm_w[e], norm_b[e], options.eps);
    }
    y_e.push_back(at::mm(h, down[e].t()));
  }
  if (y_e.empty()) return x_SD.new_zeros({0, options.d_model});
  return y_e.size() == 1 ? y_e[0] : at::cat(y_e, 0);
}

}  // namespace hybridmoe
