// Expert parallelism: the all-to-all TokenDispatcher that moves routed rows to the ranks owning experts.
//
// Legend: P ranks in the expert-parallel (EP) group, E experts (global), L = E / P local experts,
// S slots this rank routed, R rows this rank's experts receive, D width.
// dispatch(x_SD, counts_E): x_SD is grouped by global expert; the rows of expert e go to ep rank e / L, so
// peer p gets the contiguous rows of experts [p*L, (p+1)*L). Per-(peer, local expert) counts are exchanged
// first (every rank, every call, even with zero rows) together with the rows' dtype and width, which every
// rank checks against its own (one element size per exchange, also for a rank with zero rows), then the rows (an
// autograd function whose backward is the reverse exchange). Each (peer, local expert) block is received straight into
// its place in the layout GroupedExperts wants: by LOCAL expert, then by source rank (local_counts[l] = rows for local
// expert l from all peers), so no regrouping copy is made. combine(y_RD) sends the expert outputs back
// block by block into x_SD's layout.
// Gradients: the backward exchange delivers every EP peer's output gradient to the owning rank, so an
// expert's gradient on its rank is the sum over the EP group's micro-batches.
// Counters: exchange_seconds (forward and backward exchanges, including the counts), rows_received (R),
// rows_sent (rows sent to other ranks, not counting this rank's own).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "moe/dispatcher.h"
#include "parallel/communicator.h"

namespace hybridmoe {

// Differentiable row exchange (Communicator::AllToAll): forward sends send_rows_P[p] rows to p and receives
// recv_rows_P[p]; backward sends the gradient rows back the reverse way. `add_seconds` (optional) is told
// the wall time of each exchange, forward and backward.
at::Tensor ExchangeRows(const at::Tensor& x_ND, const std::vector<int64_t>& send_rows_P,
                        const std::vector<int64_t>& recv_rows_P, std::shared_ptr<Communicator> comm,
                        const std::string& what, std::function<void(double)> add_seconds = {});

// The block form (Communicator::AllToAllBlocks): block k of send_P[p] goes to block k of peer p's
// recv_P[this rank]; the result has out_rows rows. Backward sends the gradient blocks back.
at::Tensor ExchangeBlocks(const at::Tensor& x_ND, BlocksPerPeer send_P, BlocksPerPeer recv_P, int64_t out_rows,
                          std::shared_ptr<Communicator> comm, const std::string& what,
                          std::function<void(double)> add_seconds = {});

// Create with std::make_shared: backward exchanges then reach the counters through a weak pointer (any other
// owner must keep the dispatcher alive until backward has run).
class AllToAllDispatcher : public TokenDispatcher, public std::enable_shared_from_this<AllToAllDispatcher> {
 public:
  // `ep` is the expert-parallel group; `layer` only names the layer in timeout messages.
  AllToAllDispatcher(std::shared_ptr<Communicator> ep, int64_t num_experts, int64_t layer);

  at::Tensor dispatch(const at::Tensor& x_SD, const std::vector<int64_t>& counts_E,
                      std::vector<int64_t>& local_counts) override;
  at::Tensor combine(const at::Tensor& y_RD) override;
  int64_t first_local_expert() const override { return ep_->rank() * num_local_; }
  int64_t num_local_experts() const override { return num_local_; }

 private:
  std::shared_ptr<Communicator> ep_;
  int64_t num_experts_, num_local_, layer_;
  std::string Label(const char* phase) const;
  std::function<void(double)> Timer();  // adds an exchange's seconds to counters

  // State of the last dispatch(), used by combine().
  BlocksPerPeer send_P_, recv_P_;               // blocks of x_SD sent to each peer / of the local rows received from it
  int64_t slots_ = 0;                           // x_SD's rows
  at::ScalarType dispatch_dtype_ = at::kFloat;  // x_SD's dtype, agreed by every rank at dispatch()
  at::Tensor dispatched_;                       // dispatch()'s output while it needs a gradient (see combine())
};

}  // namespace hybridmoe
