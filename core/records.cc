#include "core/records.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include <google/protobuf/message_lite.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"

namespace hybridmoe {
namespace {

enum class VarintResult { kOk, kTruncated, kMalformed };

VarintResult ReadVarint(std::string_view bytes, size_t offset, uint64_t* value, size_t* length) {
  *value = 0;
  for (size_t i = 0; i < 10; ++i) {
    if (offset + i >= bytes.size()) return VarintResult::kTruncated;
    const uint64_t byte = static_cast<unsigned char>(bytes[offset + i]);
    // The tenth byte may only hold the top bit of a 64-bit value.
    if (i == 9 && byte > 1) return VarintResult::kMalformed;
    *value |= (byte & 0x7F) << (7 * i);
    if ((byte & 0x80) == 0) {
      *length = i + 1;
      return VarintResult::kOk;
    }
  }
  return VarintResult::kMalformed;
}

std::string Plural(size_t n, const char* word) { return absl::StrFormat("%d %s%s", n, word, n == 1 ? "" : "s"); }

}  // namespace

void AppendDelimited(std::string_view payload, std::string* out) {
  uint64_t n = payload.size();
  while (n >= 0x80) {
    out->push_back(static_cast<char>((n & 0x7F) | 0x80));
    n >>= 7;
  }
  out->push_back(static_cast<char>(n));
  out->append(payload.data(), payload.size());
}

RecordFile SplitDelimited(std::string_view bytes, std::string_view source) {
  RecordFile file;
  file.file_bytes = bytes.size();
  size_t offset = 0;
  while (offset < bytes.size()) {
    uint64_t length = 0;
    size_t prefix = 0;
    const VarintResult r = ReadVarint(bytes, offset, &length, &prefix);
    std::string reason;
    if (r == VarintResult::kMalformed) {
      reason = "length varint is malformed";
    } else if (r == VarintResult::kOk && length > kMaxRecordBytes) {
      reason = absl::StrFormat("declared length %d exceeds the limit of %d bytes", length, kMaxRecordBytes);
    }
    if (!reason.empty()) {
      file.invalid = true;
      file.problem = absl::StrFormat("%s: invalid record at byte %d: %s; %s before it", source, offset, reason,
                                     Plural(file.records.size(), "valid record"));
      break;
    }
    const size_t present = r == VarintResult::kOk ? bytes.size() - offset - prefix : 0;
    if (r == VarintResult::kTruncated || length > present) {
      file.truncated = true;
      file.problem = absl::StrFormat("%s: %s, then a truncated record at byte %d", source,
                                     Plural(file.records.size(), "valid record"), offset);
      if (r == VarintResult::kOk) {
        absl::StrAppendFormat(&file.problem, " (declares %d bytes, %d present)", length, present);
      }
      break;
    }
    file.offsets.push_back(offset);
    file.records.emplace_back(bytes.substr(offset + prefix, length));
    offset += prefix + length;
    file.valid_bytes = offset;
  }
  return file;
}

absl::StatusOr<RecordFile> ReadRecordFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrFormat("record file %s cannot be opened: %s", path, std::strerror(errno)));
  }
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return SplitDelimited(bytes, path);
}

void MarkInvalid(RecordFile* file, size_t index, std::string_view source, std::string_view reason) {
  if (index >= file->records.size()) return;
  const size_t offset = file->offsets[index];
  file->records.resize(index);
  file->offsets.resize(index);
  file->valid_bytes = offset;
  file->truncated = false;
  file->invalid = true;
  file->problem = absl::StrFormat("%s: invalid record at byte %d: %s; %s before it", source, offset, reason,
                                  Plural(index, "valid record"));
}

absl::StatusOr<std::unique_ptr<RecordWriter>> RecordWriter::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    return absl::Status(absl::ErrnoToStatusCode(err),
                        absl::StrFormat("cannot open record file %s for appending: %s", path, std::strerror(err)));
  }
  std::unique_ptr<RecordWriter> writer(new RecordWriter(path, fd));
  ASSIGN_OR_RETURN(RecordFile existing, ReadRecordFile(path));
  if (existing.invalid) {
    return absl::DataLossError(absl::StrCat(existing.problem, "; move the file away to start a new one"));
  }
  if (existing.truncated && ftruncate(fd, static_cast<off_t>(existing.valid_bytes)) != 0) {
    return absl::DataLossError(absl::StrFormat("%s; cutting it back to %d bytes failed: %s", existing.problem,
                                               existing.valid_bytes, std::strerror(errno)));
  }
  return writer;
}

RecordWriter::~RecordWriter() {
  if (fd_ >= 0) close(fd_);
}

absl::Status RecordWriter::Write(std::string_view payload) {
  std::string bytes;
  AppendDelimited(payload, &bytes);
  return WriteBytes(bytes);
}

absl::Status RecordWriter::Write(const google::protobuf::MessageLite& message) {
  return Write(message.SerializeAsString());
}

absl::Status RecordWriter::WriteAll(const std::vector<std::string>& payloads) {
  std::string bytes;
  for (const std::string& p : payloads) AppendDelimited(p, &bytes);
  return WriteBytes(bytes);
}

absl::Status RecordWriter::WriteBytes(const std::string& bytes) {
  if (!failure_.ok()) return failure_;
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = write(fd_, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      failure_ = absl::DataLossError(absl::StrFormat("writing record file %s failed after %d of %d bytes: %s", path_,
                                                     done, bytes.size(), std::strerror(errno)));
      break;
    }
    done += static_cast<size_t>(n);
  }
  return failure_;
}

absl::Status RecordWriter::Sync() {
  if (!failure_.ok()) return failure_;
  if (fsync(fd_) != 0) {
    failure_ = absl::DataLossError(absl::StrFormat("syncing record file %s failed: %s", path_, std::strerror(errno)));
  }
  return failure_;
}

}  // namespace hybridmoe
