// Run logs: metrics.jsonl (one JSON object per line, appended and flushed per record) and the
// human-readable progress line. Numbers are written in their shortest exact form (they read back as the
// same double); non-finite numbers are written as null (JSON has no NaN).
#pragma once

#include <cstdio>
#include <string>
#include <utility>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"

namespace hybridmoe {

// An ordered JSON object of scalars, built field by field.
class JsonRecord {
 public:
  JsonRecord& Add(const std::string& key, double value);
  JsonRecord& Add(const std::string& key, int64_t value);
  JsonRecord& Add(const std::string& key, int value) { return Add(key, static_cast<int64_t>(value)); }
  JsonRecord& Add(const std::string& key, const std::string& value);
  JsonRecord& Add(const std::string& key, const char* value) { return Add(key, std::string(value)); }
  JsonRecord& Add(const std::string& key, bool value);
  std::string ToString() const;

 private:
  std::vector<std::pair<std::string, std::string>> fields_;  // key -> encoded value
};

std::string JsonEscape(const std::string& s);

class MetricsWriter {
 public:
  // Opens `path` for appending (creating it).
  static absl::StatusOr<std::unique_ptr<MetricsWriter>> Open(const std::string& path);
  ~MetricsWriter();
  void Write(const JsonRecord& record);

 private:
  FILE* file_ = nullptr;
};

// "1h02m", "3m05s", "12s".
std::string FormatDuration(double seconds);
// "12.3k", "1.20M".
std::string FormatCount(double value);

}  // namespace hybridmoe
