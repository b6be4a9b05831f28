#include "tools/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <set>

#include <nlohmann/json.hpp>

#include <ATen/Parallel.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/config.h"
#include "core/data.h"
#include "core/files.h"
#include "core/host.h"
#include "core/metrics.h"
#include "core/optim.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "core/tensorboard.h"
#include "models/checkpoint.h"
#include "models/transformer.h"
#include "moe/router_stats.h"
#include "tools/training.h"

namespace hybridmoe {
namespace {

using Clock = std::chrono::steady_clock;

// The stop signal received (0: none). Written only by the handler, read at step boundaries.
volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void OnStopSignal(int signo) { g_stop_signal = signo; }

const char* SignalName(int signo) {
  switch (signo) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    default: return "a signal";
  }
}

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

// Drops metrics.jsonl records of steps after `step` (they will be recomputed) and lines cut by a kill,
// atomically.
absl::Status TruncateMetrics(const std::string& path, int64_t step) {
  ASSIGN_OR_RETURN(const std::string text, ReadFile(path));
  std::string kept;
  for (const absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!record.is_object()) continue;  // a line cut by a kill
    const auto it = record.find("step");
    if (it != record.end() && it->is_number_integer() && it->get<int64_t>() > step) continue;
    absl::StrAppend(&kept, line, "\n");
  }
  return WriteFileAtomically(path, kept);
}

// Per-block gradient norms of the attention, FFN/expert and router weights (logging.per_layer_grad_norms),
// each parameter counted once over the process layout: replicated tensors by ep_rank 0 of each DP group,
// expert shards by their owners; every DP group contributes one copy, hence the division by dp_size.
std::vector<std::pair<std::string, double>> PerBlockGradNorms(Transformer& model, ParallelContext& ctx) {
  std::vector<std::string> names;
  std::vector<double> sums;
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < model->blocks.size(); ++i) {
    double attn = 0, ffn = 0, router = 0;
    for (const auto& item : model->blocks[i]->named_parameters()) {
      const at::Tensor& g = item.value().grad();
      if (!g.defined()) continue;
      const std::string& k = item.key();
      const bool expert = IsExpertName(absl::StrCat("blocks.", i, ".", k));
      if (!expert && ctx.ep_rank() != 0) continue;
      const double sq = g.to(at::kDouble).pow(2).sum().item<double>();
      if (k.rfind("attn.", 0) == 0) {
        attn += sq;
      } else if (expert || k.rfind("ffn.", 0) == 0) {
        ffn += sq;
      } else if (k == "moe.router") {
        router += sq;
      }
    }
    const std::string prefix = absl::StrCat("grad_norm/block", i, "/");
    for (const auto& [n, v] : {std::pair<const char*, double>{"attn", attn}, {"ffn", ffn}, {"router", router}}) {
      if (std::string(n) == "router" && model->blocks[i]->moe.is_empty()) continue;
      names.push_back(prefix + n);
      sums.push_back(v);
    }
  }
  ctx.SumOverRanks(sums);
  std::vector<std::pair<std::string, double>> out;
  for (size_t j = 0; j < names.size(); ++j) out.emplace_back(names[j], std::sqrt(sums[j] / ctx.dp_size()));
  return out;
}

}  // namespace

void InstallStopSignalHandlers() {
  struct sigaction action = {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // file I/O and MPI polling continue; the flag is read at the step boundary
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGUSR1, &action, nullptr);
}

std::string RunConfigPath(const std::string& out_dir) {
  if (IsFile(out_dir + "/config.textproto")) return out_dir + "/config.textproto";
  absl::StatusOr<std::string> latest = FindLatestCheckpoint(out_dir);
  if (latest.ok() && IsFile(*latest + "/config.textproto")) return *latest + "/config.textproto";
  return "";
}

int DefaultThreads(const TrainConfig& config, int local_ranks) {
  if (config.parallel().num_threads() > 0) return config.parallel().num_threads();
  // The CPUs this process may run on (a Slurm/cgroup allocation), not every CPU of the machine.
  return std::max(1, CpusAllowed() / std::max(1, local_ranks));
}

namespace {

// The run directory's writers (rank 0; other ranks hold none and write nothing): metrics.jsonl, TensorBoard,
// router statistics (every rank takes part in the latter's reductions).
class RunLog {
 public:
  static absl::StatusOr<RunLog> Open(const TrainConfig& config, const TrainOptions& options, int64_t step,
                                     Transformer& model, bool root) {
    RunLog log;
    const std::string& dir = options.out_dir;
    if (root) {
      const std::string metrics_path = dir + "/metrics.jsonl";
      RETURN_IF_ERROR(MakeDirs(dir));
      if (options.resume && Exists(metrics_path)) RETURN_IF_ERROR(TruncateMetrics(metrics_path, step));
      RETURN_IF_ERROR(WriteFileAtomically(dir + "/config.textproto", ConfigToText(config)));
      ASSIGN_OR_RETURN(log.metrics_, MetricsWriter::Open(metrics_path));
      if (config.logging().tensorboard()) {
        ASSIGN_OR_RETURN(log.tb_, TensorBoardWriter::Open(dir, options.resume ? absl::StrCat("resume", step) : ""));
      }
    }
    if (config.logging().router_stats() && !model->moe_layers().empty()) {
      ASSIGN_OR_RETURN(log.router_, RouterStatsLogger::Open(root ? dir : ""));
    }
    return log;
  }

  // A metrics.jsonl record (rank 0 only) and, when `tb_prefix` is set, the same numbers as TensorBoard
  // scalars named prefix + key.
  absl::Status Record(const JsonRecord& record) { return metrics_ ? metrics_->Write(record) : absl::OkStatus(); }
  absl::Status Scalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars) {
    return tb_ ? tb_->AddScalars(step, scalars) : absl::OkStatus();
  }
  RouterStatsLogger* router() { return router_.get(); }

 private:
  std::unique_ptr<MetricsWriter> metrics_;
  std::unique_ptr<TensorBoardWriter> tb_;
  std::unique_ptr<RouterStatsLogger> router_;
};

// HYBRIDMOE_FAULT_NAN_STEPS="5,6" poisons the loss of those (1-based) steps: tests of the non-finite path.
std::set<int64_t> FaultNanSteps() {
  std::set<int64_t> steps;
  if (const char* v = std::getenv("HYBRIDMOE_FAULT_NAN_STEPS")) {
    for (const absl::string_view part : absl::StrSplit(v, ',', absl::SkipEmpty())) {
      int64_t s = 0;
      if (absl::SimpleAtoi(part, &s)) steps.insert(s);
    }
  }
  return steps;
}

// This rank's part in checkpoints (models/checkpoint.h): shard = EP rank, replica = DP rank; verdicts and
// progress travel through SumOverRanks, shard reports through GatherToRoot.
CheckpointShard MakeCheckpointShard(const TrainConfig& config, ParallelContext& ctx) {
  CheckpointShard shard;
  shard.index = ctx.ep_rank();
  shard.count = ctx.ep_size();
  shard.replica = ctx.dp_rank();
  shard.replicas = ctx.dp_size();
  shard.root = ctx.rank() == 0;
  shard.rank = ctx.rank();
  shard.world = ctx.world_size();
  shard.timeout_s = config.parallel().timeout_s();
  shard.sum = [&ctx](std::vector<double>& values) { ctx.SumOverRanks(values); };
  shard.gather = [&ctx](const std::string& bytes) { return ctx.GatherToRoot(bytes); };
  return shard;
}

// The checkpoint directories of the run, newest first, as the root sees them (every rank gets the root's
// list, so that all ranks try the same checkpoints even if their views of a shared file system differ).
std::vector<std::string> AgreedCheckpoints(const std::string& dir, ParallelContext& ctx) {
  std::vector<double> steps;
  if (ctx.rank() == 0) {
    for (const std::string& path : ListCheckpoints(dir)) {
      long long step = 0;
      char tail = 0;
      const std::string name = path.substr(path.find_last_of('/') + 1);
      if (std::sscanf(name.c_str(), "step_%lld%c", &step, &tail) == 1 && name == CheckpointDirName(step)) {
        steps.push_back(static_cast<double>(step));
      }
    }
  }
  std::vector<double> count = {static_cast<double>(steps.size())};
  ctx.SumOverRanks(count);
  steps.resize(static_cast<size_t>(count[0]), 0.0);
  ctx.SumOverRanks(steps);
  std::vector<std::string> dirs;
  for (const double step : steps) {
    dirs.push_back(dir + "/checkpoints/" + CheckpointDirName(static_cast<int64_t>(step)));
  }
  return dirs;
}

// --resume: loads the newest intact checkpoint into model/optimizer/state (see TrainOptions::resume); leaves
// them alone when the run has no checkpoint at all.
absl::Status ResumeFromNewestIntact(const std::string& dir, Transformer& model, AdamW& optimizer,
                                    const CheckpointShard& shard, ParallelContext& ctx, bool say, TrainerState* state) {
  const std::vector<std::string> candidates = AgreedCheckpoints(dir, ctx);
  std::vector<std::string> damaged;
  absl::Status first_damage;
  for (const std::string& candidate : candidates) {
    // A damaged candidate may leave the model half loaded; the next candidate's load overwrites every tensor.
    absl::StatusOr<TrainerState> loaded = LoadCheckpoint(candidate, model, optimizer, shard);
    if (absl::IsDataLoss(loaded.status()) || absl::IsNotFound(loaded.status())) {
      if (damaged.empty()) first_damage = loaded.status();
      damaged.push_back(candidate);
      continue;
    }
    RETURN_IF_ERROR(loaded.status());
    *state = *loaded;
    if (damaged.empty()) {
      if (say)
        std::fprintf(stderr, "[train] resuming from %s (step %lld)\n", candidate.c_str(), (long long)state->step);
      return absl::OkStatus();
    }
    if (shard.root) {
      // Damaged checkpoints leave the step_* namespace (never loaded or pruned again; kept for a post-mortem).
      std::string moved;
      for (const std::string& d : damaged) {
        absl::StatusOr<std::string> to = SetAsideCheckpoint(d);
        if (moved.empty()) moved = to.ok() ? "moved to " + *to : std::string(to.status().message());
      }
      const std::string names =
          damaged.size() == 1 ? damaged[0] : absl::StrCat(damaged[0], " and ", damaged.size() - 1, " older");
      std::fprintf(stderr,
                   "[train] warning: checkpoint %s is damaged (%s); resuming from %s (step %lld), the newest "
                   "intact checkpoint; %s\n",
                   names.c_str(), std::string(first_damage.message()).c_str(), candidate.c_str(),
                   (long long)state->step, moved.c_str());
    }
    return absl::OkStatus();
  }
  if (!damaged.empty()) {
    return absl::Status(first_damage.code(),
                        absl::StrCat(first_damage.message(), "; no intact checkpoint to resume from"));
  }
  if (say) {
    std::fprintf(stderr, "[train] --resume: no complete checkpoint in %s/checkpoints; starting from step 0\n",
                 dir.c_str());
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status Train(const TrainConfig& config, const TrainOptions& options, ParallelContext& ctx,
                   TrainOutcome* outcome) {
  TrainOutcome unused;
  if (outcome == nullptr) outcome = &unused;
  const std::string& dir = options.out_dir;
  const bool root = ctx.rank() == 0;
  const bool say = root && !options.quiet;
  if (!options.resume && Exists(dir + "/metrics.jsonl")) {
    return absl::AlreadyExistsError(absl::StrCat("--out_dir ", dir,
                                                 " already holds a run (metrics.jsonl); pass --resume to continue "
                                                 "it or choose another --out_dir"));
  }
  const DataConfig& dc = config.data();
  ASSIGN_OR_RETURN(std::unique_ptr<DataLoader> data,
                   DataLoader::Create(dc, config.model().vocab_size(), config.train().seed()));
  const int threads = DefaultThreads(config, ctx.local_size());
  at::set_num_threads(threads);
  ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer, Trainer::Create(config, ctx));
  Transformer& model = trainer->model();

  const CheckpointShard shard = MakeCheckpointShard(config, ctx);
  TrainerState state;
  state.seed = config.train().seed();
  if (options.resume) {
    RETURN_IF_ERROR(ResumeFromNewestIntact(dir, model, trainer->optimizer(), shard, ctx, say, &state));
  }
  ctx.Barrier();
  ASSIGN_OR_RETURN(RunLog log, RunLog::Open(config, options, state.step, model, root));
  if (root) RETURN_IF_ERROR(ctx.WriteTopology(dir + "/topology.json"));
  const auto sum_over_ranks = [&ctx](std::vector<double>& v) { ctx.SumOverRanks(v); };

  const int64_t steps = config.train().steps(), world = ctx.world_size();
  const int64_t micro = dc.micro_batch_size(), accum = dc.grad_accum_steps();
  const int64_t global_batch = micro * accum * world;
  const int64_t tokens_per_step = global_batch * dc.seq_len();
  if (say) {
    int64_t num_params = 0;
    for (const at::Tensor& p : trainer->params()) num_params += p.numel();
    std::fprintf(stderr,
                 "[train] %s | %s params on rank 0 | %d layers, %d experts top-%d | %d ranks (EP %d x DP %d) | "
                 "%lld tokens/step | %d threads/rank | run dir %s\n",
                 NormStrategyName(model->options.norm.strategy), FormatCount(static_cast<double>(num_params)).c_str(),
                 config.model().n_layers(), config.model().moe().num_experts(), config.model().moe().top_k(),
                 ctx.world_size(), ctx.ep_size(), ctx.dp_size(), static_cast<long long>(tokens_per_step), threads,
                 dir.c_str());
  }
  double last_checkpoint_s = 0;
  auto checkpoint = [&](int64_t done, const char* reason) -> absl::Status {
    const auto t0 = Clock::now();
    state.step = done;
    state.optimizer_steps = trainer->optimizer().steps_taken();
    RETURN_IF_ERROR(
        SaveCheckpoint(dir, model, trainer->optimizer(), config, state, config.checkpoint().keep_last(), shard));
    last_checkpoint_s = Seconds(t0);
    JsonRecord record;
    record.Add("kind", "checkpoint")
        .Add("step", done)
        .Add("path", dir + "/checkpoints/" + CheckpointDirName(done))
        .Add("seconds", last_checkpoint_s);
    if (reason != nullptr) record.Add("reason", reason);
    return log.Record(record);
  };
  const std::set<int64_t> nan_steps = FaultNanSteps();

  const auto start = Clock::now();
  auto window_start = start;
  int64_t window_tokens = 0;
  const int64_t first_step = state.step;
  for (int64_t step = first_step; step < steps; ++step) {
    // Rank r's micro-batch m holds global samples (r * accum + m) * micro ... + micro - 1 of the step.
    std::vector<Batch> batches;
    uint64_t data_hash = 0;  // fingerprint of rank 0's tokens this step (same data order <=> same hashes)
    for (int64_t m = 0; m < accum; ++m) {
      ASSIGN_OR_RETURN(Batch batch, data->TrainBatch(step, global_batch, (ctx.rank() * accum + m) * micro, micro));
      const int64_t* ids = batch.inputs.data_ptr<int64_t>();
      for (int64_t i = 0; i < batch.inputs.numel(); ++i) data_hash = Mix64(data_hash ^ static_cast<uint64_t>(ids[i]));
      batches.push_back(std::move(batch));
    }
    StepOptions step_options;
    step_options.poison_loss = nan_steps.count(step + 1) > 0;
    const bool log_step = (step + 1) % config.logging().log_interval() == 0 || step + 1 == steps || step == 0;
    std::vector<std::pair<std::string, double>> block_norms;  // before clipping
    if (log_step && config.logging().per_layer_grad_norms()) {
      step_options.before_clip = [&] { block_norms = PerBlockGradNorms(model, ctx); };
    }
    const StepResult r = trainer->Step(step, batches, step_options);
    if (r.updated) {
      state.consecutive_bad_steps = 0;
    } else {
      ++state.skipped_steps;
      ++state.consecutive_bad_steps;
      RETURN_IF_ERROR(log.Record(JsonRecord()
                                     .Add("kind", "skip")
                                     .Add("step", step + 1)
                                     .Add("loss", r.loss)
                                     .Add("grad_norm", r.grad_norm)
                                     .Add("consecutive", state.consecutive_bad_steps)));
      if (root) {
        std::fprintf(stderr, "[train] step %lld: non-finite %s; update skipped (%lld in a row)\n",
                     static_cast<long long>(step + 1), r.finite_loss ? "gradients" : "loss",
                     static_cast<long long>(state.consecutive_bad_steps));
      }
      if (state.consecutive_bad_steps >= config.train().max_consecutive_bad_steps()) {
        RETURN_IF_ERROR(log.Record(JsonRecord()
                                       .Add("kind", "abort")
                                       .Add("step", step + 1)
                                       .Add("consecutive_bad_steps", state.consecutive_bad_steps)));
        return absl::AbortedError(
            absl::StrCat("training diverged: ", state.consecutive_bad_steps,
                         " consecutive steps with non-finite loss or gradients (last: step ", step + 1,
                         "; train.max_consecutive_bad_steps = ", config.train().max_consecutive_bad_steps(), ")"));
      }
    }
    window_tokens += tokens_per_step;

    const bool last = step + 1 == steps;
    if (log_step) {
      std::vector<std::pair<std::string, double>> router_summary;
      if (log.router() != nullptr) {
        ASSIGN_OR_RETURN(router_summary, log.router()->Log(step + 1, model->moe_layers(), ctx.ep_rank(), ctx.ep_size(),
                                                           sum_over_ranks));
      }
      const double tokens_per_s = window_tokens / std::max(Seconds(window_start), 1e-9);
      const double elapsed = Seconds(start);
      const double eta = elapsed / static_cast<double>(step + 1 - first_step) * static_cast<double>(steps - step - 1);
      JsonRecord rec;
      rec.Add("kind", "train")
          .Add("step", step + 1)
          .Add("loss", r.loss)
          .Add("lm_loss", r.lm_loss)
          .Add("lb_loss", r.lb_loss)
          .Add("z_loss", r.z_loss)
          .Add("grad_norm", r.grad_norm)
          .Add("lr", r.lr)
          .Add("tokens_per_s", tokens_per_s)
          .Add("tokens", (step + 1) * tokens_per_step)
          .Add("elapsed_s", elapsed)
          .Add("skipped_steps", state.skipped_steps)
          .Add("data_hash", absl::StrFormat("%016x", data_hash));
      for (const auto& [k, v] : router_summary) rec.Add(k, v);
      for (const auto& [k, v] : block_norms) rec.Add(k, v);
      RETURN_IF_ERROR(log.Record(rec));
      std::vector<std::pair<std::string, double>> scalars = {{"train/loss", r.loss},
                                                             {"train/lm_loss", r.lm_loss},
                                                             {"train/lb_loss", r.lb_loss},
                                                             {"train/z_loss", r.z_loss},
                                                             {"train/grad_norm", r.grad_norm},
                                                             {"train/lr", r.lr},
                                                             {"train/tokens_per_s", tokens_per_s}};
      for (const auto& [k, v] : router_summary) scalars.emplace_back(k, v);
      for (const auto& [k, v] : block_norms) scalars.emplace_back(k, v);
      RETURN_IF_ERROR(log.Scalars(step + 1, scalars));
      if (say) {
        std::fprintf(stderr,
                     "[train] step %*lld/%lld | loss %.4f (lm %.4f lb %.4f z %.5f) | gnorm %.3f | lr %.2e | "
                     "%s tok/s | %s elapsed | ETA %s\n",
                     static_cast<int>(std::to_string(steps).size()), static_cast<long long>(step + 1),
                     static_cast<long long>(steps), r.loss, r.lm_loss, r.lb_loss, r.z_loss, r.grad_norm, r.lr,
                     FormatCount(tokens_per_s).c_str(), FormatDuration(elapsed).c_str(), FormatDuration(eta).c_str());
      }
      window_start = Clock::now();
      window_tokens = 0;
    }
    const int64_t eval_every = config.train().eval_interval();
    if (data->has_validation() && ((eval_every > 0 && (step + 1) % eval_every == 0) || last)) {
      ASSIGN_OR_RETURN(const double val,
                       Evaluate(model, *data, dc.micro_batch_size(), config.train().eval_batches(), ctx));
      RETURN_IF_ERROR(log.Record(
          JsonRecord().Add("kind", "eval").Add("step", step + 1).Add("val_loss", val).Add("val_ppl", std::exp(val))));
      RETURN_IF_ERROR(log.Scalars(step + 1, {{"val/loss", val}, {"val/ppl", std::exp(val)}}));
      if (say) {
        std::fprintf(stderr, "[eval]  step %lld | val loss %.4f | val ppl %.3f\n", static_cast<long long>(step + 1),
                     val, std::exp(val));
      }
      window_start = Clock::now();  // evaluation time is not training throughput
    }
    const int64_t every = config.checkpoint().interval();
    const bool stop = options.stop_at_step > 0 && step + 1 >= options.stop_at_step && !last;
    const bool checkpointed =
        (every > 0 && (step + 1) % every == 0) || (last && config.checkpoint().save_final()) || stop;
    if (checkpointed) {
      RETURN_IF_ERROR(checkpoint(step + 1, stop ? "stop_at_step" : nullptr));
      window_start = Clock::now();
    }
    outcome->step = step + 1;
    if (stop) {
      if (say)
        std::fprintf(stderr, "[train] stopped at step %lld (--stop_at_step); continue with --resume\n",
                     static_cast<long long>(step + 1));
      break;
    }
    if (last) break;
    // Stop signals: one all-reduce of a single value per step, so that all ranks stop at the same boundary.
    const int signal = static_cast<int>(ctx.MaxOverRanks(static_cast<double>(g_stop_signal)));
    if (signal != 0) {
      const auto t0 = Clock::now();
      if (!checkpointed) RETURN_IF_ERROR(checkpoint(step + 1, SignalName(signal)));
      if (root) {
        std::fprintf(stderr,
                     "[train] %s: stopped at step %lld with checkpoint %s (written in %.2f s); exit status %d, "
                     "continue with --resume\n",
                     SignalName(signal), static_cast<long long>(step + 1),
                     (dir + "/checkpoints/" + CheckpointDirName(step + 1)).c_str(),
                     checkpointed ? last_checkpoint_s : Seconds(t0), kExitStopped);
      }
      outcome->stop_signal = signal;
      break;
    }
  }
  return absl::OkStatus();
}

}  // namespace hybridmoe
