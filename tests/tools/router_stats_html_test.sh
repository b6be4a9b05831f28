#!/bin/bash
# The HTML report of bazel-bin/tools/router_stats on a real (tiny) training run, opened in headless
# Chromium (Debian's chromium): the page references nothing outside itself; the layer x expert heat map
# (one rect per layer and expert), the step chooser and the per-layer polylines are in the SVG; the page's
# script recolours the heat map for another step exactly as the tool renders that step (checked through
# Chromium's DOM after the script ran); and a 1200x900 screenshot is not blank: it shows every heat-map
# colour as a filled cell and the first two layers' line colours.
#   router_stats_html_test.sh <train binary> <router_stats binary> <tiny.textproto> <make_tokens.py>
set -uo pipefail
TRAIN="$1"
RS="$2"
CONFIG="$3"
MAKE_TOKENS="$4"
T="${TEST_TMPDIR:-$(mktemp -d)}"
: "${HYBRIDMOE_VENV:?HYBRIDMOE_VENV is not set; tools/setup.sh writes it into .bazelrc.local}"
PY="$HYBRIDMOE_VENV/bin/python"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
fail() { echo "FAIL: $*" >&2; exit 1; }
[[ -x "$CHROMIUM" ]] || fail "$CHROMIUM not found: Debian's chromium is needed (tools/setup.sh installs it)"

# Data: a random bigram language over all 256 byte values (each token has 4 likely successors), so that
# token frequencies are flat and a router with balancing on has no reason to favour an expert. (Text with
# a few dozen distinct bytes makes even a balanced router's load follow the skewed byte frequencies.)
"$PY" "$MAKE_TOKENS" bigram "$T/train.bin" || fail "make_tokens"
TINY="model { n_layers: 2 d_model: 64 n_heads: 4 moe { num_experts: 8 top_k: 2 expert_hidden: 64 } }
data { train { path: \"$T/train.bin\" } validation: \"\" seq_len: 64 micro_batch_size: 8 }
train { steps: 40 eval_interval: 0 } optim { warmup_steps: 5 }
logging { log_interval: 5 router_stats: true tensorboard: false } checkpoint { save_final: false }"
"$TRAIN" --config="$CONFIG" --override="$TINY" --out_dir="$T/run" --quiet 2>"$T/train.log" \
  || { cat "$T/train.log"; fail "training run failed"; }

"$RS" "$T/run" --format=html --out="$T/report.html" || fail "html report failed"
"$RS" "$T/run" --format=html --step=5 --out="$T/report5.html" || fail "html report at step 5 failed"

# Chromium, isolated from the user's profile; --dump-dom prints the DOM after the page's script ran.
chrome() {
  HOME="$T/home" timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --user-data-dir="$T/profile" "$@" 2>>"$T/chromium.log"
}
chrome --dump-dom "file://$T/report.html#step=5" >"$T/dom5.html" || { tail "$T/chromium.log"; fail "chromium --dump-dom failed"; }
chrome --screenshot="$T/shot.png" --window-size=1200,900 "file://$T/report.html" >/dev/null \
  || { tail "$T/chromium.log"; fail "chromium --screenshot failed"; }
[[ -s "$T/shot.png" ]] || fail "no screenshot written"

"$PY" - "$T" <<'PY' || fail "html checks"
import re, sys
import numpy as np
from PIL import Image
T = sys.argv[1]
html = open(f"{T}/report.html").read()

# Self-contained: no URL, no external script/style/font/image reference.
for bad in ("http://", "https://", "src=", "href=", "url(", "@import", "<link", "<img", "<iframe"):
    assert bad not in html, f"external reference: {bad}"

# Heat map: one rect per (layer, expert), ids h<row>_<expert>, all filled.
fills = dict(re.findall(r'<rect id="(h\d+_\d+)"[^>]*fill="(#[0-9a-f]{6})"', html))
assert sorted(fills) == sorted(f"h{r}_{e}" for r in range(2) for e in range(8)), sorted(fills)
# Step chooser: the 9 logged steps, the latest selected.
options = re.findall(r'<option value="(\d+)"( selected)?>(\d+)</option>', html)
assert [int(o[2]) for o in options] == [1, 5, 10, 15, 20, 25, 30, 35, 40], options
assert [o[2] for o in options if o[1]] == ["40"], options
assert '<span id="heat-step">40</span>' in html
# Two charts (imbalance, entropy) with one polyline of 9 points per layer.
polylines = re.findall(r'<polyline [^>]*points="([^"]*)"', html)
assert len(polylines) == 4, len(polylines)
assert all(len(p.split()) == 9 for p in polylines), polylines
assert html.count("<svg") == 3

# The script, asked for step 5 through the URL, colours the cells as the tool's own rendering of step 5.
dom = open(f"{T}/dom5.html").read()
static5 = dict(re.findall(r'<rect id="(h\d+_\d+)"[^>]*fill="(#[0-9a-f]{6})"', open(f"{T}/report5.html").read()))
script5 = dict(re.findall(r'<rect id="(h\d+_\d+)"[^>]*fill="(#[0-9a-f]{6})"', dom))
assert len(static5) == 16 and script5 == static5, (static5, script5)
assert re.search(r'<span id="heat-step">5</span>', dom), "the page did not switch to step 5"
assert static5 != fills, "steps 5 and 40 coloured identically: the check above would prove nothing"

# Screenshot: not blank; every heat-map colour fills a cell; the two layers' line colours are drawn.
img = np.asarray(Image.open(f"{T}/shot.png").convert("RGB")).astype(int)
assert img.shape == (900, 1200, 3), img.shape
colors = np.unique(img.reshape(-1, 3), axis=0)
assert len(colors) > 20, f"only {len(colors)} colours: blank page?"
non_white = (img.min(axis=2) < 250).mean()
assert non_white > 0.02, f"only {non_white:.3%} non-white pixels"
def count(hex_color, tol):
    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(img - rgb).max(axis=2) <= tol).sum())
for color in set(fills.values()):
    n = count(color, 2)
    assert n >= 300, f"heat-map colour {color}: {n} pixels"  # a cell is 32x32 px
for color in ("#1f77b4", "#ff7f0e"):  # layers 0 and 1
    n = count(color, 24)
    assert n >= 400, f"line colour {color}: {n} pixels"
print(f"ok: {len(colors)} colours, {non_white:.1%} non-white, {len(set(fills.values()))} heat-map colours drawn")
PY
echo PASS
