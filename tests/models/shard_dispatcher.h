// A dispatcher that only claims experts [first, first + n): installed on every MoE layer of a built model
// (MoeLayerImpl::set_dispatcher) it leaves the layer holding one expert-parallel rank's shard, for tests that
// count parameters (no tokens are ever dispatched through it).
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

#include "moe/dispatcher.h"

namespace hybridmoe {

class ShardDispatcher : public TokenDispatcher {
 public:
  ShardDispatcher(int64_t first, int64_t n) : first_(first), n_(n) {}
  at::Tensor dispatch(const at::Tensor&, const std::vector<int64_t>&, std::vector<int64_t>&) override { return {}; }
  at::Tensor combine(const at::Tensor& y) override { return y; }
  int64_t first_local_expert() const override { return first_; }
  int64_t num_local_experts() const override { return n_; }

 private:
  int64_t first_, n_;
};

}  // namespace hybridmoe
