// moe/experts.cc: the hand-written GroupedSwiGlu forward and backward (the path GroupedExperts takes without
// hidden norm) against autograd of the plain formula y_e = (silu(x_e W_gate_e^T) * x_e W_up_e^T)
// W_down_e^T, one expert slice at a time. Double precision, tolerance 1e-12 relative: only the order of
// float operations may differ. Row patterns cover zero rows for the first, a middle, the last and all but
// one expert, and zero rows in total.
#include "moe/experts.h"

#include <numeric>

#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

namespace hybridmoe {
namespace {

constexpr int64_t kE = 4, kD = 6, kF = 10;

struct Result {
  at::Tensor y, dx, d_gate, d_up, d_down;
};

// Reference: autograd through at::mm / at::silu on the leaf tensors, slice by slice.
Result Reference(const at::Tensor& x0, const at::Tensor& gate0, const at::Tensor& up0, const at::Tensor& down0,
                 const std::vector<int64_t>& counts, const at::Tensor& dy) {
  const at::Tensor x = x0.detach().clone().requires_grad_(true), gate = gate0.detach().clone().requires_grad_(true),
                   up = up0.detach().clone().requires_grad_(true), down = down0.detach().clone().requires_grad_(true);
  std::vector<at::Tensor> parts;
  int64_t off = 0;
  for (int64_t e = 0; e < kE; ++e) {
    const at::Tensor x_e = x.narrow(0, off, counts[e]);
    const at::Tensor h = at::silu(at::mm(x_e, gate[e].t())) * at::mm(x_e, up[e].t());
    parts.push_back(at::mm(h, down[e].t()));
    off += counts[e];
  }
  const at::Tensor y = at::cat(parts, 0);
  (y * dy).sum().backward();
  return {y.detach(), x.grad(), gate.grad(), up.grad(), down.grad()};
}

Result HandWritten(GroupedExperts& experts, const at::Tensor& x0, const std::vector<int64_t>& counts,
                   const at::Tensor& dy) {
  for (auto& p : experts->parameters()) p.mutable_grad().reset();
  const at::Tensor x = x0.detach().clone().requires_grad_(true);
  const at::Tensor y = experts->forward(x, counts);
  (y * dy).sum().backward();
  return {y.detach(), x.grad(), experts->w_gate.grad(), experts->w_up.grad(), experts->w_down.grad()};
}

void ExpectClose(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  ASSERT_TRUE(got.defined()) << what << " undefined";
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  if (want.numel() == 0) return;
  const double scale = std::max(1.0, want.abs().max().item<double>());
  const double err = (got - want).abs().max().item<double>();
  EXPECT_LE(err, 1e-12 * scale) << what << ": max abs error " << err << " (scale " << scale << ")";
}

// kE experts of width kD / kF in `dtype`, weights N(0, 0.5^2) drawn in that dtype after manual_seed(seed).
GroupedExperts RandomExperts(at::ScalarType dtype, uint64_t seed) {
  ExpertsOptions o;
  o.num_local_experts = kE;
  o.d_model = kD;
  o.hidden = kF;
  GroupedExperts experts(o);
  experts->to(dtype);
  at::manual_seed(seed);
  at::NoGradGuard no_grad;
  for (auto& p : experts->parameters()) p.normal_(0, 0.5);
  return experts;
}

int64_t TotalRows(const std::vector<int64_t>& counts) { return std::accumulate(counts.begin(), counts.end(), 0L); }

class GroupedSwiGluTest : public ::testing::TestWithParam<std::vector<int64_t>> {};

TEST_P(GroupedSwiGluTest, MatchesAutogradOfThePlainFormula) {
  const std::vector<int64_t> counts = GetParam();
  const int64_t S = TotalRows(counts);
  GroupedExperts experts = RandomExperts(at::kDouble, 7);
  const at::Tensor x = at::randn({S, kD}, at::kDouble);
  // A non-contiguous upstream gradient (a transposed buffer), as a later op may hand back.
  const at::Tensor dy = at::randn({kD, S}, at::kDouble).t();

  const Result got = HandWritten(experts, x, counts, dy);
  const Result want = Reference(x, experts->w_gate, experts->w_up, experts->w_down, counts, dy);
  ExpectClose(got.y, want.y, "y");
  ExpectClose(got.dx, want.dx, "dx");
  ExpectClose(got.d_gate, want.d_gate, "d w_gate");
  ExpectClose(got.d_up, want.d_up, "d w_up");
  ExpectClose(got.d_down, want.d_down, "d w_down");
  // An expert without rows gets exactly zero gradient (not left-over memory).
  for (int64_t e = 0; e < kE; ++e) {
    if (counts[e] != 0) continue;
    EXPECT_EQ(got.d_gate[e].abs().max().item<double>(), 0.0) << "expert " << e;
    EXPECT_EQ(got.d_up[e].abs().max().item<double>(), 0.0) << "expert " << e;
    EXPECT_EQ(got.d_down[e].abs().max().item<double>(), 0.0) << "expert " << e;
  }
}

INSTANTIATE_TEST_SUITE_P(RowPatterns, GroupedSwiGluTest,
                         ::testing::Values(std::vector<int64_t>{3, 5, 2, 4},    // every expert has rows
                                           std::vector<int64_t>{0, 5, 2, 4},    // first expert empty
                                           std::vector<int64_t>{3, 0, 2, 4},    // a middle one empty
                                           std::vector<int64_t>{3, 5, 2, 0},    // last one empty
                                           std::vector<int64_t>{0, 0, 7, 0},    // one expert takes all
                                           std::vector<int64_t>{1, 1, 1, 1},    // single rows
                                           std::vector<int64_t>{0, 0, 0, 0}));  // no rows at all

// bf16 on the CPU: row counts above and not a multiple of the 64-row block (moe/experts.cc splits those GEMMs
// into a block multiple and a remainder for oneDNN's kernel cache) match the double-precision reference of the
// same bf16 inputs to bf16 accuracy (2e-2 of the largest magnitude; a dropped or doubled remainder is off by
// a whole row's contribution).
TEST(GroupedSwiGlu, Bf16WithSplitRowCountsMatchesDoubleReference) {
  const std::vector<int64_t> counts = {130, 64, 0, 71};
  const int64_t S = TotalRows(counts);
  GroupedExperts experts = RandomExperts(at::kBFloat16, 11);
  const at::Tensor x = at::randn({S, kD}).to(at::kBFloat16), dy = at::randn({S, kD}).to(at::kBFloat16);
  const Result got = HandWritten(experts, x, counts, dy);
  const Result want = Reference(x.to(at::kDouble), experts->w_gate.to(at::kDouble), experts->w_up.to(at::kDouble),
                                experts->w_down.to(at::kDouble), counts, dy.to(at::kDouble));
  auto close = [](const at::Tensor& g, const at::Tensor& w, const char* what) {
    ASSERT_EQ(g.scalar_type(), at::kBFloat16) << what;
    const double scale = std::max(1.0, w.abs().max().item<double>());
    EXPECT_LE((g.to(at::kDouble) - w).abs().max().item<double>(), 2e-2 * scale) << what;
  };
  close(got.y, want.y, "y");
  close(got.dx, want.dx, "dx");
  close(got.d_gate, want.d_gate, "d w_gate");
  close(got.d_up, want.d_up, "d w_up");
  close(got.d_down, want.d_down, "d w_down");
}

// Finite differences on a few weight entries: the analytic gradient of the hand-written path, not just its
// agreement with another analytic gradient.
TEST(GroupedSwiGlu, AgreesWithCentralDifferences) {
  const std::vector<int64_t> counts = {2, 0, 3, 1};
  GroupedExperts experts = RandomExperts(at::kDouble, 3);
  const at::Tensor x = at::randn({6, kD}, at::kDouble), dy = at::randn({6, kD}, at::kDouble);
  const Result got = HandWritten(experts, x, counts, dy);
  const auto objective = [&] {
    at::NoGradGuard no_grad;
    return (experts->forward(x, counts) * dy).sum().item<double>();
  };
  const double h = 1e-6;
  for (const auto& [w, g, name] :
       {std::make_tuple(experts->w_gate, got.d_gate, "w_gate"), std::make_tuple(experts->w_up, got.d_up, "w_up"),
        std::make_tuple(experts->w_down, got.d_down, "w_down")}) {
    for (const int64_t e : {0, 2, 3}) {
      at::Tensor entry = w[e].view(-1)[5];
      const double saved = entry.item<double>();
      {
        at::NoGradGuard no_grad;
        entry.fill_(saved + h);
      }
      const double plus = objective();
      {
        at::NoGradGuard no_grad;
        entry.fill_(saved - h);
      }
      const double minus = objective();
      {
        at::NoGradGuard no_grad;
        entry.fill_(saved);
      }
      EXPECT_NEAR(g[e].view(-1)[5].item<double>(), (plus - minus) / (2 * h), 1e-6) << name << " expert " << e;
    }
  }
}

}  // namespace
}  // namespace hybridmoe
