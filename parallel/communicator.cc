#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace hybridmoe {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kAllToAllTag = 101;
constexpr int kCountsTag = 102;
constexpr int kGatherTag = 103;
constexpr int kProbeTag = 104;
constexpr int64_t kChunkBytes = int64_t{1} << 30;  // MPI counts are int: large buffers go in chunks

std::string MpiErrorString(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return std::string(text, len);
}

MPI_Datatype MpiType(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kLong: return MPI_INT64_T;
    case at::kInt: return MPI_INT32_T;
    default: return MPI_DATATYPE_NULL;
  }
}

}  // namespace

std::string DescribeRanks(const std::vector<int>& world_ranks) {
  if (world_ranks.size() == 1) return absl::StrCat("rank ", world_ranks[0]);
  return absl::StrCat("ranks ", absl::StrJoin(world_ranks, ", "));
}

BlocksPerPeer ContiguousBlocks(const std::vector<int64_t>& rows_P) {
  BlocksPerPeer blocks(rows_P.size());
  int64_t offset = 0;
  for (size_t p = 0; p < rows_P.size(); ++p) {
    blocks[p].push_back({offset, rows_P[p]});
    offset += rows_P[p];
  }
  return blocks;
}

void CheckBlocksTile(const BlocksPerPeer& blocks_P, int P, int64_t n, std::string_view what, const char* role) {
  TORCH_CHECK(static_cast<int>(blocks_P.size()) == P, what, ": expected ", role, " blocks for ", P, " ranks, got ",
              blocks_P.size());
  std::vector<std::pair<int64_t, int64_t>> ranges;  // (offset, rows) of the non-empty blocks
  for (const std::vector<RowBlock>& blocks : blocks_P) {
    for (const RowBlock& b : blocks) {
      TORCH_CHECK(b.rows >= 0 && b.offset >= 0 && b.offset + b.rows <= n, what, ": ", role, " block [", b.offset, ", ",
                  b.offset + b.rows, ") is outside the ", n, " rows");
      if (b.rows > 0) ranges.emplace_back(b.offset, b.rows);
    }
  }
  std::sort(ranges.begin(), ranges.end());
  int64_t next = 0;
  for (const auto& [offset, rows] : ranges) {
    TORCH_CHECK(offset == next, what, ": ", role, " blocks do not tile the ", n, " rows (row ", std::min(offset, next),
                offset > next ? " is in no block)" : " is in two blocks)");
    next = offset + rows;
  }
  TORCH_CHECK(next == n, what, ": ", role, " blocks cover ", next, " of the ", n, " rows");
}

at::Tensor Communicator::AllToAllBlocks(const at::Tensor& x_ND, const BlocksPerPeer& send_P,
                                        const BlocksPerPeer& recv_P, int64_t out_rows, std::string_view what) {
  const int P = size();
  TORCH_CHECK(x_ND.dim() >= 1, what, ": rows need a tensor with at least one dimension");
  CheckBlocksTile(send_P, P, x_ND.size(0), what, "send");
  CheckBlocksTile(recv_P, P, out_rows, what, "receive");
  // Row order of the packed (one contiguous run per peer) layout on each side.
  auto packed_order = [](const BlocksPerPeer& blocks_P, std::vector<int64_t>& rows_P) {
    std::vector<int64_t> order;
    bool identity = true;
    for (const std::vector<RowBlock>& blocks : blocks_P) {
      rows_P.push_back(0);
      for (const RowBlock& b : blocks) {
        for (int64_t r = b.offset; r < b.offset + b.rows; ++r) {
          identity = identity && r == static_cast<int64_t>(order.size());
          order.push_back(r);
        }
        rows_P.back() += b.rows;
      }
    }
    return identity ? at::Tensor() : at::tensor(order, at::TensorOptions().dtype(at::kLong));
  };
  std::vector<int64_t> send_rows_P, recv_rows_P;
  const at::Tensor send_order = packed_order(send_P, send_rows_P);
  const at::Tensor recv_order = packed_order(recv_P, recv_rows_P);
  const at::Tensor packed = send_order.defined() ? x_ND.index_select(0, send_order.to(x_ND.device())) : x_ND;
  const at::Tensor received = AllToAll(packed, send_rows_P, recv_rows_P, what);
  if (!recv_order.defined()) return received;
  return at::empty_like(received).index_copy_(0, recv_order.to(received.device()), received);
}

at::Tensor SelfCommunicator::AllToAll(const at::Tensor& x_ND, const std::vector<int64_t>& send_rows_P,
                                      const std::vector<int64_t>& recv_rows_P, std::string_view what) {
  TORCH_CHECK(send_rows_P.size() == 1 && recv_rows_P.size() == 1 && send_rows_P[0] == recv_rows_P[0] &&
                  send_rows_P[0] == x_ND.size(0),
              what, ": a one-rank all-to-all must send and receive all ", x_ND.size(0), " rows");
  return x_ND.clone();
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, double timeout_s) : timeout_s_(timeout_s) {
  MPI_Comm_dup(comm, &comm_);
  MPI_Comm_dup(comm, &probe_comm_);
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(probe_comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  MPI_Group group, world;
  MPI_Comm_group(comm_, &group);
  MPI_Comm_group(MPI_COMM_WORLD, &world);
  std::vector<int> mine(size_);
  std::iota(mine.begin(), mine.end(), 0);
  world_ranks_.resize(size_);
  MPI_Group_translate_ranks(group, size_, mine.data(), world, world_ranks_.data());
  MPI_Group_free(&group);
  MPI_Group_free(&world);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  MPI_Comm_free(&comm_);
  MPI_Comm_free(&probe_comm_);
}

std::shared_ptr<MpiCommunicator> MpiCommunicator::World(double timeout_s) {
  return std::make_shared<MpiCommunicator>(MPI_COMM_WORLD, timeout_s);
}

void MpiCommunicator::Fail(std::string_view what, const std::string& problem, const std::function<void()>& cleanup) {
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  std::fprintf(stderr, "rank %d: %.*s %s\n", world_rank, static_cast<int>(what.size()), what.data(), problem.c_str());
  std::fflush(stderr);
  // MPI_Abort asks the launcher to kill every rank; if the runtime itself is gone, SIGALRM ends us anyway.
  alarm(20);
  if (cleanup) cleanup();
  MPI_Abort(MPI_COMM_WORLD, 1);
  _exit(1);
}

std::vector<int> MpiCommunicator::ProbeUnresponsive(double grace_s) {
  static int token = 1;  // sends may still be in flight when we abort
  std::vector<int> inbox(size_, 0);
  std::vector<MPI_Request> sends, recvs;
  std::vector<int> peer;
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    sends.emplace_back();
    MPI_Isend(&token, 1, MPI_INT, p, kProbeTag, probe_comm_, &sends.back());
    recvs.emplace_back();
    MPI_Irecv(&inbox[p], 1, MPI_INT, p, kProbeTag, probe_comm_, &recvs.back());
    peer.push_back(p);
  }
  const auto deadline = Clock::now() + std::chrono::duration<double>(grace_s);
  std::vector<int> done(recvs.size());
  while (Clock::now() < deadline) {
    int outcount = 0;
    MPI_Testsome(static_cast<int>(recvs.size()), recvs.data(), &outcount, done.data(), MPI_STATUSES_IGNORE);
    if (outcount == MPI_UNDEFINED) break;
    int ignored_count = 0;
    MPI_Testsome(static_cast<int>(sends.size()), sends.data(), &ignored_count, done.data(), MPI_STATUSES_IGNORE);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::vector<int> silent;
  for (size_t i = 0; i < recvs.size(); ++i) {
    if (recvs[i] != MPI_REQUEST_NULL) silent.push_back(peer[i]);
  }
  return silent;
}

void MpiCommunicator::Wait(std::vector<MPI_Request>& requests, const std::vector<int>& peer_of, std::string_view what) {
  if (requests.empty()) return;
  const int n = static_cast<int>(requests.size());
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration<double>(timeout_s_);
  std::vector<int> done(n);
  for (;;) {
    int outcount = 0;
    const int rc = MPI_Testsome(n, requests.data(), &outcount, done.data(), MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) Fail(what, "failed: " + MpiErrorString(rc) + " (a peer rank probably died)");
    if (outcount == MPI_UNDEFINED) return;  // every request is complete
    if (outcount > 0) continue;
    const auto now = Clock::now();
    if (now > deadline) break;
    // Spin politely at first (all-to-all waits are short), then stop burning a core on a slow peer.
    if (now - start < std::chrono::seconds(1)) {
      sched_yield();
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  std::vector<int> silent;
  for (int i = 0; i < n; ++i) {
    const int p = peer_of.empty() ? -1 : peer_of[i];
    if (p >= 0 && requests[i] != MPI_REQUEST_NULL) silent.push_back(p);
  }
  TimedOut(what, std::move(silent));
}

void MpiCommunicator::TimedOut(std::string_view what, std::vector<int> silent, const std::function<void()>& cleanup) {
  std::sort(silent.begin(), silent.end());
  silent.erase(std::unique(silent.begin(), silent.end()), silent.end());
  if (silent.empty()) silent = ProbeUnresponsive(std::clamp(0.2 * timeout_s_, 2.0, 30.0));
  std::string problem = absl::StrFormat("did not complete within %g s; ", timeout_s_);
  if (silent.empty()) {
    problem += "every other rank of the group is alive (mismatched collective calls?)";
  } else {
    std::vector<int> world;
    for (int p : silent) world.push_back(world_ranks_[p]);
    problem += DescribeRanks(world) + (world.size() == 1 ? " is" : " are") + " unresponsive or dead";
  }
  Fail(what, problem, cleanup);
}

namespace {

int64_t RowBytes(const at::Tensor& x) {
  int64_t row_bytes = static_cast<int64_t>(x.element_size());
  for (int64_t d = 1; d < x.dim(); ++d) row_bytes *= x.size(d);
  return row_bytes;
}

}  // namespace

at::Tensor MpiCommunicator::AllToAll(const at::Tensor& x_ND, const std::vector<int64_t>& send_rows_P,
                                     const std::vector<int64_t>& recv_rows_P, std::string_view what) {
  TORCH_CHECK(static_cast<int>(send_rows_P.size()) == size_ && static_cast<int>(recv_rows_P.size()) == size_, what,
              ": expected ", size_, " send and receive counts, got ", send_rows_P.size(), " and ", recv_rows_P.size());
  const int64_t out_rows = std::accumulate(recv_rows_P.begin(), recv_rows_P.end(), int64_t{0});
  return AllToAllBlocks(x_ND, ContiguousBlocks(send_rows_P), ContiguousBlocks(recv_rows_P), out_rows, what);
}

at::Tensor MpiCommunicator::AllToAllBlocks(const at::Tensor& x_ND, const BlocksPerPeer& send_P,
                                           const BlocksPerPeer& recv_P, int64_t out_rows, std::string_view what) {
  TORCH_CHECK(x_ND.device().is_cpu(), what, ": MpiCommunicator needs CPU tensors, got ", x_ND.device());
  TORCH_CHECK(x_ND.dim() >= 1, what, ": rows need a tensor with at least one dimension");
  CheckBlocksTile(send_P, size_, x_ND.size(0), what, "send");
  CheckBlocksTile(recv_P, size_, out_rows, what, "receive");
  const std::vector<RowBlock>& mine_out = send_P[rank_];
  const std::vector<RowBlock>& mine_in = recv_P[rank_];
  TORCH_CHECK(mine_out.size() == mine_in.size(), what, ": this rank sends itself ", mine_out.size(),
              " blocks but expects ", mine_in.size());
  for (size_t k = 0; k < mine_out.size(); ++k) {
    TORCH_CHECK(mine_out[k].rows == mine_in[k].rows, what, ": block ", k, " this rank sends itself has ",
                mine_out[k].rows, " rows but ", mine_in[k].rows, " are expected");
  }
  const at::Tensor x = x_ND.contiguous();
  std::vector<int64_t> shape = x.sizes().vec();
  shape[0] = out_rows;
  at::Tensor out = ReceiveBuffer(shape, x.options());
  const int64_t row_bytes = RowBytes(x);
  if (row_bytes == 0) return out;
  TORCH_CHECK(row_bytes < kChunkBytes, what, ": rows of ", row_bytes, " bytes are too large");
  MPI_Datatype row;
  MPI_Type_contiguous(static_cast<int>(row_bytes), MPI_BYTE, &row);
  MPI_Type_commit(&row);
  const char* src = static_cast<const char*>(x.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  // One message per non-empty block; messages between two ranks arrive in the order they were posted, and
  // both sides skip the same empty blocks, so block k meets block k.
  std::vector<MPI_Request> requests;
  std::vector<int> peer_of;
  for (int i = 1; i < size_; ++i) {
    const int p = (rank_ + i) % size_;  // staggered so that not everyone sends to rank 0 first
    for (const RowBlock& b : recv_P[p]) {
      if (b.rows == 0) continue;
      requests.emplace_back();
      peer_of.push_back(p);
      MPI_Irecv(dst + b.offset * row_bytes, static_cast<int>(b.rows), row, p, kAllToAllTag, comm_, &requests.back());
    }
  }
  for (int i = 1; i < size_; ++i) {
    const int p = (rank_ + size_ - i) % size_;
    for (const RowBlock& b : send_P[p]) {
      if (b.rows == 0) continue;
      requests.emplace_back();
      peer_of.push_back(-1);
      MPI_Isend(src + b.offset * row_bytes, static_cast<int>(b.rows), row, p, kAllToAllTag, comm_, &requests.back());
    }
  }
  for (size_t k = 0; k < mine_out.size(); ++k) {
    if (mine_out[k].rows == 0) continue;
    std::memcpy(dst + mine_in[k].offset * row_bytes, src + mine_out[k].offset * row_bytes,
                mine_out[k].rows * row_bytes);
  }
  Wait(requests, peer_of, what);
  MPI_Type_free(&row);
  return out;
}

at::Tensor MpiCommunicator::ReceiveBuffer(const std::vector<int64_t>& shape, const at::TensorOptions& options) {
  int64_t bytes = static_cast<int64_t>(options.dtype().itemsize());
  for (int64_t d : shape) bytes *= d;
  ++receive_calls_;
  // A buffer is free when the pool holds the only reference to its storage. Free buffers not used for a
  // while (sizes that routing no longer asks for) are dropped; the window grows with the pool, so a buffer
  // that each step uses once (a few exchanges per MoE layer per step) stays.
  const int64_t max_age = std::max<int64_t>(64, 4 * static_cast<int64_t>(receive_pool_.size()));
  receive_pool_.erase(std::remove_if(receive_pool_.begin(), receive_pool_.end(),
                                     [&](const PooledBuffer& b) {
                                       return b.bytes.storage().use_count() == 1 &&
                                              receive_calls_ - b.last_use > max_age;
                                     }),
                      receive_pool_.end());
  // The smallest free buffer that fits without wasting more than half of it.
  PooledBuffer* best = nullptr;
  for (PooledBuffer& b : receive_pool_) {
    const int64_t size = b.bytes.numel();
    if (b.bytes.storage().use_count() == 1 && size >= bytes && size <= 2 * bytes + (int64_t{1} << 16) &&
        (best == nullptr || size < best->bytes.numel())) {
      best = &b;
    }
  }
  if (best == nullptr) {
    // 1/8 headroom (whole pages): the rows an expert receives change a little from step to step.
    const int64_t padded = ((bytes + bytes / 8 + 4095) / 4096) * 4096;
    receive_pool_.push_back({at::empty({std::max<int64_t>(padded, 1)}, at::TensorOptions().dtype(at::kByte)), 0});
    best = &receive_pool_.back();
  }
  best->last_use = receive_calls_;
  std::vector<int64_t> strides(shape.size(), 1);
  for (int64_t d = static_cast<int64_t>(shape.size()) - 2; d >= 0; --d) strides[d] = strides[d + 1] * shape[d + 1];
  return at::empty({0}, options).set_(best->bytes.storage(), 0, shape, strides);
}

std::vector<int64_t> MpiCommunicator::AllToAllCounts(const std::vector<int64_t>& send_PN, std::string_view what) {
  TORCH_CHECK(send_PN.size() % size_ == 0, what, ": ", send_PN.size(), " counts do not split over ", size_, " ranks");
  const int n = static_cast<int>(send_PN.size() / size_);
  std::vector<int64_t> recv(send_PN.size());
  std::vector<MPI_Request> requests;
  std::vector<int> peer_of;
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) {
      std::copy_n(send_PN.begin() + p * n, n, recv.begin() + p * n);
      continue;
    }
    requests.emplace_back();
    peer_of.push_back(p);
    MPI_Irecv(recv.data() + p * n, n, MPI_INT64_T, p, kCountsTag, comm_, &requests.back());
    requests.emplace_back();
    peer_of.push_back(-1);
    MPI_Isend(send_PN.data() + p * n, n, MPI_INT64_T, p, kCountsTag, comm_, &requests.back());
  }
  Wait(requests, peer_of, what);
  return recv;
}

void MpiCommunicator::AllReduce(const at::Tensor& t, ReduceOp op, std::string_view what) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), what, ": MpiCommunicator reduces contiguous CPU tensors");
  if (size_ == 1 || t.numel() == 0) return;
  const MPI_Datatype type = MpiType(t.scalar_type());
  if (type == MPI_DATATYPE_NULL) {  // half / bfloat16: reduce in fp32
    at::Tensor wide = t.to(at::kFloat);
    AllReduce(wide, op, what);
    t.copy_(wide);
    return;
  }
  const int64_t chunk = kChunkBytes / static_cast<int64_t>(t.element_size());
  char* base = static_cast<char*>(t.data_ptr());
  for (int64_t begin = 0; begin < t.numel(); begin += chunk) {
    const int count = static_cast<int>(std::min(chunk, t.numel() - begin));
    std::vector<MPI_Request> requests(1);
    MPI_Iallreduce(MPI_IN_PLACE, base + begin * t.element_size(), count, type, op == ReduceOp::kSum ? MPI_SUM : MPI_MAX,
                   comm_, &requests[0]);
    Wait(requests, {}, what);
  }
}

void MpiCommunicator::Broadcast(const at::Tensor& t, int root, std::string_view what) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), what, ": MpiCommunicator broadcasts contiguous CPU tensors");
  if (size_ == 1) return;
  const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
  char* base = static_cast<char*>(t.data_ptr());
  for (int64_t begin = 0; begin < bytes; begin += kChunkBytes) {
    std::vector<MPI_Request> requests(1);
    MPI_Ibcast(base + begin, static_cast<int>(std::min(kChunkBytes, bytes - begin)), MPI_BYTE, root, comm_,
               &requests[0]);
    Wait(requests, {}, what);
  }
}

void MpiCommunicator::Barrier(std::string_view what) {
  if (size_ == 1) return;
  std::vector<MPI_Request> requests(1);
  MPI_Ibarrier(comm_, &requests[0]);
  Wait(requests, {}, what);
}

std::vector<std::string> MpiCommunicator::Gather(const std::string& bytes, int root, std::string_view what) {
  if (size_ == 1) return {bytes};
  // Sizes first, then each rank's bytes in chunks (no 2 GiB limit on a checkpoint shard).
  int64_t my_size = static_cast<int64_t>(bytes.size());
  std::vector<int64_t> sizes(size_, 0);
  std::vector<MPI_Request> requests;
  std::vector<int> peer_of;
  if (rank_ == root) {
    for (int p = 0; p < size_; ++p) {
      if (p == root) continue;
      requests.emplace_back();
      peer_of.push_back(p);
      MPI_Irecv(&sizes[p], 1, MPI_INT64_T, p, kGatherTag, comm_, &requests.back());
    }
  } else {
    requests.emplace_back();
    peer_of.push_back(-1);
    MPI_Isend(&my_size, 1, MPI_INT64_T, root, kGatherTag, comm_, &requests.back());
  }
  Wait(requests, peer_of, what);
  requests.clear();
  peer_of.clear();
  std::vector<std::string> out;
  if (rank_ == root) {
    out.resize(size_);
    out[root] = bytes;
    for (int p = 0; p < size_; ++p) {
      if (p == root) continue;
      out[p].resize(sizes[p]);
      for (int64_t begin = 0; begin < sizes[p]; begin += kChunkBytes) {
        requests.emplace_back();
        peer_of.push_back(p);
        MPI_Irecv(out[p].data() + begin, static_cast<int>(std::min(kChunkBytes, sizes[p] - begin)), MPI_BYTE, p,
                  kGatherTag, comm_, &requests.back());
      }
    }
  } else {
    for (int64_t begin = 0; begin < my_size; begin += kChunkBytes) {
      requests.emplace_back();
      peer_of.push_back(-1);
      MPI_Isend(bytes.data() + begin, static_cast<int>(std::min(kChunkBytes, my_size - begin)), MPI_BYTE, root,
                kGatherTag, comm_, &requests.back());
    }
  }
  Wait(requests, peer_of, what);
  return out;
}

std::shared_ptr<MpiCommunicator> MpiCommunicator::SplitMpi(int color, int key) {
  MPI_Comm sub = MPI_COMM_NULL;
  const int rc = MPI_Comm_split(comm_, color, key, &sub);
  if (rc != MPI_SUCCESS) Fail("splitting a communicator", "failed: " + MpiErrorString(rc));
  auto out = std::make_shared<MpiCommunicator>(sub, timeout_s_);
  MPI_Comm_free(&sub);
  return out;
}

std::shared_ptr<Communicator> MpiCommunicator::Split(int color, int key) { return SplitMpi(color, key); }

}  // namespace hybridmoe
