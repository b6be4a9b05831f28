// Small whole-file helpers shared by the tools: existence, whole-file reads, atomic whole-file writes and
// mkdir -p. Errors name the path.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace hybridmoe {

bool Exists(const std::string& path);
std::string ReadFile(const std::string& path);  // empty when missing
// Writes path.tmp, then renames it over path.
absl::Status WriteFile(const std::string& path, const std::string& text);
absl::Status MakeDirs(const std::string& path);  // mkdir -p

}  // namespace hybridmoe
