#include "tools/compare_report.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tools/svg_chart.h"

namespace hybridmoe {
namespace {

bool Finite(double v) { return std::isfinite(v); }

// Sections of a seeds/depths sweep (defined with the statistics below).
std::string GroupedMarkdown(const SweepReport& report);
std::string GroupedHtml(const SweepReport& report);

std::string Fixed(double v, int decimals = 4) { return Finite(v) ? absl::StrFormat("%.*f", decimals, v) : "-"; }
std::string Sig(double v) { return Finite(v) ? absl::StrFormat("%.3g", v) : "-"; }
std::string Tokens(double v) { return Finite(v) ? absl::StrFormat("%.0f", v) : "-"; }
std::string CsvNum(double v) { return Finite(v) ? absl::StrFormat("%.10g", v) : ""; }

std::string CsvText(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"')
      out += "\"\"";
    else if (c == '\n')
      out += ' ';
    else
      out.push_back(c);
  }
  return out + "\"";
}

std::string MdText(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|')
      out += "\\|";
    else if (c == '\n')
      out += ' ';
    else
      out.push_back(c);
  }
  return out;
}

// One table as rows of cells; rendered as markdown or HTML.
struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
};

std::string Markdown(const Table& t) {
  std::string out = "| " + absl::StrJoin(t.header, " | ") + " |\n|";
  for (size_t i = 0; i < t.header.size(); ++i) out += i == 0 ? "---|" : "---:|";
  out += "\n";
  for (const auto& row : t.rows) {
    std::vector<std::string> cells;
    for (const std::string& c : row) cells.push_back(MdText(c));
    out += "| " + absl::StrJoin(cells, " | ") + " |\n";
  }
  return out;
}

std::string Html(const Table& t) {
  std::string out = "<table>\n<tr>";
  for (const std::string& h : t.header) out += "<th>" + XmlEscape(h) + "</th>";
  out += "</tr>\n";
  for (const auto& row : t.rows) {
    out += "<tr>";
    for (const std::string& c : row) out += "<td>" + XmlEscape(c) + "</td>";
    out += "</tr>\n";
  }
  return out + "</table>\n";
}

Table SummaryTable(const SweepReport& r) {
  Table t;
  t.header = {r.grouped ? "run" : "strategy",
              "status",
              absl::StrCat("final train loss (mean of last ", r.summary_options.final_window, ")"),
              "best val loss (step)",
              "final val loss",
              absl::StrCat("tokens to loss ", Fixed(r.summary_options.target_loss)),
              "skipped steps",
              "loss spikes",
              "max grad norm",
              "diverged",
              "wall time"};
  for (const VariantResult& v : r.variants) {
    const VariantSummary& s = v.summary;
    t.rows.push_back({v.label, v.status, Fixed(s.final_train_loss),
                      Finite(s.best_val_loss) ? absl::StrCat(Fixed(s.best_val_loss), " (", s.best_val_step, ")") : "-",
                      Fixed(s.final_val_loss), Finite(s.tokens_to_target) ? Tokens(s.tokens_to_target) : "not reached",
                      absl::StrCat(s.skipped_steps), absl::StrCat(s.loss_spikes), Sig(s.max_grad_norm),
                      s.diverged ? "yes" : "no", FormatWall(v.wall_s)});
    if (Finite(r.unigram_entropy)) t.rows.back().push_back(Fixed(s.final_train_loss - r.unigram_entropy));
  }
  if (Finite(r.unigram_entropy)) t.header.push_back("final train loss - unigram entropy");
  return t;
}

Table RouterTable(const SweepReport& r) {
  Table t;
  t.header = {r.grouped ? "run" : "strategy", "router entropy (last step)", "max/mean load (last step)",
              "max/mean load (mean over run)", "dead experts (last step, all layers)"};
  for (const VariantResult& v : r.variants) {
    const VariantSummary& s = v.summary;
    t.rows.push_back({v.label, Fixed(s.final_entropy, 3), Fixed(s.final_max_over_mean, 3),
                      Fixed(s.mean_max_over_mean, 3), absl::StrCat(s.dead_experts)});
  }
  return t;
}

size_t NumBlocks(const SweepReport& r, int64_t step) {
  size_t n = 0;
  for (const VariantResult& v : r.variants) n = std::max(n, BlockGradNorms(v.metrics, step, "ffn").size());
  return n;
}

Table GradTable(const SweepReport& r, int64_t step) {
  Table t;
  t.header = {"strategy"};
  const size_t blocks = NumBlocks(r, step);
  for (size_t b = 0; b < blocks; ++b) t.header.push_back(absl::StrCat("block ", b));
  for (const VariantResult& v : r.variants) {
    const std::vector<double> g = BlockGradNorms(v.metrics, step, "ffn");
    std::vector<std::string> row = {v.strategy};
    for (size_t b = 0; b < blocks; ++b) row.push_back(b < g.size() ? Sig(g[b]) : "-");
    t.rows.push_back(row);
  }
  return t;
}

std::vector<std::string> Notes(const SweepReport& r) {
  std::vector<std::string> notes;
  for (const VariantResult& v : r.variants) {
    if (v.summary.diverged) {
      notes.push_back(absl::StrCat(v.label, " diverged: ", v.summary.diverged_reason,
                                   v.message.empty() || v.message == v.summary.diverged_reason ? "" : "; ", v.message));
    } else if (!v.message.empty()) {
      notes.push_back(absl::StrCat(v.label, " (", v.status, "): ", v.message));
    }
    if (v.metrics.unreadable_lines > 0) {
      notes.push_back(absl::StrCat(v.label, ": ", v.metrics.unreadable_lines, " unreadable metrics.jsonl lines"));
    }
  }
  return notes;
}

std::string DataOrderLine(const SweepReport& r) {
  return absl::StrCat(r.data_order.identical ? "identical across variants" : "DIFFERENT across variants", " (",
                      r.data_order.detail, ")");
}

ChartSeries Series(const VariantResult& v, const std::vector<MetricsRecord>& records, const std::string& xkey,
                   const std::string& ykey, double min_x = -INFINITY) {
  ChartSeries s;
  s.name = v.label;
  for (const MetricsRecord& rec : records) {
    const double x = xkey == "tokens" ? rec.Get("tokens") : rec.Get(xkey);
    if (x >= min_x) s.points.emplace_back(x, rec.Get(ykey));
  }
  return s;
}

// Eval records carry no token count; tokens = step x tokens per step of the same run.
std::vector<MetricsRecord> EvalWithTokens(const VariantResult& v) {
  std::vector<MetricsRecord> out = v.metrics.eval;
  double per_step = NAN;
  for (const MetricsRecord& t : v.metrics.train) {
    if (t.Step() > 0 && Finite(t.Get("tokens"))) per_step = t.Get("tokens") / static_cast<double>(t.Step());
  }
  for (MetricsRecord& e : out) e.num["tokens"] = per_step * static_cast<double>(e.Step());
  return out;
}

}  // namespace

std::string FormatWall(double s) {
  if (!Finite(s)) return "-";
  if (s < 60) return absl::StrFormat("%.1fs", s);
  if (s < 3600) return absl::StrFormat("%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return absl::StrFormat("%dh%02dm", static_cast<int>(s) / 3600, static_cast<int>(s) % 3600 / 60);
}

std::string ReportMarkdown(const SweepReport& r) {
  std::string md = absl::StrCat("# ", r.title, "\n\n## Setup\n\n");
  for (const auto& [k, v] : r.setup) absl::StrAppend(&md, "- ", k, ": `", v, "`\n");
  absl::StrAppend(&md, "- data order: ", DataOrderLine(r), "\n");
  if (Finite(r.unigram_entropy)) {
    absl::StrAppend(&md, "- unigram entropy of the training data: ", Fixed(r.unigram_entropy),
                    " nats (the loss of a model that learned the token frequencies only)\n");
  }
  absl::StrAppend(&md, "- target loss: ", Fixed(r.summary_options.target_loss), " (", r.target_rule, ")\n\n");
  absl::StrAppend(&md, "## Results\n\n", Markdown(SummaryTable(r)), "\n");
  absl::StrAppend(&md, "Final train loss: mean of the last ", r.summary_options.final_window,
                  " logged train losses. Loss spikes: logged steps whose loss exceeds ", r.summary_options.spike_ratio,
                  " x the mean of the ", r.summary_options.final_window,
                  " logged losses before them. Tokens to target: tokens at "
                  "the first logged step where the mean of the last ",
                  r.summary_options.final_window,
                  " logged losses is <= the target. Diverged: the trainer stopped on consecutive non-finite "
                  "steps, or the last logged loss is non-finite or above the first. Curves and charts: report.html; "
                  "raw numbers: summary.csv, curves.csv, grad_norms.csv.\n\n");
  const std::vector<std::string> notes = Notes(r);
  if (!notes.empty()) {
    absl::StrAppend(&md, "### Notes\n\n");
    for (const std::string& n : notes) absl::StrAppend(&md, "- ", MdText(n), "\n");
    absl::StrAppend(&md, "\n");
  }
  if (r.grouped) {
    absl::StrAppend(&md, GroupedMarkdown(r));
  } else {
    absl::StrAppend(&md, "## Gradient norm of the FFN/expert weights per block\n\n",
                    "L2 norm of the gradient of each block's expert (or dense FFN) weights before clipping, at the "
                    "chosen steps.\n\n");
    for (int64_t step : r.grad_steps) {
      absl::StrAppend(&md, "Step ", step, ":\n\n", Markdown(GradTable(r, step)), "\n");
    }
  }
  absl::StrAppend(&md, "## Router balance\n\n",
                  "Entropy of the router softmax, mean over tokens and layers (balanced: ln ", r.num_experts, " = ",
                  Fixed(std::log(static_cast<double>(std::max<int64_t>(r.num_experts, 1))), 3),
                  "); max/mean load: the most loaded expert's assignments over the mean, worst layer.\n\n",
                  Markdown(RouterTable(r)));
  return md;
}

std::string ReportHtml(const SweepReport& r) {
  std::string h = absl::StrCat(
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>", XmlEscape(r.title), "</title>\n<style>\n",
      "body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}table{border-collapse:collapse;"
      "margin:.5em 0 1em}td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}td:first-child,"
      "th:first-child{text-align:left}th{background:#eee}svg{display:block;margin:.5em 0}\n</style></head><body>\n",
      "<h1>", XmlEscape(r.title), "</h1>\n<h2>Setup</h2>\n<ul>\n");
  for (const auto& [k, v] : r.setup) absl::StrAppend(&h, "<li>", XmlEscape(k), ": ", XmlEscape(v), "</li>\n");
  if (Finite(r.unigram_entropy)) {
    absl::StrAppend(&h, "<li>unigram entropy of the training data: ", Fixed(r.unigram_entropy),
                    " nats (the loss of a model that learned the token frequencies only)</li>\n");
  }
  absl::StrAppend(&h, "<li>data order: ", XmlEscape(DataOrderLine(r)),
                  "</li>\n<li>target loss: ", Fixed(r.summary_options.target_loss), " (", XmlEscape(r.target_rule),
                  ")</li>\n</ul>\n");
  absl::StrAppend(&h, "<h2>Results</h2>\n", Html(SummaryTable(r)));
  const std::vector<std::string> notes = Notes(r);
  if (!notes.empty()) {
    absl::StrAppend(&h, "<ul>\n");
    for (const std::string& n : notes) absl::StrAppend(&h, "<li>", XmlEscape(n), "</li>\n");
    absl::StrAppend(&h, "</ul>\n");
  }

  if (r.grouped) absl::StrAppend(&h, GroupedHtml(r));
  double max_tokens = 0;
  for (const VariantResult& v : r.variants)
    max_tokens = std::max(max_tokens, Finite(v.summary.tokens) ? v.summary.tokens : 0);
  std::vector<ChartSeries> loss, late, val, gnorm, entropy, mom;
  for (const VariantResult& v : r.variants) {
    loss.push_back(Series(v, v.metrics.train, "tokens", "loss"));
    late.push_back(Series(v, v.metrics.train, "tokens", "loss", max_tokens / 2));
    val.push_back(Series(v, EvalWithTokens(v), "tokens", "val_loss"));
    val.back().markers = true;
    gnorm.push_back(Series(v, v.metrics.train, "tokens", "grad_norm"));
    entropy.push_back(Series(v, v.metrics.train, "step", "router/entropy_mean"));
    mom.push_back(Series(v, v.metrics.train, "step", "router/max_over_mean"));
  }
  ChartOptions o;
  if (!r.grouped) {
    absl::StrAppend(&h, "<h2>Loss curves</h2>\n");
    o.title = "Training loss";
    o.x_label = "tokens";
    o.y_label = "loss";
    absl::StrAppend(&h, LineChartSvg(loss, o));
    o.title = "Training loss, second half of training";
    absl::StrAppend(&h, LineChartSvg(late, o));
    o.title = "Validation loss";
    o.y_label = "val loss";
    absl::StrAppend(&h, LineChartSvg(val, o));
    o.title = "Global gradient norm (before clipping)";
    o.y_label = "grad norm";
    o.log_y = true;
    absl::StrAppend(&h, LineChartSvg(gnorm, o));

    absl::StrAppend(&h, "<h2>Gradient norm of the FFN/expert weights per block</h2>\n");
    for (int64_t step : r.grad_steps) {
      std::vector<ChartSeries> profile;
      for (const VariantResult& v : r.variants) {
        ChartSeries s;
        s.name = v.strategy;
        s.markers = true;
        const std::vector<double> g = BlockGradNorms(v.metrics, step, "ffn");
        for (size_t b = 0; b < g.size(); ++b) s.points.emplace_back(static_cast<double>(b), g[b]);
        profile.push_back(s);
      }
      o.title = absl::StrCat("FFN/expert gradient norm per block, step ", step);
      o.x_label = "block";
      o.integer_x = true;
      o.y_label = "grad norm";
      absl::StrAppend(&h, LineChartSvg(profile, o), Html(GradTable(r, step)));
    }
  }  // !r.grouped

  absl::StrAppend(&h, "<h2>Router balance</h2>\n");
  o.log_y = false;
  o.x_label = "step";
  o.integer_x = false;
  o.title = "Router entropy (mean over tokens and layers)";
  o.y_label = "entropy (nats)";
  absl::StrAppend(&h, LineChartSvg(entropy, o));
  o.title = "Max/mean expert load (worst layer)";
  o.y_label = "max / mean";
  absl::StrAppend(&h, LineChartSvg(mom, o), Html(RouterTable(r)), "</body></html>\n");
  return h;
}

std::string SummaryCsv(const SweepReport& r) {
  std::string csv =
      "strategy,status,final_train_loss,final_window,best_val_loss,best_val_step,final_val_loss,target_loss,"
      "tokens_to_target,last_step,tokens,skipped_steps,loss_spikes,max_grad_norm,diverged,diverged_reason,"
      "router_entropy_final,router_max_over_mean_final,router_max_over_mean_mean,dead_experts_final,wall_s,run,depth,"
      "seed\n";
  for (const VariantResult& v : r.variants) {
    const VariantSummary& s = v.summary;
    absl::StrAppend(&csv, CsvText(v.strategy), ",", v.status, ",", CsvNum(s.final_train_loss), ",", s.final_window_used,
                    ",", CsvNum(s.best_val_loss), ",", Finite(s.best_val_loss) ? absl::StrCat(s.best_val_step) : "",
                    ",", CsvNum(s.final_val_loss), ",", CsvNum(r.summary_options.target_loss), ",",
                    CsvNum(s.tokens_to_target), ",", s.last_step, ",", CsvNum(s.tokens), ",", s.skipped_steps, ",",
                    s.loss_spikes, ",", CsvNum(s.max_grad_norm), ",", s.diverged ? 1 : 0, ",",
                    CsvText(s.diverged_reason), ",", CsvNum(s.final_entropy), ",", CsvNum(s.final_max_over_mean), ",",
                    CsvNum(s.mean_max_over_mean), ",", s.dead_experts, ",", CsvNum(v.wall_s), ",", CsvText(v.label),
                    ",", v.depth, ",", v.seed, "\n");
  }
  return csv;
}

std::string CurvesCsv(const SweepReport& r) {
  std::string csv =
      "strategy,step,tokens,loss,lm_loss,lb_loss,z_loss,grad_norm,lr,skipped_steps,val_loss,"
      "router_entropy_mean,router_max_over_mean,router_cv_mean,router_dead_experts,data_hash,run,depth,seed\n";
  for (const VariantResult& v : r.variants) {
    std::map<int64_t, double> val;
    for (const MetricsRecord& e : v.metrics.eval) val[e.Step()] = e.Get("val_loss");
    std::set<int64_t> done;
    for (const MetricsRecord& t : v.metrics.train) {
      done.insert(t.Step());
      const auto h = t.str.find("data_hash");
      absl::StrAppend(&csv, CsvText(v.strategy), ",", t.Step(), ",", CsvNum(t.Get("tokens")), ",",
                      CsvNum(t.Get("loss")), ",", CsvNum(t.Get("lm_loss")), ",", CsvNum(t.Get("lb_loss")), ",",
                      CsvNum(t.Get("z_loss")), ",", CsvNum(t.Get("grad_norm")), ",", CsvNum(t.Get("lr")), ",",
                      CsvNum(t.Get("skipped_steps")), ",", val.count(t.Step()) ? CsvNum(val[t.Step()]) : "", ",",
                      CsvNum(t.Get("router/entropy_mean")), ",", CsvNum(t.Get("router/max_over_mean")), ",",
                      CsvNum(t.Get("router/cv_mean")), ",", CsvNum(t.Get("router/dead_experts")), ",",
                      h == t.str.end() ? "" : h->second, ",", CsvText(v.label), ",", v.depth, ",", v.seed, "\n");
    }
    for (const auto& [step, loss] : val) {  // evaluations at steps that were not logged as train records
      if (!done.count(step))
        absl::StrAppend(&csv, CsvText(v.strategy), ",", step, ",,,,,,,,,", CsvNum(loss), ",,,,,,", CsvText(v.label),
                        ",", v.depth, ",", v.seed, "\n");
    }
  }
  return csv;
}

std::string GradNormsCsv(const SweepReport& r) {
  std::string csv = "strategy,step,block,attn,ffn,router,run,depth,seed\n";
  for (const VariantResult& v : r.variants) {
    for (int64_t step : r.grad_steps) {
      const std::vector<double> attn = BlockGradNorms(v.metrics, step, "attn");
      const std::vector<double> ffn = BlockGradNorms(v.metrics, step, "ffn");
      const std::vector<double> router = BlockGradNorms(v.metrics, step, "router");
      for (size_t b = 0; b < std::max(attn.size(), ffn.size()); ++b) {
        absl::StrAppend(&csv, CsvText(v.strategy), ",", step, ",", b, ",", b < attn.size() ? CsvNum(attn[b]) : "", ",",
                        b < ffn.size() ? CsvNum(ffn[b]) : "", ",", b < router.size() ? CsvNum(router[b]) : "", ",",
                        CsvText(v.label), ",", v.depth, ",", v.seed, "\n");
      }
    }
  }
  return csv;
}

std::vector<GroupResult> Groups(const SweepReport& r) {
  std::vector<GroupResult> groups;
  for (size_t i = 0; i < r.variants.size(); ++i) {
    const VariantResult& v = r.variants[i];
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const GroupResult& g) { return g.depth == v.depth && g.strategy == v.strategy; });
    if (it == groups.end()) {
      groups.emplace_back();
      it = groups.end() - 1;
      it->depth = v.depth;
      it->strategy = v.strategy;
    }
    it->runs.push_back(i);
  }
  std::stable_sort(groups.begin(), groups.end(),
                   [](const GroupResult& a, const GroupResult& b) { return a.depth < b.depth; });
  for (GroupResult& g : groups) {
    std::vector<double> val;
    for (size_t i : g.runs) {
      const VariantResult& v = r.variants[i];
      if (v.summary.diverged) {
        ++g.diverged;
        continue;
      }
      if (v.status != "complete") continue;  // not run, incomplete or failed: no final loss yet
      ++g.complete;
      g.losses.push_back(v.summary.final_train_loss);
      val.push_back(v.summary.final_val_loss);
    }
    g.final_loss = Describe(g.losses);
    g.final_val = Describe(val);
  }
  for (GroupResult& g : groups) {
    if (g.strategy == r.baseline) {
      g.verdict = "baseline";
      continue;
    }
    const GroupResult* base = nullptr;
    for (const GroupResult& b : groups) {
      if (b.depth == g.depth && b.strategy == r.baseline) base = &b;
    }
    if (base == nullptr) {
      g.verdict = absl::StrCat("n/a: no ", r.baseline, " runs at this depth");
      continue;
    }
    g.welch = WelchTTest(g.losses, base->losses);
    g.ranges_overlap =
        g.final_loss.n > 0 && base->final_loss.n > 0 ? RangesOverlap(g.final_loss, base->final_loss) : true;
    const std::string div = g.diverged > 0 ? absl::StrCat("; ", g.diverged, "/", g.runs.size(), " seeds diverged") : "";
    if (g.final_loss.n == 0 && g.diverged > 0 && base->diverged < static_cast<int>(base->runs.size())) {
      g.verdict = absl::StrCat("worse: every seed diverged (", r.baseline, " did not)");
    } else if (!g.welch.valid) {
      g.verdict = absl::StrCat("n/a: fewer than 2 non-diverged seeds here or in ", r.baseline, div);
    } else if (g.welch.p < r.alpha) {
      g.verdict = absl::StrCat(g.welch.diff < 0 ? "lower" : "higher", " loss than ", r.baseline, " (Welch p ",
                               Sig(g.welch.p), " < ", r.alpha, ")", div);
    } else {
      g.verdict = absl::StrCat("no significant difference (Welch p ", Sig(g.welch.p), " >= ", r.alpha, ")", div);
    }
  }
  return groups;
}

std::string GroupsCsv(const SweepReport& r) {
  std::string csv =
      "depth,strategy,seeds,complete,diverged,final_train_loss_mean,final_train_loss_std,final_train_loss_min,"
      "final_train_loss_max,final_val_loss_mean,final_val_loss_std,baseline,diff_vs_baseline,welch_t,welch_df,"
      "welch_p,ranges_overlap,verdict\n";
  for (const GroupResult& g : Groups(r)) {
    const bool cmp = g.welch.valid;
    absl::StrAppend(&csv, g.depth, ",", CsvText(g.strategy), ",", g.runs.size(), ",", g.complete, ",", g.diverged, ",",
                    CsvNum(g.final_loss.mean), ",", CsvNum(g.final_loss.std), ",", CsvNum(g.final_loss.min), ",",
                    CsvNum(g.final_loss.max), ",", CsvNum(g.final_val.mean), ",", CsvNum(g.final_val.std), ",",
                    CsvText(r.baseline), ",", cmp ? CsvNum(g.welch.diff) : "", ",", cmp ? CsvNum(g.welch.t) : "", ",",
                    cmp ? CsvNum(g.welch.df) : "", ",", cmp ? CsvNum(g.welch.p) : "", ",",
                    g.strategy == r.baseline || g.final_loss.n == 0 ? "" : (g.ranges_overlap ? "1" : "0"), ",",
                    CsvText(g.verdict), "\n");
  }
  return csv;
}

// ---- Grouped (seeds / depths) sections ----

namespace {

// Mean line and min-max band over the runs' values at each x.
ChartSeries MeanBand(const std::string& name, const std::map<double, std::vector<double>>& by_x, bool markers) {
  ChartSeries s;
  s.name = name;
  s.markers = markers;
  for (const auto& [x, values] : by_x) {
    const SampleStats st = Describe(values);
    if (st.n == 0) continue;
    s.points.emplace_back(x, st.mean);
    s.band.push_back({x, st.min, st.max});
  }
  return s;
}

std::vector<int64_t> Depths(const std::vector<GroupResult>& groups) {
  std::vector<int64_t> d;
  for (const GroupResult& g : groups) {
    if (d.empty() || d.back() != g.depth) d.push_back(g.depth);
  }
  return d;
}

// Per block: the gradient norms of `part` at `step` of every run of the group that logged them.
std::vector<std::vector<double>> BlockValues(const SweepReport& r, const GroupResult& g, int64_t step,
                                             const std::string& part) {
  std::vector<std::vector<double>> per_block;
  for (size_t i : g.runs) {
    const std::vector<double> v = BlockGradNorms(r.variants[i].metrics, step, part);
    if (per_block.size() < v.size()) per_block.resize(v.size());
    for (size_t b = 0; b < v.size(); ++b) per_block[b].push_back(v[b]);
  }
  return per_block;
}

// max/min over blocks of the mean-over-seeds gradient norm; NaN without data.
double BlockSpread(const std::vector<std::vector<double>>& per_block) {
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& values : per_block) {
    const SampleStats s = Describe(values);
    if (s.n == 0 || !(s.mean > 0)) continue;
    lo = std::min(lo, s.mean);
    hi = std::max(hi, s.mean);
  }
  return Finite(lo) && Finite(hi) ? hi / lo : std::numeric_limits<double>::quiet_NaN();
}

std::string MeanStd(const SampleStats& s) {
  if (s.n == 0) return "-";
  return s.n >= 2 ? absl::StrCat(Fixed(s.mean), " ± ", Fixed(s.std)) : Fixed(s.mean);
}

Table SeedTable(const SweepReport& r, const std::vector<GroupResult>& groups, int64_t depth) {
  Table t;
  t.header = {"strategy",
              "seeds",
              "diverged",
              "final train loss mean",
              "std",
              "min",
              "max",
              "final val loss mean ± std",
              absl::StrCat("mean - ", r.baseline),
              "Welch t (df)",
              "p (two-sided)",
              absl::StrCat("seed range overlaps ", r.baseline),
              "verdict"};
  for (const GroupResult& g : groups) {
    if (g.depth != depth) continue;
    const bool base = g.strategy == r.baseline, cmp = g.welch.valid;
    const size_t unfinished = g.runs.size() - static_cast<size_t>(g.complete + g.diverged);
    t.rows.push_back(
        {g.strategy, absl::StrCat(g.runs.size(), unfinished ? absl::StrCat(" (", unfinished, " unfinished)") : ""),
         absl::StrCat(g.diverged), Fixed(g.final_loss.mean), Fixed(g.final_loss.std), Fixed(g.final_loss.min),
         Fixed(g.final_loss.max), MeanStd(g.final_val), cmp ? absl::StrFormat("%+.4f", g.welch.diff) : "-",
         cmp ? absl::StrCat(Sig(g.welch.t), " (", Fixed(g.welch.df, 1), ")") : "-", cmp ? Sig(g.welch.p) : "-",
         base || g.final_loss.n == 0 ? "-" : (g.ranges_overlap ? "yes" : "no"), g.verdict});
  }
  return t;
}

Table DepthTable(const SweepReport& r, const std::vector<GroupResult>& groups) {
  Table t;
  t.header = {"depth", "strategy", "final train loss mean ± std", "diverged seeds"};
  for (int64_t step : r.grad_steps) {
    t.header.push_back(absl::StrCat("FFN grad max/min over blocks, step ", step));
    t.header.push_back(absl::StrCat("attn grad max/min over blocks, step ", step));
  }
  for (const GroupResult& g : groups) {
    std::vector<std::string> row = {absl::StrCat(g.depth), g.strategy, MeanStd(g.final_loss),
                                    absl::StrCat(g.diverged, "/", g.runs.size())};
    for (int64_t step : r.grad_steps) {
      row.push_back(Sig(BlockSpread(BlockValues(r, g, step, "ffn"))));
      row.push_back(Sig(BlockSpread(BlockValues(r, g, step, "attn"))));
    }
    t.rows.push_back(row);
  }
  return t;
}

Table GroupGradTable(const SweepReport& r, const std::vector<GroupResult>& groups, int64_t depth, int64_t step) {
  Table t;
  t.header = {"strategy", "weights"};
  size_t blocks = 0;
  for (const GroupResult& g : groups) {
    if (g.depth == depth) blocks = std::max(blocks, BlockValues(r, g, step, "ffn").size());
  }
  for (size_t b = 0; b < blocks; ++b) t.header.push_back(absl::StrCat("block ", b));
  for (const GroupResult& g : groups) {
    if (g.depth != depth) continue;
    for (const char* part : {"attn", "ffn"}) {
      const auto values = BlockValues(r, g, step, part);
      std::vector<std::string> row = {g.strategy, part};
      for (size_t b = 0; b < blocks; ++b) row.push_back(b < values.size() ? Sig(Describe(values[b]).mean) : "-");
      t.rows.push_back(row);
    }
  }
  return t;
}

std::string GroupedMarkdown(const SweepReport& r) {
  const std::vector<GroupResult> groups = Groups(r);
  std::string md = absl::StrCat(
      "## Seeds: mean and spread per strategy\n\n", "Final train loss (mean of the last ",
      r.summary_options.final_window,
      " logged losses) over the seeds that did not diverge: mean, sample standard deviation, min and max. "
      "Each strategy against ",
      r.baseline,
      " at the same depth: the difference of the means, Welch's two-sided t-test (unequal variances; t, "
      "Welch-Satterthwaite degrees of freedom, p) and whether the two min-max seed ranges overlap. Verdict: "
      "significant when p < ",
      r.alpha,
      ". With 3 seeds a side the test has about 2-4 degrees of freedom: only differences of several "
      "seed standard deviations come out significant, and a non-significant result is no evidence of equality.\n\n");
  for (int64_t depth : Depths(groups)) {
    absl::StrAppend(&md, "### ", depth, " blocks\n\n", Markdown(SeedTable(r, groups, depth)), "\n");
  }
  absl::StrAppend(&md, "## Depth\n\n",
                  "Per depth and strategy: the final train loss over seeds, the seeds that diverged, and how "
                  "unbalanced the per-block gradient norms are (largest / smallest block of the mean over seeds; "
                  "1 = equal in every block).\n\n",
                  Markdown(DepthTable(r, groups)), "\n");
  absl::StrAppend(&md, "## Gradient norms per block (mean over seeds)\n\n",
                  "L2 norm of the gradient of each block's attention weights (q, k, v, o and their norms) and "
                  "FFN/expert weights before clipping, at the chosen steps (step 1 = at initialisation), mean "
                  "over the seeds that logged that step. Per-run values: grad_norms.csv; charts with the min-max "
                  "band over seeds: report.html.\n\n");
  for (int64_t depth : Depths(groups)) {
    for (int64_t step : r.grad_steps) {
      absl::StrAppend(&md, "### ", depth, " blocks, step ", step, "\n\n",
                      Markdown(GroupGradTable(r, groups, depth, step)), "\n");
    }
  }
  return md;
}

std::string GroupedHtml(const SweepReport& r) {
  const std::vector<GroupResult> groups = Groups(r);
  const std::vector<int64_t> depths = Depths(groups);
  std::string h = "<h2>Seeds: mean and spread per strategy</h2>\n";
  absl::StrAppend(&h, "<p>Welch's two-sided t-test on the final train losses against ", XmlEscape(r.baseline),
                  " at the same depth, significant at p &lt; ", r.alpha,
                  "; min-max range overlap of the seeds. Curves: mean over seeds, band = min..max over "
                  "seeds.</p>\n");
  ChartOptions o;
  for (int64_t depth : depths) {
    absl::StrAppend(&h, "<h3>", depth, " blocks</h3>\n", Html(SeedTable(r, groups, depth)));
    std::vector<ChartSeries> loss, val;
    for (const GroupResult& g : groups) {
      if (g.depth != depth) continue;
      std::map<double, std::vector<double>> tl, vl;
      for (size_t i : g.runs) {
        for (const MetricsRecord& rec : r.variants[i].metrics.train) {
          tl[static_cast<double>(rec.Step())].push_back(rec.Get("loss"));
        }
        for (const MetricsRecord& rec : r.variants[i].metrics.eval) {
          vl[static_cast<double>(rec.Step())].push_back(rec.Get("val_loss"));
        }
      }
      loss.push_back(MeanBand(g.strategy, tl, false));
      val.push_back(MeanBand(g.strategy, vl, true));
    }
    o = ChartOptions();
    o.title = absl::StrCat("Training loss, ", depth, " blocks (mean over seeds, band min..max)");
    o.x_label = "step";
    o.y_label = "loss";
    absl::StrAppend(&h, LineChartSvg(loss, o));
    o.title = absl::StrCat("Validation loss, ", depth, " blocks (mean over seeds, band min..max)");
    o.y_label = "val loss";
    absl::StrAppend(&h, LineChartSvg(val, o));
  }
  absl::StrAppend(&h, "<h2>Depth</h2>\n", Html(DepthTable(r, groups)));
  if (depths.size() > 1) {
    std::vector<ChartSeries> by_depth;
    std::vector<std::string> strategies;
    for (const GroupResult& g : groups) {
      if (std::find(strategies.begin(), strategies.end(), g.strategy) == strategies.end())
        strategies.push_back(g.strategy);
    }
    for (const std::string& s : strategies) {
      std::map<double, std::vector<double>> fl;
      for (const GroupResult& g : groups) {
        if (g.strategy == s) fl[static_cast<double>(g.depth)] = g.losses;
      }
      by_depth.push_back(MeanBand(s, fl, true));
    }
    o = ChartOptions();
    o.title = "Final train loss against depth (non-diverged seeds: mean, band min..max)";
    o.x_label = "blocks";
    o.integer_x = true;
    o.y_label = "final train loss";
    absl::StrAppend(&h, LineChartSvg(by_depth, o));
  }
  absl::StrAppend(&h, "<h2>Gradient norms per block (the HybridNorm paper's picture)</h2>\n",
                  "<p>Gradient norm of each block's attention and FFN/expert weights before clipping; step 1 is "
                  "at initialisation. Mean over seeds, band min..max.</p>\n");
  for (int64_t depth : depths) {
    for (int64_t step : r.grad_steps) {
      for (const char* part : {"attn", "ffn"}) {
        std::vector<ChartSeries> profile;
        for (const GroupResult& g : groups) {
          if (g.depth != depth) continue;
          std::map<double, std::vector<double>> by_block;
          const auto values = BlockValues(r, g, step, part);
          for (size_t b = 0; b < values.size(); ++b) by_block[static_cast<double>(b)] = values[b];
          profile.push_back(MeanBand(g.strategy, by_block, true));
        }
        o = ChartOptions();
        o.title = absl::StrCat(std::string(part) == "attn" ? "Attention" : "FFN/expert", " gradient norm per block, ",
                               depth, " blocks, step ", step);
        o.x_label = "block";
        o.integer_x = true;
        o.y_label = "grad norm";
        o.log_y = true;
        absl::StrAppend(&h, LineChartSvg(profile, o));
      }
      absl::StrAppend(&h, Html(GroupGradTable(r, groups, depth, step)));
    }
  }
  return h;
}

}  // namespace

}  // namespace hybridmoe
