#include "core/precision.h"

#include <ATen/core/grad_mode.h>

namespace hybridmoe {

void ComputeCopies::AddGroup(std::vector<at::Tensor> masters) {
  TORCH_CHECK(!masters.empty(), "ComputeCopies::AddGroup: empty group");
  const at::Tensor& first = masters[0];
  for (const at::Tensor& m : masters) {
    TORCH_CHECK(m.scalar_type() == first.scalar_type() && m.device() == first.device() && m.dim() == first.dim() &&
                    m.sizes().slice(1) == first.sizes().slice(1),
                "ComputeCopies::AddGroup: masters of one group differ in dtype, device or trailing shape");
    TORCH_CHECK(group_of_.count(m.unsafeGetTensorImpl()) == 0, "ComputeCopies::AddGroup: a master is in two groups");
    group_of_[m.unsafeGetTensorImpl()] = groups_.size();
  }
  head_of_[first.unsafeGetTensorImpl()] = groups_.size();
  Group g;
  g.masters = std::move(masters);
  g.versions.assign(g.masters.size(), 0);
  groups_.push_back(std::move(g));
}

const at::Tensor& ComputeCopies::Get(const at::Tensor& first) const {
  const auto it = head_of_.find(first.unsafeGetTensorImpl());
  TORCH_CHECK(it != head_of_.end(), "ComputeCopies::Get: parameter ", first.sizes(), " has no compute copy");
  const at::Tensor& copy = groups_[it->second].copy;
  TORCH_CHECK(copy.defined(), "ComputeCopies::Get before the first Refresh");
  return copy;
}

void ComputeCopies::Refresh() {
  at::NoGradGuard no_grad;
  for (Group& g : groups_) {
    bool stale = !g.copy.defined() || g.copy.device() != g.masters[0].device();
    for (size_t i = 0; i < g.masters.size() && !stale; ++i) stale = g.masters[i]._version() != g.versions[i];
    if (!stale) continue;
    if (!g.copy.defined() || g.copy.device() != g.masters[0].device()) {
      int64_t rows = 0;
      for (const at::Tensor& m : g.masters) rows += m.size(0);
      std::vector<int64_t> shape = g.masters[0].sizes().vec();
      shape[0] = rows;
      g.copy = at::empty(shape, g.masters[0].options().dtype(dtype_)).requires_grad_(true);
    }
    int64_t row = 0;
    for (size_t i = 0; i < g.masters.size(); ++i) {
      const at::Tensor& m = g.masters[i];
      g.copy.narrow(0, row, m.size(0)).copy_(m);
      row += m.size(0);
      g.versions[i] = m._version();
    }
    ++refreshes_;
  }
}

void ComputeCopies::AccumulateGrads() {
  at::NoGradGuard no_grad;
  for (Group& g : groups_) {
    if (!g.copy.defined() || !g.copy.grad().defined()) continue;
    const at::Tensor grad = g.copy.grad();
    int64_t row = 0;
    for (at::Tensor& m : g.masters) {
      const at::Tensor part = grad.narrow(0, row, m.size(0));
      row += m.size(0);
      if (m.grad().defined()) {
        m.mutable_grad().add_(part);  // widened to fp32 element by element
      } else {
        m.mutable_grad() = part.to(m.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
      }
    }
    g.copy.mutable_grad().reset();
  }
}

std::vector<at::Tensor> ComputeCopies::Leaves(const std::vector<at::Tensor>& params) const {
  std::vector<at::Tensor> leaves;
  std::vector<bool> seen(groups_.size(), false);
  for (const at::Tensor& p : params) {
    const auto it = group_of_.find(p.unsafeGetTensorImpl());
    if (it == group_of_.end()) {
      leaves.push_back(p);
    } else if (!seen[it->second]) {
      seen[it->second] = true;
      leaves.push_back(groups_[it->second].copy);
    }
  }
  return leaves;
}

}  // namespace hybridmoe
