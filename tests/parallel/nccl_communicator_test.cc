// NcclCommunicator on CUDA tensors (GPU machines, --config=cuda; one GPU per rank or shared): the row
// all-to-all with irregular and zero counts, all-reduce, broadcast and a sub-group, checked against closed
// formulas as in communicator_test.cc. Skips when the process sees no CUDA device.
#include "parallel/nccl_communicator.h"

#include <ATen/Context.h>
#include <gtest/gtest.h>

#include "tests/parallel/mpi_gtest_main.h"

namespace hybridmoe {
namespace {

std::shared_ptr<Communicator> Nccl() {
  auto c = WithNccl(MpiCommunicator::World(60), WorldRank());
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : nullptr;
}

int64_t Rows(int from, int to) { return (from + 2 * to) % 3; }

TEST(NcclCommunicator, AllToAllAllReduceBroadcastSplit) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  std::shared_ptr<Communicator> comm = Nccl();
  ASSERT_NE(comm, nullptr);
  const int P = comm->size(), me = comm->rank();
  const at::Device cuda = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(WorldRank() % at::getNumGPUs()));

  std::vector<int64_t> send(P), recv(P);
  std::vector<at::Tensor> parts;
  for (int p = 0; p < P; ++p) {
    send[p] = Rows(me, p);
    recv[p] = Rows(p, me);
    parts.push_back(at::full({send[p], 3}, static_cast<double>(me * 10 + p), at::kFloat));
  }
  const at::Tensor y = comm->AllToAll(at::cat(parts).to(cuda), send, recv, "test all-to-all").cpu();
  int64_t row = 0;
  for (int p = 0; p < P; ++p) {
    for (int64_t i = 0; i < recv[p]; ++i, ++row) {
      EXPECT_TRUE(at::equal(y[row], at::full({3}, static_cast<float>(p * 10 + me)))) << "from " << p;
    }
  }

  at::Tensor sum = (at::arange(4, at::kFloat) + me).to(cuda);
  comm->AllReduce(sum, ReduceOp::kSum, "test sum");
  EXPECT_TRUE(at::equal(sum.cpu(), at::arange(4, at::kFloat) * P + P * (P - 1) / 2.0f));

  at::Tensor b = me == P - 1 ? at::arange(5, at::kLong).to(cuda) : at::zeros({5}, at::kLong).to(cuda);
  comm->Broadcast(b, P - 1, "test broadcast");
  EXPECT_TRUE(at::equal(b.cpu(), at::arange(5, at::kLong)));

  std::shared_ptr<Communicator> sub = comm->Split(me % 2, me);
  at::Tensor s = at::full({2}, static_cast<double>(me), at::kDouble).to(cuda);
  sub->AllReduce(s, ReduceOp::kMax, "sub-group max");
  int expected = me;
  for (int r = me; r < P; r += 2) expected = r;
  EXPECT_EQ(s.cpu()[0].item<double>(), expected);
}

}  // namespace
}  // namespace hybridmoe
