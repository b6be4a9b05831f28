// TopologyJson (parallel/topology.h): the run directory's topology.json for block and round-robin placement.
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "parallel/topology.h"

namespace hybridmoe {
namespace {

using nlohmann::json;

TEST(TopologyJson, TwoHostsBlockPlacementEp2) {
  // Ranks 0, 1 on nodeA, 2, 3 on nodeB (node id: the node's lowest rank).
  const std::vector<RankPlace> places = {{0, 0}, {0, 1}, {2, 0}, {2, 1}};
  const json t = json::parse(TopologyJson(places, {"nodeA", "nodeA", "nodeB", "nodeB"}, 2, "mpirun"));
  EXPECT_EQ(t["launcher"], "mpirun");
  EXPECT_EQ(t["world_size"], 4);
  EXPECT_EQ(t["ep_size"], 2);
  EXPECT_EQ(t["dp_size"], 2);
  EXPECT_EQ(t["num_hosts"], 2);
  EXPECT_EQ(t["hosts"], json::parse(R"([{"name": "nodeA", "ranks": [0, 1]}, {"name": "nodeB", "ranks": [2, 3]}])"));
  EXPECT_EQ(t["ep_groups"], json::parse("[[0, 1], [2, 3]]"));
  EXPECT_EQ(t["dp_groups"], json::parse("[[0, 2], [1, 3]]"));
  ASSERT_EQ(t["ranks"].size(), 4u);
  EXPECT_EQ(t["ranks"][3], json::parse(R"({"rank": 3, "host": "nodeB", "node": 1, "local_rank": 1, "ep_rank": 1,
                                           "dp_rank": 1})"));
}

TEST(TopologyJson, RoundRobinPlacementKeepsEpGroupsNodeLocal) {
  // mpirun --map-by node: ranks 0, 2 on nodeA, 1, 3 on nodeB.
  const std::vector<RankPlace> places = {{0, 0}, {1, 0}, {0, 1}, {1, 1}};
  const json t = json::parse(TopologyJson(places, {"nodeA", "nodeB", "nodeA", "nodeB"}, 2, "srun"));
  EXPECT_EQ(t["hosts"], json::parse(R"([{"name": "nodeA", "ranks": [0, 2]}, {"name": "nodeB", "ranks": [1, 3]}])"));
  EXPECT_EQ(t["ep_groups"], json::parse("[[0, 2], [1, 3]]"));
  EXPECT_EQ(t["dp_groups"], json::parse("[[0, 1], [2, 3]]"));
}

TEST(TopologyJson, Ep4SpansBothHosts) {
  const std::vector<RankPlace> places = {{0, 0}, {0, 1}, {2, 0}, {2, 1}};
  const json t = json::parse(TopologyJson(places, {"a", "a", "b", "b"}, 4, "mpirun"));
  EXPECT_EQ(t["ep_groups"], json::parse("[[0, 1, 2, 3]]"));
  EXPECT_EQ(t["dp_groups"], json::parse("[[0], [1], [2], [3]]"));
}

TEST(TopologyJson, OneProcess) {
  const json t = json::parse(TopologyJson({{0, 0}}, {"vm"}, 1, "none"));
  EXPECT_EQ(t["hosts"], json::parse(R"([{"name": "vm", "ranks": [0]}])"));
  EXPECT_EQ(t["ep_groups"], json::parse("[[0]]"));
}

}  // namespace
}  // namespace hybridmoe
