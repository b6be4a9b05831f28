// Tests core/records.*: varint framing against hand-encoded bytes, writer/reader round trip, a cut-off tail
// (inside the payload and inside the length), garbage (malformed and absurd lengths, unparsable payloads),
// and the writer repairing a cut-off tail / refusing to append after garbage.
#include "core/records.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "proto/router_stats.pb.h"

namespace hybridmoe {
namespace {

namespace fs = std::filesystem;

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string TempPath(const std::string& name) {
  const fs::path dir = fs::path(testing::TempDir()) / "records_test";
  fs::create_directories(dir);
  const fs::path p = dir / name;
  fs::remove(p);
  return p.string();
}

TEST(Records, VarintFramingMatchesHandEncoding) {
  std::string out;
  AppendDelimited("abc", &out);
  EXPECT_EQ(out, std::string("\x03"
                             "abc"));
  out.clear();
  AppendDelimited(std::string(300, 'x'), &out);  // 300 = 0b10_0101100 -> 0xAC 0x02
  ASSERT_EQ(out.size(), 302u);
  EXPECT_EQ(static_cast<unsigned char>(out[0]), 0xAC);
  EXPECT_EQ(static_cast<unsigned char>(out[1]), 0x02);
  out.clear();
  AppendDelimited("", &out);
  EXPECT_EQ(out, std::string(1, '\0'));
}

TEST(Records, RoundTripThroughWriterAndReader) {
  const std::string path = TempPath("round_trip.pb");
  {
    auto writer = RecordWriter::Open(path);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->Write("first").ok());
    ASSERT_TRUE((*writer)->WriteAll({std::string(200, 'b'), "", "third"}).ok());
    ASSERT_TRUE((*writer)->Sync().ok());
  }
  {  // reopening appends
    auto writer = RecordWriter::Open(path);
    ASSERT_TRUE(writer.ok()) << writer.status();
    RouterStepRecord r;
    r.set_step(5);
    ASSERT_TRUE((*writer)->Write(r).ok());
  }
  auto file = ReadRecordFile(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->records.size(), 5u);
  EXPECT_EQ(file->records[0], "first");
  EXPECT_EQ(file->records[1], std::string(200, 'b'));
  EXPECT_EQ(file->records[2], "");
  EXPECT_EQ(file->records[3], "third");
  // offsets: 0, 1+5, 6+2+200, 208+1, 209+6
  EXPECT_EQ(file->offsets, (std::vector<size_t>{0, 6, 208, 209, 215}));
  EXPECT_FALSE(file->truncated);
  EXPECT_FALSE(file->invalid);
  EXPECT_TRUE(file->problem.empty());
  EXPECT_EQ(file->valid_bytes, file->file_bytes);
  EXPECT_EQ(file->valid_bytes, ReadBytes(path).size());
  auto parsed_file = ReadRecordFile(path);
  ASSERT_TRUE(parsed_file.ok());
  // "first" is not a protobuf message ('f' = field 12 with the invalid wire type 6): nothing parses.
  EXPECT_TRUE(ParseRecords<RouterStepRecord>(&*parsed_file, path).empty());
  EXPECT_TRUE(parsed_file->invalid);
}

TEST(Records, EmptyFileHasNoRecordsAndNoProblem) {
  const std::string path = TempPath("empty.pb");
  WriteBytes(path, "");
  auto file = ReadRecordFile(path);
  ASSERT_TRUE(file.ok());
  EXPECT_TRUE(file->records.empty());
  EXPECT_TRUE(file->problem.empty());
}

TEST(Records, MissingFileIsNotFound) {
  auto file = ReadRecordFile(TempPath("absent.pb"));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
}

TEST(Records, TruncatedPayloadKeepsTheValidPrefix) {
  std::string bytes;
  AppendDelimited("one", &bytes);
  AppendDelimited("two", &bytes);
  const size_t cut_at = bytes.size();  // = 8
  AppendDelimited(std::string(50, 'z'), &bytes);
  bytes.resize(bytes.size() - 20);  // 30 of 50 payload bytes present
  RecordFile f = SplitDelimited(bytes, "live.pb");
  ASSERT_EQ(f.records.size(), 2u);
  EXPECT_EQ(f.records[1], "two");
  EXPECT_TRUE(f.truncated);
  EXPECT_FALSE(f.invalid);
  EXPECT_EQ(f.valid_bytes, cut_at);
  EXPECT_EQ(f.problem, "live.pb: 2 valid records, then a truncated record at byte 8 (declares 50 bytes, 30 present)");
}

TEST(Records, TruncatedLengthVarintIsATruncatedRecord) {
  std::string bytes;
  AppendDelimited("one", &bytes);
  bytes.push_back(static_cast<char>(0x96));  // continuation bit set, file ends
  RecordFile f = SplitDelimited(bytes, "cut.pb");
  ASSERT_EQ(f.records.size(), 1u);
  EXPECT_TRUE(f.truncated);
  EXPECT_EQ(f.problem, "cut.pb: 1 valid record, then a truncated record at byte 4");
}

TEST(Records, MalformedVarintIsInvalid) {
  std::string bytes;
  AppendDelimited("one", &bytes);
  bytes += std::string(11, '\xff');
  RecordFile f = SplitDelimited(bytes, "bad.pb");
  ASSERT_EQ(f.records.size(), 1u);
  EXPECT_TRUE(f.invalid);
  EXPECT_FALSE(f.truncated);
  EXPECT_EQ(f.problem, "bad.pb: invalid record at byte 4: length varint is malformed; 1 valid record before it");
}

TEST(Records, AbsurdLengthIsInvalidNotTruncated) {
  std::string bytes;
  AppendDelimited("one", &bytes);
  AppendDelimited("two", &bytes);
  // varint of 2^40: far above kMaxRecordBytes, so garbage rather than a record still being written.
  const uint64_t n = uint64_t{1} << 40;
  for (uint64_t v = n;; v >>= 7) {
    if (v < 0x80) {
      bytes.push_back(static_cast<char>(v));
      break;
    }
    bytes.push_back(static_cast<char>((v & 0x7F) | 0x80));
  }
  bytes += "tail";
  RecordFile f = SplitDelimited(bytes, "bad.pb");
  ASSERT_EQ(f.records.size(), 2u);
  EXPECT_TRUE(f.invalid);
  EXPECT_NE(f.problem.find("bad.pb: invalid record at byte 8: declared length 1099511627776 exceeds the limit"),
            std::string::npos)
      << f.problem;
}

TEST(Records, UnparsablePayloadEndsTheParsedPrefix) {
  RouterStepRecord a, b;
  a.set_step(1);
  b.set_step(2);
  std::string bytes;
  AppendDelimited(a.SerializeAsString(), &bytes);
  const size_t second = bytes.size();
  AppendDelimited("\xff\xff\xff", &bytes);  // field 0 / bad wire type: not a message
  AppendDelimited(b.SerializeAsString(), &bytes);
  RecordFile f = SplitDelimited(bytes, "x.pb");
  ASSERT_EQ(f.records.size(), 3u);
  std::vector<RouterStepRecord> parsed = ParseRecords<RouterStepRecord>(&f, "x.pb");
  ASSERT_EQ(parsed.size(), 1u);
  EXPECT_EQ(parsed[0].step(), 1);
  EXPECT_EQ(f.records.size(), 1u);
  EXPECT_TRUE(f.invalid);
  EXPECT_EQ(f.valid_bytes, second);
  EXPECT_EQ(f.problem, "x.pb: invalid record at byte " + std::to_string(second) +
                           ": payload is not a valid hybridmoe.RouterStepRecord; 1 valid record before it");
}

TEST(Records, WriterCutsATruncatedTailBackBeforeAppending) {
  const std::string path = TempPath("repair.pb");
  std::string bytes;
  AppendDelimited("kept", &bytes);
  const size_t valid = bytes.size();
  AppendDelimited("lost in a crash", &bytes);
  bytes.resize(bytes.size() - 3);
  WriteBytes(path, bytes);
  {
    auto writer = RecordWriter::Open(path);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->Write("after restart").ok());
  }
  auto file = ReadRecordFile(path);
  ASSERT_TRUE(file.ok());
  EXPECT_TRUE(file->problem.empty()) << file->problem;
  ASSERT_EQ(file->records.size(), 2u);
  EXPECT_EQ(file->records[0], "kept");
  EXPECT_EQ(file->records[1], "after restart");
  EXPECT_EQ(file->offsets[1], valid);
}

TEST(Records, WriterRefusesToAppendAfterGarbage) {
  const std::string path = TempPath("garbage.pb");
  std::string bytes;
  AppendDelimited("kept", &bytes);
  bytes += std::string(12, '\xff');
  WriteBytes(path, bytes);
  auto writer = RecordWriter::Open(path);
  ASSERT_FALSE(writer.ok());
  EXPECT_NE(writer.status().message().find(path + ": invalid record at byte 5"), std::string::npos) << writer.status();
  EXPECT_EQ(ReadBytes(path), bytes);  // untouched
}

TEST(Records, WriterOpenFailsForAMissingDirectory) {
  auto writer = RecordWriter::Open(TempPath("no_such_dir") + "/x/records.pb");
  ASSERT_FALSE(writer.ok());
  EXPECT_NE(writer.status().message().find("cannot open record file"), std::string::npos);
}

}  // namespace
}  // namespace hybridmoe
