// Process helpers of tools/compare_norms (its file helpers are core/files.h): the run-directory probe for a
// finished variant, and running one child process (a variant's `train`) with its output appended to a log
// file.
//
// Child lifetime: the child dies with its parent (PR_SET_PDEATHSIG SIGKILL), and after
// InstallSignalForwarding() a SIGINT/SIGTERM to the parent first sends SIGTERM to the running child, so an
// interrupted sweep leaves no training process behind. Checkpoints are atomic (models/checkpoint.h), so
// either way the child's run directory stays resumable.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/files.h"  // Exists, ReadFile, WriteFile, MakeDirs

namespace hybridmoe {

// Whether run_dir holds a complete checkpoint (checkpoints/step_N with its MANIFEST.json, which is written
// last) with N >= steps.
bool HasFinalCheckpoint(const std::string& run_dir, int64_t steps);

// Runs argv (argv[0] looked up on PATH) with `env` ("NAME=VALUE") added, stdout and stderr appended to
// log_path; returns its exit code, or 128 + the signal that killed it.
absl::StatusOr<int> RunChild(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                             const std::string& log_path);
void InstallSignalForwarding();

// The last line of `text` that contains `needle` (the last non-empty line when needle is empty).
std::string LastLine(const std::string& text, const std::string& needle);

// The directory of the running executable (/proc/self/exe).
std::string SelfDir();

// Seconds on a monotonic clock.
double Now();

}  // namespace hybridmoe
