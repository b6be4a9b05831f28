// The Hugging Face side of tools/bench: a `transformers` OlmoeForCausalLM training step on the same
// config, weights and batch, in a child Python process driven over pipes so that the two sides can be
// timed in alternating rounds on the same machine at the same moment.
//
// Set-up (HfSide::Start): our model directory (models/weights.h SaveModelDir, initial weights) is
// exported with `convert_hf --to_hf`, the batch is written as raw little-endian int64 ids [B, S] and
// targets [B, S], and tools/hf_bench.py is started in its --serve mode with the same thread count and
// AdamW hyper-parameters. Protocol, one line each way: the child prints `ready {json}` once loaded; the
// parent writes `step N`, the child runs N steps (forward + backward + clip + AdamW) and answers
// `{"seconds": [...], "lm_loss": [...]}`; `quit` ends it. Only models that HF can represent (QK_NORM,
// FULL_WIDTH, RMS, every block MoE, see tools/convert_hf.cc) can be compared.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "models/transformer.h"
#include "proto/config.pb.h"

namespace hybridmoe {

struct HfPaths {
  std::string python;      // the venv interpreter with torch + transformers
  std::string script;      // tools/hf_bench.py
  std::string convert_hf;  // bazel-bin/tools/convert_hf
  std::string work_dir;    // scratch directory for the exported model and the batch
};

// Defaults next to this binary: <exe>.runfiles/hybridmoe/tools/hf_bench.py, <exe dir>/convert_hf, and
// $HYBRIDMOE_VENV/bin/python (else /root/.cache/hybridmoe/venv/bin/python).
HfPaths DefaultHfPaths();

struct HfSteps {
  std::vector<double> seconds;
  std::vector<double> lm_loss;
};

class HfSide {
 public:
  // Exports `model` (current weights) and the batch, starts the child and waits for `ready`.
  // autocast: transformers' step under torch.autocast("cpu", bfloat16) (hf_bench.py --autocast).
  static absl::StatusOr<std::unique_ptr<HfSide>> Start(const HfPaths& paths, Transformer& model,
                                                       const TrainConfig& config, const at::Tensor& inputs,
                                                       const at::Tensor& targets, int threads, bool autocast = false);
  ~HfSide();
  absl::StatusOr<HfSteps> Steps(int n);
  const std::string& ready_line() const { return ready_; }

 private:
  HfSide() = default;
  absl::StatusOr<std::string> ReadLine();
  pid_t pid_ = -1;
  int to_child_ = -1, from_child_ = -1;
  std::string buffer_, ready_;
};

}  // namespace hybridmoe
