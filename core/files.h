// Small file helpers shared across the tree: existence and kind, whole-file reads, atomic whole-file writes
// and mkdir -p. Errors name the path.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace hybridmoe {

bool Exists(const std::string& path);
bool IsFile(const std::string& path);       // a regular file (following symlinks)
bool IsDirectory(const std::string& path);  // a directory (following symlinks)
std::string ReadFile(const std::string& path);  // empty when missing
// Writes path.tmp, then renames it over path.
absl::Status WriteFile(const std::string& path, const std::string& text);
absl::Status MakeDirs(const std::string& path);  // mkdir -p

}  // namespace hybridmoe
