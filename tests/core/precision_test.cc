// core/precision.h: compute copies are refreshed exactly when their masters change (an AdamW step, a load),
// their gradients reach the fp32 masters split back by rows, and Leaves names what a forward reads.
#include "core/precision.h"

#include <gtest/gtest.h>

#include "core/optim.h"

namespace hybridmoe {
namespace {

at::Tensor Master(std::vector<int64_t> shape, double offset) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return (at::arange(n, at::kFloat).reshape(shape) * 0.01 + offset).set_requires_grad(true);
}

TEST(ComputeCopiesTest, GroupIsConcatenatedCopyInComputeDtype) {
  const at::Tensor a = Master({2, 3}, 0.5), b = Master({1, 3}, -1);
  ComputeCopies copies(at::kBFloat16);
  copies.AddGroup({a, b});
  copies.Refresh();
  const at::Tensor& c = copies.Get(a);
  EXPECT_EQ(c.scalar_type(), at::kBFloat16);
  EXPECT_EQ(c.sizes(), (std::vector<int64_t>{3, 3}));
  EXPECT_TRUE(c.is_leaf() && c.requires_grad());
  EXPECT_TRUE(at::equal(c, at::cat({a, b}, 0).to(at::kBFloat16)));
  EXPECT_THROW(copies.Get(b), c10::Error);  // only the group's first master names it
}

TEST(ComputeCopiesTest, RefreshesOnlyWhenMastersChange) {
  at::Tensor w = Master({4, 2}, 0.25);
  ComputeCopies copies(at::kBFloat16);
  copies.AddGroup({w});
  copies.Refresh();
  EXPECT_EQ(copies.refreshes(), 1);
  copies.Refresh();  // nothing changed: no copy
  EXPECT_EQ(copies.refreshes(), 1);
  {
    at::NoGradGuard no_grad;
    w.add_(1.0);  // e.g. a checkpoint load's copy_
  }
  copies.Refresh();
  EXPECT_EQ(copies.refreshes(), 2);
  EXPECT_TRUE(at::equal(copies.Get(w), w.to(at::kBFloat16)));

  // An AdamW step (the fused kernel) must count as a change too.
  w.mutable_grad() = at::ones_like(w);
  AdamW opt({{"w", w}}, AdamWOptions{});
  opt.step(0.1);
  copies.Refresh();
  EXPECT_EQ(copies.refreshes(), 3);
  EXPECT_TRUE(at::equal(copies.Get(w), w.detach().to(at::kBFloat16)));
}

TEST(ComputeCopiesTest, GradientsReachMastersInFp32ByRows) {
  const at::Tensor a = Master({2, 3}, 0.5), b = Master({1, 3}, -1);
  ComputeCopies copies(at::kBFloat16);
  copies.AddGroup({a, b});
  copies.Refresh();
  const at::Tensor x = at::full({5, 3}, 0.5, at::kBFloat16);
  for (int micro = 0; micro < 2; ++micro) {
    at::matmul(x, copies.Get(a).t()).sum().backward();  // d/dW = column sums of x = 2.5 everywhere
    copies.AccumulateGrads();
    EXPECT_FALSE(copies.Get(a).grad().defined()) << "the copy's gradient is cleared";
  }
  ASSERT_TRUE(a.grad().defined() && b.grad().defined());
  EXPECT_EQ(a.grad().scalar_type(), at::kFloat);
  EXPECT_TRUE(at::allclose(a.grad(), at::full({2, 3}, 5.0)));
  EXPECT_TRUE(at::allclose(b.grad(), at::full({1, 3}, 5.0)));
}

TEST(ComputeCopiesTest, LeavesReplaceGroupedMastersOnce) {
  const at::Tensor a = Master({2, 3}, 0), b = Master({2, 3}, 1), norm = Master({3}, 1);
  ComputeCopies copies(at::kBFloat16);
  copies.AddGroup({a, b});
  copies.Refresh();
  const std::vector<at::Tensor> leaves = copies.Leaves({a, norm, b});
  ASSERT_EQ(leaves.size(), 2u);
  EXPECT_TRUE(leaves[0].is_same(copies.Get(a)));
  EXPECT_TRUE(leaves[1].is_same(norm));
}

}  // namespace
}  // namespace hybridmoe
