#include "tools/compare_report.h"

#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tools/svg_chart.h"

namespace hybridmoe {
namespace {

bool Finite(double v) { return std::isfinite(v); }

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
  t.header = {"strategy",
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
    t.rows.push_back({v.strategy, v.status, Fixed(s.final_train_loss),
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
  t.header = {"strategy", "router entropy (last step)", "max/mean load (last step)", "max/mean load (mean over run)",
              "dead experts (last step, all layers)"};
  for (const VariantResult& v : r.variants) {
    const VariantSummary& s = v.summary;
    t.rows.push_back({v.strategy, Fixed(s.final_entropy, 3), Fixed(s.final_max_over_mean, 3),
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
      notes.push_back(absl::StrCat(v.strategy, " diverged: ", v.summary.diverged_reason,
                                   v.message.empty() || v.message == v.summary.diverged_reason ? "" : "; ", v.message));
    } else if (!v.message.empty()) {
      notes.push_back(absl::StrCat(v.strategy, " (", v.status, "): ", v.message));
    }
    if (v.metrics.unreadable_lines > 0) {
      notes.push_back(absl::StrCat(v.strategy, ": ", v.metrics.unreadable_lines, " unreadable metrics.jsonl lines"));
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
  s.name = v.strategy;
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
  absl::StrAppend(&md, "## Gradient norm of the FFN/expert weights per block\n\n",
                  "L2 norm of the gradient of each block's expert (or dense FFN) weights before clipping, at the "
                  "chosen steps.\n\n");
  for (int64_t step : r.grad_steps) absl::StrAppend(&md, "Step ", step, ":\n\n", Markdown(GradTable(r, step)), "\n");
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
      "router_entropy_final,router_max_over_mean_final,router_max_over_mean_mean,dead_experts_final,wall_s\n";
  for (const VariantResult& v : r.variants) {
    const VariantSummary& s = v.summary;
    absl::StrAppend(&csv, CsvText(v.strategy), ",", v.status, ",", CsvNum(s.final_train_loss), ",", s.final_window_used,
                    ",", CsvNum(s.best_val_loss), ",", Finite(s.best_val_loss) ? absl::StrCat(s.best_val_step) : "",
                    ",", CsvNum(s.final_val_loss), ",", CsvNum(r.summary_options.target_loss), ",",
                    CsvNum(s.tokens_to_target), ",", s.last_step, ",", CsvNum(s.tokens), ",", s.skipped_steps, ",",
                    s.loss_spikes, ",", CsvNum(s.max_grad_norm), ",", s.diverged ? 1 : 0, ",",
                    CsvText(s.diverged_reason), ",", CsvNum(s.final_entropy), ",", CsvNum(s.final_max_over_mean), ",",
                    CsvNum(s.mean_max_over_mean), ",", s.dead_experts, ",", CsvNum(v.wall_s), "\n");
  }
  return csv;
}

std::string CurvesCsv(const SweepReport& r) {
  std::string csv =
      "strategy,step,tokens,loss,lm_loss,lb_loss,z_loss,grad_norm,lr,skipped_steps,val_loss,"
      "router_entropy_mean,router_max_over_mean,router_cv_mean,router_dead_experts,data_hash\n";
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
                      h == t.str.end() ? "" : h->second, "\n");
    }
    for (const auto& [step, loss] : val) {  // evaluations at steps that were not logged as train records
      if (!done.count(step))
        absl::StrAppend(&csv, CsvText(v.strategy), ",", step, ",,,,,,,,,", CsvNum(loss), ",,,,,\n");
    }
  }
  return csv;
}

std::string GradNormsCsv(const SweepReport& r) {
  std::string csv = "strategy,step,block,attn,ffn,router\n";
  for (const VariantResult& v : r.variants) {
    for (int64_t step : r.grad_steps) {
      const std::vector<double> attn = BlockGradNorms(v.metrics, step, "attn");
      const std::vector<double> ffn = BlockGradNorms(v.metrics, step, "ffn");
      const std::vector<double> router = BlockGradNorms(v.metrics, step, "router");
      for (size_t b = 0; b < std::max(attn.size(), ffn.size()); ++b) {
        absl::StrAppend(&csv, CsvText(v.strategy), ",", step, ",", b, ",", b < attn.size() ? CsvNum(attn[b]) : "", ",",
                        b < ffn.size() ? CsvNum(ffn[b]) : "", ",", b < router.size() ? CsvNum(router[b]) : "", "\n");
      }
    }
  }
  return csv;
}

}  // namespace hybridmoe
