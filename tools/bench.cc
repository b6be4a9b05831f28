// bazel-bin/tools/bench [--config=configs/bench.textproto] [--override=TEXTPROTO]... [--threads=N] [--rounds=R]
//   [--hf=auto|on|off] [--sections=LIST] [--json_out=FILE] [--random_tokens] [--fp32_reference=on|off]
// Under `mpirun --bind-to none -np N` the experts are sharded over the N ranks (--expert_parallel_size) and
// the scaling and all-to-all sections run (without --bind-to none, mpirun pins each rank to one core and
// the 1-rank side of the scaling section cannot use the others; cpus_allowed in the report shows it).
//
// Measures the training step of a config and prints a table (stderr) and one JSON object (stdout) with:
// tokens/s; model FLOPs utilisation against the fp32 matmul peak measured in the same run and threads (and,
// in train.precision BF16, against the bf16 matmul peak, with an FP32 copy of the run alternated with it); the
// time share of each phase (tools/bench_phases.h); the MoE layer against a dense SwiGLU FFN of the same
// active FLOPs (tools/bench_sections.h); our step against transformers' OlmoeForCausalLM on the same
// config, weights and batch (tools/bench_hf.h); activation checkpointing's speed and memory; 1-rank vs
// N-rank tokens/s and the all-to-all against a raw MPI_Alltoallv (tools/bench_comm.h); peak resident
// memory. Ratios are medians over rounds that alternate the two sides (tools/bench_common.h).

#include <cstdio>
#include <fstream>
#include <set>
#include <thread>

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/config.h"
#include "core/host.h"
#include "core/status.h"
#include "parallel/topology.h"
#include "tools/bench_comm.h"
#include "tools/bench_common.h"
#include "tools/bench_hf.h"
#include "tools/bench_sections.h"
#include "tools/cli.h"
#include "tools/trainer.h"
#include "tools/training.h"

namespace hybridmoe {
namespace {

const char kAllSections[] = "train,phases,moe_dense,hf,checkpointing,scaling,all_to_all";

struct Options {
  std::string config_path;
  std::vector<std::string> overrides;
  int threads = 0, rounds = 5, warmup = 1;
  std::string hf = "auto";
  std::set<std::string> sections;
  bool random_tokens = false;
  bool fp32_reference = true;      // in BF16, an FP32 copy of the run alternated with it (a second set of states)
  bool keep_freed_memory = false;  // KeepFreedMemoryForReuse() applied (and passed on to transformers)
  std::string json_out;
  HfPaths hf_paths;
  bool Want(const std::string& s) const { return sections.count(s) > 0; }
};

absl::Status Run(const Options& o, TrainConfig config) {
  ASSIGN_OR_RETURN(std::unique_ptr<ParallelContext> ctx_owner, ParallelContext::Create(config));
  ParallelContext& ctx = *ctx_owner;
  const bool root = ctx.rank() == 0;
  const int W = ctx.world_size();
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // The trainer's thread count (the CPUs this process may run on / ranks on the node) unless --threads.
  const int threads = o.threads > 0 ? o.threads : DefaultThreads(config, ctx.local_size());
  at::set_num_threads(threads);
  const int64_t B = config.data().micro_batch_size(), S = config.data().seq_len();
  const double tokens_per_step = static_cast<double>(B * S * W);
  const FlopCount flops = CountFlops(config);
  ASSIGN_OR_RETURN(const Batch batch, BenchBatch(config, B, ctx.rank() * B, o.random_tokens));
  const at::Tensor &inputs = batch.inputs, &targets = batch.targets;

  Json report;
  report["tool"] = "bench";
  report["date"] = NowUtc();
  report["machine"] = {{"cpu", CpuModel()}, {"hardware_threads", hw}, {"load_avg_1m_start", LoadAverage()}};
  report["config"] = o.config_path;
  report["overrides"] = o.overrides;
  const ModelConfig& m = config.model();
  report["model"] = {{"d_model", m.d_model()},
                     {"n_layers", m.n_layers()},
                     {"n_heads", m.n_heads()},
                     {"num_experts", m.moe().num_experts()},
                     {"top_k", m.moe().top_k()},
                     {"expert_hidden", m.moe().expert_hidden()},
                     {"vocab_size", m.vocab_size()},
                     {"norm_strategy", NormConfig::Strategy_Name(m.norm().strategy())},
                     {"seq_len", S},
                     {"micro_batch_size", B}};
  report["world_size"] = W;
  report["expert_parallel_size"] = ctx.ep_size();
  report["threads_per_rank"] = threads;
  report["cpus_allowed_per_rank"] = -ctx.MaxOverRanks(-CpusAllowed());  // the smallest affinity mask
  report["malloc_keep_freed"] = o.keep_freed_memory;                    // both sides: core/host.h
  report["tokens_per_step"] = tokens_per_step;
  report["flops_per_token_train"] = flops.per_token_train;
  report["flops_per_token_train_causal"] = flops.per_token_train_causal;

  ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer, Trainer::Create(config, ctx));
  Transformer& model = trainer->model();
  const auto step_s = [&](Trainer& t) { return BenchStep(t, batch).total_s; };
  const bool bf16 = model->compute_dtype() == at::kBFloat16;
  // In BF16 the same run in FP32 (same weights and batch), alternated with it: the speed-up of mixed precision.
  std::unique_ptr<Trainer> fp32_trainer;
  if (bf16 && o.Want("train") && o.fp32_reference) {
    TrainConfig fp32 = config;
    fp32.mutable_train()->set_precision(TrainRunConfig::FP32);
    ASSIGN_OR_RETURN(fp32_trainer, Trainer::Create(fp32, ctx));
  }
  std::unique_ptr<HfSide> hf, hf_autocast;
  if (o.Want("hf") && o.hf != "off") {
    if (W > 1) {
      report["hf"] = {{"skipped", "the transformers side runs in 1-rank runs only"}};
    } else {
      auto started = HfSide::Start(o.hf_paths, model, config, inputs, targets, threads);
      if (started.ok()) {
        hf = std::move(*started);
        // Our BF16 step against transformers' faster of fp32 and bf16 autocast.
        if (bf16) {
          ASSIGN_OR_RETURN(hf_autocast,
                           HfSide::Start(o.hf_paths, model, config, inputs, targets, threads, /*autocast=*/true));
        }
      } else if (o.hf == "on") {
        return started.status();
      } else {
        report["hf"] = {{"skipped", std::string(started.status().message())}};
      }
    }
  }
  // Warm-up; the first step's loss is computed from the initial weights on both sides.
  const double first_lm_loss = BenchStep(*trainer, batch).lm_loss;
  for (int i = 1; i < o.warmup; ++i) step_s(*trainer);
  HfSteps hf_first;
  if (hf) {
    ASSIGN_OR_RETURN(hf_first, hf->Steps(std::max(1, o.warmup)));
  }
  if (hf_autocast) RETURN_IF_ERROR(hf_autocast->Steps(std::max(1, o.warmup)).status());
  if (fp32_trainer) {
    for (int i = 0; i < std::max(1, o.warmup); ++i) step_s(*fp32_trainer);
  }

  if (o.Want("train") || hf) {
    std::vector<double> peak, ours, theirs, mfu, mfu_causal, ratio, hf_mfu;
    std::vector<double> peak_bf16, mfu_bf16, fp32_s, bf16_over_fp32, theirs_autocast, ratio_autocast, ratio_faster;
    const double step_flops = flops.per_token_train * tokens_per_step;
    for (int r = 0; r < o.rounds; ++r) {
      // Every rank measures at once: the machine's peak with these threads is the sum.
      std::vector<double> p = {MeasureMatmulPeak(), bf16 ? MeasureMatmulPeak({1024, 2048}, 3, at::kBFloat16) : 0.0};
      ctx.SumOverRanks(p);
      peak.push_back(p[0]);
      ours.push_back(ctx.MaxOverRanks(step_s(*trainer)));
      mfu.push_back(step_flops / ours.back() / peak.back());
      mfu_causal.push_back(flops.per_token_train_causal * tokens_per_step / ours.back() / peak.back());
      if (bf16) {
        peak_bf16.push_back(p[1]);
        mfu_bf16.push_back(step_flops / ours.back() / peak_bf16.back());
      }
      if (fp32_trainer) {
        fp32_s.push_back(ctx.MaxOverRanks(step_s(*fp32_trainer)));
        bf16_over_fp32.push_back(fp32_s.back() / ours.back());
      }
      if (hf) {
        ASSIGN_OR_RETURN(HfSteps s, hf->Steps(1));
        theirs.push_back(s.seconds[0]);
        ratio.push_back(theirs.back() / ours.back());
        hf_mfu.push_back(step_flops / theirs.back() / peak.back());
      }
      if (hf_autocast) {
        ASSIGN_OR_RETURN(HfSteps s, hf_autocast->Steps(1));
        theirs_autocast.push_back(s.seconds[0]);
        ratio_autocast.push_back(theirs_autocast.back() / ours.back());
        ratio_faster.push_back(std::min(theirs.back(), theirs_autocast.back()) / ours.back());
      }
    }
    const Summary step_s = Summarize(ours);
    report["train"] = {{"tokens_per_s", tokens_per_step / step_s.median},
                       {"step_s", ToJson(step_s)},
                       {"matmul_peak_flops", ToJson(Summarize(peak))},
                       {"achieved_flops", step_flops / step_s.median},
                       {"mfu", ToJson(Summarize(mfu))},
                       {"mfu_causal", ToJson(Summarize(mfu_causal))}};
    if (bf16) {
      report["train"]["matmul_peak_flops_bf16"] = ToJson(Summarize(peak_bf16));
      report["train"]["mfu_bf16_peak"] = ToJson(Summarize(mfu_bf16));
    }
    if (fp32_trainer) {
      report["train"]["fp32_tokens_per_s"] = tokens_per_step / Summarize(fp32_s).median;
      report["train"]["bf16_over_fp32"] = ToJson(Summarize(bf16_over_fp32));
      fp32_trainer.reset();
    }
    if (hf) {
      const double hf_loss = hf_first.lm_loss.empty() ? 0 : hf_first.lm_loss[0];
      report["hf"] = {{"ours_tokens_per_s", tokens_per_step / step_s.median},
                      {"hf_tokens_per_s", tokens_per_step / Summarize(theirs).median},
                      {"hf_step_s", ToJson(Summarize(theirs))},
                      {"ours_over_hf", ToJson(Summarize(ratio))},
                      {"ours_over_hf_best_vs_best", Summarize(theirs).min / step_s.min},
                      {"hf_mfu", ToJson(Summarize(hf_mfu))},
                      {"first_step_lm_loss_ours", first_lm_loss},
                      {"first_step_lm_loss_hf", hf_loss},
                      {"first_step_lm_loss_abs_diff", std::abs(first_lm_loss - hf_loss)},
                      {"hf_side", Json::parse(hf->ready_line(), nullptr, false)}};
      if (hf_autocast) {
        report["hf"]["hf_autocast_tokens_per_s"] = tokens_per_step / Summarize(theirs_autocast).median;
        report["hf"]["hf_autocast_step_s"] = ToJson(Summarize(theirs_autocast));
        report["hf"]["ours_over_hf_autocast"] = ToJson(Summarize(ratio_autocast));
        report["hf"]["ours_over_hf_faster"] = ToJson(Summarize(ratio_faster));
        hf_autocast.reset();
      }
      hf.reset();
    }
  }
  if (o.Want("phases")) report["phases"] = PhaseShares(*trainer, batch, 3);
  if (o.Want("moe_dense")) {
    report["moe_vs_dense"] = W == 1 ? MoeVsDense(*trainer, inputs, o.rounds) : Json{{"skipped", "1-rank runs only"}};
  }
  if (o.Want("checkpointing")) {
    // Same weights and batch with and without checkpointing: the loss and every parameter's gradient norm
    // must agree (recomputation is the same math).
    double grad_rel_diff = 0, loss_rel_diff = 0;
    {
      std::vector<double> norms[2], losses(2);
      for (const bool on : {false, true}) {
        model->options.activation_checkpointing = on;
        losses[on] = BenchStep(*trainer, batch, /*lr=*/0.0).loss;  // lr 0: both see the same weights
        at::NoGradGuard no_grad;
        for (const at::Tensor& p : trainer->params()) {
          norms[on].push_back(p.grad().defined() ? p.grad().norm().item<double>() : 0.0);
        }
      }
      for (size_t i = 0; i < norms[0].size(); ++i) {
        grad_rel_diff = std::max(grad_rel_diff, std::abs(norms[1][i] - norms[0][i]) / std::max(1e-30, norms[0][i]));
      }
      loss_rel_diff = std::abs(losses[1] - losses[0]) / std::max(1e-30, std::abs(losses[0]));
    }
    std::vector<double> ratio, t_off, t_on;
    for (int r = 0; r < o.rounds; ++r) {
      model->options.activation_checkpointing = false;
      t_off.push_back(ctx.MaxOverRanks(step_s(*trainer)));
      model->options.activation_checkpointing = true;
      t_on.push_back(ctx.MaxOverRanks(step_s(*trainer)));
      ratio.push_back(t_on.back() / t_off.back());
    }
    model->options.activation_checkpointing = false;
    Json c = {{"on_over_off_step_s", ToJson(Summarize(ratio))},
              {"on_over_off_best_vs_best", Summarize(t_on).min / Summarize(t_off).min},
              {"loss_rel_diff", loss_rel_diff},
              {"grad_norm_max_rel_diff", grad_rel_diff}};
    if (W == 1) {
      std::vector<std::string> args = {"--config=" + o.config_path, absl::StrCat("--threads=", threads)};
      for (const std::string& ov : o.overrides) args.push_back("--override=" + ov);
      if (o.random_tokens) args.push_back("--random_tokens");
      for (const bool on : {false, true}) {
        args.push_back(on ? "--child_memory=1" : "--child_memory=0");
        ASSIGN_OR_RETURN(const Json child, RunChild(args));
        args.pop_back();
        c[on ? "peak_rss_on_bytes" : "peak_rss_off_bytes"] = child["peak_rss_bytes"];
        c[on ? "child_step_s_on" : "child_step_s_off"] = child["step_s"];
      }
    }
    report["activation_checkpointing"] = c;
  }
  if (o.Want("scaling") && W > 1) {
    TrainConfig one = config;
    one.mutable_parallel()->set_expert_parallel_size(1);
    // Rank 0 alone, in-process: the same step on a one-process context.
    std::unique_ptr<ParallelContext> local = ParallelContext::CreateLocal(config.parallel().timeout_s());
    std::unique_ptr<Trainer> single;
    if (root) {
      ASSIGN_OR_RETURN(single, Trainer::Create(one, *local));
    }
    std::vector<double> speedup, t_one, t_n;
    for (int r = 0; r <= o.rounds; ++r) {  // round 0 warms the 1-rank model up
      at::set_num_threads(threads);
      const double n_rank = ctx.MaxOverRanks(step_s(*trainer));
      double one_rank = 0;
      if (root) {
        at::set_num_threads(threads * ctx.local_size());
        one_rank = step_s(*single);
      }
      IdleBarrier(ctx);
      if (r == 0) continue;
      t_one.push_back(one_rank);
      t_n.push_back(n_rank);
      speedup.push_back((tokens_per_step / n_rank) / (B * S / one_rank));
    }
    at::set_num_threads(threads);
    report["scaling"] = {
        {"one_rank_threads", threads * ctx.local_size()},
        {"one_rank_tokens_per_s", B * S / Summarize(t_one).median},
        {"n_rank_tokens_per_s", tokens_per_step / Summarize(t_n).median},
        {"speedup", ToJson(Summarize(speedup))},
        {"speedup_best_vs_best", (tokens_per_step / Summarize(t_n).min) / (B * S / Summarize(t_one).min)}};
  }
  if (o.Want("all_to_all") && ctx.ep_size() > 1) {
    std::vector<MoeLayer> layers = model->moe_layers();
    const at::Tensor counts = model->count_routing(inputs)[0].to(at::kCPU).contiguous();  // layer 0's routing
    const std::vector<int64_t> counts_E(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel());
    const AllToAllBench a = MeasureAllToAll(ctx, *layers[0]->dispatcher, counts_E, m.d_model(), 3 * o.rounds, 50);
    // Load balance of layer 0 over the EP ranks: rows each rank's experts get, max over mean.
    std::vector<double> global(counts_E.begin(), counts_E.end());
    ctx.SumOverRanks(global);
    const int64_t L = m.moe().num_experts() / ctx.ep_size();
    std::vector<double> rows(ctx.ep_size(), 0);
    for (size_t e = 0; e < global.size(); ++e) rows[e / L] += global[e];
    double max_rows = 0, sum_rows = 0;
    for (const double r : rows) {
      max_rows = std::max(max_rows, r);
      sum_rows += r;
    }
    report["all_to_all"] = {{"bytes_per_exchange_rank0", a.bytes_per_exchange},
                            {"expert_rows_max_over_mean", max_rows / (sum_rows / ctx.ep_size())},
                            {"raw_bytes_per_s", ToJson(a.raw_bytes_per_s)},
                            {"exchange_bytes_per_s", ToJson(a.exchange_bytes_per_s)},
                            {"dispatcher_bytes_per_s", ToJson(a.dispatcher_bytes_per_s)},
                            {"exchange_over_raw", ToJson(a.exchange_over_raw)},
                            {"exchange_over_raw_best_vs_best", a.exchange_bytes_per_s.max / a.raw_bytes_per_s.max},
                            {"dispatcher_over_raw", ToJson(a.dispatcher_over_raw)},
                            {"raw_alloc_over_raw", ToJson(a.raw_alloc_over_raw)},
                            {"counts_exchange_s", ToJson(a.counts_exchange_s)},
                            {"receive_pool_bytes_rank0", a.receive_pool_bytes}};
  }
  report["memory"] = {{"peak_rss_bytes", ctx.MaxOverRanks(static_cast<double>(PeakResidentBytes()))}};
  report["machine"]["load_avg_1m_end"] = LoadAverage();
  auto med = [&](const char* a, const char* b) -> Json {
    return report.contains(a) && report[a].contains(b) ? report[a][b]["median"] : Json();
  };
  auto at_least = [](const Json& v, double t) -> Json { return v.is_null() ? Json() : Json(v.get<double>() >= t); };
  report["targets"] = {
      {"mfu_at_least_0.5", at_least(med("train", "mfu"), 0.5)},
      {"moe_at_most_1.3x_dense", med("moe_vs_dense", "moe_over_dense").is_null()
                                     ? Json()
                                     : Json(med("moe_vs_dense", "moe_over_dense").get<double>() <= 1.3)},
      {"at_least_2x_transformers",
       at_least(report.contains("hf") && report["hf"].contains("ours_over_hf_faster") ? med("hf", "ours_over_hf_faster")
                                                                                      : med("hf", "ours_over_hf"),
                2.0)},
      {"bf16_at_least_1.8x_fp32", at_least(med("train", "bf16_over_fp32"), 1.8)},
      {"all_to_all_at_least_0.9_raw", at_least(med("all_to_all", "exchange_over_raw"), 0.9)}};
  if (root) {
    PrintTable(report);
    std::printf("%s\n", report.dump(2).c_str());
    std::fflush(stdout);
    if (!o.json_out.empty()) {
      std::ofstream out(o.json_out);
      out << report.dump(2) << "\n";
      if (!out) return absl::PermissionDeniedError(absl::StrCat("--json_out ", o.json_out, ": cannot write"));
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace hybridmoe

int main(int argc, char** argv) {
  using namespace hybridmoe;
  const bool keep_freed_memory = KeepFreedMemoryForReuse();
  const std::vector<FlagSpec> specs = {
      {"config", "text-format TrainConfig (default configs/bench.textproto)"},
      {"override", "text-format TrainConfig merged on top (repeatable)", false, true},
      {"threads", "intra-op threads per rank (default parallel.num_threads, else cores / ranks on the node)"},
      {"rounds", "alternating measurement rounds per comparison (default 5)"},
      {"warmup", "warm-up steps before measuring (default 1)"},
      {"sections", std::string("comma-separated subset of ") + kAllSections + " (default all)"},
      {"hf", "transformers side-by-side: auto (when exportable and found), on (failure is an error), off"},
      {"hf_python", "Python with torch + transformers (default $HYBRIDMOE_VENV/bin/python)"},
      {"hf_script", "tools/hf_bench.py (default: next to this binary's runfiles)"},
      {"convert_hf", "convert_hf binary (default: beside this binary)"},
      {"expert_parallel_size", "experts sharded over this many ranks (default 0: all ranks, if E divides)"},
      {"random_tokens", "uniform random tokens instead of the config's training data", true},
      {"fp32_reference",
       "on (default): in BF16 also time an FP32 copy of the run, alternated; off: BF16 alone (one set of states, "
       "for memory measurements)"},
      {"json_out", "also write the JSON report to this file"},
      {"child_memory", "internal: train 3 steps with activation checkpointing 0/1 and print peak memory"},
      {"help", "show this help", true},
  };
  int exit_code = 0;
  auto cl =
      CommandLine::ParseOrExit(argc, argv, "bench", "Measures training throughput, MFU and ratios.", specs, &exit_code);
  if (!cl) return exit_code;
  Options o;
  o.keep_freed_memory = keep_freed_memory;
  o.config_path = cl->Get("config", "configs/bench.textproto");
  o.overrides = cl->GetAll("override");
  o.hf = cl->Get("hf", "auto");
  o.random_tokens = cl->GetBool("random_tokens");
  o.json_out = cl->Get("json_out");
  for (const auto& s : absl::StrSplit(cl->Get("sections", kAllSections), ',', absl::SkipEmpty())) {
    if (!absl::StrContains(absl::StrCat(",", kAllSections, ","), absl::StrCat(",", s, ","))) {
      std::fprintf(stderr, "bench: --sections: unknown section '%s'; valid: %s\n", std::string(s).c_str(),
                   kAllSections);
      return 2;
    }
    o.sections.insert(std::string(s));
  }
  for (const auto& [flag, value] :
       {std::pair<const char*, int*>{"threads", &o.threads}, {"rounds", &o.rounds}, {"warmup", &o.warmup}}) {
    auto v = cl->GetInt(flag, *value);
    if (!v.ok() || *v < (std::string(flag) == "threads" ? 0 : 1)) {
      std::fprintf(stderr, "bench: --%s (%s) must be a positive integer\n", flag, cl->Get(flag).c_str());
      return 2;
    }
    *value = static_cast<int>(*v);
  }
  const std::string fp32_reference = cl->Get("fp32_reference", "on");
  if (fp32_reference != "on" && fp32_reference != "off") {
    std::fprintf(stderr, "bench: --fp32_reference (%s) must be on or off\n", fp32_reference.c_str());
    return 2;
  }
  o.fp32_reference = fp32_reference == "on";
  if (o.hf != "auto" && o.hf != "on" && o.hf != "off") {
    std::fprintf(stderr, "bench: --hf (%s) must be auto, on or off\n", o.hf.c_str());
    return 2;
  }
  o.hf_paths = DefaultHfPaths();
  if (cl->Has("hf_python")) o.hf_paths.python = cl->Get("hf_python");
  if (cl->Has("hf_script")) o.hf_paths.script = cl->Get("hf_script");
  if (cl->Has("convert_hf")) o.hf_paths.convert_hf = cl->Get("convert_hf");
  auto config = LoadConfig(o.config_path, o.overrides);
  if (!config.ok()) {
    std::fprintf(stderr, "bench: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  if (cl->Has("child_memory")) {
    return ChildMemory(*config, cl->Get("child_memory") == "1", std::max(1, o.threads), o.random_tokens);
  }
  // Expert parallelism over the whole launch unless --expert_parallel_size says otherwise.
  auto launch = DetectLaunch();
  if (!launch.ok()) {
    if (LaunchRank() == 0) std::fprintf(stderr, "bench: %s\n", std::string(launch.status().message()).c_str());
    return 1;
  }
  const int world = std::max(1, launch->expected_world_size);
  auto ep = cl->GetInt("expert_parallel_size", 0);
  if (!ep.ok() || *ep < 0) {
    std::fprintf(stderr, "bench: --expert_parallel_size (%s) must be 0 (all ranks) or a positive integer\n",
                 cl->Get("expert_parallel_size").c_str());
    return 2;
  }
  config->mutable_parallel()->set_expert_parallel_size(
      *ep > 0 ? static_cast<int>(*ep) : (config->model().moe().num_experts() % world == 0 ? world : 1));
  absl::Status s = ValidateConfig(*config, world, /*check_files=*/!o.random_tokens);
  if (s.ok()) s = Run(o, *config);
  if (!s.ok()) {
    if (ParallelContext::IsRankZero()) std::fprintf(stderr, "bench: %s\n", std::string(s.message()).c_str());
    std::fflush(stderr);
    std::_Exit(1);
  }
  return 0;
}
