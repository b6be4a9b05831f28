#include "parallel/grad_sync.h"

#include <ATen/core/grad_mode.h>

#include "models/transformer.h"

namespace hybridmoe {
namespace {

void ReduceBucket(const std::vector<at::Tensor>& bucket, Communicator& comm, double scale, std::string_view what) {
  if (bucket.empty()) return;
  std::vector<at::Tensor> flat;
  flat.reserve(bucket.size());
  for (const at::Tensor& p : bucket) {
    const at::Tensor& g = p.grad();
    flat.push_back(g.defined() ? g.reshape({-1}) : at::zeros({p.numel()}, p.options()));
  }
  at::Tensor buffer = at::cat(flat);
  comm.AllReduce(buffer, ReduceOp::kSum, what);
  if (scale != 1.0) buffer.mul_(scale);
  int64_t offset = 0;
  for (const at::Tensor& p : bucket) {
    const at::Tensor slice = buffer.narrow(0, offset, p.numel()).view(p.sizes());
    offset += p.numel();
    at::Tensor& g = p.mutable_grad();
    if (g.defined()) {
      g.copy_(slice);
    } else {
      g = slice.clone();
    }
  }
}

}  // namespace

void AllReduceGradients(const std::vector<at::Tensor>& params, Communicator& comm, double scale, std::string_view what,
                        int64_t bucket_bytes) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> bucket;
  int64_t bytes = 0;
  for (const at::Tensor& p : params) {
    if (p.numel() == 0) continue;
    const int64_t size = p.numel() * static_cast<int64_t>(p.element_size());
    const bool fits = !bucket.empty() && p.scalar_type() == bucket[0].scalar_type() &&
                      p.device() == bucket[0].device() && bytes + size <= bucket_bytes;
    if (!bucket.empty() && !fits) {
      ReduceBucket(bucket, comm, scale, what);
      bucket.clear();
      bytes = 0;
    }
    bucket.push_back(p);
    bytes += size;
  }
  ReduceBucket(bucket, comm, scale, what);
}

ParameterSets SplitParameters(const torch::nn::Module& model) {
  ParameterSets sets;
  for (const auto& item : model.named_parameters()) {
    (IsExpertName(item.key()) ? sets.experts : sets.replicated).push_back(item.value());
  }
  return sets;
}

}  // namespace hybridmoe
