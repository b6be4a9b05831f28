#include "core/metrics.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace hybridmoe {

JsonRecord& JsonRecord::Add(const std::string& key, double value) {
  fields_[key] = value;  // non-finite values are dumped as null
  return *this;
}
JsonRecord& JsonRecord::Add(const std::string& key, int64_t value) {
  fields_[key] = value;
  return *this;
}
JsonRecord& JsonRecord::Add(const std::string& key, const std::string& value) {
  fields_[key] = value;
  return *this;
}
JsonRecord& JsonRecord::Add(const std::string& key, bool value) {
  fields_[key] = value;
  return *this;
}

std::string JsonRecord::ToString() const {
  std::string out = "{";
  bool first = true;
  for (const auto& [key, value] : fields_.items()) {
    absl::StrAppend(&out, first ? "" : ", ", nlohmann::json(key).dump(), ": ", value.dump());
    first = false;
  }
  return out + "}";
}

absl::StatusOr<std::unique_ptr<MetricsWriter>> MetricsWriter::Open(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "a");
  if (f == nullptr) return absl::PermissionDeniedError(absl::StrCat("cannot open ", path, " for appending"));
  auto w = std::make_unique<MetricsWriter>();
  w->file_ = f;
  w->path_ = path;
  return w;
}

MetricsWriter::~MetricsWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

absl::Status MetricsWriter::Write(const JsonRecord& record) {
  const std::string line = record.ToString() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    return absl::DataLossError(absl::StrCat(path_, ": cannot append a metrics record (", std::strerror(errno), ")"));
  }
  return absl::OkStatus();
}

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

std::string FormatCount(double v) {
  if (v >= 1e9) return absl::StrFormat("%.2fG", v / 1e9);
  if (v >= 1e6) return absl::StrFormat("%.2fM", v / 1e6);
  if (v >= 1e3) return absl::StrFormat("%.1fk", v / 1e3);
  return absl::StrFormat("%.0f", v);
}

}  // namespace hybridmoe
