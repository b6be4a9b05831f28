#include "tools/bench_comm.h"

#include <mpi.h>

#include <chrono>
#include <thread>

#include <ATen/core/grad_mode.h>

#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"

namespace hybridmoe {
namespace {

MPI_Comm CommOf(const std::shared_ptr<Communicator>& c) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(c.get());
  return mpi != nullptr ? mpi->comm() : MPI_COMM_NULL;
}

}  // namespace

void IdleBarrier(ParallelContext& ctx) {
  const MPI_Comm comm = CommOf(ctx.world_group());
  if (comm == MPI_COMM_NULL) return;
  MPI_Request request;
  MPI_Ibarrier(comm, &request);
  for (;;) {
    int done = 0;
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (done) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

AllToAllBench MeasureAllToAll(ParallelContext& ctx, TokenDispatcher& dispatcher, const std::vector<int64_t>& counts_E,
                              int64_t d_model, int rounds, int iters) {
  at::NoGradGuard no_grad;
  const std::shared_ptr<Communicator> ep = ctx.ep_group();
  const MPI_Comm comm = CommOf(ep);
  const int P = ep->size();
  const int64_t E = static_cast<int64_t>(counts_E.size()), L = E / P;
  std::vector<int64_t> send_P(P, 0);
  for (int64_t e = 0; e < E; ++e) send_P[e / L] += counts_E[e];
  const std::vector<int64_t> recv_P = ep->AllToAllCounts(send_P, "bench: row counts");
  int64_t send_rows = 0, recv_rows = 0;
  for (int p = 0; p < P; ++p) {
    send_rows += send_P[p];
    recv_rows += recv_P[p];
  }
  const at::Tensor x = at::randn({send_rows, d_model});
  at::Tensor y = at::empty({recv_rows, d_model});
  std::vector<int> scount(P), sdispl(P), rcount(P), rdispl(P);
  for (int p = 0, so = 0, ro = 0; p < P; ++p) {
    scount[p] = static_cast<int>(send_P[p] * d_model);
    rcount[p] = static_cast<int>(recv_P[p] * d_model);
    sdispl[p] = so;
    rdispl[p] = ro;
    so += scount[p];
    ro += rcount[p];
  }
  AllToAllBench b;
  b.bytes_per_exchange = send_rows * d_model * 4;
  const double bytes = static_cast<double>(b.bytes_per_exchange) * iters;
  auto timed = [&](const std::function<void()>& body) {
    ep->Barrier("bench: barrier");
    const auto t0 = BenchClock::now();
    for (int i = 0; i < iters; ++i) body();
    return ctx.MaxOverRanks(SecondsSince(t0));
  };
  auto raw = [&] {
    MPI_Alltoallv(x.data_ptr(), scount.data(), sdispl.data(), MPI_FLOAT, y.data_ptr(), rcount.data(), rdispl.data(),
                  MPI_FLOAT, comm);
  };
  auto raw_alloc = [&] {  // raw, but into a fresh output tensor per call as Communicator::AllToAll returns one
    at::Tensor out = at::empty({recv_rows, d_model});
    MPI_Alltoallv(x.data_ptr(), scount.data(), sdispl.data(), MPI_FLOAT, out.data_ptr(), rcount.data(), rdispl.data(),
                  MPI_FLOAT, comm);
  };
  auto counts_only = [&] { ep->AllToAllCounts(counts_E, "bench: expert counts"); };
  auto exchange = [&] { ep->AllToAll(x, send_P, recv_P, "bench: all-to-all"); };
  auto dispatch_combine = [&] {
    std::vector<int64_t> local_counts;
    const at::Tensor local = dispatcher.dispatch(x, counts_E, local_counts);
    dispatcher.combine(local);
  };
  raw();
  exchange();
  dispatch_combine();
  std::vector<double> raw_bps, ex_bps, disp_bps, ex_ratio, disp_ratio, alloc_ratio, counts_s;
  for (int r = 0; r < rounds; ++r) {
    const double t_raw = timed(raw), t_ex = timed(exchange), t_disp = timed(dispatch_combine);
    alloc_ratio.push_back(t_raw / timed(raw_alloc));
    counts_s.push_back(timed(counts_only) / iters);
    raw_bps.push_back(bytes / t_raw);
    ex_bps.push_back(bytes / t_ex);
    disp_bps.push_back(2 * bytes / t_disp);
    ex_ratio.push_back(t_raw / t_ex);
    disp_ratio.push_back(2 * t_raw / t_disp);
  }
  b.raw_bytes_per_s = Summarize(raw_bps);
  b.exchange_bytes_per_s = Summarize(ex_bps);
  b.dispatcher_bytes_per_s = Summarize(disp_bps);
  b.exchange_over_raw = Summarize(ex_ratio);
  b.dispatcher_over_raw = Summarize(disp_ratio);
  b.raw_alloc_over_raw = Summarize(alloc_ratio);
  b.counts_exchange_s = Summarize(counts_s);
  if (auto* mpi = dynamic_cast<MpiCommunicator*>(ep.get())) b.receive_pool_bytes = mpi->receive_pool_bytes();
  return b;
}

}  // namespace hybridmoe
