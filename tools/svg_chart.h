// Line charts as inline SVG text for self-contained HTML reports (no scripts, no external resources).
//
// A chart draws one polyline per series over shared axes with "nice" ticks (1-2-5 steps; decades on a log
// y axis) and a legend. Non-finite y values break a line (a diverged run stops where its values stop);
// values outside an explicit y range are clamped to the plot's edge. A series may carry a band (e.g. the
// min-max or mean+-std over seeds) drawn as a translucent area in its colour under its line; a band is
// broken where a bound is not finite (or not positive on a log axis). Pure string building, no I/O.
#pragma once

#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace hybridmoe {

struct ChartSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y), x ascending
  bool markers = false;                           // a dot at every point (for short series)
  struct BandPoint {
    double x, lo, hi;
  };
  std::vector<BandPoint> band;  // x ascending; empty = no band
};

struct ChartOptions {
  std::string title, x_label, y_label;
  bool log_y = false;
  bool integer_x = false;  // x ticks at whole numbers only (e.g. block index)
  // Explicit y range; NaN = from the data.
  double y_min = std::numeric_limits<double>::quiet_NaN();
  double y_max = std::numeric_limits<double>::quiet_NaN();
  int width = 720, height = 340;
};

// The i-th colour of a fixed, colour-blind-friendly palette (wraps around).
std::string SeriesColor(size_t i);

std::string LineChartSvg(const std::vector<ChartSeries>& series, const ChartOptions& options);

// Escapes &, <, >, " for XML/HTML text and attributes.
std::string XmlEscape(const std::string& s);

}  // namespace hybridmoe
