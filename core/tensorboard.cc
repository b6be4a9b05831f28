#include "core/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/crc32c.h"
#include "core/files.h"
#include "core/status.h"
#include "proto/tensorboard.pb.h"

namespace hybridmoe {
namespace {

constexpr char kFileVersion[] = "brain.Event:2";

void PutLittleEndian(uint64_t value, int num_bytes, std::string* out) {
  for (int i = 0; i < num_bytes; ++i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xFFu));
}

uint64_t GetLittleEndian(std::string_view bytes, size_t offset, int num_bytes) {
  uint64_t value = 0;
  for (int i = 0; i < num_bytes; ++i) {
    value |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[offset + i])) << (8 * i);
  }
  return value;
}

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

}  // namespace

double UnixSecondsNow() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

void AppendRecord(std::string_view data, std::string* out) {
  std::string header;
  PutLittleEndian(data.size(), 8, &header);
  out->append(header);
  PutLittleEndian(MaskCrc32c(Crc32c(header)), 4, out);
  out->append(data.data(), data.size());
  PutLittleEndian(MaskCrc32c(Crc32c(data)), 4, out);
}

absl::StatusOr<RecordSplit> SplitRecords(std::string_view bytes, std::string_view source) {
  RecordSplit split;
  size_t offset = 0;
  while (offset < bytes.size()) {
    const size_t left = bytes.size() - offset;
    const size_t index = split.records.size();
    if (left < 12) {
      split.truncated = true;
      break;
    }
    const uint64_t length = GetLittleEndian(bytes, offset, 8);
    const uint32_t stored_length_crc = static_cast<uint32_t>(GetLittleEndian(bytes, offset + 8, 4));
    const uint32_t length_crc = MaskCrc32c(Crc32c(bytes.substr(offset, 8)));
    if (stored_length_crc != length_crc) {
      return absl::DataLossError(
          absl::StrFormat("%s: record %d at byte %d: length CRC 0x%08x does not match computed 0x%08x (corrupt file)",
                          source, index, offset, stored_length_crc, length_crc));
    }
    if (length > left - 12 || left - 12 - length < 4) {
      split.truncated = true;
      break;
    }
    const std::string_view data = bytes.substr(offset + 12, length);
    const uint32_t stored_data_crc = static_cast<uint32_t>(GetLittleEndian(bytes, offset + 12 + length, 4));
    const uint32_t data_crc = MaskCrc32c(Crc32c(data));
    if (stored_data_crc != data_crc) {
      return absl::DataLossError(
          absl::StrFormat("%s: record %d at byte %d: data CRC 0x%08x does not match computed 0x%08x (corrupt file)",
                          source, index, offset, stored_data_crc, data_crc));
    }
    split.records.emplace_back(data);
    offset += kRecordOverheadBytes + length;
    split.valid_bytes = offset;
  }
  return split;
}

absl::StatusOr<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Open(const std::string& run_dir,
                                                                           const std::string& file_suffix) {
  if (file_suffix.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensorboard file_suffix '%s' contains '/'; use a plain name such as 'rank0'", file_suffix));
  }
  if (absl::Status s = MakeDirs(run_dir); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("tensorboard: ", s.message()));
  }
  const int64_t now_s = static_cast<int64_t>(UnixSecondsNow());
  std::string name = absl::StrFormat("events.out.tfevents.%d.%s", now_s, HostName());
  if (!file_suffix.empty()) name += (file_suffix[0] == '.' ? "" : ".") + file_suffix;
  const std::string path = (std::filesystem::path(run_dir) / name).string();

  // O_EXCL: never append to or clobber an existing event file (TensorBoard would merge the two runs).
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    if (err == EEXIST) {
      return absl::AlreadyExistsError(absl::StrFormat(
          "tensorboard event file %s already exists; give each writer in one directory its own file_suffix", path));
    }
    return absl::Status(absl::ErrnoToStatusCode(err),
                        absl::StrFormat("tensorboard: cannot create event file %s: %s", path, std::strerror(err)));
  }
  std::unique_ptr<TensorBoardWriter> writer(new TensorBoardWriter(path, fd));
  tensorboard::Event event;
  event.set_wall_time(UnixSecondsNow());
  event.set_file_version(kFileVersion);
  RETURN_IF_ERROR(writer->WriteEvent(event.SerializeAsString()));
  return writer;
}

TensorBoardWriter::~TensorBoardWriter() {
  if (fd_ >= 0) close(fd_);
}

absl::Status TensorBoardWriter::AddScalar(const std::string& tag, int64_t step, double value, double wall_time) {
  return AddScalars(step, {{tag, value}}, wall_time);
}

absl::Status TensorBoardWriter::AddScalars(int64_t step, const std::vector<std::pair<std::string, double>>& tag_values,
                                           double wall_time) {
  tensorboard::Event event;
  event.set_wall_time(wall_time);
  event.set_step(step);
  tensorboard::Summary* summary = event.mutable_summary();
  for (const auto& [tag, value] : tag_values) {
    if (tag.empty()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tensorboard scalar at step %d has an empty tag; use e.g. 'train/loss'", step));
    }
    tensorboard::Summary::Value* v = summary->add_value();
    v->set_tag(tag);
    v->set_simple_value(static_cast<float>(value));
  }
  return WriteEvent(event.SerializeAsString());
}

absl::Status TensorBoardWriter::WriteEvent(const std::string& serialized_event) {
  if (!failure_.ok()) return failure_;
  std::string record;
  AppendRecord(serialized_event, &record);
  // Unbuffered write(2): once it returns, the record belongs to the OS, and after a failure no hidden
  // buffer can complete the record later.
  size_t done = 0;
  while (done < record.size()) {
    const ssize_t n = write(fd_, record.data() + done, record.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      failure_ = absl::DataLossError(absl::StrFormat("tensorboard: writing %s failed after %d of %d bytes: %s", path_,
                                                     done, record.size(), std::strerror(errno)));
      break;
    }
    done += static_cast<size_t>(n);
  }
  return failure_;
}

absl::Status TensorBoardWriter::Flush() {
  if (!failure_.ok()) return failure_;
  if (fsync(fd_) != 0) {
    failure_ = absl::DataLossError(absl::StrFormat("tensorboard: flushing %s failed: %s", path_, std::strerror(errno)));
  }
  return failure_;
}

absl::StatusOr<EventFileContents> ReadEvents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("tensorboard event file %s cannot be opened", path));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();

  absl::StatusOr<RecordSplit> split = SplitRecords(bytes, path);
  if (!split.ok()) return split.status();
  EventFileContents contents;
  contents.truncated = split->truncated;
  for (size_t i = 0; i < split->records.size(); ++i) {
    tensorboard::Event event;
    if (!event.ParseFromString(split->records[i])) {
      return absl::DataLossError(
          absl::StrFormat("%s: record %d passed its CRC but is not a valid Event message", path, i));
    }
    if (event.what_case() == tensorboard::Event::kFileVersion && contents.file_version.empty()) {
      contents.file_version = event.file_version();
    }
    for (const tensorboard::Summary::Value& v : event.summary().value()) {
      if (v.value_case() != tensorboard::Summary::Value::kSimpleValue) continue;
      contents.scalars.push_back({event.step(), v.tag(), v.simple_value(), event.wall_time()});
    }
  }
  return contents;
}

}  // namespace hybridmoe
