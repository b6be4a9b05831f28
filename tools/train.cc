// bazel-bin/tools/train --config=FILE.textproto [--override='TEXTPROTO']... [--out_dir=DIR]
// Trains a model; see tools/trainer.h for the run directory. Errors end with one line and exit 1.
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "tools/cli.h"
#include "tools/trainer.h"

int main(int argc, char** argv) {
  using namespace hybridmoe;
  const std::vector<FlagSpec> specs = {
      {"config", "text-format TrainConfig file (required)"},
      {"override", "text-format TrainConfig merged on top, e.g. 'train { steps: 20 }' (repeatable)", false, true},
      {"out_dir", "run directory (default runs/<config name>)"},
      {"quiet", "no progress lines", true},
      {"help", "show this help", true},
  };
  auto cl = CommandLine::Parse(argc, argv, specs);
  if (!cl.ok()) {
    std::fprintf(stderr, "train: %s\n", std::string(cl.status().message()).c_str());
    return 2;
  }
  if (cl->GetBool("help")) {
    std::fputs(CommandLine::Usage("train", "Trains an MoE transformer.", specs).c_str(), stdout);
    return 0;
  }
  if (!cl->Has("config")) {
    std::fprintf(stderr, "train: --config=FILE.textproto is required (see configs/)\n");
    return 2;
  }
  const std::string config_path = cl->Get("config");
  auto config = LoadConfig(config_path, cl->GetAll("override"));
  if (!config.ok()) {
    std::fprintf(stderr, "train: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  if (absl::Status s = ValidateConfig(*config); !s.ok()) {
    std::fprintf(stderr, "train: %s: %s\n", config_path.c_str(), std::string(s.message()).c_str());
    return 1;
  }
  TrainOptions options;
  std::string stem = config_path.substr(config_path.find_last_of('/') + 1);
  stem = stem.substr(0, stem.find('.'));
  options.out_dir = cl->Get("out_dir", "runs/" + stem);
  options.quiet = cl->GetBool("quiet");
  if (absl::Status s = Train(*config, options); !s.ok()) {
    std::fprintf(stderr, "train: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
