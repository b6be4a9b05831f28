#include "parallel/context.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>

#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <mpi.h>

#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "core/optim.h"
#include "core/status.h"
#include "parallel/communicator.h"
#include "parallel/device.h"
#include "parallel/ep_dispatcher.h"
#include "parallel/grad_sync.h"
#include "parallel/mpi_communicator.h"
#include "parallel/topology.h"

#ifdef HYBRIDMOE_WITH_NCCL
#include "parallel/nccl_communicator.h"
#endif

namespace hybridmoe {
namespace {

std::string HostName() {
  char name[256] = {0};
  gethostname(name, sizeof(name) - 1);
  return name;
}

class Context : public ParallelContext {
 public:
  Context(const Topology& topology, std::string node_name, bool owns_mpi, std::shared_ptr<Communicator> world,
          std::shared_ptr<Communicator> ep, std::shared_ptr<Communicator> dp)
      : t_(topology),
        node_name_(std::move(node_name)),
        owns_mpi_(owns_mpi),
        world_(std::move(world)),
        ep_(std::move(ep)),
        dp_(std::move(dp)) {}

  ~Context() override {
    world_.reset();
    ep_.reset();
    dp_.reset();
    // Communicators still held elsewhere (dispatchers) skip freeing once MPI is finalised.
    if (owns_mpi_) MPI_Finalize();
  }

  int rank() const override { return t_.rank; }
  int world_size() const override { return t_.world_size; }
  int ep_rank() const override { return t_.ep_rank; }
  int ep_size() const override { return t_.ep_size; }
  int dp_rank() const override { return t_.dp_rank; }
  int dp_size() const override { return t_.dp_size; }
  int local_rank() const override { return t_.local_rank; }
  int local_size() const override { return t_.local_size; }
  std::string node_name() const override { return node_name_; }
  std::shared_ptr<Communicator> world_group() const override { return world_; }
  std::shared_ptr<Communicator> ep_group() const override { return ep_; }
  std::shared_ptr<Communicator> dp_group() const override { return dp_; }

  void ShardExperts(Transformer& model) override {
    if (t_.ep_size == 1) return;
    for (size_t i = 0; i < model->blocks.size(); ++i) {
      MoeLayer& moe = model->blocks[i]->moe;
      if (moe.is_empty()) continue;
      moe->set_dispatcher(std::make_shared<AllToAllDispatcher>(ep_, moe->options.num_experts, i));
    }
  }

  void SyncGradients(Transformer& model) override {
    if (t_.world_size == 1) return;
    const ParameterSets sets = SplitParameters(*model);
    const double scale = 1.0 / t_.world_size;
    AllReduceGradients(sets.replicated, *world_, scale, "gradient all-reduce (non-expert parameters)");
    AllReduceGradients(sets.experts, *dp_, scale, "gradient all-reduce (expert parameters)");
  }

  double GradNorm(Transformer& model) override {
    const ParameterSets sets = SplitParameters(*model);
    at::Tensor expert_sq = at::full({1}, SquaredGradNorm(sets.experts), at::kDouble);
    ep_->AllReduce(expert_sq, ReduceOp::kSum, "gradient-norm all-reduce");
    return std::sqrt(SquaredGradNorm(sets.replicated) + expert_sq.item<double>());
  }

  double ClipGradNorm(Transformer& model, double max_norm) override {
    const double norm = GradNorm(model);
    ClipGradients(model->parameters(), norm, max_norm);
    return norm;
  }

  void SumOverRanks(std::vector<double>& values) override {
    if (t_.world_size == 1 || values.empty()) return;
    at::Tensor t = at::tensor(values, at::kDouble);
    world_->AllReduce(t, ReduceOp::kSum, "sum of metrics over ranks");
    std::copy_n(t.data_ptr<double>(), values.size(), values.begin());
  }

  double MaxOverRanks(double value) override {
    at::Tensor t = at::full({1}, value, at::kDouble);
    world_->AllReduce(t, ReduceOp::kMax, "max over ranks");
    return t.item<double>();
  }

  void Barrier() override { world_->Barrier("barrier"); }

  std::vector<std::string> GatherToRoot(const std::string& bytes) override {
    return world_->Gather(bytes, 0, "gather to rank 0");
  }

 private:
  Topology t_;
  std::string node_name_;
  bool owns_mpi_;
  std::shared_ptr<Communicator> world_, ep_, dp_;
};

// Node id (lowest world rank on the node) and local rank of every rank, from MPI's shared-memory split.
std::vector<RankPlace> DiscoverPlaces(int rank, int world) {
  MPI_Comm node_comm;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node_comm);
  int local_rank = 0, leader = rank;
  MPI_Comm_rank(node_comm, &local_rank);
  MPI_Allreduce(MPI_IN_PLACE, &leader, 1, MPI_INT, MPI_MIN, node_comm);
  MPI_Comm_free(&node_comm);
  const int mine[2] = {leader, local_rank};
  std::vector<int> all(2 * world);
  MPI_Allgather(mine, 2, MPI_INT, all.data(), 2, MPI_INT, MPI_COMM_WORLD);
  std::vector<RankPlace> places(world);
  for (int r = 0; r < world; ++r) places[r] = RankPlace{all[2 * r], all[2 * r + 1]};
  return places;
}

}  // namespace

bool ParallelContext::IsRankZero() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank == 0;
  }
  return LaunchRank() == 0;
}

std::unique_ptr<ParallelContext> ParallelContext::CreateLocal(double timeout_s) {
  std::vector<RankPlace> places(1);
  auto self = std::make_shared<SelfCommunicator>(timeout_s);
  return std::unique_ptr<ParallelContext>(new Context(MakeTopology(places, 0, 1), HostName(), false, self, self, self));
}

absl::StatusOr<std::unique_ptr<ParallelContext>> ParallelContext::Create(const TrainConfig& config) {
  ASSIGN_OR_RETURN(const LaunchInfo launch, DetectLaunch());
  const double timeout = config.parallel().timeout_s();
  if (!launch.use_mpi) {
    RETURN_IF_ERROR(ValidateParallelConfig(config, 1));
    return CreateLocal(timeout);
  }

  int initialized = 0;
  MPI_Initialized(&initialized);
  bool owns_mpi = false;
  if (!initialized) {
    int provided = 0;
    if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS) {
      return absl::UnavailableError(absl::StrCat("launch: MPI_Init failed under ", launch.launcher));
    }
    owns_mpi = true;
  }
  // MPI is called from the main thread and, in backward, from autograd's worker threads (activation
  // checkpointing recomputes the dispatch there) while the main thread waits in backward(): calls come from
  // several threads but never overlap, which is what MPI_THREAD_SERIALIZED promises (FUNNELED would not do).
  int provided = 0;
  MPI_Query_thread(&provided);
  if (provided < MPI_THREAD_SERIALIZED) {
    if (owns_mpi) MPI_Finalize();
    return absl::FailedPreconditionError(
        absl::StrCat("launch: the MPI library under ", launch.launcher, " provides thread level ", provided,
                     " but HybridMoE needs MPI_THREAD_SERIALIZED (", MPI_THREAD_SERIALIZED,
                     ") or more: MPI is called from autograd's worker threads; use an MPI built with thread support"));
  }
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  absl::Status status = CheckWorldSize(launch, world);
  if (status.ok()) status = ValidateParallelConfig(config, world);
  if (!status.ok()) {
    if (owns_mpi) MPI_Finalize();  // every rank fails the same check, so this does not hang
    return status;
  }

  const Topology topology = MakeTopology(DiscoverPlaces(rank, world), rank, config.parallel().expert_parallel_size());
  char name[MPI_MAX_PROCESSOR_NAME] = {0};
  int name_len = 0;
  MPI_Get_processor_name(name, &name_len);

  std::shared_ptr<MpiCommunicator> world_comm = MpiCommunicator::World(timeout);
  std::shared_ptr<MpiCommunicator> ep = world_comm->SplitMpi(topology.dp_rank, topology.ep_rank);
  std::shared_ptr<MpiCommunicator> dp = world_comm->SplitMpi(topology.ep_rank, topology.dp_rank);
  TORCH_INTERNAL_ASSERT(ep->size() == topology.ep_size && ep->rank() == topology.ep_rank &&
                        dp->size() == topology.dp_size && dp->rank() == topology.dp_rank);
  std::shared_ptr<Communicator> w = world_comm, e = ep, d = dp;
  if (config.parallel().device() == ParallelConfig::CUDA) {
#ifdef HYBRIDMOE_WITH_NCCL
    // CUDA tensors go through NCCL on this rank's own GPU, CPU tensors and host values through MPI.
    const int count = at::hasCUDA() ? static_cast<int>(at::getNumGPUs()) : 0;
    absl::StatusOr<at::Device> device =
        ChooseDevice(ParallelConfig::CUDA, topology.local_rank, topology.local_size, count);
    if (!device.ok()) {
      // Every rank of a node fails alike; ranks of other nodes may not, so end the whole job.
      world_comm->Fail("launch:", std::string(device.status().message()));
    }
    SelectDevice(*device);
    ASSIGN_OR_RETURN(w, WithNccl(world_comm, device->index()));
    ASSIGN_OR_RETURN(e, WithNccl(ep, device->index()));
    ASSIGN_OR_RETURN(d, WithNccl(dp, device->index()));
#endif
  }
  return std::unique_ptr<ParallelContext>(
      new Context(topology, std::string(name, name_len), owns_mpi, std::move(w), std::move(e), std::move(d)));
}

}  // namespace hybridmoe
