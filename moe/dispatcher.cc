#include "moe/dispatcher.h"

namespace hybridmoe {

Permutation permute_by_expert(const at::Tensor& experts_TK, const at::Tensor& weights_TK, const at::Tensor& priority_TK,
                              int64_t num_experts, int64_t capacity) {
  const int64_t K = experts_TK.size(-1);
  const at::Tensor expert_A = experts_TK.reshape({-1});  // A = T*K assignments
  Permutation p;
  at::Tensor slot;
  if (capacity < 0) {
    slot = std::get<1>(at::sort(expert_A, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  } else {
    // Highest priority first, then a stable sort by expert keeps that order inside each expert.
    const at::Tensor by_priority =
        std::get<1>(at::sort(priority_TK.reshape({-1}), /*stable=*/true, /*dim=*/0, /*descending=*/true));
    const at::Tensor by_expert =
        std::get<1>(at::sort(expert_A.index_select(0, by_priority), /*stable=*/true, 0, false));
    slot = by_priority.index_select(0, by_expert);
    const at::Tensor sorted_expert = expert_A.index_select(0, slot);
    const at::Tensor counts = at::bincount(expert_A, {}, num_experts);
    const at::Tensor starts = at::cumsum(counts, 0) - counts;
    const at::Tensor rank_in_expert = at::arange(slot.numel(), slot.options()) - starts.index_select(0, sorted_expert);
    slot = slot.masked_select(rank_in_expert < capacity);
    p.dropped = expert_A.numel() - slot.numel();
  }
  // Dropless keeps every slot: count them without gathering the expert ids first.
  const at::Tensor kept_A = capacity < 0 ? expert_A : expert_A.index_select(0, slot);
  const at::Tensor counts = at::bincount(kept_A, {}, num_experts).to(at::kCPU).contiguous();
  p.counts_E.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + num_experts);
  p.slot_S = slot;
  p.token_S = at::floor_divide(slot, K);
  p.weight_S = weights_TK.reshape({-1}).index_select(0, slot);
  return p;
}

at::Tensor LocalDispatcher::dispatch(const at::Tensor& x_SD, const std::vector<int64_t>& counts_E,
                                     std::vector<int64_t>& local_counts) {
  local_counts = counts_E;
  counters.rows_received += x_SD.size(0);
  return x_SD;
}

}  // namespace hybridmoe
