// bazel-bin/tools/compare_norms --config=BASE.textproto --strategies=PRE_NORM,HYBRID_NORM,... [--out=DIR]
//     [--override='TEXTPROTO']... [--launcher='mpirun -np 2'] [--train_bin=PATH] [--target_loss=X]
//     [--grad_steps=1,150,300] [--final_window=5] [--report_only]
//     [--seeds=N | --seeds=S1,S2,...] [--depths=4,12,24] [--baseline=PRE_NORM] [--variant_override=KEY:TEXTPROTO]
// Trains one variant per norm strategy with everything else identical (config, seed, data order, tokens,
// schedule), one after another, each as a child `train` process into DIR/<STRATEGY>/ (its log in
// DIR/<STRATEGY>/train.log), then writes DIR/report.md, report.html, summary.csv, curves.csv and
// grad_norms.csv (tools/compare_report.h). With --seeds and/or --depths every strategy is trained once per
// (depth, seed) into DIR/[depth_<L>/]<STRATEGY>[/seed_<S>]/ (train.seed = S, which also sets the data
// order; model.n_layers = L), and the report adds the mean and spread over seeds, Welch's t-test against
// --baseline, and groups.csv. Re-running the same command resumes an interrupted sweep:
// complete variants (final checkpoint present) and diverged ones (DIR/<STRATEGY>/sweep_status.json) are
// not rerun, a half-finished variant continues from its newest checkpoint. A diverging variant is reported,
// never a crash of the sweep. Exit 0 when every variant completed or diverged, 1 otherwise or on bad input.
// See docs/compare_norms.md.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/config.h"
#include "core/metrics.h"
#include "core/status.h"
#include "parallel/topology.h"
#include "tools/cli.h"
#include "tools/compare_metrics.h"
#include "tools/compare_report.h"
#include "tools/sweep_io.h"

namespace hybridmoe {
namespace {

// DIR/<STRATEGY>/sweep_status.json: {"status": ..., "wall_s": ..., "message": ...}, written by this tool.
struct VariantStatus {
  std::string status;
  double wall_s = 0;
  std::string message;
};

VariantStatus ReadStatus(const std::string& run_dir) {
  VariantStatus s;
  auto text = ReadFile(run_dir + "/sweep_status.json");
  if (!text.ok()) return s;  // no status yet: the variant has not run
  auto rec = ParseFlatJsonObject(*text);
  if (!rec.ok()) return s;
  s.status = rec->str.count("status") ? rec->str.at("status") : "";
  s.message = rec->str.count("message") ? rec->str.at("message") : "";
  s.wall_s = rec->Get("wall_s");
  if (!std::isfinite(s.wall_s)) s.wall_s = 0;
  return s;
}

absl::Status WriteStatus(const std::string& run_dir, const VariantStatus& s) {
  // The message is a line of a child's log, which may hold bytes that are not UTF-8: replaced (U+FFFD), since
  // nlohmann refuses to encode them.
  const std::string message =
      nlohmann::json::parse(nlohmann::json(s.message).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace))
          .get<std::string>();
  JsonRecord record;
  record.Add("status", s.status).Add("wall_s", std::round(s.wall_s * 1000) / 1000).Add("message", message);
  return WriteFileAtomically(run_dir + "/sweep_status.json", record.ToString() + "\n");
}

// A variant directory from an earlier run must hold the config this sweep would give it: parsed and
// resolved again (so that a field added to the schema since, with its default, is no difference).
absl::Status CheckSameConfig(const std::string& path, const TrainConfig& expected, const std::string& name) {
  if (!Exists(path)) return absl::OkStatus();
  ASSIGN_OR_RETURN(const std::string stored_text, ReadFile(path));
  auto stored = ParseConfigText(stored_text, path);
  std::string ours = ConfigToText(expected), theirs;
  if (stored.ok()) {
    ResolveDefaults(*stored);
    theirs = ConfigToText(*stored);
    if (theirs == ours) return absl::OkStatus();
  }
  std::vector<std::string> a = absl::StrSplit(theirs, '\n'), b = absl::StrSplit(ours, '\n');
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  const std::string detail =
      !stored.ok() ? std::string(stored.status().message())
                   : absl::StrCat("line ", i + 1, ": run has '", i < a.size() ? absl::StripAsciiWhitespace(a[i]) : "",
                                  "', sweep has '", i < b.size() ? absl::StripAsciiWhitespace(b[i]) : "", "'");
  return absl::FailedPreconditionError(absl::StrCat(path, " differs from this sweep's config for ", name, " (", detail,
                                                    "); resume with the original --config/--override or "
                                                    "choose another --out"));
}

struct Flags {
  std::string config, out, train_bin, target_text, grad_steps_text, cmdline, baseline;
  std::vector<std::string> overrides, strategies, launcher, variant_env, variant_overrides;
  std::vector<uint64_t> seeds;  // empty: the config's seed, no seed_<S> directory level
  std::vector<int64_t> depths;  // empty: the config's n_layers, no depth_<L> directory level
  int final_window = 5;
  bool report_only = false;
};

// One run of the sweep: a strategy at one depth with one seed.
struct Variant {
  std::string strategy;
  int64_t depth = 0;  // 0: the config's n_layers
  bool has_seed = false;
  uint64_t seed = 0;
  std::string rel;  // run directory relative to --out, also the run's name in logs and the report
};

std::vector<Variant> Variants(const Flags& f) {
  std::vector<Variant> out;
  const std::vector<int64_t> depths = f.depths.empty() ? std::vector<int64_t>{0} : f.depths;
  const size_t n_seeds = f.seeds.empty() ? 1 : f.seeds.size();
  // Seeds outermost: an interrupted sweep has whole seeds of every strategy and depth first.
  for (size_t si = 0; si < n_seeds; ++si) {
    for (int64_t depth : depths) {
      for (const std::string& s : f.strategies) {
        Variant v;
        v.strategy = s;
        v.depth = depth;
        v.has_seed = !f.seeds.empty();
        v.seed = v.has_seed ? f.seeds[si] : 0;
        v.rel = absl::StrCat(depth > 0 ? absl::StrCat("depth_", depth, "/") : "", s,
                             v.has_seed ? absl::StrCat("/seed_", v.seed) : "");
        out.push_back(v);
      }
    }
  }
  return out;
}

std::string VariantOverride(const Variant& v) {
  std::string o = absl::StrCat("model { norm { strategy: ", v.strategy, " }",
                               v.depth > 0 ? absl::StrCat(" n_layers: ", v.depth) : "",
                               " } logging { per_layer_grad_norms: true } checkpoint { save_final: true }");
  if (v.has_seed) absl::StrAppend(&o, " train { seed: ", v.seed, " }");
  return o;
}

// --variant_env / --variant_override KEY:...: KEY is a strategy name, or the run directory of a variant
// relative to --out, or leading components of it ("depth_4", "depth_4/POST_NORM", "POST_NORM/seed_2").
bool KeyMatches(const std::string& key, const Variant& v) {
  if (key == v.strategy) return true;
  return v.rel == key ||
         (v.rel.size() > key.size() && v.rel.compare(0, key.size(), key) == 0 && v.rel[key.size()] == '/');
}

std::vector<std::string> Matching(const std::vector<std::string>& entries, const Variant& v) {
  std::vector<std::string> out;
  for (const std::string& e : entries) {
    const size_t colon = e.find(':');
    if (KeyMatches(e.substr(0, colon), v)) out.push_back(e.substr(colon + 1));
  }
  return out;
}

// The overrides of one variant, in order: --override..., the variant's own, its --variant_override....
std::vector<std::string> VariantOverrides(const Flags& f, const Variant& v) {
  std::vector<std::string> o = f.overrides;
  o.push_back(VariantOverride(v));
  for (const std::string& extra : Matching(f.variant_overrides, v)) o.push_back(extra);
  return o;
}

// Trains every variant that is not complete or diverged yet; returns false if any failed.
absl::StatusOr<bool> RunSweep(const Flags& f, const std::vector<Variant>& variants,
                              const std::vector<TrainConfig>& configs) {
  bool all_ok = true, logged_command = false;
  double seconds_per_step = NAN;
  const size_t n = variants.size();
  for (size_t i = 0; i < n; ++i) {
    const std::string& name = variants[i].rel;
    const int64_t steps = configs[i].train().steps();
    const std::string dir = f.out + "/" + name;
    const std::string tag = absl::StrFormat("[compare_norms] %d/%d %s:", i + 1, n, name);
    VariantStatus status = ReadStatus(dir);
    RETURN_IF_ERROR(CheckSameConfig(dir + "/config.textproto", configs[i], name));
    if (status.status == "diverged") {
      std::fprintf(stderr, "%s diverged in an earlier run (%s); not rerun\n", tag.c_str(), status.message.c_str());
      continue;
    }
    if (HasFinalCheckpoint(dir, steps) && Exists(dir + "/metrics.jsonl")) {
      std::fprintf(stderr, "%s already complete; not rerun\n", tag.c_str());
      continue;
    }
    if (f.report_only) continue;
    if (!logged_command) {  // provenance for the report: every invocation that trained something
      ASSIGN_OR_RETURN(const std::string commands, ReadFileIfExists(f.out + "/sweep_commands.txt"));
      RETURN_IF_ERROR(WriteFileAtomically(f.out + "/sweep_commands.txt", commands + f.cmdline + "\n"));
      logged_command = true;
    }
    RETURN_IF_ERROR(MakeDirs(dir));
    const bool resume = Exists(dir + "/metrics.jsonl");
    int64_t start_step = 0;
    if (resume) {
      auto m = ReadRunMetrics(dir + "/metrics.jsonl");
      if (m.ok() && !m->train.empty()) start_step = m->train.back().Step();
    }
    std::vector<std::string> argv = f.launcher;
    argv.push_back(f.train_bin);
    argv.push_back("--config=" + f.config);
    for (const std::string& o : VariantOverrides(f, variants[i])) argv.push_back("--override=" + o);
    argv.push_back("--out_dir=" + dir);
    if (resume) argv.push_back("--resume");
    const std::vector<std::string> env = Matching(f.variant_env, variants[i]);
    const size_t remaining = n - i;
    std::fprintf(stderr, "%s %s -> %s (log: %s/train.log) | sweep ETA %s\n", tag.c_str(),
                 resume ? absl::StrCat("resuming (last logged step ", start_step, ")").c_str() : "training",
                 dir.c_str(), dir.c_str(),
                 std::isnan(seconds_per_step)
                     ? "after the first variant"
                     : FormatWall(seconds_per_step * static_cast<double>(remaining * steps - start_step)).c_str());
    ASSIGN_OR_RETURN(const std::string log_before, ReadFileIfExists(dir + "/train.log"));
    const size_t log_offset = log_before.size();
    const double t0 = Now();
    ASSIGN_OR_RETURN(const int rc, RunChild(argv, env, dir + "/train.log"));
    const double wall = Now() - t0;
    ASSIGN_OR_RETURN(const std::string log_after, ReadFileIfExists(dir + "/train.log"));
    const std::string log = log_after.substr(std::min(log_offset, log_after.size()));
    status.wall_s += wall;
    auto m = ReadRunMetrics(dir + "/metrics.jsonl");
    const int64_t end_step = m.ok() && !m->train.empty() ? m->train.back().Step() : 0;
    if (end_step > start_step) seconds_per_step = wall / static_cast<double>(end_step - start_step);
    if (rc == 0) {
      status.status = "complete";
      status.message.clear();
    } else if (!LastLine(log, "training diverged").empty()) {
      status.status = "diverged";
      status.message = LastLine(log, "training diverged");
    } else {
      status.status = "failed";
      status.message = absl::StrCat("exit code ", rc, ": ", LastLine(log, ""));
      all_ok = false;
    }
    RETURN_IF_ERROR(WriteStatus(dir, status));
    std::string loss = "-";
    if (m.ok()) {
      SummaryOptions so;
      so.final_window = f.final_window;
      loss = absl::StrFormat("%.4f", Summarize(*m, so).final_train_loss);
    }
    std::fprintf(stderr, "%s %s in %s (step %lld, final train loss %s)%s%s | sweep ETA %s\n", tag.c_str(),
                 status.status.c_str(), FormatWall(wall).c_str(), static_cast<long long>(end_step), loss.c_str(),
                 status.message.empty() ? "" : ": ", status.message.c_str(),
                 FormatWall(seconds_per_step * static_cast<double>((remaining - 1) * steps)).c_str());
  }
  return all_ok;
}

// The default gradient-profile steps: first, middle and last step logged with per-layer gradient norms.
std::vector<int64_t> DefaultGradSteps(const std::vector<const RunMetrics*>& runs) {
  const std::vector<int64_t> logged = StepsWithKey(runs, "grad_norm/block0/ffn");
  if (logged.empty()) return {};
  std::vector<int64_t> out = {logged.front()};
  const int64_t mid = logged[(logged.size() - 1) / 2];
  if (mid != out.back()) out.push_back(mid);
  if (logged.back() != out.back()) out.push_back(logged.back());
  return out;
}

absl::Status WriteReport(const Flags& f, const std::vector<Variant>& variants,
                         const std::vector<TrainConfig>& configs) {
  SweepReport report;
  const TrainConfig& c = configs[0];
  report.grouped = !f.seeds.empty() || !f.depths.empty();
  report.baseline = f.baseline;
  report.title = absl::StrCat("Norm strategy comparison: ", f.config);
  report.summary_options.final_window = f.final_window;
  report.num_experts = c.model().moe().num_experts();
  const auto& m = c.model();
  const auto& d = c.data();
  ASSIGN_OR_RETURN(const std::string commands, ReadFileIfExists(f.out + "/sweep_commands.txt"));
  report.setup = {
      {"report written by", f.cmdline},
      {"variants trained by",
       commands.empty() ? "unknown" : absl::StrJoin(absl::StrSplit(commands, '\n', absl::SkipEmpty()), " ; then ")},
      {"base config", f.config},
      {"overrides (all variants)", f.overrides.empty() ? "none" : absl::StrJoin(f.overrides, " ; ")},
      {"launcher", f.launcher.empty() ? "none (one process per variant)" : absl::StrJoin(f.launcher, " ")},
      {"model",
       absl::StrFormat(
           "d_model %d, %s layers, %d heads, %d experts top-%d, expert hidden %d, vocab %d", m.d_model(),
           f.depths.empty() ? absl::StrCat(m.n_layers()) : absl::StrCat(absl::StrJoin(f.depths, ","), " (--depths)"),
           m.n_heads(), m.moe().num_experts(), m.moe().top_k(), m.moe().expert_hidden(), m.vocab_size())},
      {"schedule",
       absl::StrFormat("%d steps, lr %g, warmup %d, cosine to %g x lr, grad clip %g, seed %s", c.train().steps(),
                       c.optim().lr(), c.optim().warmup_steps(), c.optim().min_lr_ratio(), c.optim().grad_clip(),
                       f.seeds.empty() ? absl::StrCat(c.train().seed())
                                       : absl::StrCat(absl::StrJoin(f.seeds, ","),
                                                      " (--seeds: train.seed, which also sets the "
                                                      "data order; the init follows it too)"))},
      {"batch", absl::StrFormat("seq_len %d x micro_batch %d x grad_accum %d per rank", d.seq_len(),
                                d.micro_batch_size(), d.grad_accum_steps())},
      {"data", absl::StrCat(d.train_size() > 0 ? d.train(0).path() : "?", " (validation ", d.validation(), ")")},
  };
  std::vector<const RunMetrics*> runs;
  std::vector<std::string> names;
  report.variants.resize(variants.size());
  for (size_t i = 0; i < variants.size(); ++i) {
    VariantResult& v = report.variants[i];
    v.strategy = variants[i].strategy;
    v.label = variants[i].rel;
    v.depth = configs[i].model().n_layers();
    v.seed = configs[i].train().seed();
    const std::string dir = f.out + "/" + v.label;
    const VariantStatus st = ReadStatus(dir);
    v.wall_s = st.status.empty() ? NAN : st.wall_s;
    v.message = st.message;
    auto metrics = ReadRunMetrics(dir + "/metrics.jsonl");
    if (metrics.ok()) v.metrics = std::move(*metrics);
    if (st.status == "diverged" || st.status == "failed")
      v.status = st.status;
    else if (HasFinalCheckpoint(dir, c.train().steps()) && metrics.ok())
      v.status = "complete";
    else
      v.status = metrics.ok() ? "incomplete" : "not run";
    runs.push_back(&v.metrics);
    names.push_back(v.label);
  }
  std::vector<VariantSummary> first;
  for (const VariantResult& v : report.variants) first.push_back(Summarize(v.metrics, report.summary_options));
  if (!f.target_text.empty()) {
    if (!absl::SimpleAtod(f.target_text, &report.summary_options.target_loss)) {
      return absl::InvalidArgumentError(absl::StrCat("--target_loss (", f.target_text, ") must be a number"));
    }
    report.target_rule = "--target_loss";
  } else {
    report.summary_options.target_loss = DefaultTargetLoss(first);
    report.target_rule = "median final train loss of the variants that did not diverge";
  }
  for (VariantResult& v : report.variants) {
    v.summary = Summarize(v.metrics, report.summary_options);
    if (v.status == "diverged" && !v.summary.diverged) {
      v.summary.diverged = true;
      v.summary.diverged_reason = v.message;
    }
  }
  if (f.grad_steps_text.empty()) {
    report.grad_steps = DefaultGradSteps(runs);
  } else {
    for (absl::string_view s : absl::StrSplit(f.grad_steps_text, ',', absl::SkipEmpty())) {
      int64_t step = 0;
      if (!absl::SimpleAtoi(s, &step) || step < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("--grad_steps (", f.grad_steps_text, ") must be comma-separated positive step numbers"));
      }
      report.grad_steps.push_back(step);
    }
  }
  if (f.seeds.empty()) {
    report.data_order = CompareDataOrder(names, runs);
  } else {  // the data order follows the seed: compared among the runs of each seed
    std::vector<std::string> details;
    for (uint64_t seed : f.seeds) {
      std::vector<std::string> n;
      std::vector<const RunMetrics*> m;
      for (size_t i = 0; i < variants.size(); ++i) {
        if (variants[i].seed == seed) {
          n.push_back(names[i]);
          m.push_back(runs[i]);
        }
      }
      const DataOrderCheck check = CompareDataOrder(n, m);
      report.data_order.identical = report.data_order.identical && check.identical;
      report.data_order.steps_compared += check.steps_compared;
      details.push_back(absl::StrCat("seed ", seed, ": ", check.detail));
    }
    report.data_order.detail = absl::StrCat("compared within each seed; ", absl::StrJoin(details, "; "));
  }
  if (d.train_size() == 1) {  // tools/make_corpus.py writes the unigram entropy into the corpus manifest
    const std::string& path = d.train(0).path();
    ASSIGN_OR_RETURN(const std::string manifest_text,
                     ReadFileIfExists(path.substr(0, path.find_last_of('/') + 1) + "manifest.json"));
    const nlohmann::json manifest = nlohmann::json::parse(manifest_text, nullptr, /*allow_exceptions=*/false);
    if (manifest.is_object() && manifest.contains("train_unigram_entropy_nats") &&
        manifest["train_unigram_entropy_nats"].is_number()) {
      report.unigram_entropy = manifest["train_unigram_entropy_nats"].get<double>();
    }
  }
  double total_wall = 0;
  for (const VariantResult& v : report.variants) total_wall += std::isfinite(v.wall_s) ? v.wall_s : 0;
  const std::string loadavg = ReadFileIfExists("/proc/loadavg").value_or("");  // informational only
  std::string machine = absl::StrCat(sysconf(_SC_NPROCESSORS_ONLN), " cores");
  if (!f.report_only) {  // the load others put on the machine explains the wall times
    absl::StrAppend(&machine, "; load average (1/5/15 min) at the end of this sweep: ",
                    loadavg.substr(0, loadavg.find(' ', loadavg.find(' ', loadavg.find(' ') + 1) + 1)));
  }
  report.setup.emplace_back("machine", machine);
  report.setup.emplace_back("wall time of all variants", FormatWall(total_wall));
  RETURN_IF_ERROR(WriteFileAtomically(f.out + "/report.md", ReportMarkdown(report)));
  RETURN_IF_ERROR(WriteFileAtomically(f.out + "/report.html", ReportHtml(report)));
  RETURN_IF_ERROR(WriteFileAtomically(f.out + "/summary.csv", SummaryCsv(report)));
  RETURN_IF_ERROR(WriteFileAtomically(f.out + "/curves.csv", CurvesCsv(report)));
  RETURN_IF_ERROR(WriteFileAtomically(f.out + "/grad_norms.csv", GradNormsCsv(report)));
  if (report.grouped) RETURN_IF_ERROR(WriteFileAtomically(f.out + "/groups.csv", GroupsCsv(report)));
  std::fprintf(stderr, "[compare_norms] report: %s/report.md, report.html, summary.csv, curves.csv, grad_norms.csv%s\n",
               f.out.c_str(), report.grouped ? ", groups.csv" : "");
  return absl::OkStatus();
}

}  // namespace
}  // namespace hybridmoe

int main(int argc, char** argv) {
  using namespace hybridmoe;
  const std::vector<FlagSpec> specs = {
      {"config", "base text-format TrainConfig (required)"},
      {"strategies",
       "comma-separated norm strategies (default PRE_NORM,POST_NORM,HYBRID_NORM,HYBRID_NORM_STAR,MIX_LN)"},
      {"out", "sweep directory (default runs/compare_<config name>)"},
      {"override", "text-format TrainConfig merged into every variant (repeatable)", false, true},
      {"launcher", "command prefix for each variant, e.g. 'mpirun -np 2' (split on spaces)"},
      {"train_bin", "the train binary (default: next to this binary)"},
      {"target_loss", "loss for the tokens-to-target column (default: median final train loss)"},
      {"grad_steps", "steps of the per-block gradient-norm profile, e.g. 1,150,300 (default first,middle,last)"},
      {"final_window", "final train loss = mean of this many last logged losses (default 5)"},
      {"variant_env", "STRATEGY:NAME=VALUE environment for one variant's train (repeatable; fault injection)", false,
       true},
      {"report_only", "train nothing; rebuild the report from DIR", true},
      {"seeds", "N (the config's train.seed and the N-1 following) or a list S1,S2,...: every variant per seed"},
      {"depths", "comma-separated model.n_layers values, e.g. 4,12,24: every variant per depth"},
      {"baseline", "strategy the others are compared with over seeds (default: the first of --strategies)"},
      {"variant_override", "KEY:TEXTPROTO merged into the variants KEY names (strategy or run dir prefix; repeatable)",
       false, true},
      {"help", "show this help", true},
  };
  int exit_code = 0;
  auto cl = CommandLine::ParseOrExit(argc, argv, "compare_norms",
                                     "Trains one variant per norm strategy and compares them.", specs, &exit_code);
  if (!cl) return exit_code;
  auto fail = [](const std::string& msg, int code) {
    std::fprintf(stderr, "compare_norms: %s\n", msg.c_str());
    return code;
  };
  if (auto launch = DetectLaunch(); !launch.ok() || launch->expected_world_size > 1) {
    return fail("run compare_norms as one process and distribute each variant with --launcher='mpirun -np N'", 2);
  }
  Flags f;
  f.config = cl->Get("config");
  if (f.config.empty()) return fail("--config=FILE.textproto is required (see configs/sweeps/)", 2);
  std::string stem = f.config.substr(f.config.find_last_of('/') + 1);
  stem = stem.substr(0, stem.find('.'));
  f.out = cl->Get("out", "runs/compare_" + stem);
  while (f.out.size() > 1 && f.out.back() == '/') f.out.pop_back();
  f.overrides = cl->GetAll("override");
  f.variant_env = cl->GetAll("variant_env");
  f.train_bin = cl->Get("train_bin", SelfDir() + "/train");
  f.target_text = cl->Get("target_loss");
  f.grad_steps_text = cl->Get("grad_steps");
  f.report_only = cl->GetBool("report_only");
  for (int i = 0; i < argc; ++i) {  // shell-quoted, on one line
    std::string arg = argv[i], quoted;
    for (char& c : arg) c = (c == '\n' || c == '\t') ? ' ' : c;
    const bool plain = arg.find_first_of(" '\"{}$;&|<>*?()") == std::string::npos;
    for (char c : arg) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    f.cmdline += (i ? " " : "") + (plain ? arg : "'" + quoted + "'");
  }
  for (absl::string_view w : absl::StrSplit(cl->Get("launcher"), ' ', absl::SkipEmpty())) f.launcher.emplace_back(w);
  auto window = cl->GetInt("final_window", 5);
  if (!window.ok() || *window < 1) return fail("--final_window must be a positive integer", 2);
  f.final_window = static_cast<int>(*window);
  for (absl::string_view s : absl::StrSplit(
           cl->Get("strategies", "PRE_NORM,POST_NORM,HYBRID_NORM,HYBRID_NORM_STAR,MIX_LN"), ',', absl::SkipEmpty())) {
    NormConfig::Strategy parsed;
    if (!NormConfig::Strategy_Parse(std::string(s), &parsed)) {
      std::vector<std::string> valid;
      for (int v = NormConfig::Strategy_MIN; v <= NormConfig::Strategy_MAX; ++v) {
        if (NormConfig::Strategy_IsValid(v))
          valid.push_back(NormConfig::Strategy_Name(static_cast<NormConfig::Strategy>(v)));
      }
      return fail(absl::StrCat("--strategies: unknown strategy '", s, "'; valid: ", absl::StrJoin(valid, ",")), 2);
    }
    for (const std::string& seen : f.strategies) {
      if (seen == s) return fail(absl::StrCat("--strategies: '", s, "' is listed twice"), 2);
    }
    f.strategies.emplace_back(s);
  }
  if (f.strategies.empty()) return fail("--strategies is empty", 2);
  for (const std::string& e : f.variant_env) {
    const size_t colon = e.find(':');
    if (colon == std::string::npos || e.find('=', colon) == std::string::npos) {
      return fail(absl::StrCat("--variant_env (", e, ") must be STRATEGY:NAME=VALUE"), 2);
    }
  }
  f.variant_overrides = cl->GetAll("variant_override");
  for (const std::string& e : f.variant_overrides) {
    if (e.find(':') == std::string::npos || e.find(':') == 0) {
      return fail(absl::StrCat("--variant_override (", e, ") must be KEY:TEXTPROTO (KEY: a strategy or run directory)"),
                  2);
    }
  }
  if (cl->Has("seeds")) {
    const std::string text = cl->Get("seeds");
    const std::string valid = "a count N >= 1 or a comma-separated list of distinct seeds";
    if (text.find(',') == std::string::npos) {
      int64_t count = 0;
      if (!absl::SimpleAtoi(text, &count) || count < 1 || count > 1000) {
        return fail(absl::StrCat("--seeds (", text, ") must be ", valid), 2);
      }
      auto base = LoadConfig(f.config, f.overrides);
      if (!base.ok()) return fail(absl::StrCat(f.config, ": ", base.status().message()), 1);
      for (int64_t k = 0; k < count; ++k) f.seeds.push_back(base->train().seed() + static_cast<uint64_t>(k));
    } else {
      for (absl::string_view s : absl::StrSplit(text, ',')) {
        uint64_t seed = 0;
        if (!absl::SimpleAtoi(s, &seed) || std::find(f.seeds.begin(), f.seeds.end(), seed) != f.seeds.end()) {
          return fail(absl::StrCat("--seeds (", text, ") must be ", valid), 2);
        }
        f.seeds.push_back(seed);
      }
    }
  }
  if (cl->Has("depths")) {
    const std::string text = cl->Get("depths");
    for (absl::string_view s : absl::StrSplit(text, ',')) {
      int64_t depth = 0;
      if (!absl::SimpleAtoi(s, &depth) || depth < 1 ||
          std::find(f.depths.begin(), f.depths.end(), depth) != f.depths.end()) {
        return fail(absl::StrCat("--depths (", text, ") must be a comma-separated list of distinct block counts >= 1"),
                    2);
      }
      f.depths.push_back(depth);
    }
  }
  f.baseline = cl->Get("baseline", f.strategies[0]);
  if (std::find(f.strategies.begin(), f.strategies.end(), f.baseline) == f.strategies.end()) {
    return fail(absl::StrCat("--baseline (", f.baseline, ") must be one of --strategies (",
                             absl::StrJoin(f.strategies, ","), ")"),
                2);
  }
  const std::vector<Variant> variants = Variants(f);
  std::vector<TrainConfig> configs;
  for (const Variant& v : variants) {
    auto config = LoadConfig(f.config, VariantOverrides(f, v));
    if (config.ok()) {
      if (absl::Status st = ValidateConfig(*config, 0); !st.ok()) config = st;
    }
    if (!config.ok()) return fail(absl::StrCat(f.config, " (", v.rel, "): ", config.status().message()), 1);
    configs.push_back(*config);
  }
  if (!f.report_only && !Exists(f.train_bin)) {
    return fail(absl::StrCat("--train_bin (", f.train_bin, ") does not exist; build //tools:train or pass --train_bin"),
                1);
  }
  if (absl::Status s = MakeDirs(f.out); !s.ok()) return fail(std::string(s.message()), 1);
  InstallSignalForwarding();
  auto ok = RunSweep(f, variants, configs);
  if (!ok.ok()) return fail(std::string(ok.status().message()), 1);
  if (absl::Status s = WriteReport(f, variants, configs); !s.ok()) return fail(std::string(s.message()), 1);
  std::fputs(ReadFileIfExists(f.out + "/summary.csv").value_or("").c_str(), stdout);
  return *ok ? 0 : 1;
}
