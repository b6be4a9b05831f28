#include "tools/trainer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <thread>

#include <ATen/Parallel.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/config.h"
#include "core/data.h"
#include "core/metrics.h"
#include "core/optim.h"
#include "core/status.h"
#include "models/transformer.h"

namespace hybridmoe {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

absl::Status MakeDirs(const std::string& path) {
  std::string partial;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      partial = path.substr(0, i);
      if (!partial.empty() && mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) {
        return absl::PermissionDeniedError(absl::StrCat("cannot create directory ", partial, ": ", strerror(errno)));
      }
    }
  }
  return absl::OkStatus();
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& contents) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << contents;
    if (!out.flush()) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return absl::InternalError(absl::StrCat("cannot rename ", tmp));
  return absl::OkStatus();
}

struct LossSums {
  double loss = 0, lm = 0, lb = 0, z = 0;
};

absl::StatusOr<double> Evaluate(Transformer& model, const DataLoader& data, const DataConfig& config,
                                int64_t num_batches) {
  at::NoGradGuard no_grad;
  for (auto& layer : model->moe_layers()) layer->collect_stats = false;
  double sum = 0;
  for (int64_t i = 0; i < num_batches; ++i) {
    ASSIGN_OR_RETURN(Batch batch, data.ValidationBatch(i, config.micro_batch_size(), num_batches));
    sum += model(batch.inputs, batch.targets).lm_loss.item<double>();
  }
  for (auto& layer : model->moe_layers()) layer->collect_stats = true;
  return sum / static_cast<double>(num_batches);
}

}  // namespace

int DefaultThreads(const TrainConfig& config) {
  if (config.parallel().num_threads() > 0) return config.parallel().num_threads();
  int local_ranks = 1;
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "LOCAL_WORLD_SIZE"}) {
    if (const char* v = std::getenv(var)) {
      local_ranks = std::max(1, std::atoi(v));
      break;
    }
  }
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / local_ranks);
}

absl::Status Train(const TrainConfig& config, const TrainOptions& options) {
  const std::string& dir = options.out_dir;
  const std::string metrics_path = dir + "/metrics.jsonl";
  if (Exists(metrics_path)) {
    return absl::AlreadyExistsError(absl::StrCat("--out_dir ", dir,
                                                 " already holds a run (metrics.jsonl); choose another --out_dir"));
  }
  const DataConfig& dc = config.data();
  ASSIGN_OR_RETURN(std::unique_ptr<DataLoader> data, DataLoader::Create(dc, config.model().vocab_size(),
                                                                        config.train().seed()));
  RETURN_IF_ERROR(MakeDirs(dir));
  RETURN_IF_ERROR(WriteFileAtomically(dir + "/config.textproto", ConfigToText(config)));
  ASSIGN_OR_RETURN(std::unique_ptr<MetricsWriter> metrics, MetricsWriter::Open(metrics_path));

  const int threads = DefaultThreads(config);
  at::set_num_threads(threads);

  Transformer model(TransformerOptionsFromConfig(config.model()));
  model->reset_parameters(config.train().seed());
  std::vector<std::pair<std::string, at::Tensor>> named;
  std::vector<at::Tensor> params;
  for (const auto& item : model->named_parameters()) {
    named.emplace_back(item.key(), item.value());
    params.push_back(item.value());
  }
  int64_t num_params = 0;
  for (const at::Tensor& p : params) num_params += p.numel();

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

  const int64_t steps = config.train().steps();
  const int64_t micro = dc.micro_batch_size(), accum = dc.grad_accum_steps();
  const int64_t global_batch = micro * accum;
  const int64_t tokens_per_step = global_batch * dc.seq_len();
  if (!options.quiet) {
    std::fprintf(stderr,
                 "[train] %s | %s params | %lld layers, %d experts top-%d | %lld tokens/step | %d threads | run dir %s\n",
                 NormStrategyName(model->options.norm.strategy), FormatCount(static_cast<double>(num_params)).c_str(),
                 static_cast<long long>(config.model().n_layers()), config.model().moe().num_experts(),
                 config.model().moe().top_k(), static_cast<long long>(tokens_per_step), threads, dir.c_str());
  }

  const auto start = Clock::now();
  auto window_start = start;
  int64_t window_tokens = 0, consecutive_bad = 0, skipped = 0;
  for (int64_t step = 0; step < steps; ++step) {
    const double lr = LearningRate(schedule, step);
    for (at::Tensor& p : params) p.mutable_grad().reset();
    LossSums sums;
    for (int64_t m = 0; m < accum; ++m) {
      ASSIGN_OR_RETURN(Batch batch, data->TrainBatch(step, global_batch, m * micro, micro));
      ModelOutput out = model(batch.inputs, batch.targets);
      (out.loss / static_cast<double>(accum)).backward();
      sums.loss += out.loss.item<double>() / accum;
      sums.lm += out.lm_loss.item<double>() / accum;
      sums.lb += out.lb_loss.item<double>() / accum;
      sums.z += out.z_loss.item<double>() / accum;
    }
    const double grad_norm = ClipGradNorm(params, config.optim().grad_clip());
    const bool finite = std::isfinite(sums.loss) && std::isfinite(grad_norm);
    if (finite) {
      optimizer.step(lr);
      consecutive_bad = 0;
    } else {
      ++skipped;
      ++consecutive_bad;
      std::fprintf(stderr, "[train] step %lld: non-finite %s; update skipped (%lld in a row)\n",
                   static_cast<long long>(step + 1), std::isfinite(sums.loss) ? "gradients" : "loss",
                   static_cast<long long>(consecutive_bad));
      if (consecutive_bad >= config.train().max_consecutive_bad_steps()) {
        metrics->Write(JsonRecord().Add("kind", "abort").Add("step", step + 1).Add("consecutive_bad_steps",
                                                                                    consecutive_bad));
        return absl::AbortedError(absl::StrCat("training diverged: ", consecutive_bad,
                                               " consecutive steps with non-finite loss or gradients (step ",
                                               step + 1, "; train.max_consecutive_bad_steps = ",
                                               config.train().max_consecutive_bad_steps(), ")"));
      }
    }
    window_tokens += tokens_per_step;

    const bool last = step + 1 == steps;
    if ((step + 1) % config.logging().log_interval() == 0 || last || step == 0) {
      const double window_s = Seconds(window_start);
      const double tokens_per_s = window_tokens / std::max(window_s, 1e-9);
      const double elapsed = Seconds(start);
      const double eta = elapsed / static_cast<double>(step + 1) * static_cast<double>(steps - step - 1);
      JsonRecord rec;
      rec.Add("kind", "train").Add("step", step + 1).Add("loss", sums.loss).Add("lm_loss", sums.lm)
          .Add("lb_loss", sums.lb).Add("z_loss", sums.z).Add("grad_norm", grad_norm).Add("lr", lr)
          .Add("tokens_per_s", tokens_per_s).Add("tokens", (step + 1) * tokens_per_step).Add("elapsed_s", elapsed)
          .Add("skipped_steps", skipped);
      metrics->Write(rec);
      if (!options.quiet) {
        std::fprintf(stderr,
                     "[train] step %*lld/%lld | loss %.4f (lm %.4f lb %.4f z %.5f) | gnorm %.3f | lr %.2e | %s tok/s | "
                     "%s elapsed | ETA %s\n",
                     static_cast<int>(std::to_string(steps).size()), static_cast<long long>(step + 1),
                     static_cast<long long>(steps), sums.loss, sums.lm, sums.lb, sums.z, grad_norm, lr,
                     FormatCount(tokens_per_s).c_str(), FormatDuration(elapsed).c_str(), FormatDuration(eta).c_str());
      }
      window_start = Clock::now();
      window_tokens = 0;
    }
    const int64_t eval_every = config.train().eval_interval();
    if (data->has_validation() && ((eval_every > 0 && (step + 1) % eval_every == 0) || last)) {
      ASSIGN_OR_RETURN(double val, Evaluate(model, *data, dc, config.train().eval_batches()));
      metrics->Write(JsonRecord().Add("kind", "eval").Add("step", step + 1).Add("val_loss", val)
                         .Add("val_ppl", std::exp(val)));
      if (!options.quiet) {
        std::fprintf(stderr, "[eval]  step %lld | val loss %.4f | val ppl %.3f\n", static_cast<long long>(step + 1),
                     val, std::exp(val));
      }
      window_start = Clock::now();  // evaluation time is not training throughput
    }
  }
  return absl::OkStatus();
}

}  // namespace hybridmoe
