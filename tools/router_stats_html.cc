#include "tools/router_stats_html.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace hybridmoe {
namespace {

constexpr const char* kLineColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                       "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

double Ratio(const RouterStepRecord& r, int e) {
  return r.mean_load() > 0 && e < r.counts_size() ? static_cast<double>(r.counts(e)) / r.mean_load() : 0;
}

double EntropyRatio(const RouterStepRecord& r) {
  return r.num_experts() > 1 ? r.entropy_mean() / std::log(static_cast<double>(r.num_experts())) : 1.0;
}

struct Layout {
  std::vector<int> layers;                                        // distinct layer ids, ascending
  std::vector<int64_t> steps;                                     // distinct steps, ascending
  std::map<std::pair<int64_t, int>, const RouterStepRecord*> at;  // (step, layer) -> record
  int experts = 0;                                                // max E over records
};

// The heat map: rect ids h<row>_<expert>, coloured for `step`.
std::string HeatMap(const Layout& lay, int64_t step) {
  const int E = lay.experts, L = static_cast<int>(lay.layers.size());
  const int cw = std::clamp(880 / std::max(E, 1), 6, 32), ch = std::clamp(420 / std::max(L, 1), 12, 32);
  const int left = 70, top = 24, height = top + L * ch + 70;
  const int width = std::max(left + E * cw + 10, left + 8 * 34 + 10 + 40);  // the legend: 8 keys
  std::string s = absl::StrFormat("<svg id=\"heat\" width=\"%d\" height=\"%d\" role=\"img\">\n", width, height);
  const int label_every = std::max(1, 24 / cw);
  for (int e = 0; e < E; e += label_every) {
    absl::StrAppendFormat(&s, "<text x=\"%d\" y=\"%d\" class=\"tick\" text-anchor=\"middle\">%d</text>\n",
                          left + e * cw + cw / 2, top - 6, e);
  }
  for (int row = 0; row < L; ++row) {
    const int layer = lay.layers[row];
    absl::StrAppendFormat(&s, "<text x=\"%d\" y=\"%d\" class=\"tick\" text-anchor=\"end\">layer %d</text>\n", left - 6,
                          top + row * ch + ch / 2 + 4, layer);
    auto it = lay.at.find({step, layer});
    for (int e = 0; e < E; ++e) {
      std::string fill = "#dddddd", tip = absl::StrFormat("layer %d, expert %d: no record", layer, e);
      if (it != lay.at.end() && e < it->second->counts_size()) {
        const double ratio = Ratio(*it->second, e);
        fill = LoadRatioColor(ratio);
        tip = absl::StrFormat("layer %d, expert %d: %d slots, %.2f x mean", layer, e, it->second->counts(e), ratio);
      }
      absl::StrAppendFormat(&s,
                            "<rect id=\"h%d_%d\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" "
                            "stroke=\"#ffffff\" stroke-width=\"0.5\"><title>%s</title></rect>\n",
                            row, e, left + e * cw, top + row * ch, cw, ch, fill, tip);
    }
  }
  // Legend: no tokens, then ratios 1/4 .. 4 on the log scale.
  const int ly = top + L * ch + 20;
  absl::StrAppendFormat(&s, "<text x=\"%d\" y=\"%d\" class=\"tick\" text-anchor=\"end\">load / mean</text>\n", left - 6,
                        ly + 13);
  const std::vector<std::pair<double, const char*>> keys = {{0, "0"}, {0.25, "1/4"}, {0.5, "1/2"}, {0.71, ""},
                                                            {1, "1"}, {1.41, ""},    {2, "2"},     {4, "4+"}};
  for (size_t i = 0; i < keys.size(); ++i) {
    const int x = left + static_cast<int>(i) * 34 + (i > 0 ? 10 : 0);
    absl::StrAppendFormat(&s,
                          "<rect class=\"legend\" x=\"%d\" y=\"%d\" width=\"32\" height=\"18\" fill=\"%s\" "
                          "stroke=\"#999999\" stroke-width=\"0.5\"></rect>\n",
                          x, ly, LoadRatioColor(keys[i].first));
    absl::StrAppendFormat(&s, "<text x=\"%d\" y=\"%d\" class=\"tick\" text-anchor=\"middle\">%s</text>\n", x + 16,
                          ly + 32, i == 0 ? "no tokens" : keys[i].second);
  }
  return s + "</svg>\n";
}

// One polyline per layer of value(record) over steps, with axes and a legend.
std::string LineChart(const Layout& lay, const std::vector<RouterStepRecord>& records, const char* id,
                      const std::function<double(const RouterStepRecord&)>& value, double y_min, double y_max,
                      double dashed_at) {
  const int left = 60, right = 130, top = 14, plot_w = 720, plot_h = 260, bottom = 36;
  const double x0 = static_cast<double>(lay.steps.front()), x1 = static_cast<double>(lay.steps.back());
  auto X = [&](double step) { return left + (x1 > x0 ? (step - x0) / (x1 - x0) : 0.5) * plot_w; };
  auto Y = [&](double v) { return top + (1 - (std::clamp(v, y_min, y_max) - y_min) / (y_max - y_min)) * plot_h; };
  std::string s = absl::StrFormat("<svg id=\"%s\" width=\"%d\" height=\"%d\" role=\"img\">\n", id,
                                  left + plot_w + right, top + plot_h + bottom);
  absl::StrAppendFormat(&s,
                        "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#fafafa\" stroke=\"#888888\">"
                        "</rect>\n",
                        left, top, plot_w, plot_h);
  for (int i = 0; i <= 4; ++i) {
    const double v = y_min + (y_max - y_min) * i / 4.0;
    absl::StrAppendFormat(&s, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#e0e0e0\"></line>\n", left,
                          left + plot_w, Y(v), Y(v));
    absl::StrAppendFormat(&s, "<text x=\"%d\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\">%.3g</text>\n", left - 5,
                          Y(v) + 4, v);
    const double step = x0 + (x1 - x0) * i / 4.0;
    absl::StrAppendFormat(&s, "<text x=\"%.1f\" y=\"%d\" class=\"tick\" text-anchor=\"middle\">%.0f</text>\n", X(step),
                          top + plot_h + 16, step);
  }
  absl::StrAppendFormat(&s, "<text x=\"%d\" y=\"%d\" class=\"tick\" text-anchor=\"middle\">step</text>\n",
                        left + plot_w / 2, top + plot_h + 32);
  if (dashed_at > y_min && dashed_at < y_max) {
    absl::StrAppendFormat(&s,
                          "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#d62728\" "
                          "stroke-dasharray=\"6,4\"></line>\n",
                          left, left + plot_w, Y(dashed_at), Y(dashed_at));
  }
  for (size_t row = 0; row < lay.layers.size(); ++row) {
    const int layer = lay.layers[row];
    std::vector<const RouterStepRecord*> series;
    for (const RouterStepRecord& r : records) {
      if (r.layer() == layer) series.push_back(&r);
    }
    const size_t stride = (series.size() + kMaxLinePoints - 1) / kMaxLinePoints;
    std::string points;
    for (size_t i = 0; i < series.size(); i += stride) {
      if (i + stride >= series.size()) i = series.size() - 1;
      absl::StrAppendFormat(&points, "%.1f,%.1f ", X(static_cast<double>(series[i]->step())), Y(value(*series[i])));
    }
    const char* color = kLineColors[row % (sizeof(kLineColors) / sizeof(kLineColors[0]))];
    absl::StrAppendFormat(&s,
                          "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"%s\">"
                          "<title>layer %d</title></polyline>\n",
                          color, points, layer);
    if (series.size() <= 60) {
      for (const RouterStepRecord* r : series) {
        absl::StrAppendFormat(&s, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"></circle>\n",
                              X(static_cast<double>(r->step())), Y(value(*r)), color);
      }
    }
    if (row < 24) {
      const int ly = top + 8 + static_cast<int>(row) * 16;
      absl::StrAppendFormat(&s,
                            "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"3\">"
                            "</line><text x=\"%d\" y=\"%d\" class=\"tick\">layer %d</text>\n",
                            left + plot_w + 10, left + plot_w + 30, ly, ly, color, left + plot_w + 35, ly + 4, layer);
    }
  }
  return s + "</svg>\n";
}

// Steps embedded for the chooser: evenly thinned, always the first, the last and `keep`.
std::vector<int64_t> ChooserSteps(const std::vector<int64_t>& steps, int64_t keep) {
  std::set<int64_t> chosen = {steps.front(), steps.back(), keep};
  const size_t n = steps.size();
  for (int i = 0; i < kMaxHeatmapSteps - 3 && n > 0; ++i) {
    chosen.insert(steps[std::min(n - 1, i * n / (kMaxHeatmapSteps - 3))]);
  }
  return {chosen.begin(), chosen.end()};
}

}  // namespace

std::string LoadRatioColor(double ratio) {
  if (ratio <= 0) return "#202020";
  const double x = std::clamp(std::log2(ratio) / 2.0, -1.0, 1.0);
  const double to[3] = {x < 0 ? 33.0 : 178.0, x < 0 ? 102.0 : 24.0, x < 0 ? 172.0 : 43.0};
  const double a = std::fabs(x);
  int c[3];
  for (int i = 0; i < 3; ++i) c[i] = static_cast<int>(std::lround(255 + (to[i] - 255) * a));
  return absl::StrFormat("#%02x%02x%02x", c[0], c[1], c[2]);
}

std::string RenderRouterStatsHtml(const std::vector<RouterStepRecord>& records, const std::vector<RouterAlert>& alerts,
                                  const HtmlReportOptions& o) {
  Layout lay;
  std::set<int> layers;
  std::set<int64_t> steps;
  for (const RouterStepRecord& r : records) {
    layers.insert(r.layer());
    steps.insert(r.step());
    lay.at[{r.step(), r.layer()}] = &r;
    lay.experts = std::max(lay.experts, r.num_experts());
  }
  lay.layers.assign(layers.begin(), layers.end());
  lay.steps.assign(steps.begin(), steps.end());
  int64_t shown = lay.steps.back();
  if (o.heatmap_step >= 0) {
    for (int64_t s : lay.steps) {
      if (std::llabs(s - o.heatmap_step) < std::llabs(shown - o.heatmap_step)) shown = s;
    }
  }
  const RouterStepRecord& any = records.back();
  std::string h = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n";
  absl::StrAppend(&h, "<title>Router statistics: ", Escape(o.source), "</title>\n<style>\n",
                  "body{font-family:sans-serif;margin:24px;color:#222;background:#fff}\n",
                  "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;"
                  "font-size:13px;text-align:right}th{background:#f0f0f0}td.l{text-align:left}\n",
                  ".tick{font-size:11px;fill:#444}.problem{color:#a00;font-weight:bold}.ok{color:#070}\n",
                  "h2{margin-top:28px;font-size:18px}\n</style></head><body>\n");
  absl::StrAppend(&h, "<h1>Router load balance</h1>\n<p>", Escape(o.source), ": ", records.size(), " records, steps ",
                  lay.steps.front(), " to ", lay.steps.back(), " (", lay.steps.size(), " logged), ", lay.layers.size(),
                  " MoE layers, ", lay.experts, " experts, top-", any.top_k(), ", expert-parallel ", any.ep_size(),
                  "</p>\n");
  if (!o.problem.empty()) absl::StrAppend(&h, "<p class=\"problem\">", Escape(o.problem), "</p>\n");

  absl::StrAppend(&h, "<h2>Alerts</h2>\n");
  if (alerts.empty()) {
    absl::StrAppend(&h, "<p class=\"ok\" id=\"no-alerts\">No alerts.</p>\n");
  } else {
    absl::StrAppend(&h,
                    "<table id=\"alerts\"><tr><th>layer</th><th>kind</th><th>expert</th><th>since step</th>"
                    "<th>value</th><th>detail</th></tr>\n");
    for (const RouterAlert& a : alerts) {
      absl::StrAppendFormat(&h,
                            "<tr><td>%d</td><td class=\"l\">%s</td><td>%s</td><td>%d</td><td>%.3g</td>"
                            "<td class=\"l\">%s</td></tr>\n",
                            a.layer, a.kind, a.expert >= 0 ? absl::StrCat(a.expert) : "", a.began_step, a.value,
                            Escape(a.detail));
    }
    absl::StrAppend(&h, "</table>\n");
  }

  const std::vector<int64_t> chooser = ChooserSteps(lay.steps, shown);
  absl::StrAppend(&h, "<h2>Expert load at step <span id=\"heat-step\">", shown, "</span></h2>\n",
                  "<label>Step <select id=\"step\">");
  for (size_t i = 0; i < chooser.size(); ++i) {
    absl::StrAppend(&h, "<option value=\"", i, "\"", chooser[i] == shown ? " selected" : "", ">", chooser[i],
                    "</option>");
  }
  absl::StrAppend(&h, "</select></label>\n<div>", HeatMap(lay, shown), "</div>\n");

  double max_mom = 1.5;
  for (const RouterStepRecord& r : records) max_mom = std::max(max_mom, r.max_over_mean());
  absl::StrAppend(&h, "<h2>Imbalance over steps (max load / mean load)</h2>\n",
                  LineChart(
                      lay, records, "imbalance", [](const RouterStepRecord& r) { return r.max_over_mean(); }, 1.0,
                      max_mom * 1.05, -1));
  absl::StrAppend(&h, "<h2>Router entropy / ln E over steps</h2>\n",
                  LineChart(lay, records, "entropy", EntropyRatio, 0.0, 1.0, o.thresholds.min_entropy_ratio));

  absl::StrAppend(&h,
                  "<h2>Layers at their latest step</h2>\n<table id=\"layers\"><tr><th>layer</th><th>step</th>"
                  "<th>max/mean</th><th>cv</th><th>min/mean</th><th>entropy / ln E</th><th>top-1 prob</th>"
                  "<th>dead</th><th>hottest (token share)</th><th>dropped</th><th>LB loss</th>"
                  "<th>EP overload</th><th>selection bias (min, max)</th></tr>\n");
  for (int layer : lay.layers) {
    const RouterStepRecord* r = nullptr;
    for (const RouterStepRecord& x : records) {
      if (x.layer() == layer) r = &x;
    }
    const LoadStats s = ComputeLoadStats({r->counts().begin(), r->counts().end()}, r->tokens());
    absl::StrAppendFormat(
        &h,
        "<tr><td>%d</td><td>%d</td><td>%.3f</td><td>%.3f</td><td>%.3f</td><td>%.3f</td>"
        "<td>%.3f</td><td>%d</td><td>%d (%.1f%%)</td><td>%d</td><td>%.4f</td><td>%.3f</td>"
        "<td>%s</td></tr>\n",
        layer, r->step(), r->max_over_mean(), r->cv(), r->mean_load() > 0 ? r->min_load() / r->mean_load() : 0.0,
        EntropyRatio(*r), r->top1_mean(), r->dead_experts(), s.hottest, 100 * s.hottest_share, r->dropped(),
        r->lb_loss(), r->ep_overload(),
        r->selection_bias_size() == 0
            ? std::string("-")
            : absl::StrFormat("%.3g, %.3g", *std::min_element(r->selection_bias().begin(), r->selection_bias().end()),
                              *std::max_element(r->selection_bias().begin(), r->selection_bias().end())));
  }
  absl::StrAppend(&h, "</table>\n");

  // Counts of the chooser's steps for the script: C[i][row] = counts of that layer, or null.
  std::string data = "[";
  for (size_t i = 0; i < chooser.size(); ++i) {
    absl::StrAppend(&data, i ? "," : "", "[");
    for (size_t row = 0; row < lay.layers.size(); ++row) {
      auto it = lay.at.find({chooser[i], lay.layers[row]});
      absl::StrAppend(&data, row ? "," : "");
      if (it == lay.at.end()) {
        absl::StrAppend(&data, "null");
        continue;
      }
      absl::StrAppend(&data, "[");
      for (int e = 0; e < it->second->counts_size(); ++e) absl::StrAppend(&data, e ? "," : "", it->second->counts(e));
      absl::StrAppend(&data, "]");
    }
    absl::StrAppend(&data, "]");
  }
  data += "]";
  std::string step_list;
  for (size_t i = 0; i < chooser.size(); ++i) absl::StrAppend(&step_list, i ? "," : "", chooser[i]);
  absl::StrAppend(&h, "<script>\n(function () {\n", "  const STEPS = [", step_list, "];\n  const COUNTS = ", data,
                  ";\n", "  const LAYERS = [", absl::StrJoin(lay.layers, ","), "];\n", R"JS(
  function color(r) {
    if (r <= 0) return '#202020';
    const x = Math.max(-1, Math.min(1, Math.log2(r) / 2)), a = Math.abs(x);
    const to = x < 0 ? [33, 102, 172] : [178, 24, 43];
    return '#' + to.map(t => Math.round(255 + (t - 255) * a).toString(16).padStart(2, '0')).join('');
  }
  function show(i) {
    document.getElementById('heat-step').textContent = STEPS[i];
    COUNTS[i].forEach((counts, row) => {
      const total = counts ? counts.reduce((a, b) => a + b, 0) : 0;
      for (let e = 0; ; ++e) {
        const rect = document.getElementById('h' + row + '_' + e);
        if (!rect) break;
        const title = rect.firstChild;
        if (!counts || e >= counts.length || total === 0) {
          rect.setAttribute('fill', '#dddddd');
          title.textContent = 'layer ' + LAYERS[row] + ', expert ' + e + ': no record';
          continue;
        }
        const ratio = counts[e] * counts.length / total;
        rect.setAttribute('fill', color(ratio));
        title.textContent = 'layer ' + LAYERS[row] + ', expert ' + e + ': ' + counts[e] + ' slots, ' +
            ratio.toFixed(2) + ' x mean';
      }
    });
  }
  const select = document.getElementById('step');
  select.addEventListener('change', () => show(Number(select.value)));
  // file:///...report.html#step=N opens at the embedded step nearest N.
  const wanted = /step=(\d+)/.exec(location.hash);
  if (wanted) {
    let best = 0;
    STEPS.forEach((s, i) => { if (Math.abs(s - wanted[1]) < Math.abs(STEPS[best] - wanted[1])) best = i; });
    select.value = String(best);
    show(best);
  }
})();
</script>
</body></html>
)JS");
  return h;
}

}  // namespace hybridmoe
