#include "parallel/context.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <mpi.h>

#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "core/files.h"
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

using Clock = std::chrono::steady_clock;

std::string HostName() {
  char name[256] = {0};
  gethostname(name, sizeof(name) - 1);
  return name;
}

// Where every rank runs, for topology.json.
struct JobLayout {
  std::vector<RankPlace> places;   // by world rank
  std::vector<std::string> hosts;  // by world rank
  std::string launcher;
  int ep_size = 1;
};

class Context : public ParallelContext {
 public:
  Context(const Topology& topology, JobLayout layout, std::string node_name, bool owns_mpi,
          std::shared_ptr<Communicator> world, std::shared_ptr<Communicator> ep, std::shared_ptr<Communicator> dp)
      : t_(topology),
        layout_(std::move(layout)),
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
  absl::Status WriteTopology(const std::string& path) const override {
    return WriteFileAtomically(path, TopologyJson(layout_.places, layout_.hosts, layout_.ep_size, layout_.launcher));
  }
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
  JobLayout layout_;
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

// Start-up's deadline. MPI_Init and the collectives that build the groups block until every rank takes part;
// a rank that never does (its host lost, its network cut) would keep the others there forever, and no MPI
// call can be interrupted from another thread under MPI_THREAD_SERIALIZED. So a thread waits for the end of
// start-up and, past the deadline, prints one line naming the stage and ends the process (status 1; the
// launcher then ends the other ranks it can reach).
class StartupWatchdog {
 public:
  StartupWatchdog(double timeout_s, int rank)
      : timeout_s_(timeout_s),
        rank_(rank),
        deadline_(Clock::now() +
                  std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s))) {
    thread_ = std::thread([this] { Watch(); });
  }
  ~StartupWatchdog() { Done(); }
  StartupWatchdog(const StartupWatchdog&) = delete;
  StartupWatchdog& operator=(const StartupWatchdog&) = delete;

  // What start-up does now (a string literal), and this process's rank once MPI knows it.
  void Stage(const char* what) { stage_.store(what); }
  void SetRank(int rank) { rank_.store(rank); }
  Clock::time_point deadline() const { return deadline_; }
  double timeout_s() const { return timeout_s_; }
  void Done() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Watch() {
    std::unique_lock<std::mutex> lock(mu_);
    // A little grace past the deadline: the report exchange, which names the missing ranks, ends at it.
    if (cv_.wait_until(lock, deadline_ + std::chrono::seconds(2), [this] { return done_; })) return;
    std::fprintf(stderr,
                 "rank %d: launch: start-up did not complete within %g s (parallel.timeout_s): %s never finished; "
                 "a rank that never joined (a lost host or a cut network) keeps the others waiting\n",
                 rank_.load(), timeout_s_, stage_.load());
    std::fflush(stderr);
    _exit(1);
  }

  const double timeout_s_;
  std::atomic<int> rank_;
  const Clock::time_point deadline_;
  std::atomic<const char*> stage_{"start-up"};
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

[[noreturn]] void AbortStartup(int rank, const std::string& problem) {
  std::fprintf(stderr, "rank %d: launch: %s\n", rank, problem.c_str());
  std::fflush(stderr);
  alarm(20);  // MPI_Abort may not return when a host is unreachable
  MPI_Abort(MPI_COMM_WORLD, 1);
  _exit(1);
}

// Every rank reports its host name to rank 0, which answers with everyone's: point-to-point messages polled
// against the start-up deadline, so that a rank which never arrives is named (rank 0 names the silent ranks,
// the others rank 0 when it does not answer). Returns the host name of every rank.
std::vector<std::string> ReportToRankZero(int rank, int world, const StartupWatchdog& watchdog) {
  constexpr int kReportTag = 7301, kLayoutTag = 7302;
  constexpr int kName = MPI_MAX_PROCESSOR_NAME;
  std::vector<char> names(static_cast<size_t>(world) * kName, 0);
  int len = 0;
  MPI_Get_processor_name(names.data() + static_cast<size_t>(rank) * kName, &len);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  std::vector<MPI_Request> requests;
  std::vector<int> peer_of;
  if (rank == 0) {
    for (int r = 1; r < world; ++r) {
      requests.emplace_back();
      peer_of.push_back(r);
      MPI_Irecv(names.data() + static_cast<size_t>(r) * kName, kName, MPI_CHAR, r, kReportTag, MPI_COMM_WORLD,
                &requests.back());
    }
  } else {
    requests.emplace_back();
    peer_of.push_back(-1);
    MPI_Isend(names.data() + static_cast<size_t>(rank) * kName, kName, MPI_CHAR, 0, kReportTag, MPI_COMM_WORLD,
              &requests.back());
    requests.emplace_back();
    peer_of.push_back(0);
    MPI_Irecv(names.data(), world * kName, MPI_CHAR, 0, kLayoutTag, MPI_COMM_WORLD, &requests.back());
  }
  // The other ranks wait a second longer than rank 0, so that rank 0 names the missing ranks first.
  const auto deadline = watchdog.deadline() + std::chrono::seconds(rank == 0 ? 0 : 1);
  auto wait_all = [&](const char* what) {
    const int n = static_cast<int>(requests.size());
    std::vector<int> done(n);
    for (;;) {
      int outcount = 0;
      const int rc = MPI_Testsome(n, requests.data(), &outcount, done.data(), MPI_STATUSES_IGNORE);
      if (rc != MPI_SUCCESS) AbortStartup(rank, absl::StrCat("start-up: ", what, " failed (a rank probably died)"));
      if (outcount == MPI_UNDEFINED) return;
      if (Clock::now() > deadline) break;
      if (outcount == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::vector<int> silent;
    for (int i = 0; i < n; ++i) {
      if (peer_of[i] >= 0 && requests[i] != MPI_REQUEST_NULL) silent.push_back(peer_of[i]);
    }
    const std::string within = absl::StrCat(" within ", watchdog.timeout_s(), " s (parallel.timeout_s): ");
    if (rank != 0) {
      AbortStartup(rank, absl::StrCat("start-up: no answer from rank 0", within,
                                      "rank 0 is unresponsive or dead, or some other rank never reported to it"));
    }
    AbortStartup(rank, absl::StrCat("start-up: ", what, within, silent.empty() ? "some rank" : DescribeRanks(silent),
                                    silent.size() == 1 ? " is" : " are",
                                    " unresponsive or dead (a lost host or a cut network?)"));
  };
  wait_all(rank == 0 ? "not every rank reported" : "waiting for rank 0");
  if (rank == 0) {
    requests.clear();
    peer_of.clear();
    for (int r = 1; r < world; ++r) {
      requests.emplace_back();
      peer_of.push_back(r);
      MPI_Isend(names.data(), world * kName, MPI_CHAR, r, kLayoutTag, MPI_COMM_WORLD, &requests.back());
    }
    wait_all("the answer to every rank did not go out");
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
  std::vector<std::string> hosts(world);
  for (int r = 0; r < world; ++r) hosts[r] = std::string(names.data() + static_cast<size_t>(r) * kName);
  return hosts;
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
  JobLayout layout{places, {HostName()}, "none", 1};
  return std::unique_ptr<ParallelContext>(
      new Context(MakeTopology(places, 0, 1), std::move(layout), HostName(), false, self, self, self));
}

absl::StatusOr<std::unique_ptr<ParallelContext>> ParallelContext::Create(const TrainConfig& config) {
  ASSIGN_OR_RETURN(const LaunchInfo launch, DetectLaunch());
  const double timeout = config.parallel().timeout_s();
  if (!launch.use_mpi) {
    RETURN_IF_ERROR(ValidateParallelConfig(config, 1));
    return CreateLocal(timeout);
  }

  StartupWatchdog watchdog(timeout, launch.rank);
  watchdog.Stage("MPI_Init (waiting for every rank of the launch)");
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
  watchdog.SetRank(rank);
  absl::Status status = CheckWorldSize(launch, world);
  if (status.ok()) status = ValidateParallelConfig(config, world);
  if (!status.ok()) {
    watchdog.Stage("MPI_Finalize after a launch error");
    if (owns_mpi) MPI_Finalize();  // every rank fails the same check, so this does not hang
    return status;
  }

  watchdog.Stage("the report of every rank to rank 0");
  std::vector<std::string> hosts = ReportToRankZero(rank, world, watchdog);
  watchdog.Stage("discovering the ranks of each node (MPI_Comm_split_type)");
  std::vector<RankPlace> places = DiscoverPlaces(rank, world);
  const int ep_size = config.parallel().expert_parallel_size();
  const Topology topology = MakeTopology(places, rank, ep_size);
  char name[MPI_MAX_PROCESSOR_NAME] = {0};
  int name_len = 0;
  MPI_Get_processor_name(name, &name_len);

  watchdog.Stage("creating the world, expert-parallel and data-parallel communicators");
  std::shared_ptr<MpiCommunicator> world_comm = MpiCommunicator::World(timeout);
  std::shared_ptr<MpiCommunicator> ep = world_comm->SplitMpi(topology.dp_rank, topology.ep_rank);
  std::shared_ptr<MpiCommunicator> dp = world_comm->SplitMpi(topology.ep_rank, topology.dp_rank);
  TORCH_INTERNAL_ASSERT(ep->size() == topology.ep_size && ep->rank() == topology.ep_rank &&
                        dp->size() == topology.dp_size && dp->rank() == topology.dp_rank);
  std::shared_ptr<Communicator> w = world_comm, e = ep, d = dp;
  if (config.parallel().device() == ParallelConfig::CUDA) {
#ifdef HYBRIDMOE_WITH_NCCL
    watchdog.Stage("creating the NCCL communicators");
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
  watchdog.Done();
  JobLayout layout{std::move(places), std::move(hosts), launch.launcher, ep_size};
  return std::unique_ptr<ParallelContext>(new Context(topology, std::move(layout), std::string(name, name_len),
                                                      owns_mpi, std::move(w), std::move(e), std::move(d)));
}

}  // namespace hybridmoe
