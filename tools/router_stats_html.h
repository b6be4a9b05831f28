// The self-contained HTML page of `router_stats --format=html`: one file, no external resources (inline
// CSS, inline SVG, a few lines of inline JavaScript), so it opens offline and can be mailed around.
//
// Sections: the alerts table; a layer x expert heat map of load (colour = expert load / mean load on a
// log scale, blue under-loaded, white balanced, red over-loaded, near-black no tokens) for one logged step,
// with a legend and a step chooser (at most kMaxHeatmapSteps steps embedded, always the first, the last and
// the requested one), defaulting to the latest step; polylines over steps, one per layer, of max/mean load
// and of router entropy / ln E (with the entropy alert threshold dashed); a per-layer summary table.
// The default step is drawn in the static SVG, so the page shows it even with scripts disabled; a URL ending
// in #step=N opens the page at the embedded step nearest N.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/router_stats.h"
#include "proto/router_stats.pb.h"

namespace hybridmoe {

constexpr int kMaxHeatmapSteps = 200;
constexpr int kMaxLinePoints = 1000;  // per layer; longer series are thinned evenly (last point kept)

struct HtmlReportOptions {
  std::string source;         // the record file, shown in the title
  std::string problem;        // a damaged-file message to show on the page (empty: none)
  int64_t heatmap_step = -1;  // logged step shown first; -1 = the latest (else the nearest logged step)
  AlertThresholds thresholds;
};

// `records` sorted by (step, layer), non-empty; `alerts` from FindRouterAlerts on the same records.
std::string RenderRouterStatsHtml(const std::vector<RouterStepRecord>& records, const std::vector<RouterAlert>& alerts,
                                  const HtmlReportOptions& options);

// "#rrggbb" for a load ratio (load / mean load): the heat map's colour scale (0 = no tokens).
std::string LoadRatioColor(double ratio);

}  // namespace hybridmoe
