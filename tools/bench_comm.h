// Multi-rank measurements of tools/bench (under mpirun): the expert-parallel all-to-all against a raw
// MPI_Alltoallv of the same sizes, and an idle wait that leaves the cores to another rank.
//
// Sizes: `counts_E` are the slots this rank routed to each expert in a real forward of the bench batch
// (layer 0); rank p owns experts [p*L, (p+1)*L), so this rank sends send_P[p] = sum of its counts for p's
// experts, rows of D fp32 values. Bytes per exchange = (sum of send_P) * D * 4, this rank's own block
// included, for both sides. Three ways of moving them are timed in alternating rounds, each round a
// barrier then `iters` repetitions, the time of a round being the slowest rank's:
//   raw        MPI_Alltoallv on the EP group's MPI communicator (MPI_FLOAT counts), into a reused buffer
//   raw_alloc  the same into a new at::empty output per call (what a communicator that allocates its
//              output per call would get; MpiCommunicator reuses receive buffers instead)
//   exchange   Communicator::AllToAll (parallel/communicator.h), what the dispatcher calls per direction
//   dispatcher AllToAllDispatcher::dispatch + combine without autograd: counts exchange, rows out (each
//              (peer, expert) block received in place, grouped by local expert), rows back (two exchanges,
//              so compared against two raw calls)
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "moe/dispatcher.h"
#include "parallel/context.h"
#include "tools/bench_common.h"

namespace hybridmoe {

struct AllToAllBench {
  int64_t bytes_per_exchange = 0;  // this rank's send buffer
  Summary raw_bytes_per_s, exchange_bytes_per_s, dispatcher_bytes_per_s;
  Summary exchange_over_raw, dispatcher_over_raw;  // per-round ratios of bytes/s (1 = as fast as raw)
  Summary raw_alloc_over_raw;                      // raw into a freshly allocated output each call
  Summary counts_exchange_s;                       // one AllToAllCounts of the expert counts (dispatch's first step)
  int64_t receive_pool_bytes = 0;  // the EP group's reused receive buffers after the measurements (this rank)
};

AllToAllBench MeasureAllToAll(ParallelContext& ctx, TokenDispatcher& dispatcher, const std::vector<int64_t>& counts_E,
                              int64_t d_model, int rounds, int iters);

// Waits on a non-blocking barrier of the world group, sleeping between polls (no core spinning).
void IdleBarrier(ParallelContext& ctx);

}  // namespace hybridmoe
