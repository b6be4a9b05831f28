// MpiCommunicator: the Communicator (parallel/communicator.h) over a group of MPI processes, CPU tensors, with
// the deadline and the one-line diagnosis that header describes. Kept apart so that <mpi.h> reaches only the
// files that talk to MPI, not every user of the interface.
#pragma once

#include <mpi.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/ATen.h>

#include "parallel/communicator.h"

namespace hybridmoe {

// A group of MPI processes (MPI must be initialised, at least MPI_THREAD_SERIALIZED). Owns a duplicate of
// `comm` (plus one for liveness probes); frees them unless MPI is already finalised.
class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, double timeout_s);
  ~MpiCommunicator() override;
  // The world (MPI_COMM_WORLD).
  static std::shared_ptr<MpiCommunicator> World(double timeout_s);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int world_rank(int r) const override { return world_ranks_.at(r); }
  double timeout_s() const override { return timeout_s_; }
  at::Tensor AllToAll(const at::Tensor& x_ND, const std::vector<int64_t>& send_rows_P,
                      const std::vector<int64_t>& recv_rows_P, std::string_view what) override;
  at::Tensor AllToAllBlocks(const at::Tensor& x_ND, const BlocksPerPeer& send_P, const BlocksPerPeer& recv_P,
                            int64_t out_rows, std::string_view what) override;
  std::vector<int64_t> AllToAllCounts(const std::vector<int64_t>& send_PN, std::string_view what) override;
  void AllReduce(const at::Tensor& t, ReduceOp op, std::string_view what) override;
  void Broadcast(const at::Tensor& t, int root, std::string_view what) override;
  void Barrier(std::string_view what) override;
  std::vector<std::string> Gather(const std::string& bytes, int root, std::string_view what) override;
  std::shared_ptr<Communicator> Split(int color, int key) override;
  std::shared_ptr<MpiCommunicator> SplitMpi(int color, int key);

  // Polls `requests` until all are done or the deadline passes; `peer_of` (empty, or one entry per
  // request) gives the group rank a receive waits on (-1 for other requests), to name a silent peer.
  void Wait(std::vector<MPI_Request>& requests, const std::vector<int>& peer_of, std::string_view what);
  // Prints the one-line diagnosis and aborts the job. Never returns. `cleanup` (e.g. ncclCommAbort, which can
  // block on a dead peer) runs after the print and after the alarm that ends the process is armed, so a
  // cleanup that hangs cannot keep the rank alive.
  [[noreturn]] void Fail(std::string_view what, const std::string& problem,
                         const std::function<void()>& cleanup = nullptr);
  // The deadline of `what` passed: names `silent` (group ranks known not to have answered; when empty,
  // those that fail a liveness probe) and aborts via Fail (passing `cleanup` on).
  [[noreturn]] void TimedOut(std::string_view what, std::vector<int> silent,
                             const std::function<void()>& cleanup = nullptr);
  // Group ranks that do not answer a liveness probe within `grace_s` (every live rank of the group that
  // is stuck in the same operation answers when its own deadline expires).
  std::vector<int> ProbeUnresponsive(double grace_s);
  MPI_Comm comm() const { return comm_; }
  // Bytes held by the pool of receive buffers (AllToAll outputs reused across calls).
  int64_t receive_pool_bytes() const {
    int64_t total = 0;
    for (const PooledBuffer& b : receive_pool_) total += b.bytes.numel();
    return total;
  }

 private:
  // The output of AllToAllBlocks, from buffers reused across calls: a training step receives about the same
  // sizes every step, and rows written into memory already mapped arrive as fast as a raw MPI_Alltoallv into
  // a fixed buffer (tools/bench measures both; into a fresh allocation per call 66-82 % under glibc's default
  // policy, 98 % with core/host.h's KeepFreedMemoryForReuse).
  at::Tensor ReceiveBuffer(const std::vector<int64_t>& shape, const at::TensorOptions& options);
  struct PooledBuffer {
    at::Tensor bytes;  // uint8; free when the pool holds the only reference to its storage
    int64_t last_use = 0;
  };
  std::vector<PooledBuffer> receive_pool_;
  int64_t receive_calls_ = 0;

  MPI_Comm comm_ = MPI_COMM_NULL, probe_comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::vector<int> world_ranks_;
  double timeout_s_;
};

}  // namespace hybridmoe
