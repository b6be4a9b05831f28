#include "parallel/ep_dispatcher.h"

#include <chrono>
#include <numeric>
#include <utility>

#include <torch/csrc/autograd/custom_function.h>

#include "absl/strings/str_cat.h"

namespace hybridmoe {
namespace {

struct ExchangeState : torch::CustomClassHolder {
  std::shared_ptr<Communicator> comm;
  std::vector<int64_t> send_P, recv_P;
  std::string what;
  std::function<void(double)> add_seconds;
};

at::Tensor TimedAllToAll(const ExchangeState& s, const at::Tensor& x, const std::vector<int64_t>& send,
                         const std::vector<int64_t>& recv, const std::string& what) {
  const auto start = std::chrono::steady_clock::now();
  at::Tensor out = s.comm->AllToAll(x, send, recv, what);
  if (s.add_seconds) s.add_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return out;
}

class ExchangeFunction : public torch::autograd::Function<ExchangeFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            c10::intrusive_ptr<ExchangeState> state) {
    at::Tensor out = TimedAllToAll(*state, x, state->send_P, state->recv_P, state->what);
    ctx->saved_data["state"] = c10::IValue::make_capsule(std::move(state));
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto state = c10::static_intrusive_pointer_cast<ExchangeState>(ctx->saved_data["state"].toCapsule());
    // Undefined output gradients arrive as zeros (materialised), so every rank exchanges.
    at::Tensor grad_x = TimedAllToAll(*state, grads[0].contiguous(), state->recv_P, state->send_P,
                                      "backward of " + state->what);
    return {grad_x, at::Tensor()};
  }
};

}  // namespace

at::Tensor ExchangeRows(const at::Tensor& x_ND, const std::vector<int64_t>& send_rows_P,
                        const std::vector<int64_t>& recv_rows_P, std::shared_ptr<Communicator> comm,
                        const std::string& what, std::function<void(double)> add_seconds) {
  auto state = c10::make_intrusive<ExchangeState>();
  state->comm = std::move(comm);
  state->send_P = send_rows_P;
  state->recv_P = recv_rows_P;
  state->what = what;
  state->add_seconds = std::move(add_seconds);
  return ExchangeFunction::apply(x_ND, std::move(state));
}

AllToAllDispatcher::AllToAllDispatcher(std::shared_ptr<Communicator> ep, int64_t num_experts, int64_t layer)
    : ep_(std::move(ep)), num_experts_(num_experts), layer_(layer) {
  TORCH_CHECK(num_experts_ % ep_->size() == 0, "num_experts (", num_experts_,
              ") must be divisible by the expert-parallel group size (", ep_->size(), ")");
  num_local_ = num_experts_ / ep_->size();
}

std::string AllToAllDispatcher::Label(const char* phase) const {
  return absl::StrCat(phase, " in layer ", layer_);
}

std::function<void(double)> AllToAllDispatcher::Timer() {
  std::weak_ptr<AllToAllDispatcher> self = weak_from_this();
  if (self.expired()) {  // not owned by a shared_ptr: the caller keeps it alive through backward
    return [this](double s) { counters.exchange_seconds += s; };
  }
  return [self](double s) {
    if (auto d = self.lock()) d->counters.exchange_seconds += s;
  };
}

at::Tensor AllToAllDispatcher::dispatch(const at::Tensor& x_SD, const std::vector<int64_t>& counts_E,
                                        std::vector<int64_t>& local_counts) {
  TORCH_CHECK(static_cast<int64_t>(counts_E.size()) == num_experts_, "dispatch: expected ", num_experts_,
              " expert counts, got ", counts_E.size());
  const int P = ep_->size(), me = ep_->rank();
  const int64_t L = num_local_;
  const auto start = std::chrono::steady_clock::now();
  // recv_PL[p*L + l]: rows peer p sends for local expert l.
  const std::vector<int64_t> recv_PL = ep_->AllToAllCounts(counts_E, Label("exchange of expert counts"));
  counters.exchange_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  sent_P_.assign(P, 0);
  received_P_.assign(P, 0);
  for (int p = 0; p < P; ++p) {
    for (int64_t l = 0; l < L; ++l) {
      sent_P_[p] += counts_E[p * L + l];
      received_P_[p] += recv_PL[p * L + l];
    }
  }
  const at::Tensor by_peer =
      ExchangeRows(x_SD, sent_P_, received_P_, ep_, Label("all-to-all (dispatch)"), Timer());

  // Regroup: the by-peer layout is (p, l) blocks; experts want (l, p).
  std::vector<int64_t> block_start(P * L + 1, 0);
  std::partial_sum(recv_PL.begin(), recv_PL.end(), block_start.begin() + 1);
  const int64_t R = block_start.back();
  std::vector<int64_t> group(R), ungroup(R);
  local_counts.assign(L, 0);
  int64_t i = 0;
  for (int64_t l = 0; l < L; ++l) {
    for (int p = 0; p < P; ++p) {
      const int64_t b = p * L + l;
      local_counts[l] += recv_PL[b];
      for (int64_t r = block_start[b]; r < block_start[b + 1]; ++r, ++i) {
        group[i] = r;
        ungroup[r] = i;
      }
    }
  }
  const auto index_options = at::TensorOptions().dtype(at::kLong);
  const at::Tensor group_R = at::tensor(group, index_options).to(x_SD.device());
  ungroup_R_ = at::tensor(ungroup, index_options).to(x_SD.device());

  counters.rows_received += R;
  for (int p = 0; p < P; ++p) counters.rows_sent += p == me ? 0 : sent_P_[p];
  at::Tensor out = by_peer.index_select(0, group_R);
  dispatched_ = out.requires_grad() ? out : at::Tensor();
  return out;
}

at::Tensor AllToAllDispatcher::combine(const at::Tensor& y_RD) {
  TORCH_CHECK(ungroup_R_.defined(), "combine() called without a dispatch()");
  TORCH_CHECK(y_RD.size(0) == ungroup_R_.size(0), "combine: expected ", ungroup_R_.size(0), " expert output rows, got ",
              y_RD.size(0));
  at::Tensor y = y_RD;
  // Experts that got no rows return a tensor outside the graph; keep it connected so that this rank's
  // backward still runs both reverse exchanges that its peers run.
  if (dispatched_.defined() && !y.requires_grad()) y = y + dispatched_.sum() * 0;
  dispatched_ = at::Tensor();
  const at::Tensor by_peer = y.index_select(0, ungroup_R_);
  at::Tensor out = ExchangeRows(by_peer, received_P_, sent_P_, ep_, Label("all-to-all (combine)"), Timer());
  return out;
}

}  // namespace hybridmoe
