// Tests core/crc32c.* and core/tensorboard.*: CRC-32C against published vectors (RFC 3720 B.4), masking,
// record framing and Event encoding against golden bytes produced by TensorBoard's own Python event_pb2 and
// masked_crc32c, writer/reader round trip, truncated and corrupt files, and a writer failing mid-run.
#include "core/tensorboard.h"

#include <signal.h>
#include <sys/resource.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <vector>

#include "core/crc32c.h"
#include "gtest/gtest.h"

namespace hybridmoe {
namespace {

namespace fs = std::filesystem;

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string FreshDir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / name;
  fs::remove_all(dir);
  return dir.string();
}

TEST(Crc32cTest, PublishedVectors) {
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string up, down;
  for (int i = 0; i < 32; ++i) {
    up.push_back(static_cast<char>(i));
    down.push_back(static_cast<char>(31 - i));
  }
  EXPECT_EQ(Crc32c(up), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(down), 0x113FDB5Cu);
}

TEST(Crc32cTest, ExtendEqualsWholeAtEverySplit) {
  const std::string text = "The quick brown fox jumps over the lazy dog";
  const uint32_t whole = Crc32c(text);
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    EXPECT_EQ(Crc32cExtend(Crc32c(text.substr(0, cut)), text.data() + cut, text.size() - cut), whole) << cut;
  }
}

TEST(Crc32cTest, MaskMatchesTfRecordDefinition) {
  // Golden values from tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c.
  EXPECT_EQ(MaskCrc32c(Crc32c("123456789")), 0xC78AB0E5u);
  EXPECT_EQ(MaskCrc32c(Crc32c("")), 0xA282EAD8u);
  for (uint32_t crc : {0u, 1u, 0x80000000u, 0xE3069283u, 0xFFFFFFFFu}) {
    const uint64_t rotated = ((static_cast<uint64_t>(crc) >> 15) | (static_cast<uint64_t>(crc) << 17)) & 0xFFFFFFFFu;
    EXPECT_EQ(MaskCrc32c(crc), static_cast<uint32_t>((rotated + 0xa282ead8u) & 0xFFFFFFFFu));
    EXPECT_EQ(UnmaskCrc32c(MaskCrc32c(crc)), crc);
  }
}

TEST(RecordTest, FramingMatchesGoldenBytes) {
  std::string out;
  AppendRecord("hello", &out);
  EXPECT_EQ(out, FromHex("0500000000000000eab2043e68656c6c6fbb1f1c19"));
  ASSERT_EQ(out.size(), 5 + kRecordOverheadBytes);
  AppendRecord("", &out);
  absl::StatusOr<RecordSplit> split = SplitRecords(out, "mem");
  ASSERT_TRUE(split.ok()) << split.status();
  EXPECT_EQ(split->records, (std::vector<std::string>{"hello", ""}));
  EXPECT_FALSE(split->truncated);
  EXPECT_EQ(split->valid_bytes, out.size());
}

// Three events serialized by TensorBoard's event_pb2 (wall times 1700000000.25 / .5 / 2.0; the third at step
// 2^40), framed by Python: our reader must decode TensorFlow's own encoding.
constexpr char kGoldenEventFileHex[] =
    "1800000000000000a37f4b220900001040fc54d9411a0d627261696e2e4576656e743a32338d2fe931000000000000009d8383e9"
    "0900006040fc54d94110032a240a110a0a747261696e2f6c6f737315000020400a0f0a08747261696e2f6c7215000000005ca6"
    "47da2300000000000000b09f77430900008040fc54d941108080808080202a110a0f0a0876616c2f6c6f7373150000a0bfe87b"
    "bc6e";

TEST(ReadEventsTest, ReadsTensorFlowEncodedGoldenFile) {
  const std::string dir = FreshDir("golden");
  fs::create_directories(dir);
  const std::string path = dir + "/events.out.tfevents.golden";
  WriteBytes(path, FromHex(kGoldenEventFileHex));
  absl::StatusOr<EventFileContents> got = ReadEvents(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->file_version, "brain.Event:2");
  EXPECT_FALSE(got->truncated);
  ASSERT_EQ(got->scalars.size(), 3u);
  EXPECT_EQ(got->scalars[0].tag, "train/loss");
  EXPECT_EQ(got->scalars[0].step, 3);
  EXPECT_EQ(got->scalars[0].value, 2.5f);
  EXPECT_EQ(got->scalars[0].wall_time, 1700000001.5);
  EXPECT_EQ(got->scalars[1].tag, "train/lr");
  EXPECT_EQ(got->scalars[1].value, 0.0f);  // zero must still be present (oneof presence)
  EXPECT_EQ(got->scalars[2].tag, "val/loss");
  EXPECT_EQ(got->scalars[2].step, int64_t{1} << 40);
  EXPECT_EQ(got->scalars[2].value, -1.25f);
}

TEST(TensorBoardWriterTest, RoundTripAndFileLayout) {
  const std::string dir = FreshDir("roundtrip/nested");  // parents created by Open
  absl::StatusOr<std::unique_ptr<TensorBoardWriter>> writer = TensorBoardWriter::Open(dir, "rank0");
  ASSERT_TRUE(writer.ok()) << writer.status();
  const std::string path = (*writer)->path();
  EXPECT_TRUE(
      std::regex_match(fs::path(path).filename().string(), std::regex(R"(events\.out\.tfevents\.\d{10}\..+\.rank0)")))
      << path;
  EXPECT_EQ(fs::path(path).parent_path(), fs::path(dir));

  ASSERT_TRUE((*writer)->AddScalars(1, {{"train/loss", 10.5}, {"train/lr", 0.0}}, 1000.5).ok());
  ASSERT_TRUE((*writer)->AddScalar("val/loss", int64_t{1} << 40, -3.0e-7, 1001.0).ok());
  ASSERT_TRUE((*writer)->AddScalar("train/grad_norm", 2, std::nan(""), 1002.0).ok());
  const double before = UnixSecondsNow();
  ASSERT_TRUE((*writer)->AddScalar("train/tokens_per_s", 3, 123456.789).ok());  // default wall_time = now
  const double after = UnixSecondsNow();

  // Each Add* is on disk before it returns: read while the writer is still open, before Flush().
  absl::StatusOr<EventFileContents> got = ReadEvents(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->file_version, "brain.Event:2");
  EXPECT_FALSE(got->truncated);
  ASSERT_EQ(got->scalars.size(), 5u);
  EXPECT_EQ(got->scalars[0].tag, "train/loss");
  EXPECT_EQ(got->scalars[0].step, 1);
  EXPECT_EQ(got->scalars[0].value, 10.5f);
  EXPECT_EQ(got->scalars[0].wall_time, 1000.5);
  EXPECT_EQ(got->scalars[1].tag, "train/lr");
  EXPECT_EQ(got->scalars[1].step, 1);
  EXPECT_EQ(got->scalars[1].value, 0.0f);
  EXPECT_EQ(got->scalars[2].step, int64_t{1} << 40);
  EXPECT_EQ(got->scalars[2].value, static_cast<float>(-3.0e-7));
  EXPECT_TRUE(std::isnan(got->scalars[3].value));
  EXPECT_EQ(got->scalars[4].value, static_cast<float>(123456.789));
  EXPECT_GE(got->scalars[4].wall_time, before);
  EXPECT_LE(got->scalars[4].wall_time, after);
  EXPECT_TRUE((*writer)->Flush().ok());

  // Framing: the file is exactly the records plus 16 bytes of framing each (1 version + 4 summary events).
  const std::string bytes = ReadBytes(path);
  absl::StatusOr<RecordSplit> split = SplitRecords(bytes, path);
  ASSERT_TRUE(split.ok()) << split.status();
  ASSERT_EQ(split->records.size(), 5u);
  size_t total = 0;
  for (const std::string& r : split->records) total += r.size() + kRecordOverheadBytes;
  EXPECT_EQ(total, bytes.size());
  uint64_t first_length = 0;
  for (int i = 0; i < 8; ++i) first_length |= uint64_t{static_cast<unsigned char>(bytes[i])} << (8 * i);
  EXPECT_EQ(first_length, split->records[0].size());
  // train/lr = 0.0 is on the wire (field 2, fixed32 0): TensorBoard drops a value without simple_value.
  EXPECT_NE(split->records[1].find(std::string("\x15\0\0\0\0", 5)), std::string::npos);
}

TEST(TensorBoardWriterTest, TruncatedFinalRecordKeepsValidPrefix) {
  const std::string dir = FreshDir("truncated");
  auto writer = TensorBoardWriter::Open(dir);
  ASSERT_TRUE(writer.ok()) << writer.status();
  for (int step = 1; step <= 3; ++step) ASSERT_TRUE((*writer)->AddScalar("train/loss", step, 1.0 / step).ok());
  const std::string path = (*writer)->path();
  writer->reset();
  const std::string full = ReadBytes(path);
  const RecordSplit split = *SplitRecords(full, path);
  const size_t last_record_bytes = split.records.back().size() + kRecordOverheadBytes;

  // Cut inside the length, the length CRC, the data and the data CRC of the last record.
  for (size_t cut : {size_t{1}, size_t{4}, size_t{8}, last_record_bytes - 10, last_record_bytes - 1}) {
    const std::string cut_path = dir + "/cut";
    WriteBytes(cut_path, full.substr(0, full.size() - cut));
    absl::StatusOr<EventFileContents> got = ReadEvents(cut_path);
    ASSERT_TRUE(got.ok()) << "cut " << cut << ": " << got.status();
    EXPECT_TRUE(got->truncated) << cut;
    ASSERT_EQ(got->scalars.size(), 2u) << cut;
    EXPECT_EQ(got->scalars[1].step, 2);
    EXPECT_EQ(got->scalars[1].value, 0.5f);
  }
  // Cutting exactly at a record boundary is a complete (shorter) file, not a truncated one.
  WriteBytes(dir + "/cut", full.substr(0, full.size() - last_record_bytes));
  absl::StatusOr<EventFileContents> boundary = ReadEvents(dir + "/cut");
  ASSERT_TRUE(boundary.ok());
  EXPECT_FALSE(boundary->truncated);
  EXPECT_EQ(boundary->scalars.size(), 2u);
}

TEST(TensorBoardWriterTest, CorruptBytesAreDataLoss) {
  const std::string dir = FreshDir("corrupt");
  auto writer = TensorBoardWriter::Open(dir);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->AddScalar("train/loss", 1, 2.0).ok());
  const std::string path = (*writer)->path();
  writer->reset();
  const std::string full = ReadBytes(path);
  const size_t second_record = SplitRecords(full, path)->records[0].size() + kRecordOverheadBytes;
  struct Case {
    size_t offset;
    const char* what;
  };
  for (const Case& c : {Case{second_record + 0, "length CRC"}, Case{second_record + 9, "length CRC"},
                        Case{second_record + 14, "data CRC"}, Case{full.size() - 1, "data CRC"}}) {
    std::string bad = full;
    bad[c.offset] = static_cast<char>(bad[c.offset] ^ 0x20);
    WriteBytes(dir + "/bad", bad);
    absl::StatusOr<EventFileContents> got = ReadEvents(dir + "/bad");
    ASSERT_FALSE(got.ok()) << "flip at " << c.offset;
    EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(got.status().message().find(c.what), std::string::npos) << got.status();
    EXPECT_NE(got.status().message().find("record 1"), std::string::npos) << got.status();
  }
}

TEST(TensorBoardWriterTest, OpenErrors) {
  const std::string dir = FreshDir("open_errors");
  auto bad_suffix = TensorBoardWriter::Open(dir, "a/b");
  EXPECT_EQ(bad_suffix.status().code(), absl::StatusCode::kInvalidArgument);

  fs::create_directories(dir);
  WriteBytes(dir + "/plain_file", "x");
  auto under_file = TensorBoardWriter::Open(dir + "/plain_file/run");
  ASSERT_FALSE(under_file.ok());
  EXPECT_NE(under_file.status().message().find("plain_file"), std::string::npos) << under_file.status();

  // Two writers with the same suffix: same second -> AlreadyExists (never clobber), else distinct files.
  auto first = TensorBoardWriter::Open(dir, "same");
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = TensorBoardWriter::Open(dir, "same");
  if (second.ok()) {
    EXPECT_NE((*second)->path(), (*first)->path());
  } else {
    EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists) << second.status();
  }
  EXPECT_EQ(ReadEvents(dir + "/missing").status().code(), absl::StatusCode::kNotFound);
}

TEST(TensorBoardWriterTest, WriteFailureIsStickyAndLosesNothingAcknowledged) {
  const std::string dir = FreshDir("full_disk");
  auto writer = TensorBoardWriter::Open(dir);
  ASSERT_TRUE(writer.ok()) << writer.status();
  const std::string path = (*writer)->path();
  const uintmax_t start_size = fs::file_size(path);

  // Simulate a full disk: cap the process's file size a little beyond the current one (EFBIG, not SIGXFSZ).
  struct sigaction ignore = {}, old_action = {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGXFSZ, &ignore, &old_action), 0);
  struct rlimit old_limit = {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct rlimit limit = old_limit;
  limit.rlim_cur = start_size + 200;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  int acknowledged = 0;
  absl::Status status;
  for (int step = 1; step <= 100 && status.ok(); ++step) {
    status = (*writer)->AddScalars(step, {{"train/loss", 1.0 * step}, {"train/lr", 0.5}});
    if (status.ok()) acknowledged = step;
  }
  const absl::Status again = (*writer)->AddScalar("train/loss", 1000, 1.0);
  const absl::Status flush = (*writer)->Flush();
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  ASSERT_EQ(sigaction(SIGXFSZ, &old_action, nullptr), 0);

  ASSERT_FALSE(status.ok()) << "the size cap never bit";
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(status.message().find(path), std::string::npos) << status;
  EXPECT_EQ(again, status);  // sticky
  EXPECT_EQ(flush, status);
  EXPECT_GT(acknowledged, 0);

  absl::StatusOr<EventFileContents> got = ReadEvents(path);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->scalars.size(), 2u * acknowledged);  // every acknowledged step survives, nothing more
  EXPECT_EQ(got->scalars.back().step, acknowledged);
}

}  // namespace
}  // namespace hybridmoe
