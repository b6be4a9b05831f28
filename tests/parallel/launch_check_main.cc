// A stand-in for a tool's main() around ParallelContext::Create, for launch tests:
//   launch_check [--ep=N] [--experts=E]
// On success every rank prints "rank R of W: node NODE (index-free name), local L/LS, ep E/EPS, dp D/DPS,
// ep group [..]" to stdout; on a launch or config error rank 0 alone prints "error: MESSAGE" and every rank
// exits 1.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/str_join.h"
#include "parallel/communicator.h"
#include "parallel/context.h"

int main(int argc, char** argv) {
  hybridmoe::TrainConfig config;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--ep=", 0) == 0) config.mutable_parallel()->set_expert_parallel_size(std::atoi(a.c_str() + 5));
    if (a.rfind("--experts=", 0) == 0)
      config.mutable_model()->mutable_moe()->set_num_experts(std::atoi(a.c_str() + 10));
  }
  config.mutable_parallel()->set_timeout_s(30);
  auto ctx = hybridmoe::ParallelContext::Create(config);
  if (!ctx.ok()) {
    if (hybridmoe::ParallelContext::IsRankZero())
      std::fprintf(stderr, "error: %s\n", std::string(ctx.status().message()).c_str());
    return 1;
  }
  const auto& c = **ctx;
  std::vector<int> group;
  for (int e = 0; e < c.ep_size(); ++e) group.push_back(c.ep_group()->world_rank(e));
  std::printf("rank %d of %d: node %s, local %d/%d, ep %d/%d, dp %d/%d, ep group [%s]\n", c.rank(), c.world_size(),
              c.node_name().c_str(), c.local_rank(), c.local_size(), c.ep_rank(), c.ep_size(), c.dp_rank(), c.dp_size(),
              absl::StrJoin(group, ",").c_str());
  std::fflush(stdout);
  return 0;
}
