// Test helper for tests/python/tensorboard_read_test.py: writes known scalars with core/tensorboard.h.
//   tensorboard_write_scalars <run_dir> <num_steps>
// Steps s = 1..num_steps, one record per step with loss, lm_loss, lr (wall_time 1.7e9 + s) and val_loss every
// 5th step in its own record (wall_time 1.7e9 + s + 0.5). The Python test recomputes the same formulas.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/tensorboard.h"

namespace {

double Loss(int s) { return 2.0 + 8.0 / (1.0 + 0.1 * s); }
double LmLoss(int s) { return Loss(s) - 0.001 * s; }
double Lr(int s) { return 3e-4 * ((s - 1) / 10.0 < 1.0 ? (s - 1) / 10.0 : 1.0); }  // 0 at step 1
double ValLoss(int s) { return Loss(s) + 0.125; }

int Run(const std::string& run_dir, int num_steps) {
  auto writer = hybridmoe::TensorBoardWriter::Open(run_dir, "test");
  if (!writer.ok()) {
    std::fprintf(stderr, "%s\n", writer.status().ToString().c_str());
    return 1;
  }
  for (int s = 1; s <= num_steps; ++s) {
    absl::Status status =
        (*writer)->AddScalars(s, {{"loss", Loss(s)}, {"lm_loss", LmLoss(s)}, {"lr", Lr(s)}}, 1.7e9 + s);
    if (status.ok() && s % 5 == 0) status = (*writer)->AddScalar("val_loss", s, ValLoss(s), 1.7e9 + s + 0.5);
    if (!status.ok()) {
      std::fprintf(stderr, "%s\n", status.ToString().c_str());
      return 1;
    }
  }
  std::printf("%s\n", (*writer)->path().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <run_dir> <num_steps>\n", argv[0]);
    return 1;
  }
  return Run(argv[1], std::atoi(argv[2]));
}
