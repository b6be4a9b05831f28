// Launcher detection, parallel config checks and the EP/DP layout, without MPI.
#include "parallel/topology.h"
#include "core/config.h"

#include <map>
#include <string>

#include <gtest/gtest.h>

namespace hybridmoe {
namespace {

// A fake environment.
struct Env {
  std::map<std::string, std::string> vars;
  std::function<const char*(const char*)> getenv() const {
    return [this](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  }
};

TEST(DetectLaunch, NoLauncherMeansOneRankWithoutMpi) {
  const auto info = DetectLaunch(Env{}.getenv());
  ASSERT_TRUE(info.ok());
  EXPECT_FALSE(info->use_mpi);
  EXPECT_EQ(info->launcher, "none");
  // A Slurm batch script (no job step) is not a launch of several ranks either.
  const auto batch = DetectLaunch(Env{{{"SLURM_JOB_ID", "3"}, {"SLURM_NTASKS", "4"}, {"SLURM_PROCID", "0"}}}.getenv());
  ASSERT_TRUE(batch.ok());
  EXPECT_FALSE(batch->use_mpi);
}

TEST(DetectLaunch, Mpirun) {
  const auto info =
      DetectLaunch(Env{{{"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_RANK", "2"}, {"PMIX_RANK", "2"}}}.getenv());
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->use_mpi);
  EXPECT_EQ(info->launcher, "mpirun");
  EXPECT_EQ(info->expected_world_size, 4);
}

TEST(DetectLaunch, MpirunInsideSlurmIgnoresSlurmProcid) {
  const auto info = DetectLaunch(Env{{{"OMPI_COMM_WORLD_SIZE", "2"},
                                      {"SLURM_JOB_ID", "9"},
                                      {"SLURM_PROCID", "0"},
                                      {"SLURM_NTASKS", "2"},
                                      {"SLURM_STEP_ID", "0"},
                                      {"SLURM_STEP_NUM_TASKS", "1"}}}
                                     .getenv());
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->launcher, "mpirun");
  EXPECT_EQ(info->expected_world_size, 2);
}

TEST(DetectLaunch, SrunWithPmix) {
  const auto info = DetectLaunch(Env{
      {{"SLURM_JOB_ID", "42"},
       {"SLURM_STEP_ID", "0"},
       {"SLURM_STEP_NUM_TASKS", "8"},
       {"SLURM_PROCID", "5"},
       {"PMIX_RANK", "5"}}}.getenv());
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->use_mpi);
  EXPECT_EQ(info->launcher, "srun (Slurm job 42, step 0)");
  EXPECT_EQ(info->expected_world_size, 8);
}

TEST(DetectLaunch, SrunWithoutMpiWireUpFailsWithOneLine) {
  const auto info = DetectLaunch(
      Env{{{"SLURM_JOB_ID", "42"}, {"SLURM_STEP_ID", "1"}, {"SLURM_STEP_NUM_TASKS", "4"}, {"SLURM_PROCID", "1"}}}
          .getenv());
  ASSERT_FALSE(info.ok());
  const std::string message(info.status().message());
  EXPECT_NE(message.find("SLURM_STEP_NUM_TASKS=4"), std::string::npos) << message;
  EXPECT_NE(message.find("srun --mpi=pmix"), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos);
  // One task needs no wire-up.
  const auto one = DetectLaunch(Env{{{"SLURM_STEP_ID", "1"}, {"SLURM_STEP_NUM_TASKS", "1"}}}.getenv());
  ASSERT_TRUE(one.ok());
  EXPECT_FALSE(one->use_mpi);
}

TEST(CheckWorldSize, LauncherAndMpiMustAgree) {
  LaunchInfo info;
  info.launcher = "mpirun";
  info.expected_world_size = 4;
  EXPECT_TRUE(CheckWorldSize(info, 4).ok());
  const absl::Status bad = CheckWorldSize(info, 1);
  EXPECT_EQ(bad.message(),
            "launch: mpirun started 4 ranks but MPI sees a world of 1; the launcher and the MPI "
            "library disagree");
  info.expected_world_size = 0;  // unknown
  EXPECT_TRUE(CheckWorldSize(info, 3).ok());
}

TrainConfig Config(int ep, int experts) {
  TrainConfig c;
  c.mutable_parallel()->set_expert_parallel_size(ep);
  c.mutable_model()->mutable_moe()->set_num_experts(experts);
  return c;
}

TEST(ValidateParallelConfig, NamesTheFieldTheValueAndWhatIsValid) {
  EXPECT_TRUE(ValidateParallelConfig(Config(2, 8), 4).ok());
  EXPECT_TRUE(ValidateParallelConfig(Config(4, 8), 4).ok());
  EXPECT_EQ(ValidateParallelConfig(Config(3, 9), 4).message(),
            "parallel.expert_parallel_size (3) must divide the number of ranks (4); valid: 1, 2, 4");
  EXPECT_EQ(ValidateParallelConfig(Config(0, 8), 4).message(),
            "parallel.expert_parallel_size (0) must divide the number of ranks (4); valid: 1, 2, 4");
  EXPECT_EQ(ValidateParallelConfig(Config(4, 6), 8).message(),
            "model.moe.num_experts (6) must be divisible by parallel.expert_parallel_size (4); valid sizes here: 1, 2");
  TrainConfig dense = Config(4, 6);
  dense.mutable_model()->mutable_moe()->set_every_n_layers(0);  // no MoE layer: nothing to shard
  EXPECT_TRUE(ValidateParallelConfig(dense, 4).ok());
  TrainConfig no_timeout = Config(1, 8);
  no_timeout.mutable_parallel()->set_timeout_s(0);
  EXPECT_EQ(ValidateParallelConfig(no_timeout, 1).message(),
            "parallel.timeout_s (0) must be > 0 seconds (and at most 1e7)");
}

// Two nodes with two ranks each, placed by blocks (0,1 | 2,3) or round-robin (0,2 | 1,3).
std::vector<RankPlace> TwoNodes(bool round_robin) {
  if (round_robin) return {{0, 0}, {1, 0}, {0, 1}, {1, 1}};
  return {{0, 0}, {0, 1}, {2, 0}, {2, 1}};
}

TEST(MakeTopology, BlockPlacementKeepsEpGroupsInsideNodes) {
  const std::vector<RankPlace> places = TwoNodes(false);
  const Topology t = MakeTopology(places, 3, 2);
  EXPECT_EQ(t.world_size, 4);
  EXPECT_EQ(t.num_nodes, 2);
  EXPECT_EQ(t.node, 1);
  EXPECT_EQ(t.local_rank, 1);
  EXPECT_EQ(t.local_size, 2);
  EXPECT_EQ(t.ep_rank, 1);
  EXPECT_EQ(t.dp_rank, 1);
  EXPECT_EQ(t.ep_group, (std::vector<int>{2, 3}));
  EXPECT_EQ(t.dp_group, (std::vector<int>{1, 3}));
  for (int r = 0; r < 4; ++r) {  // position == rank under block placement
    const Topology u = MakeTopology(places, r, 2);
    EXPECT_EQ(u.ep_rank, r % 2);
    EXPECT_EQ(u.dp_rank, r / 2);
  }
}

TEST(MakeTopology, RoundRobinPlacementStillGroupsNodeLocalRanks) {
  const std::vector<RankPlace> places = TwoNodes(true);  // node 0 holds ranks 0, 2; node 1 holds 1, 3
  const Topology t0 = MakeTopology(places, 0, 2), t2 = MakeTopology(places, 2, 2), t1 = MakeTopology(places, 1, 2);
  EXPECT_EQ(t0.ep_group, (std::vector<int>{0, 2}));
  EXPECT_EQ(t2.ep_group, (std::vector<int>{0, 2}));
  EXPECT_EQ(t1.ep_group, (std::vector<int>{1, 3}));
  EXPECT_EQ(t2.ep_rank, 1);
  EXPECT_EQ(t1.ep_rank, 0);
  EXPECT_EQ(t1.dp_rank, 1);
  EXPECT_EQ(t1.dp_group, (std::vector<int>{0, 1}));
  EXPECT_EQ(t1.node, 1);
}

TEST(MakeTopology, WholeWorldAndPureDataParallel) {
  const std::vector<RankPlace> places = TwoNodes(false);
  const Topology ep4 = MakeTopology(places, 2, 4);
  EXPECT_EQ(ep4.ep_rank, 2);
  EXPECT_EQ(ep4.dp_size, 1);
  EXPECT_EQ(ep4.ep_group, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(ep4.dp_group, (std::vector<int>{2}));
  const Topology dp4 = MakeTopology(places, 2, 1);
  EXPECT_EQ(dp4.ep_rank, 0);
  EXPECT_EQ(dp4.dp_rank, 2);
  EXPECT_EQ(dp4.ep_group, (std::vector<int>{2}));
  EXPECT_EQ(dp4.dp_group, (std::vector<int>{0, 1, 2, 3}));
  const Topology single = MakeTopology({{0, 0}}, 0, 1);
  EXPECT_EQ(single.world_size, 1);
  EXPECT_EQ(single.ep_group, (std::vector<int>{0}));
}

}  // namespace
}  // namespace hybridmoe
