// bazel-bin/tools/train --config=FILE.textproto [--override='TEXTPROTO']... [--out_dir=DIR] [--resume]
// Trains a model; see tools/trainer.h for the run directory. Under mpirun or srun it runs distributed with
// no other change. Errors end with one line (on rank 0) and exit 1 (2 for bad flags). SIGTERM or SIGUSR1
// stops the run at the next step boundary with a checkpoint and exit status 75 (tools/trainer.h).
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "core/files.h"
#include "core/host.h"
#include "parallel/context.h"
#include "tools/cli.h"
#include "tools/trainer.h"

int main(int argc, char** argv) {
  using namespace hybridmoe;
  KeepFreedMemoryForReuse();  // core/host.h: no page faults for the buffers every step allocates again
  const std::vector<FlagSpec> specs = {
      {"config", "text-format TrainConfig file (required unless --resume finds DIR/config.textproto)"},
      {"override", "text-format TrainConfig merged on top, e.g. 'train { steps: 20 }' (repeatable)", false, true},
      {"out_dir", "run directory (default runs/<config name>)"},
      {"resume", "continue the run in --out_dir from its newest intact checkpoint", true},
      {"stop_at_step", "stop with a checkpoint after this many steps (schedule unchanged); resume later"},
      {"quiet", "no progress lines", true},
      {"help", "show this help", true},
  };
  int exit_code = 0;
  auto cl = CommandLine::ParseOrExit(argc, argv, "train", "Trains an MoE transformer.", specs, &exit_code);
  if (!cl) return exit_code;
  const bool resume = cl->GetBool("resume");
  std::string config_path = cl->Get("config");
  if (config_path.empty() && resume) {
    // --resume without --config: the run directory's own config.textproto.
    if (!cl->Has("out_dir")) {
      std::fprintf(stderr, "train: --resume without --config needs --out_dir=DIR, the run to continue\n");
      return 2;
    }
    const std::string dir = cl->Get("out_dir");
    config_path = RunConfigPath(dir);
    if (config_path.empty()) {
      std::fprintf(stderr, "train: --resume: %s holds no run (no config.textproto / no checkpoints)\n", dir.c_str());
      return 1;
    }
  }
  if (config_path.empty()) {
    std::fprintf(stderr, "train: --config=FILE.textproto is required (see configs/)\n");
    return 2;
  }
  auto config = LoadConfig(config_path, cl->GetAll("override"));
  if (!config.ok()) {
    std::fprintf(stderr, "train: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  // Validation that does not depend on the launch, before MPI starts (one line, whatever the rank).
  if (absl::Status s = ValidateConfig(*config, /*world_size=*/0); !s.ok()) {
    std::fprintf(stderr, "train: %s: %s\n", config_path.c_str(), std::string(s.message()).c_str());
    return 1;
  }
  auto ctx = ParallelContext::Create(*config);
  if (!ctx.ok()) {
    // Launch errors are reported by rank 0 only (Create knows the rank even when it fails).
    if (ParallelContext::IsRankZero()) {
      std::fprintf(stderr, "train: %s\n", std::string(ctx.status().message()).c_str());
    }
    return 1;
  }
  TrainOptions options;
  std::string stem = config_path.substr(config_path.find_last_of('/') + 1);
  stem = stem.substr(0, stem.find('.'));
  options.out_dir = cl->Get("out_dir", "runs/" + stem);
  options.resume = resume;
  options.quiet = cl->GetBool("quiet");
  auto stop_at = cl->GetInt("stop_at_step", 0);
  if (!stop_at.ok()) {
    std::fprintf(stderr, "train: %s\n", std::string(stop_at.status().message()).c_str());
    return 2;
  }
  options.stop_at_step = *stop_at;
  InstallStopSignalHandlers();
  TrainOutcome outcome;
  if (absl::Status s = Train(*config, options, **ctx, &outcome); !s.ok()) {
    if ((*ctx)->rank() == 0) std::fprintf(stderr, "train: %s\n", std::string(s.message()).c_str());
    // Leave without MPI_Finalize: peers may be waiting in a collective; the launcher ends the job.
    std::fflush(stderr);
    std::fflush(stdout);
    std::_Exit(1);
  }
  return outcome.stop_signal != 0 ? kExitStopped : 0;
}
