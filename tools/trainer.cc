#include "tools/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/config.h"
#include "core/files.h"
#include "core/host.h"
#include "core/data.h"
#include "core/metrics.h"
#include "core/optim.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "core/tensorboard.h"
#include "models/checkpoint.h"
#include "models/transformer.h"
#include "moe/router_stats.h"

namespace hybridmoe {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

// Drops metrics.jsonl records of steps after `step` (they will be recomputed), atomically.
absl::Status TruncateMetrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    const size_t k = line.find("\"step\": ");
    if (line.empty() || line.back() != '}') continue;  // a line cut by a kill
    if (k != std::string::npos && std::atoll(line.c_str() + k + 8) > step) continue;
    kept += line + "\n";
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
      const bool expert = k.rfind("moe.experts.", 0) == 0;
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

struct StepLosses {
  double loss = 0, lm = 0, lb = 0, z = 0, nonfinite = 0;
};

absl::StatusOr<double> Evaluate(Transformer& model, const DataLoader& data, const DataConfig& config,
                                int64_t num_batches, ParallelContext& ctx) {
  at::NoGradGuard no_grad;
  for (auto& layer : model->moe_layers()) layer->collect_stats = false;
  // Every rank runs the same number of forwards (expert parallelism exchanges tokens in each one).
  const int64_t world = ctx.world_size(), rounds = (num_batches + world - 1) / world;
  std::vector<double> sum = {0, 0};
  for (int64_t r = 0; r < rounds; ++r) {
    const int64_t i = r * world + ctx.rank();
    ASSIGN_OR_RETURN(Batch batch, data.ValidationBatch(i < num_batches ? i : 0, config.micro_batch_size(), num_batches));
    const at::Device device = model->embed.device();
    const double loss = model(batch.inputs.to(device), batch.targets.to(device)).lm_loss.item<double>();
    if (i < num_batches) {
      sum[0] += loss;
      sum[1] += 1;
    }
  }
  for (auto& layer : model->moe_layers()) layer->collect_stats = true;
  ctx.SumOverRanks(sum);
  return sum[0] / sum[1];
}

}  // namespace

int DefaultThreads(const TrainConfig& config, int local_ranks) {
  if (config.parallel().num_threads() > 0) return config.parallel().num_threads();
  // The CPUs this process may run on (a Slurm/cgroup allocation), not every CPU of the machine.
  return std::max(1, CpusAllowed() / std::max(1, local_ranks));
}

absl::Status Train(const TrainConfig& config, const TrainOptions& options, ParallelContext& ctx) {
  const std::string& dir = options.out_dir;
  const std::string metrics_path = dir + "/metrics.jsonl";
  const bool root = ctx.rank() == 0;
  const bool say = root && !options.quiet;
  if (!options.resume && Exists(metrics_path)) {
    return absl::AlreadyExistsError(absl::StrCat("--out_dir ", dir,
                                                 " already holds a run (metrics.jsonl); pass --resume to continue "
                                                 "it or choose another --out_dir"));
  }
  const DataConfig& dc = config.data();
  ASSIGN_OR_RETURN(std::unique_ptr<DataLoader> data, DataLoader::Create(dc, config.model().vocab_size(),
                                                                        config.train().seed()));
  const int threads = DefaultThreads(config, ctx.local_size());
  at::set_num_threads(threads);

  at::Device device(at::kCPU);
  if (config.parallel().device() == ParallelConfig::CUDA) {
    if (!at::hasCUDA() || at::getNumGPUs() == 0) {
      return absl::FailedPreconditionError(
          "parallel.device (CUDA): no usable GPU in this process (a CPU-only LibTorch, a build without "
          "--config=cuda, or no device visible); valid here: CPU");
    }
    device = at::Device(at::kCUDA, static_cast<at::DeviceIndex>(ctx.local_rank() % at::getNumGPUs()));
  }

  Transformer model(TransformerOptionsFromConfig(config.model()));
  ctx.ShardExperts(model);
  model->reset_parameters(config.train().seed());  // on the CPU: the same initial weights on every device
  model->to(device);
  std::vector<std::pair<std::string, at::Tensor>> named;
  std::vector<at::Tensor> params;
  for (const auto& item : model->named_parameters()) {
    named.emplace_back(item.key(), item.value());
    params.push_back(item.value());
  }
  AdamWOptions adam;
  adam.beta1 = config.optim().beta1();
  adam.beta2 = config.optim().beta2();
  adam.eps = config.optim().eps();
  adam.weight_decay = config.optim().weight_decay();
  AdamW optimizer(named, adam);
  ScheduleOptions schedule;
  schedule.lr = config.optim().lr();
  schedule.warmup_steps = config.optim().warmup_steps();
  schedule.warmup_start_ratio = config.optim().warmup_start_ratio();
  schedule.min_lr_ratio = config.optim().min_lr_ratio();
  schedule.total_steps = config.train().steps();

  TrainerState state;
  state.seed = config.train().seed();
  if (options.resume) {
    auto latest = FindLatestCheckpoint(dir);
    if (latest.ok()) {
      ASSIGN_OR_RETURN(state, LoadCheckpoint(*latest, model, optimizer));
      if (say) std::fprintf(stderr, "[train] resuming from %s (step %lld)\n", latest->c_str(), (long long)state.step);
    } else if (say) {
      std::fprintf(stderr, "[train] --resume: no complete checkpoint in %s/checkpoints; starting from step 0\n",
                   dir.c_str());
    }
  }
  ctx.Barrier();

  std::unique_ptr<MetricsWriter> metrics;
  std::unique_ptr<TensorBoardWriter> tb;
  if (root) {
    RETURN_IF_ERROR(MakeDirs(dir));
    if (options.resume && Exists(metrics_path)) RETURN_IF_ERROR(TruncateMetrics(metrics_path, state.step));
    RETURN_IF_ERROR(WriteFileAtomically(dir + "/config.textproto", ConfigToText(config)));
    ASSIGN_OR_RETURN(metrics, MetricsWriter::Open(metrics_path));
    if (config.logging().tensorboard()) {
      ASSIGN_OR_RETURN(tb, TensorBoardWriter::Open(dir, options.resume ? absl::StrCat("resume", state.step) : ""));
    }
  }
  std::unique_ptr<RouterStatsLogger> router_logger;
  if (config.logging().router_stats() && !model->moe_layers().empty()) {
    ASSIGN_OR_RETURN(router_logger, RouterStatsLogger::Open(root ? dir : ""));
  }
  const auto sum_over_ranks = [&ctx](std::vector<double>& v) { ctx.SumOverRanks(v); };

  const int64_t steps = config.train().steps(), world = ctx.world_size();
  const int64_t micro = dc.micro_batch_size(), accum = dc.grad_accum_steps();
  const int64_t global_batch = micro * accum * world;
  const int64_t tokens_per_step = global_batch * dc.seq_len();
  if (say) {
    int64_t num_params = 0;
    for (const at::Tensor& p : params) num_params += p.numel();
    std::fprintf(stderr,
                 "[train] %s | %s params on rank 0 | %d layers, %d experts top-%d | %d ranks (EP %d x DP %d) | "
                 "%lld tokens/step | %d threads/rank | run dir %s\n",
                 NormStrategyName(model->options.norm.strategy), FormatCount(static_cast<double>(num_params)).c_str(),
                 config.model().n_layers(), config.model().moe().num_experts(), config.model().moe().top_k(),
                 ctx.world_size(), ctx.ep_size(), ctx.dp_size(), static_cast<long long>(tokens_per_step), threads,
                 dir.c_str());
  }
  auto checkpoint = [&](int64_t done) -> absl::Status {
    const auto t0 = Clock::now();
    state.step = done;
    state.optimizer_steps = optimizer.steps_taken();
    CheckpointShard shard;
    shard.index = ctx.ep_rank();
    shard.count = ctx.ep_size();
    shard.writes = ctx.dp_rank() == 0;
    shard.root = root;
    shard.barrier = [&ctx] { ctx.Barrier(); };
    RETURN_IF_ERROR(SaveCheckpoint(dir, model, optimizer, config, state, config.checkpoint().keep_last(), shard));
    if (root) {
      metrics->Write(JsonRecord().Add("kind", "checkpoint").Add("step", done)
                         .Add("path", dir + "/checkpoints/" + CheckpointDirName(done)).Add("seconds", Seconds(t0)));
    }
    return absl::OkStatus();
  };

  // Fault injection for tests: HYBRIDMOE_FAULT_NAN_STEPS="5,6" poisons the loss of those (1-based) steps,
  // exercising the non-finite path deterministically.
  std::set<int64_t> nan_steps;
  if (const char* v = std::getenv("HYBRIDMOE_FAULT_NAN_STEPS")) {
    for (const absl::string_view part : absl::StrSplit(v, ',', absl::SkipEmpty())) {
      int64_t s = 0;
      if (absl::SimpleAtoi(part, &s)) nan_steps.insert(s);
    }
  }

  const auto start = Clock::now();
  auto window_start = start;
  int64_t window_tokens = 0;
  const int64_t first_step = state.step;
  for (int64_t step = first_step; step < steps; ++step) {
    const double lr = LearningRate(schedule, step);
    for (at::Tensor& p : params) p.mutable_grad().reset();
    std::vector<double> local = {0, 0, 0, 0, 0};  // loss, lm, lb, z, non-finite flag
    uint64_t data_hash = 0;  // fingerprint of rank 0's tokens this step (same data order <=> same hashes)
    for (int64_t m = 0; m < accum; ++m) {
      ASSIGN_OR_RETURN(Batch batch, data->TrainBatch(step, global_batch, (ctx.rank() * accum + m) * micro, micro));
      const int64_t* ids = batch.inputs.data_ptr<int64_t>();
      for (int64_t i = 0; i < batch.inputs.numel(); ++i) data_hash = Mix64(data_hash ^ static_cast<uint64_t>(ids[i]));
      ModelOutput out = model(batch.inputs.to(device), batch.targets.to(device));
      if (nan_steps.count(step + 1)) out.loss = out.loss * std::nan("");
      (out.loss / static_cast<double>(accum)).backward();
      const double values[4] = {out.loss.item<double>(), out.lm_loss.item<double>(), out.lb_loss.item<double>(),
                                out.z_loss.item<double>()};
      for (int i = 0; i < 4; ++i) {
        local[i] += values[i] / static_cast<double>(accum);
        if (!std::isfinite(values[i])) local[4] = 1;
      }
    }
    ctx.SumOverRanks(local);
    StepLosses losses{local[0] / world, local[1] / world, local[2] / world, local[3] / world, local[4]};
    ctx.SyncGradients(model);  // gradients of the global mean loss
    const double grad_norm = ctx.GradNorm(model);
    const bool log_step = (step + 1) % config.logging().log_interval() == 0 || step + 1 == steps || step == 0;
    std::vector<std::pair<std::string, double>> block_norms;
    if (log_step && config.logging().per_layer_grad_norms()) block_norms = PerBlockGradNorms(model, ctx);
    const bool finite = losses.nonfinite == 0 && std::isfinite(grad_norm);
    if (finite) {
      const double clip = config.optim().grad_clip();
      if (clip > 0 && grad_norm > clip) {
        at::NoGradGuard no_grad;
        for (at::Tensor& p : params) {
          if (p.grad().defined()) p.grad().mul_(clip / (grad_norm + 1e-6));
        }
      }
      optimizer.step(lr);
      state.consecutive_bad_steps = 0;
    } else {
      ++state.skipped_steps;
      ++state.consecutive_bad_steps;
      if (root) {
        metrics->Write(JsonRecord().Add("kind", "skip").Add("step", step + 1).Add("loss", losses.loss)
                           .Add("grad_norm", grad_norm).Add("consecutive", state.consecutive_bad_steps));
        std::fprintf(stderr, "[train] step %lld: non-finite %s; update skipped (%lld in a row)\n",
                     static_cast<long long>(step + 1), losses.nonfinite ? "loss" : "gradients",
                     static_cast<long long>(state.consecutive_bad_steps));
      }
      if (state.consecutive_bad_steps >= config.train().max_consecutive_bad_steps()) {
        if (root) {
          metrics->Write(JsonRecord().Add("kind", "abort").Add("step", step + 1)
                             .Add("consecutive_bad_steps", state.consecutive_bad_steps));
        }
        return absl::AbortedError(absl::StrCat("training diverged: ", state.consecutive_bad_steps,
                                               " consecutive steps with non-finite loss or gradients (last: step ",
                                               step + 1, "; train.max_consecutive_bad_steps = ",
                                               config.train().max_consecutive_bad_steps(), ")"));
      }
    }
    window_tokens += tokens_per_step;

    const bool last = step + 1 == steps;
    if (log_step) {
      std::vector<std::pair<std::string, double>> router_summary;
      if (router_logger) {
        ASSIGN_OR_RETURN(router_summary,
                         router_logger->Log(step + 1, model->moe_layers(), ctx.ep_rank(), ctx.ep_size(), sum_over_ranks));
      }
      const double tokens_per_s = window_tokens / std::max(Seconds(window_start), 1e-9);
      const double elapsed = Seconds(start);
      const double eta = elapsed / static_cast<double>(step + 1 - first_step) * static_cast<double>(steps - step - 1);
      if (root) {
        JsonRecord rec;
        rec.Add("kind", "train").Add("step", step + 1).Add("loss", losses.loss).Add("lm_loss", losses.lm)
            .Add("lb_loss", losses.lb).Add("z_loss", losses.z).Add("grad_norm", grad_norm).Add("lr", lr)
            .Add("tokens_per_s", tokens_per_s).Add("tokens", (step + 1) * tokens_per_step)
            .Add("elapsed_s", elapsed).Add("skipped_steps", state.skipped_steps)
            .Add("data_hash", absl::StrFormat("%016x", data_hash));
        for (const auto& [k, v] : router_summary) rec.Add(k, v);
        for (const auto& [k, v] : block_norms) rec.Add(k, v);
        metrics->Write(rec);
        if (tb) {
          std::vector<std::pair<std::string, double>> scalars = {
              {"train/loss", losses.loss}, {"train/lm_loss", losses.lm}, {"train/lb_loss", losses.lb},
              {"train/z_loss", losses.z},  {"train/grad_norm", grad_norm}, {"train/lr", lr},
              {"train/tokens_per_s", tokens_per_s}};
          for (const auto& [k, v] : router_summary) scalars.emplace_back(k, v);
          for (const auto& [k, v] : block_norms) scalars.emplace_back(k, v);
          RETURN_IF_ERROR(tb->AddScalars(step + 1, scalars));
        }
        if (!options.quiet) {
          std::fprintf(stderr,
                       "[train] step %*lld/%lld | loss %.4f (lm %.4f lb %.4f z %.5f) | gnorm %.3f | lr %.2e | "
                       "%s tok/s | %s elapsed | ETA %s\n",
                       static_cast<int>(std::to_string(steps).size()), static_cast<long long>(step + 1),
                       static_cast<long long>(steps), losses.loss, losses.lm, losses.lb, losses.z, grad_norm, lr,
                       FormatCount(tokens_per_s).c_str(), FormatDuration(elapsed).c_str(), FormatDuration(eta).c_str());
        }
      }
      window_start = Clock::now();
      window_tokens = 0;
    }
    const int64_t eval_every = config.train().eval_interval();
    if (data->has_validation() && ((eval_every > 0 && (step + 1) % eval_every == 0) || last)) {
      ASSIGN_OR_RETURN(double val, Evaluate(model, *data, dc, config.train().eval_batches(), ctx));
      if (root) {
        metrics->Write(JsonRecord().Add("kind", "eval").Add("step", step + 1).Add("val_loss", val)
                           .Add("val_ppl", std::exp(val)));
        if (tb) RETURN_IF_ERROR(tb->AddScalars(step + 1, {{"val/loss", val}, {"val/ppl", std::exp(val)}}));
        if (!options.quiet) {
          std::fprintf(stderr, "[eval]  step %lld | val loss %.4f | val ppl %.3f\n", static_cast<long long>(step + 1),
                       val, std::exp(val));
        }
      }
      window_start = Clock::now();  // evaluation time is not training throughput
    }
    const int64_t every = config.checkpoint().interval();
    const bool stop = options.stop_at_step > 0 && step + 1 >= options.stop_at_step && !last;
    if ((every > 0 && (step + 1) % every == 0) || (last && config.checkpoint().save_final()) || stop) {
      RETURN_IF_ERROR(checkpoint(step + 1));
      window_start = Clock::now();
    }
    if (stop) {
      if (say) std::fprintf(stderr, "[train] stopped at step %lld (--stop_at_step); continue with --resume\n",
                            static_cast<long long>(step + 1));
      break;
    }
  }
  return absl::OkStatus();
}

}  // namespace hybridmoe
