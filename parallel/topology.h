// Process layout: how the job was launched, where each rank runs, and which ranks form the expert- and
// data-parallel groups. Pure functions of their inputs (no MPI), so every rule is unit-tested.
//
// world = EP x DP. Ranks are laid out in node-major order (nodes in order of their lowest rank, then local
// rank); each run of EP consecutive positions is an expert-parallel group, so an EP group stays inside one
// node whenever nodes hold a multiple of EP ranks. ep_rank = position % EP, dp_rank = position / EP; under
// block placement (mpirun's default, srun's block distribution) position == rank. Expert e lives on
// ep_rank e / (E / EP). A rank's DP group holds the ranks with the same ep_rank (the same experts).
//
// Launchers: mpirun sets OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK}; srun sets SLURM_STEP_ID,
// SLURM_STEP_NUM_TASKS, SLURM_PROCID, and PMIX_RANK only with --mpi=pmix. Under mpirun inside a Slurm
// allocation every rank inherits SLURM_PROCID=0, so ranks always come from MPI, never from SLURM_*.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/config.pb.h"

namespace hybridmoe {

struct LaunchInfo {
  bool use_mpi = false;         // started by a launcher MPI can join (MPI_Init needed)
  int expected_world_size = 1;  // what the launcher's variables say (0: they do not say)
  std::string launcher;         // "none", "mpirun", "srun (Slurm job 42, step 0)", "PMI launcher"
  int rank = 0;                 // this process's rank as the launcher's variables say (0 when unset)
};

// `getenv` returns nullptr for an unset variable. Errors: srun started several tasks but gave them no
// MPI wire-up (each would train alone).
// The one parser of launch environments: ParallelContext, tools/bench and tools/compare_norms use it.
absl::StatusOr<LaunchInfo> DetectLaunch(const std::function<const char*(const char*)>& getenv);
// DetectLaunch(std::getenv).
absl::StatusOr<LaunchInfo> DetectLaunch();
// This process's rank as the launcher's variables say (0 when none is set); valid even where DetectLaunch
// fails, so that one rank can report the failure.
int LaunchRank(const std::function<const char*(const char*)>& getenv);
int LaunchRank();

// After MPI_Init: the launcher's task count must equal MPI's world size.
absl::Status CheckWorldSize(const LaunchInfo& launch, int mpi_world_size);

struct RankPlace {
  int node = 0;  // any id shared exactly by the ranks of one node (e.g. the node's lowest world rank)
  int local_rank = 0;
};

struct Topology {
  int rank = 0, world_size = 1;
  int local_rank = 0, local_size = 1;
  int node = 0, num_nodes = 1;  // node index, nodes numbered in order of their lowest rank
  int ep_rank = 0, ep_size = 1;
  int dp_rank = 0, dp_size = 1;
  std::vector<int> ep_group;  // world ranks of this rank's EP group, indexed by ep_rank
  std::vector<int> dp_group;  // world ranks holding the same experts, indexed by dp_rank
};

// `places[r]` describes world rank r. `ep_size` must divide places.size().
Topology MakeTopology(const std::vector<RankPlace>& places, int rank, int ep_size);

// The job's layout as rank 0 records it in the run directory (topology.json), one JSON object:
//   launcher, world_size, ep_size, dp_size, num_hosts;
//   hosts: [{name, ranks: [world ranks, by local rank]}] in node order (MakeTopology's node index);
//   ranks: [{rank, host, node, local_rank, ep_rank, dp_rank}] by world rank;
//   ep_groups: the world ranks of each EP group (indexed by dp_rank, each indexed by ep_rank);
//   dp_groups: the world ranks holding each EP rank's experts (indexed by ep_rank, each by dp_rank).
// `places[r]` and `hosts[r]` (the host name, e.g. MPI's processor name) describe world rank r.
std::string TopologyJson(const std::vector<RankPlace>& places, const std::vector<std::string>& hosts, int ep_size,
                         const std::string& launcher);

}  // namespace hybridmoe
