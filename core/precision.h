// Mixed precision: fp32 master parameters, computation from one low-precision (bf16) copy of the matmul
// weights per optimizer step (docs/formulas.md section 10).
//
// The model's registered parameters stay the fp32 masters: AdamW, its moments, the gradient all-reduces, the
// global gradient norm, clipping and checkpoints see fp32 only. A ComputeCopies holds, for each group of
// masters that one GEMM reads, one copy in the compute dtype: a group of several masters with the same
// trailing shape is one tensor concatenated along dim 0 (wq, wk, wv -> wqkv [3D, D]), so the forward does not
// concatenate per call. The copies are autograd leaves: forward and backward run in bf16 against them, and
// AccumulateGrads adds their gradients, widened to fp32, into the masters' .grad (then clears them), after
// every backward. Refresh re-copies the groups whose masters changed (their version counters moved: an
// optimizer step, a checkpoint load), so a forward never reads stale weights and a step makes one copy.
// Parameters without a copy (router, norm weights, biases, scales, the embedding) are read in fp32 by the
// modules themselves: their ops run in fp32 and cast the result to the activation dtype.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include <ATen/ATen.h>

namespace hybridmoe {

class ComputeCopies {
 public:
  explicit ComputeCopies(at::ScalarType dtype) : dtype_(dtype) {}

  // Registers masters read together by one GEMM (one master: its own copy). Same dtype/device, same shape
  // except dim 0; a master belongs to one group.
  void AddGroup(std::vector<at::Tensor> masters);
  // The copy of the group whose first master is `first` (for a single master: its copy). Error when
  // `first` heads no group.
  const at::Tensor& Get(const at::Tensor& first) const;
  // Re-copies, without autograd, every group whose masters changed since its last copy (or moved device).
  void Refresh();
  // master.grad += copy.grad (in fp32, split back by rows), then the copies' gradients are cleared.
  void AccumulateGrads();
  // The autograd leaves a forward over `params` reads: each param's group copy (once per group), or the param
  // itself when it has no copy (activation checkpointing differentiates with respect to these).
  std::vector<at::Tensor> Leaves(const std::vector<at::Tensor>& params) const;

  at::ScalarType dtype() const { return dtype_; }
  int64_t num_groups() const { return static_cast<int64_t>(groups_.size()); }
  int64_t refreshes() const { return refreshes_; }  // group copies made so far (tests count them)

 private:
  struct Group {
    std::vector<at::Tensor> masters;
    std::vector<uint32_t> versions;  // masters' version counters at the last copy
    at::Tensor copy;                 // leaf, requires grad
  };
  at::ScalarType dtype_;
  std::vector<Group> groups_;
  std::unordered_map<const c10::TensorImpl*, size_t> group_of_;  // every master -> its group
  std::unordered_map<const c10::TensorImpl*, size_t> head_of_;   // each group's first master -> its group
  int64_t refreshes_ = 0;
};

// The weight a module computes with: `master` itself, or the copy of the group `master` heads.
inline const at::Tensor& ComputeWeight(const ComputeCopies* copies, const at::Tensor& master) {
  return copies != nullptr ? copies->Get(master) : master;
}

// `x` in the compute dtype of `copies` (x itself in fp32 mode).
inline at::Tensor ToComputeDtype(const ComputeCopies* copies, const at::Tensor& x) {
  return copies != nullptr ? x.to(copies->dtype()) : x;
}

}  // namespace hybridmoe
