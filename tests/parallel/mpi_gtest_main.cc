#include "tests/parallel/mpi_gtest_main.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

namespace hybridmoe {
namespace {

std::vector<std::string>& Args() {
  static std::vector<std::string> args;
  return args;
}

// Prints failed assertions of a rank other than 0 (rank 0 has the default printer).
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, result.file_name() ? result.file_name() : "?",
                 result.line_number(), result.summary());
  }

 private:
  int rank_;
};

}  // namespace

int IntTestFlag(const std::string& name, int fallback) {
  const std::string prefix = "--" + name + "=";
  for (const std::string& a : Args()) {
    if (a.rfind(prefix, 0) == 0) return std::atoi(a.c_str() + prefix.size());
  }
  return fallback;
}

int WorldRank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int WorldSize() {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

}  // namespace hybridmoe

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
  ::testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i) hybridmoe::Args().push_back(argv[i]);
  at::set_num_threads(1);
  const int rank = hybridmoe::WorldRank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new hybridmoe::FailurePrinter(rank));
  }
  int rc = RUN_ALL_TESTS();
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
