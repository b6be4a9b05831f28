#include "tools/bench_sections.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/ffn.h"
#include "core/init.h"
#include "moe/router.h"
#include "tools/bench_phases.h"

namespace hybridmoe {
namespace {

// The first line of `path`, or the value of its first "prefix...: value" line.
std::string ReadFirstLine(const std::string& path, const std::string& prefix = "") {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (prefix.empty()) return line;
    if (line.rfind(prefix, 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "";
}

std::string Bytes(double b) { return absl::StrFormat("%.0f MiB", b / (1 << 20)); }
std::string Pct(double x) { return absl::StrFormat("%.1f%%", 100 * x); }

}  // namespace

Json ToJson(const Summary& s) { return Json{{"median", s.median}, {"min", s.min}, {"max", s.max}, {"n", s.n}}; }

std::string CpuModel() { return ReadFirstLine("/proc/cpuinfo", "model name"); }

double LoadAverage() { return std::atof(ReadFirstLine("/proc/loadavg").c_str()); }

std::string NowUtc() {
  char buf[64];
  const std::time_t t = std::time(nullptr);
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// Runs this binary again with `args` and parses the JSON object it prints last on stdout.
absl::StatusOr<Json> RunChild(const std::vector<std::string>& args) {
  int fds[2];
  if (pipe(fds) != 0) return absl::InternalError("pipe failed");
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> argv = {const_cast<char*>("/proc/self/exe")};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  char chunk[4096];
  for (ssize_t n; (n = read(fds[0], chunk, sizeof(chunk))) > 0;) out.append(chunk, n);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  const size_t start = out.rfind("\n{");
  Json j = Json::parse(start == std::string::npos ? out : out.substr(start + 1), nullptr, false);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || j.is_discarded()) {
    return absl::InternalError(absl::StrCat("bench child ", absl::StrJoin(args, " "), " failed: ", out));
  }
  return j;
}

// One MoE layer forward + backward vs a dense SwiGLU of hidden top_k * f on the same tokens, alternating.
StepResult BenchStep(Trainer& trainer, const Batch& batch, std::optional<double> lr) {
  StepOptions options;
  options.lr = lr.has_value() ? *lr : trainer.schedule().lr;
  return trainer.Step(/*step=*/0, {batch}, options);
}

Json MoeVsDense(Trainer& trainer, const at::Tensor& inputs, int rounds) {
  Transformer& model = trainer.model();
  TransformerBlockImpl& block = *model->blocks.front();
  if (block.moe.is_empty()) return Json{{"skipped", "block 0 is dense"}};
  MoeLayerImpl& moe = *block.moe;
  const int64_t D = moe.options.d_model, K = moe.options.top_k, F = moe.options.hidden;
  at::Tensor x;
  {
    at::NoGradGuard no_grad;
    x = at::embedding(model->embed, inputs).reshape({-1, D});
    x = (x * at::rsqrt(x.pow(2).mean(-1, true) + 1e-5)).contiguous();
  }
  x.requires_grad_(true);
  const at::Tensor g = at::randn_like(x);
  FeedForwardOptions fo;
  fo.d_model = D;
  fo.hidden = K * F;
  FeedForward dense(fo);
  InitPlan plan;
  dense->reset_parameters(plan, "bench.dense.");
  // The experts alone, on the slots routing gives these tokens.
  at::Tensor x_SD, g_SD;
  std::vector<int64_t> counts;
  {
    at::NoGradGuard no_grad;
    const Routing r = route(at::matmul(x, moe.router.t()), K, moe.options.normalize_topk);
    const Permutation p = permute_by_expert(r.experts_TK, r.weights_TK, r.topk_probs_TK, moe.options.num_experts, -1);
    x_SD = x.index_select(0, p.token_S);
    g_SD = at::randn_like(x_SD);
    counts = p.counts_E;
  }
  x_SD.requires_grad_(true);
  auto zero = [&] {
    x.mutable_grad().reset();
    x_SD.mutable_grad().reset();
    for (const at::Tensor& p : moe.parameters()) p.mutable_grad().reset();
    for (const at::Tensor& p : dense->parameters()) p.mutable_grad().reset();
  };
  auto run_moe = [&] {
    zero();
    const auto t0 = BenchClock::now();
    MoeOutput out = moe.forward(x);
    ((out.y_TD * g).sum() + 0.01 * out.lb_loss + 0.001 * out.z_loss).backward();
    return SecondsSince(t0);
  };
  auto run_dense = [&] {
    zero();
    const auto t0 = BenchClock::now();
    (dense->forward(x) * g).sum().backward();
    return SecondsSince(t0);
  };
  auto run_experts = [&] {
    zero();
    const auto t0 = BenchClock::now();
    (moe.experts->forward(x_SD, counts) * g_SD).sum().backward();
    return SecondsSince(t0);
  };
  run_moe();
  run_dense();
  run_experts();
  std::vector<double> m, d, e, ratio, e_ratio;
  for (int r = 0; r < rounds; ++r) {
    m.push_back(run_moe());
    d.push_back(run_dense());
    e.push_back(run_experts());
    ratio.push_back(m.back() / d.back());
    e_ratio.push_back(e.back() / d.back());
  }
  zero();
  return Json{{"tokens", x.size(0)},
              {"dense_hidden", K * F},
              {"moe_layer_s", ToJson(Summarize(m))},
              {"dense_ffn_s", ToJson(Summarize(d))},
              {"experts_only_s", ToJson(Summarize(e))},
              {"moe_over_dense", ToJson(Summarize(ratio))},
              {"moe_over_dense_best_vs_best", Summarize(m).min / Summarize(d).min},
              {"experts_over_dense", ToJson(Summarize(e_ratio))}};
}

Json PhaseShares(Trainer& trainer, const Batch& batch, int rounds) {
  std::vector<PhaseTimes> runs;
  std::vector<double> loss_diff;
  double model_loss = 0, timed_loss = 0;
  StepOptions frozen;
  frozen.lr = 0.0;  // the full cost of the update without moving the weights
  for (int r = 0; r < rounds; ++r) {
    model_loss = trainer.Step(0, {batch}, frozen).loss;  // untimed, same weights
    PhaseTimes t = TimeStepPhases(trainer, 0, {batch}, frozen);
    timed_loss = t.step.loss;
    loss_diff.push_back(std::abs(timed_loss - model_loss) / std::max(1e-12, std::abs(model_loss)));
    runs.push_back(t);
  }
  // The gradient norm inside the optimizer phase: the trainer's (ParallelContext::GradNorm, one multi-tensor
  // kernel) against one fp32 pass per tensor (at::dot, accumulated in fp64 across tensors).
  trainer.Step(0, {batch}, frozen);
  double norm = 0, one_pass = 0;
  std::vector<double> trainer_s, one_pass_s;
  for (int r = 0; r < rounds; ++r) {
    const auto t_norm = BenchClock::now();
    norm = trainer.ctx().GradNorm(trainer.model());
    trainer_s.push_back(SecondsSince(t_norm));
    at::NoGradGuard no_grad;
    const auto t0 = BenchClock::now();
    double sum = 0;
    for (const at::Tensor& p : trainer.params()) {
      if (p.grad().defined()) sum += at::dot(p.grad().reshape({-1}), p.grad().reshape({-1})).item<double>();
    }
    one_pass = std::sqrt(sum);
    one_pass_s.push_back(SecondsSince(t0));
  }
  std::sort(runs.begin(), runs.end(), [](const PhaseTimes& a, const PhaseTimes& b) { return a.total < b.total; });
  const PhaseTimes& t = runs[runs.size() / 2];  // the median step
  Json shares, seconds;
  for (int i = 0; i < kNumPhases; ++i) {
    const Phase p = static_cast<Phase>(i);
    shares[PhaseName(p)] = t.Of(p) / t.total;
    seconds[PhaseName(p)] = Json{{"forward", t.forward[i]}, {"backward", t.backward[i]}};
  }
  return Json{{"step_s", t.total},
              {"shares", shares},
              {"seconds", seconds},
              {"timed_loss", timed_loss},
              {"model_loss", model_loss},
              {"loss_rel_diff", *std::max_element(loss_diff.begin(), loss_diff.end())},
              {"grad_norm",
               {{"trainer_s", Summarize(trainer_s).median},
                {"one_pass_fp32_s", Summarize(one_pass_s).median},
                {"rel_diff", std::abs(norm - one_pass) / std::max(1e-30, norm)}}}};
}

int ChildMemory(const TrainConfig& config, bool checkpointing, int threads, bool random_tokens) {
  at::set_num_threads(threads);
  auto batch = BenchBatch(config, config.data().micro_batch_size(), 0, random_tokens);
  if (!batch.ok()) return 1;
  std::unique_ptr<ParallelContext> ctx = ParallelContext::CreateLocal(config.parallel().timeout_s());
  auto trainer = Trainer::Create(config, *ctx);
  if (!trainer.ok()) {
    std::fprintf(stderr, "bench: %s\n", std::string(trainer.status().message()).c_str());
    return 1;
  }
  (*trainer)->model()->options.activation_checkpointing = checkpointing;
  std::vector<double> s;
  for (int i = 0; i < 3; ++i) s.push_back(BenchStep(**trainer, *batch).total_s);
  std::printf("\n%s\n", Json{{"activation_checkpointing", checkpointing},
                             {"peak_rss_bytes", PeakResidentBytes()},
                             {"step_s", Summarize({s.begin() + 1, s.end()}).median}}
                            .dump()
                            .c_str());
  return 0;
}

void PrintTable(const Json& j) {
  auto row = [](const std::string& k, const std::string& v, const std::string& target = "") {
    std::fprintf(stderr, "  %-44s %-28s %s\n", k.c_str(), v.c_str(), target.c_str());
  };
  auto med = [&](const Json& s) { return s["median"].get<double>(); };
  std::fprintf(stderr, "bench %s | %s | %d threads x %d ranks | load %.2f -> %.2f | %s\n",
               j["config"].get<std::string>().c_str(), j["machine"]["cpu"].get<std::string>().c_str(),
               j["threads_per_rank"].get<int>(), j["world_size"].get<int>(),
               j["machine"]["load_avg_1m_start"].get<double>(), j["machine"]["load_avg_1m_end"].get<double>(),
               j["date"].get<std::string>().c_str());
  const double cpus = j["cpus_allowed_per_rank"].get<double>();
  if (cpus < j["threads_per_rank"].get<int>() ||
      (j.contains("scaling") && cpus < j["scaling"]["one_rank_threads"].get<int>())) {
    std::fprintf(stderr, "  WARNING: a rank may run on only %g cores (pinned by mpirun? use --bind-to none)\n", cpus);
  }
  if (j.contains("train")) {
    const Json& t = j["train"];
    row("training tokens/s", absl::StrFormat("%.0f", t["tokens_per_s"].get<double>()));
    row("step time (s)", absl::StrFormat("%.3f [%.3f, %.3f]", med(t["step_s"]), t["step_s"]["min"].get<double>(),
                                         t["step_s"]["max"].get<double>()));
    row("fp32 matmul peak (GFLOP/s, this run)", absl::StrFormat("%.1f", med(t["matmul_peak_flops"]) / 1e9));
    row("MFU (model FLOPs / peak)", Pct(med(t["mfu"])), "target >= 50%");
    row("MFU, causal attention FLOPs", Pct(med(t["mfu_causal"])));
    if (t.contains("mfu_bf16_peak")) {
      row("bf16 matmul peak (GFLOP/s, this run)", absl::StrFormat("%.1f", med(t["matmul_peak_flops_bf16"]) / 1e9));
      row("MFU against the bf16 peak", Pct(med(t["mfu_bf16_peak"])));
    }
    if (t.contains("bf16_over_fp32")) {
      row("FP32 tokens/s (same run, alternated)", absl::StrFormat("%.0f", t["fp32_tokens_per_s"].get<double>()));
      row("BF16 / FP32 tokens/s", absl::StrFormat("%.2fx", med(t["bf16_over_fp32"])), "target >= 1.8x");
    }
  }
  if (j.contains("phases")) {
    for (const auto& [k, v] : j["phases"]["shares"].items()) row("share: " + k, Pct(v.get<double>()));
    row("timed vs untimed step loss (rel diff)", absl::StrFormat("%.1e", j["phases"]["loss_rel_diff"].get<double>()));
    const Json& g = j["phases"]["grad_norm"];
    row("grad norm: trainer's / one fp32 pass (s)",
        absl::StrFormat("%.3f / %.3f", g["trainer_s"].get<double>(), g["one_pass_fp32_s"].get<double>()));
  }
  if (j.contains("moe_vs_dense") && j["moe_vs_dense"].contains("moe_over_dense")) {
    row("MoE layer / dense FFN (same active FLOPs)",
        absl::StrFormat("%.2fx (best/best %.2fx)", med(j["moe_vs_dense"]["moe_over_dense"]),
                        j["moe_vs_dense"]["moe_over_dense_best_vs_best"].get<double>()),
        "target <= 1.3x");
    row("grouped experts / dense FFN", absl::StrFormat("%.2fx", med(j["moe_vs_dense"]["experts_over_dense"])));
  }
  if (j.contains("hf") && j["hf"].contains("ours_over_hf")) {
    row("ours / transformers tokens/s",
        absl::StrFormat("%.2fx (best/best %.2fx)", med(j["hf"]["ours_over_hf"]),
                        j["hf"]["ours_over_hf_best_vs_best"].get<double>()),
        "target >= 2x");
    row("transformers tokens/s", absl::StrFormat("%.0f", j["hf"]["hf_tokens_per_s"].get<double>()));
    row("transformers MFU", Pct(med(j["hf"]["hf_mfu"])));
    if (j["hf"].contains("ours_over_hf_faster")) {
      row("transformers bf16-autocast tokens/s",
          absl::StrFormat("%.0f", j["hf"]["hf_autocast_tokens_per_s"].get<double>()));
      row("ours / transformers' faster side", absl::StrFormat("%.2fx", med(j["hf"]["ours_over_hf_faster"])),
          "target >= 2x");
    }
    row("first-step lm loss |ours - hf|",
        absl::StrFormat("%.1e", j["hf"]["first_step_lm_loss_abs_diff"].get<double>()));
  }
  if (j.contains("activation_checkpointing") && j["activation_checkpointing"].contains("on_over_off_step_s")) {
    const Json& c = j["activation_checkpointing"];
    row("checkpointing: step time on/off", absl::StrFormat("%.2fx", med(c["on_over_off_step_s"])));
    row("checkpointing: max grad-norm rel diff", absl::StrFormat("%.1e", c["grad_norm_max_rel_diff"].get<double>()));
    if (c.contains("peak_rss_off_bytes")) {
      row("checkpointing: peak RSS off -> on",
          Bytes(c["peak_rss_off_bytes"].get<double>()) + " -> " + Bytes(c["peak_rss_on_bytes"].get<double>()));
    }
  }
  if (j.contains("scaling") && j["scaling"].contains("speedup")) {
    row("1-rank tokens/s", absl::StrFormat("%.0f", j["scaling"]["one_rank_tokens_per_s"].get<double>()));
    row(absl::StrCat(j["world_size"].get<int>(), "-rank tokens/s"),
        absl::StrFormat("%.0f", j["scaling"]["n_rank_tokens_per_s"].get<double>()));
    row("N-rank / 1-rank tokens/s", absl::StrFormat("%.2fx (best/best %.2fx)", med(j["scaling"]["speedup"]),
                                                    j["scaling"]["speedup_best_vs_best"].get<double>()));
  }
  if (j.contains("all_to_all") && j["all_to_all"].contains("exchange_over_raw")) {
    const Json& a = j["all_to_all"];
    row("raw MPI_Alltoallv (MB/s)", absl::StrFormat("%.0f", med(a["raw_bytes_per_s"]) / 1e6));
    row("all-to-all exchange / raw",
        Pct(med(a["exchange_over_raw"])) + " (best/best " + Pct(a["exchange_over_raw_best_vs_best"].get<double>()) +
            ")",
        "target >= 90%");
    row("dispatch+combine / 2x raw", Pct(med(a["dispatcher_over_raw"])));
    row("raw into a fresh output / raw", Pct(med(a["raw_alloc_over_raw"])));
    row("expert-count exchange (ms)", absl::StrFormat("%.3f", 1e3 * med(a["counts_exchange_s"])));
    row("reused receive buffers, rank 0 (MiB)",
        absl::StrFormat("%.0f", a.value("receive_pool_bytes_rank0", 0.0) / (1024.0 * 1024.0)));
  }
  row("allocator keeps freed memory (both sides)", j.value("malloc_keep_freed", false) ? "yes" : "no");
  row("peak resident memory (max over ranks)", Bytes(j["memory"]["peak_rss_bytes"].get<double>()));
}

}  // namespace hybridmoe
