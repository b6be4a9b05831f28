// Data-parallel gradient reduction: bucketed all-reduce of parameter gradients, and gradient norms.
//
// A step reduces two parameter sets: the replicated (non-expert) parameters over every rank, and the expert
// shards over the ranks holding the same experts (the DP group). AllReduceGradients packs consecutive
// gradients of one dtype/device into flat buckets of at most `bucket_bytes` (a tensor larger than that gets
// a bucket of its own), so a step issues a few large reductions instead of one per tensor. Every rank must
// pass the same parameter shapes in the same order; an undefined gradient counts as zeros and is defined
// (as the reduced value) afterwards, so ranks that skipped a parameter still agree.
#pragma once

#include <string_view>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include "parallel/communicator.h"

namespace hybridmoe {

constexpr int64_t kDefaultBucketBytes = int64_t{32} << 20;

// grad <- scale * sum over `comm` of grad, for every tensor in `params`.
void AllReduceGradients(const std::vector<at::Tensor>& params, Communicator& comm, double scale, std::string_view what,
                        int64_t bucket_bytes = kDefaultBucketBytes);

struct ParameterSets {
  std::vector<at::Tensor> replicated;  // everything but the experts (routers included)
  std::vector<at::Tensor> experts;     // this rank's expert shards (IsExpertName, models/transformer.h)
};
// Both in parameters() order; `model` is a Transformer (parameter names blocks.<i>....).
ParameterSets SplitParameters(const torch::nn::Module& model);

}  // namespace hybridmoe
