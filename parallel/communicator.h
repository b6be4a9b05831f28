// Communicator: the collectives a group of ranks runs together, with a deadline on every one of them.
//
// Legend: P ranks in the group, N rows, D row width (any trailing shape).
// A Communicator is a group of P ranks (the world, an expert-parallel group, a data-parallel group). Every
// rank of the group must call the same operations in the same order with matching arguments; zero-sized
// parts (a peer that gets no rows) still take part, so the sequence of operations never depends on data.
//
// Deadline: MPI itself never times out, so every operation is issued non-blocking and polled against
// `timeout_s`. When it expires the rank prints ONE line to stderr, e.g.
//   rank 1: all-to-all in layer 3 did not complete within 30 s; rank 2 is unresponsive or dead
// naming the peers it can (a peer whose rows did not arrive, or that did not answer a short liveness
// probe among the group's ranks that also timed out), and aborts the whole job (MPI_Abort, exit status 1).
// A failed MPI call ends the same way. `what` names the operation in that line ("all-to-all in layer 3").
//
// MpiCommunicator (mpi_communicator.h, the only header that includes <mpi.h>) works on CPU tensors;
// NcclCommunicator (nccl_communicator.h, CUDA builds) on CUDA tensors. SelfCommunicator (this file) is the
// one-rank group (no MPI): every operation is the identity.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/ATen.h>

namespace hybridmoe {

enum class ReduceOp { kSum, kMax };

// Rows [offset, offset + rows) of a tensor.
struct RowBlock {
  int64_t offset = 0;
  int64_t rows = 0;
};
// For each group rank p, an ordered list of row blocks: blocks_P[p][k].
using BlocksPerPeer = std::vector<std::vector<RowBlock>>;

// One block per rank: rows_P[p] consecutive rows for each rank p in order.
BlocksPerPeer ContiguousBlocks(const std::vector<int64_t>& rows_P);

// Checks that `blocks_P` has one list per rank of a P-rank group and that its blocks tile rows [0, n) exactly
// (every row in one block, empty blocks allowed). TORCH_CHECK error naming `what` and `role` otherwise.
void CheckBlocksTile(const BlocksPerPeer& blocks_P, int P, int64_t n, std::string_view what, const char* role);

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;  // in this group, 0..size()-1
  virtual int size() const = 0;
  // World rank of group rank `r` (for messages and tests).
  virtual int world_rank(int r) const = 0;
  virtual double timeout_s() const = 0;

  // x_ND holds send_rows_P[p] consecutive rows for each group rank p in order (sum = N). Returns the rows
  // received, recv_rows_P[p] from each p in order: [sum(recv_rows_P), D...]. The caller knows recv_rows_P
  // (exchange counts first with AllToAllCounts). Rows keep x_ND's dtype and trailing shape.
  virtual at::Tensor AllToAll(const at::Tensor& x_ND, const std::vector<int64_t>& send_rows_P,
                              const std::vector<int64_t>& recv_rows_P, std::string_view what) = 0;
  // Scatter/gather form of AllToAll, so that callers need no copy to regroup rows: block k of send_P[p]
  // (rows of x_ND) lands in block k of peer p's recv_P[this rank] (rows of the [out_rows, D...] result).
  // Matching blocks have the same size on both sides (exchange counts first); send_P must tile x_ND's rows
  // and recv_P the result's rows. The default packs the blocks around AllToAll (one copy each way);
  // MpiCommunicator sends and receives every block in place.
  virtual at::Tensor AllToAllBlocks(const at::Tensor& x_ND, const BlocksPerPeer& send_P, const BlocksPerPeer& recv_P,
                                    int64_t out_rows, std::string_view what);
  // send_PN: n values for each group rank p (P*n values). Returns the n values each p sent here (P*n).
  virtual std::vector<int64_t> AllToAllCounts(const std::vector<int64_t>& send_PN, std::string_view what) = 0;
  // In place over the group; `t` must be contiguous.
  virtual void AllReduce(const at::Tensor& t, ReduceOp op, std::string_view what) = 0;
  virtual void Broadcast(const at::Tensor& t, int root, std::string_view what) = 0;
  virtual void Barrier(std::string_view what) = 0;
  // Every rank's bytes on `root` (in group order); other ranks get an empty vector.
  virtual std::vector<std::string> Gather(const std::string& bytes, int root, std::string_view what) = 0;
  // The sub-group of ranks that pass the same `color`, ordered by (key, rank). Collective over this group.
  virtual std::shared_ptr<Communicator> Split(int color, int key) = 0;
};

// One rank, no MPI.
class SelfCommunicator : public Communicator {
 public:
  explicit SelfCommunicator(double timeout_s = 300) : timeout_s_(timeout_s) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int world_rank(int) const override { return 0; }
  double timeout_s() const override { return timeout_s_; }
  at::Tensor AllToAll(const at::Tensor& x_ND, const std::vector<int64_t>& send_rows_P,
                      const std::vector<int64_t>& recv_rows_P, std::string_view what) override;
  std::vector<int64_t> AllToAllCounts(const std::vector<int64_t>& send_PN, std::string_view) override {
    return send_PN;
  }
  void AllReduce(const at::Tensor&, ReduceOp, std::string_view) override {}
  void Broadcast(const at::Tensor&, int, std::string_view) override {}
  void Barrier(std::string_view) override {}
  std::vector<std::string> Gather(const std::string& bytes, int, std::string_view) override { return {bytes}; }
  std::shared_ptr<Communicator> Split(int, int) override { return std::make_shared<SelfCommunicator>(timeout_s_); }

 private:
  double timeout_s_;
};

// Rendering of "rank 2", "ranks 1, 3" (world ranks) for the timeout line.
std::string DescribeRanks(const std::vector<int>& world_ranks);

}  // namespace hybridmoe
