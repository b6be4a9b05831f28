// Dead-rank handling, run by kill_test.sh under mpirun:
//   kill_test --mode=kill|hang|none [--where=alltoall|allreduce] [--timeout=S]
// Every rank runs steps of: forward+backward of an expert-parallel MoE layer (layer index 3, EP = world
// size), then a sum over ranks. At step 2 rank 1 either SIGKILLs itself (mode kill) or SIGSTOPs itself
// (mode hang: alive but silent) while the other ranks wait in the layer's all-to-all or in the sum. The
// others must not hang: with kill, mpirun notices the death and ends the job; with hang, their
// collectives time out after S seconds and they abort naming rank 1. Mode none runs to completion. Mode
// stuck_cleanup: rank 1 fails at once (MpiCommunicator::Fail) with a cleanup that never returns, as
// ncclCommAbort can on a dead peer; the alarm armed before the cleanup must still end it.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "moe/moe_layer.h"
#include "parallel/context.h"
#include "parallel/ep_dispatcher.h"
#include "parallel/mpi_communicator.h"

int main(int argc, char** argv) {
  std::string mode = "none", where = "alltoall";
  double timeout = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--mode=", 0) == 0) mode = a.substr(7);
    if (a.rfind("--where=", 0) == 0) where = a.substr(8);
    if (a.rfind("--timeout=", 0) == 0) timeout = std::atof(a.c_str() + 10);
  }
  hybridmoe::TrainConfig config;
  config.mutable_parallel()->set_timeout_s(timeout);
  auto ctx = hybridmoe::ParallelContext::Create(config);
  if (!ctx.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(ctx.status().message()).c_str());
    return 1;
  }
  const int rank = (*ctx)->rank(), world = (*ctx)->world_size();
  hybridmoe::MoeOptions options;
  options.d_model = 8;
  options.num_experts = 2 * world;
  options.hidden = 8;
  hybridmoe::MoeLayer layer(options);
  layer->set_dispatcher(
      std::make_shared<hybridmoe::AllToAllDispatcher>((*ctx)->world_group(), options.num_experts, /*layer=*/3));
  hybridmoe::InitPlan plan;
  layer->reset_parameters(plan, "blocks.3.moe.");
  auto fail_here = [&](const char* place, int step) {
    if (step != 2 || rank != 1 || mode == "none" || where != place) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the others are waiting by now
    std::fprintf(stderr, "rank 1: raising %s at step 2 before the %s\n", mode == "kill" ? "SIGKILL" : "SIGSTOP", place);
    std::fflush(stderr);
    raise(mode == "kill" ? SIGKILL : SIGSTOP);
  };
  if (mode == "stuck_cleanup") {
    // Nobody else aborts the job (the others sleep, in no collective): only rank 1's own alarm can end it.
    if (rank == 1) {
      auto mpi = std::dynamic_pointer_cast<hybridmoe::MpiCommunicator>((*ctx)->world_group());
      mpi->Fail("test failure:", "with a cleanup that never returns", [] {
        for (;;) pause();
      });
    }
    std::this_thread::sleep_for(std::chrono::seconds(90));
    return 0;
  }
  for (int step = 0; step < 5; ++step) {
    fail_here("alltoall", step);
    const at::Tensor x = at::randn({4, 8}).requires_grad_(true);
    const at::Tensor loss = layer(x).y_TD.sum();
    loss.backward();
    fail_here("allreduce", step);
    std::vector<double> total = {loss.item<double>()};
    (*ctx)->SumOverRanks(total);
  }
  (*ctx)->Barrier();
  if (rank == 0) std::printf("all %d ranks finished\n", world);
  return 0;
}
