// NCCL collectives for CUDA tensors (GPU builds only: --config=cuda).
//
// Legend: P ranks in the group. A NcclCommunicator wraps an MpiCommunicator over the same ranks: the NCCL
// unique id is created on group rank 0 and broadcast over MPI (the bootstrap); host values (counts,
// gathers, barriers) and CPU tensors keep going through MPI, CUDA tensors go through NCCL on the current
// CUDA stream of the communicator's device. The row all-to-all is a group of ncclSend/ncclRecv pairs
// (zero-row pairs skipped on both sides, which agree on the counts).
// Deadline: the communicator is created non-blocking; after each operation the host polls an event on the
// stream (and NCCL's asynchronous error) against timeout_s. On expiry or an NCCL error it aborts the NCCL
// communicator, names the peers that fail an MPI liveness probe, prints the one line and aborts the job,
// exactly like MpiCommunicator. Each CUDA operation therefore returns with its result ready.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"

namespace hybridmoe {

class NcclCommunicator : public Communicator {
 public:
  // Collective over `mpi`. `device` is the CUDA device of this rank (e.g. its local rank).
  static absl::StatusOr<std::shared_ptr<NcclCommunicator>> Create(std::shared_ptr<MpiCommunicator> mpi, int device);
  ~NcclCommunicator() override;

  int rank() const override { return mpi_->rank(); }
  int size() const override { return mpi_->size(); }
  int world_rank(int r) const override { return mpi_->world_rank(r); }
  double timeout_s() const override { return mpi_->timeout_s(); }
  int device() const { return device_; }

  at::Tensor AllToAll(const at::Tensor& x_ND, const std::vector<int64_t>& send_rows_P,
                      const std::vector<int64_t>& recv_rows_P, std::string_view what) override;
  // CUDA tensors: the blocks are packed on the device around one grouped ncclSend/ncclRecv exchange.
  at::Tensor AllToAllBlocks(const at::Tensor& x_ND, const BlocksPerPeer& send_P, const BlocksPerPeer& recv_P,
                            int64_t out_rows, std::string_view what) override {
    if (!x_ND.is_cuda()) return mpi_->AllToAllBlocks(x_ND, send_P, recv_P, out_rows, what);
    CheckDevice(x_ND, what);
    return Communicator::AllToAllBlocks(x_ND, send_P, recv_P, out_rows, what);
  }
  std::vector<int64_t> AllToAllCounts(const std::vector<int64_t>& send_PN, std::string_view what) override {
    return mpi_->AllToAllCounts(send_PN, what);
  }
  void AllReduce(const at::Tensor& t, ReduceOp op, std::string_view what) override;
  void Broadcast(const at::Tensor& t, int root, std::string_view what) override;
  void Barrier(std::string_view what) override { mpi_->Barrier(what); }
  std::vector<std::string> Gather(const std::string& bytes, int root, std::string_view what) override {
    return mpi_->Gather(bytes, root, what);
  }
  std::shared_ptr<Communicator> Split(int color, int key) override;

 private:
  NcclCommunicator(std::shared_ptr<MpiCommunicator> mpi, int device) : mpi_(std::move(mpi)), device_(device) {}
  cudaStream_t Stream() const;
  // Resolves ncclInProgress (non-blocking communicator) and fails the job on an error or the deadline.
  void Check(ncclResult_t result, std::string_view what);
  // Waits until the work queued so far on Stream() is done, or fails the job at the deadline.
  void WaitStream(std::string_view what);
  [[noreturn]] void Abort(std::string_view what, const std::string& problem);
  // ncclCommAbort (may block on a dead peer): run by MpiCommunicator::Fail once its alarm is armed.
  void AbortComm();
  // A CUDA tensor handed to this communicator must live on its device.
  void CheckDevice(const at::Tensor& t, std::string_view what) const;

  std::shared_ptr<MpiCommunicator> mpi_;
  int device_;
  ncclComm_t comm_ = nullptr;
  cudaEvent_t done_ = nullptr;
};

// A NcclCommunicator on CUDA device `device` (this rank's own GPU: parallel/device.h's ChooseDevice); CPU
// tensors still go through `mpi`. Created only for parallel.device CUDA (parallel/context.cc).
absl::StatusOr<std::shared_ptr<Communicator>> WithNccl(std::shared_ptr<MpiCommunicator> mpi, int device);

}  // namespace hybridmoe
