#include "parallel/nccl_communicator.h"

#include <sched.h>

#include <chrono>
#include <cstring>
#include <numeric>
#include <thread>

#include <ATen/Context.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "absl/strings/str_cat.h"

namespace hybridmoe {
namespace {

using Clock = std::chrono::steady_clock;

bool NcclType(at::ScalarType t, ncclDataType_t* out) {
  switch (t) {
    case at::kFloat: *out = ncclFloat32; return true;
    case at::kDouble: *out = ncclFloat64; return true;
    case at::kHalf: *out = ncclFloat16; return true;
    case at::kBFloat16: *out = ncclBfloat16; return true;
    case at::kLong: *out = ncclInt64; return true;
    case at::kInt: *out = ncclInt32; return true;
    case at::kByte: *out = ncclUint8; return true;
    default: return false;
  }
}

void Pause(Clock::time_point start) {
  if (Clock::now() - start < std::chrono::seconds(1)) {
    sched_yield();
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace

absl::StatusOr<std::shared_ptr<NcclCommunicator>> NcclCommunicator::Create(std::shared_ptr<MpiCommunicator> mpi,
                                                                           int device) {
  std::shared_ptr<NcclCommunicator> c(new NcclCommunicator(std::move(mpi), device));
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (c->rank() == 0) {
    const ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) {
      return absl::UnavailableError(absl::StrCat("launch: ncclGetUniqueId failed: ", ncclGetErrorString(r)));
    }
  }
  at::Tensor id_bytes = at::empty({static_cast<int64_t>(sizeof(id))}, at::kByte);
  std::memcpy(id_bytes.data_ptr(), &id, sizeof(id));
  c->mpi_->Broadcast(id_bytes, 0, "broadcast of the NCCL id");
  std::memcpy(&id, id_bytes.data_ptr(), sizeof(id));

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // lets the host poll with a deadline instead of blocking inside NCCL
  c->Check(ncclCommInitRankConfig(&c->comm_, c->size(), id, c->rank(), &config), "NCCL communicator set-up");
  if (cudaEventCreateWithFlags(&c->done_, cudaEventDisableTiming) != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat("launch: cudaEventCreate failed on device ", device));
  }
  return c;
}

NcclCommunicator::~NcclCommunicator() {
  if (done_ != nullptr) cudaEventDestroy(done_);
  if (comm_ != nullptr) ncclCommDestroy(comm_);
}

cudaStream_t NcclCommunicator::Stream() const {
  return c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_)).stream();
}

void NcclCommunicator::Abort(std::string_view what, const std::string& problem) {
  mpi_->Fail(what, problem, [this] { AbortComm(); });
}

void NcclCommunicator::AbortComm() {
  if (comm_ != nullptr) ncclCommAbort(comm_);
  comm_ = nullptr;
}

void NcclCommunicator::CheckDevice(const at::Tensor& t, std::string_view what) const {
  TORCH_CHECK(t.get_device() == device_, what, ": tensor on ", t.device(),
              " but this rank's NCCL communicator is on cuda:", device_);
}

void NcclCommunicator::Check(ncclResult_t result, std::string_view what) {
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration<double>(timeout_s());
  while (result == ncclInProgress) {
    if (Clock::now() > deadline) {
      mpi_->TimedOut(what, {}, [this] { AbortComm(); });
    }
    Pause(start);
    ncclCommGetAsyncError(comm_, &result);
  }
  if (result != ncclSuccess) {
    Abort(what, absl::StrCat("failed: NCCL ", ncclGetErrorString(result), " (", ncclGetLastError(comm_), ")"));
  }
}

void NcclCommunicator::WaitStream(std::string_view what) {
  if (cudaEventRecord(done_, Stream()) != cudaSuccess) Abort(what, "failed: cudaEventRecord");
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration<double>(timeout_s());
  for (;;) {
    const cudaError_t q = cudaEventQuery(done_);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) Abort(what, absl::StrCat("failed: CUDA ", cudaGetErrorString(q)));
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async != ncclSuccess && async != ncclInProgress) {
      Abort(what, absl::StrCat("failed: NCCL ", ncclGetErrorString(async)));
    }
    if (Clock::now() > deadline) {
      mpi_->TimedOut(what, {}, [this] { AbortComm(); });
    }
    Pause(start);
  }
}

at::Tensor NcclCommunicator::AllToAll(const at::Tensor& x_ND, const std::vector<int64_t>& send_rows_P,
                                      const std::vector<int64_t>& recv_rows_P, std::string_view what) {
  if (!x_ND.is_cuda()) return mpi_->AllToAll(x_ND, send_rows_P, recv_rows_P, what);
  CheckDevice(x_ND, what);
  const int P = size();
  TORCH_CHECK(static_cast<int>(send_rows_P.size()) == P && static_cast<int>(recv_rows_P.size()) == P, what,
              ": expected ", P, " send and receive counts");
  std::vector<int64_t> send_off(P + 1, 0), recv_off(P + 1, 0);
  std::partial_sum(send_rows_P.begin(), send_rows_P.end(), send_off.begin() + 1);
  std::partial_sum(recv_rows_P.begin(), recv_rows_P.end(), recv_off.begin() + 1);
  TORCH_CHECK(send_off.back() == x_ND.size(0), what, ": send counts sum to ", send_off.back(), " but the tensor has ",
              x_ND.size(0), " rows");
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  const at::Tensor x = x_ND.contiguous();
  std::vector<int64_t> shape = x.sizes().vec();
  shape[0] = recv_off.back();
  at::Tensor out = at::empty(shape, x.options());
  size_t row_bytes = x.element_size();
  for (size_t d = 1; d < shape.size(); ++d) row_bytes *= static_cast<size_t>(shape[d]);
  if (row_bytes == 0) return out;
  const char* src = static_cast<const char*>(x.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const cudaStream_t stream = Stream();
  Check(ncclGroupStart(), what);
  for (int p = 0; p < P; ++p) {
    if (send_rows_P[p] > 0) {
      Check(ncclSend(src + send_off[p] * row_bytes, send_rows_P[p] * row_bytes, ncclUint8, p, comm_, stream), what);
    }
    if (recv_rows_P[p] > 0) {
      Check(ncclRecv(dst + recv_off[p] * row_bytes, recv_rows_P[p] * row_bytes, ncclUint8, p, comm_, stream), what);
    }
  }
  Check(ncclGroupEnd(), what);
  WaitStream(what);
  return out;
}

void NcclCommunicator::AllReduce(const at::Tensor& t, ReduceOp op, std::string_view what) {
  if (!t.is_cuda()) return mpi_->AllReduce(t, op, what);
  CheckDevice(t, what);
  TORCH_CHECK(t.is_contiguous(), what, ": NcclCommunicator reduces contiguous tensors");
  ncclDataType_t type;
  TORCH_CHECK(NcclType(t.scalar_type(), &type), what, ": no NCCL type for ", t.scalar_type());
  if (size() == 1 || t.numel() == 0) return;
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  Check(ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), type, op == ReduceOp::kSum ? ncclSum : ncclMax, comm_,
                      Stream()),
        what);
  WaitStream(what);
}

void NcclCommunicator::Broadcast(const at::Tensor& t, int root, std::string_view what) {
  if (!t.is_cuda()) return mpi_->Broadcast(t, root, what);
  CheckDevice(t, what);
  TORCH_CHECK(t.is_contiguous(), what, ": NcclCommunicator broadcasts contiguous tensors");
  if (size() == 1 || t.numel() == 0) return;
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  Check(ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel() * t.element_size(), ncclUint8, root, comm_, Stream()),
        what);
  WaitStream(what);
}

std::shared_ptr<Communicator> NcclCommunicator::Split(int color, int key) {
  auto sub = Create(mpi_->SplitMpi(color, key), device_);
  if (!sub.ok()) mpi_->Fail("splitting an NCCL communicator", std::string(sub.status().message()));
  return *sub;
}

absl::StatusOr<std::shared_ptr<Communicator>> WithNccl(std::shared_ptr<MpiCommunicator> mpi, int device) {
  auto nccl = NcclCommunicator::Create(std::move(mpi), device);
  if (!nccl.ok()) return nccl.status();
  return std::shared_ptr<Communicator>(*std::move(nccl));
}

}  // namespace hybridmoe
