#include "tools/svg_chart.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace hybridmoe {
namespace {

// 1-2-5 step that gives about `target` intervals over [lo, hi].
double NiceStep(double lo, double hi, int target) {
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

std::string TickLabel(double v) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e9) return absl::StrFormat("%.4gG", v / 1e9);
  if (a >= 1e6) return absl::StrFormat("%.4gM", v / 1e6);
  if (a >= 1e4) return absl::StrFormat("%.4gk", v / 1e3);
  if (a < 1e-3) return absl::StrFormat("%.0e", v);
  return absl::StrFormat("%.6g", v);
}

}  // namespace

std::string SeriesColor(size_t i) {
  static const char* kPalette[] = {"#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00",
                                   "#56b4e9", "#000000", "#999933", "#882255", "#44aa99"};
  return kPalette[i % (sizeof(kPalette) / sizeof(kPalette[0]))];
}

std::string XmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

std::string LineChartSvg(const std::vector<ChartSeries>& series, const ChartOptions& o) {
  const double left = 70, right = 170, top = 30, bottom = 45;
  const double pw = o.width - left - right, ph = o.height - top - bottom;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const ChartSeries& s : series) {
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y) || (o.log_y && y <= 0)) continue;
      x0 = std::min(x0, x);
      x1 = std::max(x1, x);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
    for (const ChartSeries::BandPoint& b : s.band) {
      for (double y : {b.lo, b.hi}) {
        if (!std::isfinite(b.x) || !std::isfinite(y) || (o.log_y && y <= 0)) continue;
        x0 = std::min(x0, b.x);
        x1 = std::max(x1, b.x);
        y0 = std::min(y0, y);
        y1 = std::max(y1, y);
      }
    }
  }
  if (std::isfinite(o.y_min)) y0 = o.y_min;
  if (std::isfinite(o.y_max)) y1 = o.y_max;
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
      "font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%g\" y=\"18\" font-size=\"13\" font-weight=\"bold\">%s</text>\n",
      o.width, o.height, o.width, o.height, left, XmlEscape(o.title));
  if (!std::isfinite(x0) || !std::isfinite(y0)) {
    absl::StrAppend(&svg, absl::StrFormat("<text x=\"%g\" y=\"%g\">no data</text>\n</svg>\n", left, top + ph / 2));
    return svg;
  }
  if (x1 == x0) x1 = x0 + 1;
  if (o.log_y) {
    y0 = std::pow(10.0, std::floor(std::log10(y0)));
    y1 = std::pow(10.0, std::ceil(std::log10(y1)));
    if (y1 <= y0) y1 = y0 * 10;
  } else {
    if (y1 == y0) y1 = y0 + 1;
    const double step = NiceStep(y0, y1, 5);
    if (!std::isfinite(o.y_min)) y0 = std::floor(y0 / step) * step;
    if (!std::isfinite(o.y_max)) y1 = std::ceil(y1 / step) * step;
  }
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) {
    const double t =
        o.log_y ? (std::log10(y) - std::log10(y0)) / (std::log10(y1) - std::log10(y0)) : (y - y0) / (y1 - y0);
    return top + (1 - std::clamp(t, 0.0, 1.0)) * ph;
  };

  // Axes, grid and ticks.
  absl::StrAppend(&svg, absl::StrFormat("<rect x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\" fill=\"none\" "
                                        "stroke=\"#444\"/>\n",
                                        left, top, pw, ph));
  std::vector<double> yticks;
  if (o.log_y) {
    const int decades = static_cast<int>(std::round(std::log10(y1 / y0)));
    for (double v = y0; v <= y1 * 1.0001; v *= 10) {
      yticks.push_back(v);
      if (decades <= 2) {
        if (2 * v < y1) yticks.push_back(2 * v);
        if (5 * v < y1) yticks.push_back(5 * v);
      }
    }
  } else {
    const double step = NiceStep(y0, y1, 5);
    for (double v = std::ceil(y0 / step) * step; v <= y1 + step * 1e-6; v += step) yticks.push_back(v);
  }
  for (double v : yticks) {
    absl::StrAppend(&svg, absl::StrFormat("<line x1=\"%g\" x2=\"%g\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                                          "<text x=\"%g\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                                          left, left + pw, py(v), py(v), left - 5, py(v) + 4, TickLabel(v)));
  }
  const double xstep = o.integer_x ? std::max(1.0, NiceStep(x0, x1, 6)) : NiceStep(x0, x1, 6);
  for (double v = std::ceil(x0 / xstep) * xstep; v <= x1 + xstep * 1e-6; v += xstep) {
    absl::StrAppend(&svg, absl::StrFormat("<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%g\" y2=\"%g\" stroke=\"#ddd\"/>"
                                          "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">%s</text>\n",
                                          px(v), px(v), top, top + ph, px(v), top + ph + 15, TickLabel(v)));
  }
  absl::StrAppend(&svg, absl::StrFormat("<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%s</text>\n", left + pw / 2,
                                        top + ph + 35, XmlEscape(o.x_label)));
  absl::StrAppend(&svg, absl::StrFormat("<text transform=\"translate(15,%g) rotate(-90)\" text-anchor=\"middle\">"
                                        "%s</text>\n",
                                        top + ph / 2, XmlEscape(o.y_label)));

  // Bands first (under every line): one polygon per run of usable band points.
  for (size_t i = 0; i < series.size(); ++i) {
    std::vector<ChartSeries::BandPoint> run;
    auto flush = [&] {
      if (run.size() >= 2) {
        std::string pts;
        for (const auto& b : run) absl::StrAppend(&pts, absl::StrFormat("%.1f,%.1f ", px(b.x), py(b.hi)));
        for (auto it = run.rbegin(); it != run.rend(); ++it) {
          absl::StrAppend(&pts, absl::StrFormat("%.1f,%.1f ", px(it->x), py(it->lo)));
        }
        absl::StrAppend(&svg, "<polygon class=\"band\" fill=\"", SeriesColor(i),
                        "\" fill-opacity=\"0.18\" stroke=\"none\" points=\"", pts, "\"/>\n");
      } else if (run.size() == 1) {  // a lone point: a vertical bar
        absl::StrAppend(&svg,
                        absl::StrFormat("<line class=\"band\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" "
                                        "stroke=\"%s\" stroke-opacity=\"0.5\" stroke-width=\"4\"/>\n",
                                        px(run[0].x), px(run[0].x), py(run[0].lo), py(run[0].hi), SeriesColor(i)));
      }
      run.clear();
    };
    for (const ChartSeries::BandPoint& b : series[i].band) {
      const bool ok =
          std::isfinite(b.x) && std::isfinite(b.lo) && std::isfinite(b.hi) && (!o.log_y || (b.lo > 0 && b.hi > 0));
      if (ok)
        run.push_back(b);
      else
        flush();
    }
    flush();
  }

  // Lines (broken at non-finite values), markers, legend.
  for (size_t i = 0; i < series.size(); ++i) {
    const std::string color = SeriesColor(i);
    std::string pts;
    auto flush = [&] {
      if (!pts.empty()) {
        absl::StrAppend(&svg, "<polyline fill=\"none\" stroke=\"", color, "\" stroke-width=\"1.6\" points=\"", pts,
                        "\"/>\n");
      }
      pts.clear();
    };
    for (const auto& [x, y] : series[i].points) {
      if (!std::isfinite(x) || !std::isfinite(y) || (o.log_y && y <= 0)) {
        flush();
        continue;
      }
      absl::StrAppend(&pts, absl::StrFormat("%.1f,%.1f ", px(x), py(y)));
      if (series[i].markers) {
        absl::StrAppend(
            &svg, absl::StrFormat("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>\n", px(x), py(y), color));
      }
    }
    flush();
    const double ly = top + 10 + 16 * static_cast<double>(i);
    absl::StrAppend(&svg, absl::StrFormat("<line x1=\"%g\" x2=\"%g\" y1=\"%g\" y2=\"%g\" stroke=\"%s\" "
                                          "stroke-width=\"3\"/><text x=\"%g\" y=\"%g\">%s</text>\n",
                                          left + pw + 10, left + pw + 28, ly, ly, color, left + pw + 33, ly + 4,
                                          XmlEscape(series[i].name)));
  }
  absl::StrAppend(&svg, "</svg>\n");
  return svg;
}

}  // namespace hybridmoe
