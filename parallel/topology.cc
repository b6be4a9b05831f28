#include "parallel/topology.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <numeric>
#include <tuple>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace hybridmoe {
namespace {

// Positive integer value of a variable, 0 when unset or not a number.
int IntVar(const std::function<const char*(const char*)>& getenv, const char* name) {
  const char* v = getenv(name);
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  return (*end == '\0' && n > 0 && n < (1 << 30)) ? static_cast<int>(n) : 0;
}

}  // namespace

int LaunchRank(const std::function<const char*(const char*)>& getenv) {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"}) {
    if (getenv(var) != nullptr) return IntVar(getenv, var);
  }
  if (getenv("SLURM_STEP_ID") != nullptr) return IntVar(getenv, "SLURM_PROCID");
  return 0;
}

absl::StatusOr<LaunchInfo> DetectLaunch(const std::function<const char*(const char*)>& getenv) {
  LaunchInfo info;
  info.rank = LaunchRank(getenv);
  const bool pmi = getenv("PMIX_RANK") != nullptr || getenv("PMI_RANK") != nullptr;
  const bool srun = getenv("SLURM_STEP_ID") != nullptr && getenv("SLURM_STEP_NUM_TASKS") != nullptr;
  if (getenv("OMPI_COMM_WORLD_SIZE") != nullptr) {
    info.use_mpi = true;
    info.launcher = "mpirun";
    info.expected_world_size = IntVar(getenv, "OMPI_COMM_WORLD_SIZE");
  } else if (srun) {
    const int tasks = IntVar(getenv, "SLURM_STEP_NUM_TASKS");
    const char* job = getenv("SLURM_JOB_ID");
    info.launcher = absl::StrCat("srun (Slurm job ", job ? job : "?", ", step ", getenv("SLURM_STEP_ID"), ")");
    info.expected_world_size = tasks;
    info.use_mpi = pmi;
    if (!pmi && tasks > 1) {
      return absl::FailedPreconditionError(absl::StrCat(
          "launch: srun started ", tasks, " tasks (SLURM_STEP_NUM_TASKS=", tasks,
          ") without MPI wire-up (no PMIX_RANK), so each would train alone; use srun --mpi=pmix, or mpirun inside "
          "the allocation"));
    }
  } else if (pmi) {
    info.use_mpi = true;
    info.launcher = "PMI launcher";
    info.expected_world_size = std::max(IntVar(getenv, "PMI_SIZE"), IntVar(getenv, "PMIX_SIZE"));
  } else {
    info.launcher = "none";
  }
  return info;
}

absl::StatusOr<LaunchInfo> DetectLaunch() { return DetectLaunch(std::getenv); }
int LaunchRank() { return LaunchRank(std::getenv); }

absl::Status CheckWorldSize(const LaunchInfo& launch, int mpi_world_size) {
  if (launch.expected_world_size > 0 && launch.expected_world_size != mpi_world_size) {
    return absl::FailedPreconditionError(absl::StrCat("launch: ", launch.launcher, " started ",
                                                      launch.expected_world_size, " ranks but MPI sees a world of ",
                                                      mpi_world_size, "; the launcher and the MPI library disagree"));
  }
  return absl::OkStatus();
}

Topology MakeTopology(const std::vector<RankPlace>& places, int rank, int ep_size) {
  Topology t;
  t.world_size = static_cast<int>(places.size());
  t.rank = rank;
  t.ep_size = ep_size;
  t.dp_size = t.world_size / ep_size;
  // Nodes numbered by their lowest rank.
  std::map<int, int> lowest_rank_of_node;
  for (int r = t.world_size - 1; r >= 0; --r) lowest_rank_of_node[places[r].node] = r;
  std::vector<std::pair<int, int>> node_order;  // (lowest rank, node id)
  for (const auto& [node, lowest] : lowest_rank_of_node) node_order.emplace_back(lowest, node);
  std::sort(node_order.begin(), node_order.end());
  std::map<int, int> node_index;
  for (size_t i = 0; i < node_order.size(); ++i) node_index[node_order[i].second] = static_cast<int>(i);
  t.num_nodes = static_cast<int>(node_order.size());
  t.node = node_index[places[rank].node];
  t.local_rank = places[rank].local_rank;
  t.local_size = 0;
  for (const RankPlace& p : places) t.local_size += p.node == places[rank].node ? 1 : 0;

  std::vector<int> order(t.world_size);  // order[position] = world rank
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    return std::make_tuple(node_index[places[a].node], places[a].local_rank, a) <
           std::make_tuple(node_index[places[b].node], places[b].local_rank, b);
  });
  const int position = static_cast<int>(std::find(order.begin(), order.end(), rank) - order.begin());
  t.ep_rank = position % ep_size;
  t.dp_rank = position / ep_size;
  for (int e = 0; e < ep_size; ++e) t.ep_group.push_back(order[t.dp_rank * ep_size + e]);
  for (int d = 0; d < t.dp_size; ++d) t.dp_group.push_back(order[d * ep_size + t.ep_rank]);
  return t;
}

std::string TopologyJson(const std::vector<RankPlace>& places, const std::vector<std::string>& hosts, int ep_size,
                         const std::string& launcher) {
  const int world = static_cast<int>(places.size());
  std::vector<Topology> all;
  for (int r = 0; r < world; ++r) all.push_back(MakeTopology(places, r, ep_size));
  nlohmann::ordered_json out;
  out["launcher"] = launcher;
  out["world_size"] = world;
  out["ep_size"] = ep_size;
  out["dp_size"] = world / ep_size;
  out["num_hosts"] = all.empty() ? 0 : all[0].num_nodes;
  std::vector<std::vector<int>> ranks_of_node(out["num_hosts"].get<int>());
  std::vector<int> by_local(world);
  std::iota(by_local.begin(), by_local.end(), 0);
  std::sort(by_local.begin(), by_local.end(),
            [&](int a, int b) { return std::make_pair(all[a].local_rank, a) < std::make_pair(all[b].local_rank, b); });
  for (int r : by_local) ranks_of_node[all[r].node].push_back(r);
  nlohmann::ordered_json host_list = nlohmann::ordered_json::array();
  for (const std::vector<int>& ranks : ranks_of_node) {
    nlohmann::ordered_json h;
    h["name"] = hosts.at(ranks.front());
    h["ranks"] = ranks;
    host_list.push_back(h);
  }
  out["hosts"] = host_list;
  nlohmann::ordered_json rank_list = nlohmann::ordered_json::array();
  std::vector<std::vector<int>> ep_groups(world / ep_size), dp_groups(ep_size);
  for (const Topology& t : all) {
    nlohmann::ordered_json r;
    r["rank"] = t.rank;
    r["host"] = hosts.at(t.rank);
    r["node"] = t.node;
    r["local_rank"] = t.local_rank;
    r["ep_rank"] = t.ep_rank;
    r["dp_rank"] = t.dp_rank;
    rank_list.push_back(r);
    ep_groups[t.dp_rank] = t.ep_group;
    dp_groups[t.ep_rank] = t.dp_group;
  }
  out["ranks"] = rank_list;
  out["ep_groups"] = ep_groups;
  out["dp_groups"] = dp_groups;
  return out.dump(2) + "\n";
}

}  // namespace hybridmoe
