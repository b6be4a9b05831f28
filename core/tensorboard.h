// TensorBoard event files written natively, in TensorBoard's own format, so that `tensorboard --logdir`
// reads a run with no Python in the training loop.
//
// File: <run_dir>/events.out.tfevents.<unix_seconds>.<hostname>[.<suffix>], a sequence of records:
//   uint64 length (little-endian) | uint32 MaskCrc32c(crc32c(length bytes)) | data | uint32
//   MaskCrc32c(crc32c(data))
// Each record's data is a serialized hybridmoe.tensorboard.Event (proto/tensorboard.proto, wire-compatible
// with tensorflow.Event). The first record carries file_version "brain.Event:2"; every later one a Summary
// of scalar values (float32 simple_value) at one step.
//
// Durability: every Add* call writes its record and hands it to the OS before returning, so a crash of the
// process loses nothing already added; Flush() also fsyncs (survives a machine crash). A crash in the
// middle of a write leaves a truncated final record, which ReadEvents reports as such and TensorBoard
// skips. After a failed write the writer stays failed and returns the same error from every call.
// Not thread-safe: one writer per file, typically on rank 0 only.
//
// Trainer use:
//   ASSIGN_OR_RETURN(auto tb, TensorBoardWriter::Open(run_dir));
//   RETURN_IF_ERROR(tb->AddScalars(step, {{"train/loss", loss}, {"train/lr", lr}}));
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hybridmoe {

// Seconds since the Unix epoch, with sub-second resolution (Event.wall_time).
double UnixSecondsNow();

// ---- TFRecord framing ----------------------------------------------------------------------------------

// Bytes of framing around each record's data: 8 (length) + 4 (length CRC) + 4 (data CRC).
constexpr size_t kRecordOverheadBytes = 16;

// Appends one framed record holding `data` to *out.
void AppendRecord(std::string_view data, std::string* out);

struct RecordSplit {
  std::vector<std::string> records;  // data of every complete, CRC-checked record, in file order
  bool truncated = false;            // the bytes after the last complete record are a cut-off record
  size_t valid_bytes = 0;            // bytes covered by `records`
};

// Splits `bytes` into records. A cut-off final record is not an error (see RecordSplit::truncated); a CRC
// mismatch is DataLoss naming `source`, the record index and byte offset.
absl::StatusOr<RecordSplit> SplitRecords(std::string_view bytes, std::string_view source);

// ---- Writer --------------------------------------------------------------------------------------------

class TensorBoardWriter {
 public:
  // Creates run_dir (and parents) if needed and a new event file in it; `file_suffix` (optional, e.g.
  // "rank0") is appended after a '.'. Fails if that file already exists or cannot be written.
  static absl::StatusOr<std::unique_ptr<TensorBoardWriter>> Open(const std::string& run_dir,
                                                                 const std::string& file_suffix = "");
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One scalar at `step` (stored as float32; NaN and Inf are kept as they are).
  absl::Status AddScalar(const std::string& tag, int64_t step, double value, double wall_time = UnixSecondsNow());
  // Several scalars at one step in a single record: {{"train/loss", 2.5}, {"train/lr", 3e-4}}.
  absl::Status AddScalars(int64_t step, const std::vector<std::pair<std::string, double>>& tag_values,
                          double wall_time = UnixSecondsNow());
  // fsync: makes everything added so far survive a machine crash.
  absl::Status Flush();

  const std::string& path() const { return path_; }

 private:
  TensorBoardWriter(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  absl::Status WriteEvent(const std::string& serialized_event);

  std::string path_;
  int fd_ = -1;
  absl::Status failure_;  // first write error; sticky
};

// ---- Reader (tests and tools) --------------------------------------------------------------------------

struct ScalarPoint {
  int64_t step = 0;
  std::string tag;
  float value = 0.0f;
  double wall_time = 0.0;
};

struct EventFileContents {
  std::string file_version;          // from the first record; empty if the file has none
  std::vector<ScalarPoint> scalars;  // every simple_value, in file order
  bool truncated = false;            // the final record was cut off; `scalars` holds the valid prefix
};

// Reads an event file written by TensorBoardWriter (or by TensorFlow: non-scalar values are skipped).
// NotFound if it cannot be opened; DataLoss on a CRC mismatch or an unparsable Event.
absl::StatusOr<EventFileContents> ReadEvents(const std::string& path);

}  // namespace hybridmoe
