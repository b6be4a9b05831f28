// MpiCommunicator collectives on 2, 3 and 4 ranks: irregular and zero counts, dtypes, sub-groups. Every
// expected value is computed from a closed formula of (sender, receiver, index), independent of the code.
#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"

#include <gtest/gtest.h>

#include "tests/parallel/mpi_gtest_main.h"

namespace hybridmoe {
namespace {

constexpr double kTimeout = 60;

// Rows rank `from` sends to rank `to`: irregular, often zero (also to itself).
int64_t Rows(int from, int to) { return (from + 2 * to) % 3; }

double Value(int from, int to, int64_t row, int64_t j) { return from * 1000 + to * 100 + row * 10 + j; }

TEST(Communicator, RankAndSize) {
  auto world = MpiCommunicator::World(kTimeout);
  EXPECT_EQ(world->rank(), WorldRank());
  EXPECT_EQ(world->size(), WorldSize());
  for (int r = 0; r < world->size(); ++r) EXPECT_EQ(world->world_rank(r), r);
}

TEST(Communicator, AllToAllIrregularAndZeroCounts) {
  auto world = MpiCommunicator::World(kTimeout);
  const int P = world->size(), me = world->rank();
  for (at::ScalarType dtype : {at::kDouble, at::kFloat, at::kLong, at::kBFloat16}) {
    std::vector<int64_t> send(P), recv(P);
    std::vector<at::Tensor> parts;
    for (int p = 0; p < P; ++p) {
      send[p] = Rows(me, p);
      recv[p] = Rows(p, me);
      at::Tensor part = at::empty({send[p], 2, 3}, at::kDouble);
      for (int64_t i = 0; i < send[p]; ++i) {
        for (int64_t j = 0; j < 6; ++j)
          part[i].view({-1})[j] = Value(me, p, i, j) / (dtype == at::kBFloat16 ? 1000 : 1);
      }
      parts.push_back(part);
    }
    const at::Tensor x = at::cat(parts).to(dtype);
    const at::Tensor y = world->AllToAll(x, send, recv, "test all-to-all");
    int64_t total = 0;
    for (int p = 0; p < P; ++p) total += recv[p];
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{total, 2, 3}));
    EXPECT_EQ(y.scalar_type(), dtype);
    int64_t row = 0;
    for (int p = 0; p < P; ++p) {
      for (int64_t i = 0; i < recv[p]; ++i, ++row) {
        for (int64_t j = 0; j < 6; ++j) {
          const double expected = Value(p, me, i, j) / (dtype == at::kBFloat16 ? 1000 : 1);
          const double got = y[row].view({-1})[j].item<double>();
          EXPECT_NEAR(got, expected, dtype == at::kBFloat16 ? 0.02 : 0) << "from " << p << " row " << i;
        }
      }
    }
  }
}

// Block k of the rows `from` sends `to`: irregular sizes, some empty.
int64_t BlockRows(int from, int to, int k) { return (from + 2 * to + k) % 3; }
double BlockValue(int from, int to, int k, int64_t row, int64_t j) { return Value(from, to, row, j) + k * 0.25; }

// Sends block k to peer p from a scattered place in x (peers in reverse order, blocks in reverse order) and
// receives it grouped by block index first, then by source rank (the layout the EP dispatcher wants).
// Checked for the in-place MPI exchange and for the base class's pack/unpack path.
TEST(Communicator, AllToAllBlocksScatteredLayouts) {
  auto world = MpiCommunicator::World(kTimeout);
  const int P = world->size(), me = world->rank();
  constexpr int kBlocks = 3;
  constexpr int64_t D = 2;
  BlocksPerPeer send(P), recv(P);
  int64_t n = 0;
  for (int p = P - 1; p >= 0; --p) {
    for (int k = kBlocks - 1; k >= 0; --k) n += BlockRows(me, p, k);
  }
  at::Tensor x = at::empty({n, D}, at::kDouble);
  int64_t offset = 0;
  for (int p = P - 1; p >= 0; --p) {
    send[p].resize(kBlocks);
    for (int k = kBlocks - 1; k >= 0; --k) {
      send[p][k] = {offset, BlockRows(me, p, k)};
      for (int64_t i = 0; i < send[p][k].rows; ++i) {
        for (int64_t j = 0; j < D; ++j) x[offset + i][j] = BlockValue(me, p, k, i, j);
      }
      offset += send[p][k].rows;
    }
  }
  int64_t out_rows = 0;
  for (int k = 0; k < kBlocks; ++k) {
    for (int p = 0; p < P; ++p) {
      recv[p].push_back({out_rows, BlockRows(p, me, k)});
      out_rows += BlockRows(p, me, k);
    }
  }
  const at::Tensor in_place = world->AllToAllBlocks(x, send, recv, out_rows, "test block all-to-all");
  const at::Tensor packed = world->Communicator::AllToAllBlocks(x, send, recv, out_rows, "test packed all-to-all");
  for (const at::Tensor& y : {in_place, packed}) {
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{out_rows, D}));
    for (int p = 0; p < P; ++p) {
      for (int k = 0; k < kBlocks; ++k) {
        for (int64_t i = 0; i < recv[p][k].rows; ++i) {
          for (int64_t j = 0; j < D; ++j) {
            EXPECT_EQ(y[recv[p][k].offset + i][j].item<double>(), BlockValue(p, me, k, i, j))
                << "from " << p << " block " << k << " row " << i;
          }
        }
      }
    }
  }
}

// Receive buffers are reused only once nothing refers to them: a live result keeps its rows.
TEST(Communicator, AllToAllReusesOnlyFreeReceiveBuffers) {
  auto world = MpiCommunicator::World(kTimeout);
  const int P = world->size(), me = world->rank();
  const std::vector<int64_t> rows(P, 3);
  auto exchange = [&](double base) {
    const at::Tensor x = at::full({3 * P, 4}, base + me, at::kFloat);
    return world->AllToAll(x, rows, rows, "test reuse");
  };
  at::Tensor first = exchange(10);
  const void* first_ptr = first.data_ptr();
  at::Tensor view_of_first = first.narrow(0, 0, 3);
  first = at::Tensor();  // a view still holds the storage
  const at::Tensor second = exchange(20);
  EXPECT_NE(second.data_ptr(), first_ptr);
  for (int p = 0; p < P; ++p) {
    EXPECT_EQ(second[3 * p][0].item<float>(), 20 + p);
  }
  EXPECT_EQ(view_of_first[0][0].item<float>(), 10);  // from rank 0, untouched by the second exchange
  view_of_first = at::Tensor();
  const at::Tensor third = exchange(30);
  EXPECT_EQ(third.data_ptr(), first_ptr);  // free again: reused
  EXPECT_EQ(third[3 * (P - 1)][3].item<float>(), 30 + P - 1);
}

// Buffers of sizes no longer asked for are dropped after a while; the pool stays at what is in use.
TEST(Communicator, ReceivePoolDropsStaleBuffers) {
  auto world = MpiCommunicator::World(kTimeout);
  const int P = world->size();
  auto exchange = [&](int64_t rows) {
    const std::vector<int64_t> per_peer(P, rows);
    world->AllToAll(at::zeros({rows * P, 256}), per_peer, per_peer, "test stale");
  };
  exchange(1000);  // ~1 MB per rank, freed at once
  const int64_t big = world->receive_pool_bytes();
  EXPECT_GE(big, 1000 * P * 256 * 4);
  for (int i = 0; i < 200; ++i) exchange(10);
  EXPECT_LT(world->receive_pool_bytes(), big / 10) << "the 1000-row buffer should have been dropped";
  EXPECT_GT(world->receive_pool_bytes(), 0);
}

TEST(Communicator, AllToAllBlocksMustTileTheRows) {
  auto world = MpiCommunicator::World(kTimeout);
  const int P = world->size();
  const at::Tensor x = at::zeros({4, 2});
  BlocksPerPeer ok(P), gap(P), overlap(P);
  ok[0] = {{0, 4}};
  gap[0] = {{0, 1}, {2, 2}};
  overlap[0] = {{0, 3}, {2, 2}};
  auto message = [&](const BlocksPerPeer& send) -> std::string {
    try {
      CheckBlocksTile(send, P, x.size(0), "test", "send");
    } catch (const c10::Error& e) {
      return e.what_without_backtrace();
    }
    return "";
  };
  EXPECT_EQ(message(ok), "");
  EXPECT_NE(message(gap).find("send blocks do not tile the 4 rows (row 1 is in no block)"), std::string::npos)
      << message(gap);
  EXPECT_NE(message(overlap).find("send blocks do not tile the 4 rows (row 2 is in two blocks)"), std::string::npos)
      << message(overlap);
  EXPECT_NE(message(BlocksPerPeer(P + 1)).find("expected send blocks for"), std::string::npos);
  BlocksPerPeer outside(P);
  outside[0] = {{2, 5}};
  EXPECT_NE(message(outside).find("send block [2, 7) is outside the 4 rows"), std::string::npos) << message(outside);
}

TEST(Communicator, AllToAllWithNothingToMove) {
  auto world = MpiCommunicator::World(kTimeout);
  const int P = world->size();
  const std::vector<int64_t> zeros(P, 0);
  const at::Tensor y = world->AllToAll(at::empty({0, 4}), zeros, zeros, "empty all-to-all");
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{0, 4}));
}

TEST(Communicator, AllToAllCounts) {
  auto world = MpiCommunicator::World(kTimeout);
  const int P = world->size(), me = world->rank();
  std::vector<int64_t> send;
  for (int p = 0; p < P; ++p) {
    for (int k = 0; k < 3; ++k) send.push_back(me * 100 + p * 10 + k);
  }
  const std::vector<int64_t> recv = world->AllToAllCounts(send, "test counts");
  ASSERT_EQ(recv.size(), send.size());
  for (int p = 0; p < P; ++p) {
    for (int k = 0; k < 3; ++k) EXPECT_EQ(recv[p * 3 + k], p * 100 + me * 10 + k);
  }
}

TEST(Communicator, AllReduceSumAndMax) {
  auto world = MpiCommunicator::World(kTimeout);
  const int P = world->size(), me = world->rank();
  const at::Tensor base = at::arange(5, at::kDouble);
  for (at::ScalarType dtype : {at::kFloat, at::kDouble, at::kLong, at::kBFloat16}) {
    at::Tensor sum = (base + me).to(dtype);
    world->AllReduce(sum, ReduceOp::kSum, "test sum");
    // sum_r (i + r) = P*i + P(P-1)/2
    EXPECT_TRUE(at::equal(sum.to(at::kDouble), base * P + P * (P - 1) / 2.0)) << dtype;
    at::Tensor max = (base * (me % 2 == 0 ? 1 : -1) + me).to(dtype);
    world->AllReduce(max, ReduceOp::kMax, "test max");
    at::Tensor expected = at::full({5}, -1e9, at::kDouble);
    for (int r = 0; r < P; ++r) expected = at::maximum(expected, base * (r % 2 == 0 ? 1 : -1) + r);
    EXPECT_TRUE(at::equal(max.to(at::kDouble), expected)) << dtype;
  }
}

TEST(Communicator, BroadcastFromLastRank) {
  auto world = MpiCommunicator::World(kTimeout);
  const int root = world->size() - 1;
  at::Tensor t = world->rank() == root ? at::arange(7, at::kFloat) * 3 : at::zeros({7}, at::kFloat);
  world->Broadcast(t, root, "test broadcast");
  EXPECT_TRUE(at::equal(t, at::arange(7, at::kFloat) * 3));
}

TEST(Communicator, GatherBytesIncludingEmpty) {
  auto world = MpiCommunicator::World(kTimeout);
  const int P = world->size(), me = world->rank(), root = 1 % P;
  const std::string mine(static_cast<size_t>(me * 3), static_cast<char>('a' + me));  // rank 0: empty
  const std::vector<std::string> all = world->Gather(mine, root, "test gather");
  if (me == root) {
    ASSERT_EQ(static_cast<int>(all.size()), P);
    for (int r = 0; r < P; ++r) EXPECT_EQ(all[r], std::string(static_cast<size_t>(r * 3), static_cast<char>('a' + r)));
  } else {
    EXPECT_TRUE(all.empty());
  }
  world->Barrier("test barrier");
}

TEST(Communicator, SplitIntoSubGroups) {
  auto world = MpiCommunicator::World(kTimeout);
  const int P = world->size(), me = world->rank();
  // Even and odd ranks, each group ordered by descending world rank.
  std::shared_ptr<Communicator> sub = world->Split(me % 2, -me);
  std::vector<int> members;
  for (int r = P - 1; r >= 0; --r) {
    if (r % 2 == me % 2) members.push_back(r);
  }
  ASSERT_EQ(sub->size(), static_cast<int>(members.size()));
  for (int i = 0; i < sub->size(); ++i) EXPECT_EQ(sub->world_rank(i), members[i]);
  EXPECT_EQ(sub->world_rank(sub->rank()), me);

  at::Tensor t = at::full({3}, static_cast<double>(me), at::kDouble);
  sub->AllReduce(t, ReduceOp::kSum, "sub-group sum");
  double expected = 0;
  for (int r : members) expected += r;
  EXPECT_TRUE(at::equal(t, at::full({3}, expected, at::kDouble)));

  // All-to-all inside the sub-group: one row per peer holding (sender world rank, receiver world rank).
  const int Q = sub->size();
  at::Tensor x = at::empty({Q, 2}, at::kLong);
  for (int q = 0; q < Q; ++q) {
    x[q][0] = me;
    x[q][1] = sub->world_rank(q);
  }
  const at::Tensor y = sub->AllToAll(x, std::vector<int64_t>(Q, 1), std::vector<int64_t>(Q, 1), "sub-group a2a");
  for (int q = 0; q < Q; ++q) {
    EXPECT_EQ(y[q][0].item<int64_t>(), sub->world_rank(q));
    EXPECT_EQ(y[q][1].item<int64_t>(), me);
  }
  // A group of one (every rank alone) behaves like the identity.
  std::shared_ptr<Communicator> alone = world->Split(me, 0);
  EXPECT_EQ(alone->size(), 1);
  at::Tensor one = at::full({2}, 5.0);
  alone->AllReduce(one, ReduceOp::kSum, "alone");
  EXPECT_TRUE(at::equal(one, at::full({2}, 5.0)));
}

TEST(Communicator, SelfCommunicatorIsTheIdentity) {
  SelfCommunicator self;
  const at::Tensor x = at::arange(6, at::kFloat).view({3, 2});
  EXPECT_TRUE(at::equal(self.AllToAll(x, {3}, {3}, "self"), x));
  EXPECT_EQ(self.AllToAllCounts({4, 5}, "self"), (std::vector<int64_t>{4, 5}));
  EXPECT_EQ(self.Gather("abc", 0, "self"), (std::vector<std::string>{"abc"}));
  EXPECT_THROW(self.AllToAll(x, {2}, {2}, "self"), c10::Error);
}

}  // namespace
}  // namespace hybridmoe
