// ParallelContext: the one object through which the trainer sees the process layout.
//
// world = expert_parallel_size (EP) x data_parallel_size (DP). Ranks of one EP group are adjacent
// (node-local first): in node-major order (nodes by lowest rank, then local rank) position p has
// ep_rank = p % EP, dp_rank = p / EP; with block placement (mpirun's default, srun's block distribution)
// p == rank. Expert e lives on ep_rank e / (E / EP). See parallel/topology.h.
// Launched without mpirun/srun (or srun with one task) everything is the identity and MPI is never
// initialised. Every collective has a deadline (parallel.timeout_s): a dead or stuck rank makes the others
// print one line naming it and abort the job (parallel/communicator.h). Start-up has the same deadline: MPI_Init,
// the exchange in which every rank reports to rank 0 (naming the ranks that never do) and the creation of the
// groups must finish within parallel.timeout_s, or the rank prints one line saying which stage did not
// finish and exits with status 1 (a rank of a lost host would otherwise keep the others waiting forever).
//
// Gradient semantics (so that W ranks reproduce one rank that accumulates W micro-batches):
//   non-expert gradients: summed over all ranks, divided by world size;
//   expert gradients: summed over the DP group holding the same experts, divided by world size
//   (the all-to-all backward already summed the EP group's contributions on the owning rank).
// GradNorm counts every parameter once: replicated ones from this rank, experts summed over the EP group.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/transformer.h"
#include "proto/config.pb.h"

namespace hybridmoe {

class Communicator;

class ParallelContext {
 public:
  // Initialises MPI if the process was started by mpirun/srun, discovers rank/topology, validates
  // parallel.expert_parallel_size against the world size and model.moe.num_experts (error names the field).
  // Errors are one line (launch problems start with "launch:"); every rank returns the same error, and
  // MPI is finalised before returning one.
  static absl::StatusOr<std::unique_ptr<ParallelContext>> Create(const TrainConfig& config);
  // A one-process context (world of 1, no MPI) whatever the launch: the in-process reference of a
  // multi-rank run (tools/bench) and tests.
  static std::unique_ptr<ParallelContext> CreateLocal(double timeout_s);
  // Whether this process is rank 0 of its launch (true without a launcher). Works before Create and after
  // a failed Create, so main() can print a launch error once instead of once per rank.
  static bool IsRankZero();
  virtual ~ParallelContext() = default;  // finalises MPI if Create initialised it

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual int ep_rank() const = 0;
  virtual int ep_size() const = 0;
  virtual int dp_rank() const = 0;
  virtual int dp_size() const = 0;
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;  // ranks on this node
  virtual std::string node_name() const = 0;
  // Writes the job's layout (hosts, ranks per host, each EP and DP group: parallel/topology.h's TopologyJson)
  // to `path` atomically. Talks to no other rank: rank 0 calls it for the run directory's topology.json.
  virtual absl::Status WriteTopology(const std::string& path) const = 0;

  // Installs expert-parallel dispatchers (and the matching expert shards) on every MoE layer (a no-op
  // when EP = 1). It replaces each layer's `experts` module: call before reset_parameters / loading
  // weights and before collecting parameters for the optimizer.
  virtual void ShardExperts(Transformer& model) = 0;
  // Averages gradients as described above (undefined gradients count as zero).
  virtual void SyncGradients(Transformer& model) = 0;
  // Global gradient L2 norm after SyncGradients, each parameter counted once.
  virtual double GradNorm(Transformer& model) = 0;
  // GradNorm, then (when max_norm > 0 and the norm is finite and above it) scales every gradient by
  // max_norm / (norm + 1e-6), as core/optim.h's ClipGradNorm does for one process. Returns the norm.
  virtual double ClipGradNorm(Transformer& model, double max_norm) = 0;
  // Element-wise sum over all ranks, in place.
  virtual void SumOverRanks(std::vector<double>& values) = 0;
  // Maximum over all ranks (e.g. to agree on "any rank saw a non-finite loss").
  virtual double MaxOverRanks(double value) = 0;
  virtual void Barrier() = 0;
  // Gathers each rank's bytes to rank 0 (checkpoint shards); other ranks get an empty vector.
  virtual std::vector<std::string> GatherToRoot(const std::string& bytes) = 0;
  // The process groups (all ranks; this rank's EP group indexed by ep_rank; its DP group indexed by dp_rank).
  virtual std::shared_ptr<Communicator> world_group() const = 0;
  virtual std::shared_ptr<Communicator> ep_group() const = 0;
  virtual std::shared_ptr<Communicator> dp_group() const = 0;
};

}  // namespace hybridmoe
