// Run logs: metrics.jsonl (one JSON object per line, appended and flushed per record) and the
// human-readable progress line. Records are encoded by nlohmann-json: numbers in a form that reads back as
// the same double, non-finite numbers as null (JSON has no NaN); fields are separated by ", " and keys
// from values by ": " so that a line also reads well to a person (and greps the same as always).
#pragma once

#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

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
  const nlohmann::ordered_json& json() const { return fields_; }

 private:
  nlohmann::ordered_json fields_ = nlohmann::ordered_json::object();
};

class MetricsWriter {
 public:
  // Opens `path` for appending (creating it).
  static absl::StatusOr<std::unique_ptr<MetricsWriter>> Open(const std::string& path);
  ~MetricsWriter();
  // Appends one line and flushes it; an error (disk full, I/O error) names the file.
  absl::Status Write(const JsonRecord& record);

 private:
  FILE* file_ = nullptr;
  std::string path_;
};

// "1h02m", "3m05s", "12s".
std::string FormatDuration(double seconds);
// "12.3k", "1.20M".
std::string FormatCount(double value);

}  // namespace hybridmoe
