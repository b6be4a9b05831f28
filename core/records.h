// Length-delimited record files: each record is a varint length (protobuf's base-128 encoding) followed by
// that many payload bytes, typically a serialized protobuf message. Used for router statistics
// (proto/router_stats.proto); readable by any protobuf "delimited" reader.
//
// Writing appends and hands each batch of records to the OS in one write(2) before returning, so a crash
// loses nothing already written and a reader never sees a record half-written by a live writer except at
// the end of the file. Opening a file whose last record was cut off (a writer killed mid-write) first cuts
// the file back to its last complete record, so that records appended afterwards stay readable.
//
// Reading returns the complete records only and never fails on content: a cut-off final record (a live
// run, or a copy taken mid-write) and garbage (a malformed or absurd length, a payload that does not
// parse) end the valid prefix, and `problem` says what and where, e.g.
//   "run/router_stats.pb: 12 valid records, then a truncated record at byte 3456 (declares 210 bytes, 87 present)"
//   "run/router_stats.pb: invalid record at byte 3456: length varint is malformed; 12 valid records before it"
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace google {
namespace protobuf {
class MessageLite;
}  // namespace protobuf
}  // namespace google

namespace hybridmoe {

// Records longer than this are treated as garbage (a corrupt length), not as a record still being written.
constexpr size_t kMaxRecordBytes = size_t{64} << 20;

// Appends varint(payload.size()) + payload to *out.
void AppendDelimited(std::string_view payload, std::string* out);

struct RecordFile {
  std::vector<std::string> records;  // payloads of the complete records, in file order
  std::vector<size_t> offsets;       // byte offset of each record's length prefix
  size_t valid_bytes = 0;            // bytes covered by `records`
  size_t file_bytes = 0;
  bool truncated = false;  // the bytes after the valid prefix are one cut-off record
  bool invalid = false;    // the bytes after the valid prefix are not a record
  std::string problem;     // one line naming the source, what is wrong and at which byte; empty when clean
};

// Splits `bytes` into records (see RecordFile); `source` names the bytes in `problem`.
RecordFile SplitDelimited(std::string_view bytes, std::string_view source);

// Reads and splits the file at `path`. NotFound if it cannot be opened; content problems are reported in
// RecordFile::problem, never as an error.
absl::StatusOr<RecordFile> ReadRecordFile(const std::string& path);

// Marks record `index` of `file` (and everything after it) invalid: drops it from the valid prefix and sets
// `problem` to "<source>: invalid record at byte X: <reason>; N valid records before it". For checks above
// the framing (a payload that does not parse, or parses to nonsense).
void MarkInvalid(RecordFile* file, size_t index, std::string_view source, std::string_view reason);

// Parses every record of `file` into `Message` (a protobuf type); the first one that does not parse is
// marked invalid (see MarkInvalid) and ends the list.
template <typename Message>
std::vector<Message> ParseRecords(RecordFile* file, std::string_view source) {
  std::vector<Message> messages;
  for (size_t i = 0; i < file->records.size(); ++i) {
    Message m;
    if (!m.ParseFromString(file->records[i])) {
      MarkInvalid(file, i, source, "payload is not a valid " + m.GetTypeName());
      break;
    }
    messages.push_back(std::move(m));
  }
  return messages;
}

class RecordWriter {
 public:
  // Opens `path` for appending, creating it. An existing file with a cut-off final record is cut back to
  // its valid prefix; one holding garbage is an error (appending would make the new records unreadable).
  static absl::StatusOr<std::unique_ptr<RecordWriter>> Open(const std::string& path);
  ~RecordWriter();
  RecordWriter(const RecordWriter&) = delete;
  RecordWriter& operator=(const RecordWriter&) = delete;

  absl::Status Write(std::string_view payload);
  absl::Status Write(const google::protobuf::MessageLite& message);
  // All of `payloads` in one write(2): a reader sees none or all of them (unless the process dies inside it).
  absl::Status WriteAll(const std::vector<std::string>& payloads);
  // fsync: what was written survives a machine crash too.
  absl::Status Sync();

  const std::string& path() const { return path_; }

 private:
  RecordWriter(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  absl::Status WriteBytes(const std::string& bytes);

  std::string path_;
  int fd_ = -1;
  absl::Status failure_;  // first write error; sticky
};

}  // namespace hybridmoe
