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
  BlocksPerPeer send_P, recv_P;
  int64_t in_rows = 0, out_rows = 0;
  std::string what;
  std::function<void(double)> add_seconds;
};

at::Tensor TimedExchange(const ExchangeState& s, const at::Tensor& x, const BlocksPerPeer& send,
                         const BlocksPerPeer& recv, int64_t out_rows, const std::string& what) {
  const auto start = std::chrono::steady_clock::now();
  at::Tensor out = s.comm->AllToAllBlocks(x, send, recv, out_rows, what);
  if (s.add_seconds) s.add_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return out;
}

class ExchangeFunction : public torch::autograd::Function<ExchangeFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            c10::intrusive_ptr<ExchangeState> state) {
    state->in_rows = x.size(0);
    at::Tensor out = TimedExchange(*state, x, state->send_P, state->recv_P, state->out_rows, state->what);
    ctx->saved_data["state"] = c10::IValue::make_capsule(std::move(state));
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto state = c10::static_intrusive_pointer_cast<ExchangeState>(ctx->saved_data["state"].toCapsule());
    // Undefined output gradients arrive as zeros (materialised), so every rank exchanges.
    at::Tensor grad_x = TimedExchange(*state, grads[0].contiguous(), state->recv_P, state->send_P, state->in_rows,
                                      "backward of " + state->what);
    return {grad_x, at::Tensor()};
  }
};

}  // namespace

at::Tensor ExchangeBlocks(const at::Tensor& x_ND, BlocksPerPeer send_P, BlocksPerPeer recv_P, int64_t out_rows,
                          std::shared_ptr<Communicator> comm, const std::string& what,
                          std::function<void(double)> add_seconds) {
  auto state = c10::make_intrusive<ExchangeState>();
  state->comm = std::move(comm);
  state->send_P = std::move(send_P);
  state->recv_P = std::move(recv_P);
  state->out_rows = out_rows;
  state->what = what;
  state->add_seconds = std::move(add_seconds);
  return ExchangeFunction::apply(x_ND, std::move(state));
}

at::Tensor ExchangeRows(const at::Tensor& x_ND, const std::vector<int64_t>& send_rows_P,
                        const std::vector<int64_t>& recv_rows_P, std::shared_ptr<Communicator> comm,
                        const std::string& what, std::function<void(double)> add_seconds) {
  const int64_t out_rows = std::accumulate(recv_rows_P.begin(), recv_rows_P.end(), int64_t{0});
  return ExchangeBlocks(x_ND, ContiguousBlocks(send_rows_P), ContiguousBlocks(recv_rows_P), out_rows, std::move(comm),
                        what, std::move(add_seconds));
}

AllToAllDispatcher::AllToAllDispatcher(std::shared_ptr<Communicator> ep, int64_t num_experts, int64_t layer)
    : ep_(std::move(ep)), num_experts_(num_experts), layer_(layer) {
  TORCH_CHECK(num_experts_ % ep_->size() == 0, "num_experts (", num_experts_,
              ") must be divisible by the expert-parallel group size (", ep_->size(), ")");
  num_local_ = num_experts_ / ep_->size();
}

std::string AllToAllDispatcher::Label(const char* phase) const { return absl::StrCat(phase, " in layer ", layer_); }

std::function<void(double)> AllToAllDispatcher::Timer() {
  std::weak_ptr<AllToAllDispatcher> self = weak_from_this();
  if (self.expired()) {  // not owned by a shared_ptr: the caller keeps it alive through backward
    if (!count_time) return [](double) {};
    return [this](double s) { counters.exchange_seconds += s; };
  }
  if (!count_time) return [](double) {};
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
  // Each peer's block of the counts exchange: its L expert counts, then the payload's dtype and row width, so
  // that every rank checks that all send rows of one element size (a rank must never post receives for bf16
  // rows while a peer sends fp32, or the byte counts disagree).
  const int64_t width = x_SD.dim() >= 2 ? x_SD.size(1) : 0;
  const int64_t dtype = static_cast<int64_t>(x_SD.scalar_type());
  std::vector<int64_t> send_PN;
  send_PN.reserve(P * (L + 2));
  for (int p = 0; p < P; ++p) {
    send_PN.insert(send_PN.end(), counts_E.begin() + p * L, counts_E.begin() + (p + 1) * L);
    send_PN.push_back(dtype);
    send_PN.push_back(width);
  }
  const std::vector<int64_t> recv_PN = ep_->AllToAllCounts(send_PN, Label("exchange of expert counts"));
  if (count_time) {
    counters.exchange_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  // recv_PL[p*L + l]: rows peer p sends for local expert l.
  std::vector<int64_t> recv_PL(P * L);
  for (int p = 0; p < P; ++p) {
    const int64_t* block = recv_PN.data() + p * (L + 2);
    std::copy(block, block + L, recv_PL.begin() + p * L);
    TORCH_CHECK(block[L] == dtype && block[L + 1] == width, Label("dispatch"), ": EP rank ", p, " sends ",
                c10::toString(static_cast<at::ScalarType>(block[L])), " rows of width ", block[L + 1], " but EP rank ",
                me, " sends ", x_SD.scalar_type(), " rows of width ", width,
                " (every rank of an expert-parallel group must compute in one precision)");
  }
  dispatch_dtype_ = x_SD.scalar_type();

  // Rows of expert p*L + l: a block of x_SD (grouped by global expert) sent to peer p, received into local
  // expert l's region at the place of peer p (grouped by local expert, then by source rank). No regrouping
  // copy: the exchange writes every block where the experts want it.
  std::vector<int64_t> expert_start(P * L + 1, 0);
  std::partial_sum(counts_E.begin(), counts_E.end(), expert_start.begin() + 1);
  local_counts.assign(L, 0);
  for (int p = 0; p < P; ++p) {
    for (int64_t l = 0; l < L; ++l) local_counts[l] += recv_PL[p * L + l];
  }
  std::vector<int64_t> next_row_L(L, 0);  // where the next peer's rows for local expert l go
  for (int64_t l = 1; l < L; ++l) next_row_L[l] = next_row_L[l - 1] + local_counts[l - 1];
  const int64_t R = L == 0 ? 0 : next_row_L[L - 1] + local_counts[L - 1];
  send_P_.assign(P, {});
  recv_P_.assign(P, {});
  for (int p = 0; p < P; ++p) {
    for (int64_t l = 0; l < L; ++l) {
      const int64_t e = p * L + l;
      send_P_[p].push_back({expert_start[e], counts_E[e]});
      recv_P_[p].push_back({next_row_L[l], recv_PL[e]});
      next_row_L[l] += recv_PL[e];
      if (p != me && count_rows) counters.rows_sent += counts_E[e];
    }
  }
  slots_ = x_SD.size(0);
  if (count_rows) counters.rows_received += R;
  at::Tensor out = ExchangeBlocks(x_SD, send_P_, recv_P_, R, ep_, Label("all-to-all (dispatch)"), Timer());
  dispatched_ = out.requires_grad() ? out : at::Tensor();
  return out;
}

at::Tensor AllToAllDispatcher::combine(const at::Tensor& y_RD) {
  TORCH_CHECK(!recv_P_.empty(), "combine() called without a dispatch()");
  int64_t R = 0;
  for (const std::vector<RowBlock>& blocks : recv_P_) {
    for (const RowBlock& b : blocks) R += b.rows;
  }
  TORCH_CHECK(y_RD.size(0) == R, "combine: expected ", R, " expert output rows, got ", y_RD.size(0));
  TORCH_CHECK(y_RD.scalar_type() == dispatch_dtype_, Label("combine"), ": the experts returned ", y_RD.scalar_type(),
              " rows but dispatch exchanged ", dispatch_dtype_, " (peers would receive a different element size)");
  at::Tensor y = y_RD;
  // Experts that got no rows return a tensor outside the graph; keep it connected so that this rank's
  // backward still runs both reverse exchanges that its peers run.
  if (dispatched_.defined() && !y.requires_grad()) y = y + dispatched_.sum() * 0;
  dispatched_ = at::Tensor();
  return ExchangeBlocks(y, recv_P_, send_P_, slots_, ep_, Label("all-to-all (combine)"), Timer());
}

}  // namespace hybridmoe
