// Tests core/safetensors: round trips of every dtype, byte compatibility with Python's safetensors
// writer (golden bytes written by safetensors 0.6.2), sharded checkpoints, and one clear error per kind
// of corruption.
#include "core/safetensors.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "core/crc32c.h"
#include "core/files.h"

namespace hybridmoe {
namespace {

std::string TmpDir() {
  const char* t = std::getenv("TEST_TMPDIR");
  return t ? t : "/tmp";
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// 8-byte little-endian length + header + data, the way every safetensors writer lays a file out.
std::string MakeFile(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(&out[0], &n, 8);
  return out + header + data;
}

// The exact file Python wrote for:
//   save({'b.f16': tensor([1.5, -2.0], f16), 'a.i64': tensor([[1, -2, 3]]), 'c.u8': tensor([7], u8),
//         'd.bf16': tensor([0.25], bf16), 'e.f32': tensor([[1., 2.], [3., 4.5]]),
//         'f.bool': tensor([True, False, True])}, metadata={'format': 'pt', 'note': 'golden'})
const char kPythonHeader[] =
    R"({"__metadata__":{"note":"golden","format":"pt"},"a.i64":{"dtype":"I64","shape":[1,3],"data_offsets":[0,24]},)"
    R"("e.f32":{"dtype":"F32","shape":[2,2],"data_offsets":[24,40]},"d.bf16":{"dtype":"BF16","shape":[1],"data_offsets":[40,42]},)"
    R"("b.f16":{"dtype":"F16","shape":[2],"data_offsets":[42,46]},"c.u8":{"dtype":"U8","shape":[1],"data_offsets":[46,47]},)"
    R"("f.bool":{"dtype":"BOOL","shape":[3],"data_offsets":[47,50]}} )";
const unsigned char kPythonData[] = {0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfe, 0xff, 0xff, 0xff, 0xff,
                                     0xff, 0xff, 0xff, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                     0x80, 0x3f, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x40, 0x40, 0x00, 0x00, 0x90,
                                     0x40, 0x80, 0x3e, 0x00, 0x3e, 0x00, 0xc0, 0x07, 0x01, 0x00, 0x01};

std::string PythonData() { return std::string(reinterpret_cast<const char*>(kPythonData), sizeof(kPythonData)); }

std::map<std::string, at::Tensor> GoldenTensors() {
  return {
      {"a.i64", at::tensor({1, -2, 3}, at::kLong).view({1, 3})},
      {"b.f16", at::tensor({1.5f, -2.0f}).to(at::kHalf)},
      {"c.u8", at::tensor({7}).to(at::kByte)},
      {"d.bf16", at::tensor({0.25f}).to(at::kBFloat16)},
      {"e.f32", at::tensor({1.0f, 2.0f, 3.0f, 4.5f}).view({2, 2})},
      {"f.bool", at::tensor({1, 0, 1}).to(at::kBool)},
  };
}

void ExpectSame(const at::Tensor& a, const at::Tensor& b, const std::string& name) {
  EXPECT_EQ(a.scalar_type(), b.scalar_type()) << name;
  EXPECT_EQ(a.sizes(), b.sizes()) << name;
  if (a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes()) {
    EXPECT_TRUE(at::equal(a, b)) << name;
  }
}

// The error of opening `bytes` as a file, checked to be one line naming the file.
std::string ErrorOf(const std::string& bytes, const std::string& name = "bad.safetensors") {
  const std::string path = TmpDir() + "/" + name;
  WriteBytes(path, bytes);
  auto r = SafetensorsReader::Open(path);
  if (r.ok()) return "(opened without error)";
  const std::string message(r.status().message());
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  EXPECT_NE(message.find(path), std::string::npos) << message;
  return message;
}

TEST(SafetensorsTest, RoundTripsEveryDtypeBitwise) {
  at::manual_seed(3);
  std::map<std::string, at::Tensor> tensors = {
      {"f64", at::randn({3, 2}, at::kDouble)},
      {"f32", at::randn({2, 3, 4})},
      {"f16", at::randn({5}).to(at::kHalf)},
      {"bf16", at::randn({2, 2}).to(at::kBFloat16)},
      {"i64", at::randint(-(int64_t{1} << 40), int64_t{1} << 40, {4}, at::kLong)},
      {"i32", at::randint(-100000, 100000, {2, 2}, at::kInt)},
      {"i16", at::randint(-30000, 30000, {3}, at::kShort)},
      {"i8", at::randint(-128, 127, {7}, at::kChar)},
      {"u8", at::randint(0, 255, {9}, at::kByte)},
      {"bool", at::randint(0, 2, {5}, at::kByte).to(at::kBool)},
      {"scalar", at::tensor(2.5f).view({})},
      {"empty", at::zeros({0, 3})},
      {"strided", at::randn({4, 4}).t()},  // non-contiguous input is written in logical order
  };
  const std::string path = TmpDir() + "/all.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}, {"step", "7"}}).ok());
  std::map<std::string, std::string> metadata;
  auto read = ReadSafetensors(path, &metadata);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), tensors.size());
  for (const auto& [name, t] : tensors) ExpectSame(read->at(name), t, name);
  EXPECT_EQ(metadata, (std::map<std::string, std::string>{{"format", "pt"}, {"step", "7"}}));

  // Header padded with spaces to a multiple of 8; every tensor naturally aligned within the data.
  const std::string bytes = ReadBytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  auto reader = SafetensorsReader::Open(path);
  ASSERT_TRUE(reader.ok());
  for (const std::string& name : (*reader)->names()) {
    const SafetensorsEntry* e = (*reader)->entry(name);
    EXPECT_EQ(e->begin % c10::elementSize(e->scalar_type), 0u) << name;
  }
}

TEST(SafetensorsTest, ReadsPythonWrittenFile) {
  const std::string path = TmpDir() + "/python.safetensors";
  WriteBytes(path, MakeFile(kPythonHeader, PythonData()));
  std::map<std::string, std::string> metadata;
  auto read = ReadSafetensors(path, &metadata);
  ASSERT_TRUE(read.ok()) << read.status();
  const auto golden = GoldenTensors();
  ASSERT_EQ(read->size(), golden.size());
  for (const auto& [name, t] : golden) ExpectSame(read->at(name), t, name);
  EXPECT_EQ(metadata.at("note"), "golden");
  EXPECT_EQ(metadata.at("format"), "pt");
}

TEST(SafetensorsTest, WritesPythonCompatibleLayout) {
  const std::string path = TmpDir() + "/ours.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, GoldenTensors(), {{"format", "pt"}, {"note", "golden"}}).ok());
  const std::string bytes = ReadBytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  ASSERT_LE(8 + n, bytes.size());
  // Same data section byte for byte (same ordering rule: element size descending, then name).
  EXPECT_EQ(bytes.substr(8 + n), PythonData());
  // Every Python entry appears verbatim in our (sorted, compact) header.
  const std::string header = bytes.substr(8, n);
  for (const char* entry : {R"("a.i64":{"data_offsets":[0,24],"dtype":"I64","shape":[1,3]})",
                            R"("f.bool":{"data_offsets":[47,50],"dtype":"BOOL","shape":[3]})"}) {
    EXPECT_NE(header.find(entry), std::string::npos) << header;
  }
  EXPECT_EQ(header.find('\n'), std::string::npos);
  EXPECT_EQ(header.back() == ' ' || header.back() == '}', true);
}

TEST(SafetensorsTest, ReadsShardedIndex) {
  const std::string dir = TmpDir() + "/sharded";
  ASSERT_EQ(system(("mkdir -p " + dir).c_str()), 0);
  const at::Tensor a = at::randn({3, 2}), b = at::randn({4}), c = at::randn({1}).to(at::kBFloat16);
  ASSERT_TRUE(
      WriteSafetensors(dir + "/model-00001-of-00002.safetensors", {{"a", a}, {"b", b}}, {{"format", "pt"}}).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00002-of-00002.safetensors", {{"c", c}}, {{"format", "pt"}}).ok());
  ASSERT_TRUE(WriteSafetensorsIndex(dir + "/model.safetensors.index.json",
                                    {{"a", "model-00001-of-00002.safetensors"},
                                     {"b", "model-00001-of-00002.safetensors"},
                                     {"c", "model-00002-of-00002.safetensors"}},
                                    {{"total_size", "30"}})
                  .ok());
  std::map<std::string, std::string> metadata;
  auto read = ReadSafetensors(dir, &metadata);  // the directory: no model.safetensors, so the index
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), 3u);
  ExpectSame(read->at("a"), a, "a");
  ExpectSame(read->at("b"), b, "b");
  ExpectSame(read->at("c"), c, "c");
  EXPECT_EQ(metadata.at("total_size"), "30");
  auto reader = SafetensorsReader::Open(dir + "/model.safetensors.index.json");
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ((*reader)->file_of("c"), dir + "/model-00002-of-00002.safetensors");

  // An index that maps a tensor to a shard that does not hold it, or names a missing shard.
  ASSERT_TRUE(WriteSafetensorsIndex(dir + "/wrong.index.json", {{"a", "model-00002-of-00002.safetensors"},
                                                                {"b", "model-00001-of-00002.safetensors"},
                                                                {"c", "model-00002-of-00002.safetensors"}})
                  .ok());
  auto wrong = SafetensorsReader::Open(dir + "/wrong.index.json");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(std::string(wrong.status().message()).find("tensor a"), std::string::npos) << wrong.status();
  ASSERT_TRUE(WriteSafetensorsIndex(dir + "/missing.index.json", {{"a", "nope.safetensors"}}).ok());
  auto missing = SafetensorsReader::Open(dir + "/missing.index.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("nope.safetensors"), std::string::npos) << missing.status();
}

// The checkpoint loader's single pass: the digest the writer takes while writing, the digest of a tracking
// reader (from the pieces its reads checksummed plus what it did not read) and a plain read of the file
// agree, whichever tensors were read and in whatever order; a flipped byte shows in the reader's digest.
TEST(SafetensorsTest, DigestWhileWritingAndWhileReadingEqualsTheFile) {
  const std::string path = TmpDir() + "/digest.safetensors";
  std::map<std::string, at::Tensor> tensors = {{"big", at::randn({300, 1000})},  // > one 256 KiB pass piece
                                               {"empty", at::zeros({0, 4})},
                                               {"half", at::randn({7}).to(at::kBFloat16)},
                                               {"ids", at::arange(5, at::kLong)},
                                               {"small", at::randn({3})}};
  FileDigest written;
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}, &written).ok());
  absl::StatusOr<FileDigest> file = DigestFile(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(written.bytes, file->bytes);
  EXPECT_EQ(written.crc32c, file->crc32c);
  EXPECT_EQ(file->crc32c, Crc32c(ReadBytes(path)));

  const std::vector<std::vector<std::string>> orders = {
      {}, {"small"}, {"small", "big"}, {"ids", "empty", "half", "big", "small"}, {"big", "big", "half"}};
  for (const auto& order : orders) {
    auto reader = SafetensorsReader::Open(path);
    ASSERT_TRUE(reader.ok()) << reader.status();
    (*reader)->TrackChecksums();
    for (const std::string& name : order) {
      auto t = (*reader)->Read(name);
      ASSERT_TRUE(t.ok()) << t.status();
      ExpectSame(*t, tensors.at(name), name);
    }
    absl::StatusOr<FileDigest> d = (*reader)->Digest(path);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(d->bytes, file->bytes) << order.size() << " reads";
    EXPECT_EQ(d->crc32c, file->crc32c) << order.size() << " reads";
    EXPECT_FALSE((*reader)->Digest(path + ".other").ok());
  }

  // One flipped bit inside "big": its values read back wrong and the digest says so.
  std::string bytes = ReadBytes(path);
  bytes[bytes.size() / 2] ^= 0x10;
  WriteBytes(path, bytes);
  auto reader = SafetensorsReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  (*reader)->TrackChecksums();
  ASSERT_TRUE((*reader)->Read("big").ok());
  absl::StatusOr<FileDigest> damaged = (*reader)->Digest(path);
  ASSERT_TRUE(damaged.ok());
  EXPECT_EQ(damaged->crc32c, Crc32c(bytes));
  EXPECT_NE(damaged->crc32c, file->crc32c);
}

TEST(SafetensorsTest, TruncatedFileNamesTheTensor) {
  const std::string good = MakeFile(kPythonHeader, PythonData());
  const std::string e = ErrorOf(good.substr(0, good.size() - 2));
  EXPECT_NE(e.find("tensor f.bool: data_offsets [47,50) end past the data section (48 bytes; truncated file?)"),
            std::string::npos)
      << e;
  EXPECT_NE(ErrorOf(good.substr(0, 5)).find("too short for the 8-byte header length"), std::string::npos);
  EXPECT_NE(ErrorOf("").find("too short"), std::string::npos);
}

TEST(SafetensorsTest, BadHeaderLength) {
  std::string bytes = MakeFile(kPythonHeader, PythonData());
  const uint64_t huge = uint64_t{1} << 40;
  std::memcpy(&bytes[0], &huge, 8);
  const std::string e = ErrorOf(bytes);
  EXPECT_NE(e.find("header length 1099511627776 exceeds"), std::string::npos) << e;
  std::string shorter = MakeFile(kPythonHeader, PythonData());
  const uint64_t cut = 20;  // header ends mid-JSON
  std::memcpy(&shorter[0], &cut, 8);
  EXPECT_NE(ErrorOf(shorter).find("malformed JSON"), std::string::npos);
}

TEST(SafetensorsTest, BadJson) {
  const std::string one_f32(4, '\0');  // the data section of a [1] F32 tensor; these headers fail before it
  EXPECT_NE(ErrorOf(MakeFile(R"({"a": {"dtype": "F32",)", "")).find("malformed JSON"), std::string::npos);
  EXPECT_NE(ErrorOf(MakeFile("[1, 2]", "")).find("does not start with '{'"), std::string::npos);
  EXPECT_NE(ErrorOf(MakeFile(R"({"a": 3})", "")).find("tensor a: entry must be a JSON object"), std::string::npos);
  EXPECT_NE(ErrorOf(MakeFile(R"({"a": {"dtype": "F32", "shape": [1]}})", one_f32)).find("tensor a: \"data_offsets\""),
            std::string::npos);
  EXPECT_NE(ErrorOf(MakeFile(R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", one_f32))
                .find("tensor a: shape [-1] must hold non-negative integers"),
            std::string::npos);
  EXPECT_NE(
      ErrorOf(MakeFile(R"({"__metadata__": {"step": 3}})", "")).find("__metadata__ value of \"step\" must be a string"),
      std::string::npos);
  EXPECT_NE(ErrorOf(MakeFile(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}})", one_f32))
                .find("tensor a: unknown field \"x\""),
            std::string::npos);
}

TEST(SafetensorsTest, OffsetsOutOfRangeOrOverlapping) {
  const std::string data(16, '\0');
  EXPECT_NE(ErrorOf(MakeFile(R"({"w": {"dtype": "F32", "shape": [25], "data_offsets": [0, 100]}})", data))
                .find("tensor w: data_offsets [0,100) end past the data section (16 bytes; truncated file?)"),
            std::string::npos);
  EXPECT_NE(ErrorOf(MakeFile(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", data))
                .find("tensor w: data_offsets [8,4) begin after end"),
            std::string::npos);
  EXPECT_NE(ErrorOf(MakeFile(R"({"u": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                             R"( "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                             data.substr(0, 12)))
                .find("tensor v: data_offsets [4,12) overlaps tensor u"),
            std::string::npos);
  EXPECT_NE(ErrorOf(MakeFile(R"({"v": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})", data))
                .find("tensor v: data_offsets [8,16) leaves a gap"),
            std::string::npos);
  EXPECT_NE(ErrorOf(MakeFile(R"({"v": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", data))
                .find("data section has 16 bytes but the tensors cover 8 (trailing bytes)"),
            std::string::npos);
}

TEST(SafetensorsTest, ShapeSizeMismatchAndUnknownDtype) {
  const std::string data(16, '\0');
  EXPECT_NE(ErrorOf(MakeFile(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}})", data))
                .find("tensor w: data_offsets [0,16) holds 16 bytes but shape [2,3] of F32 needs 24"),
            std::string::npos);
  EXPECT_NE(ErrorOf(MakeFile(R"({"w": {"dtype": "F8_E4M3", "shape": [16], "data_offsets": [0, 16]}})", data))
                .find("tensor w: unknown dtype \"F8_E4M3\" (known: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)"),
            std::string::npos);
}

TEST(SafetensorsTest, WriteIsAtomicAndRejectsUnsupported) {
  const std::string dir = TmpDir() + "/atomic";
  ASSERT_EQ(system(("rm -rf " + dir + " && mkdir -p " + dir).c_str()), 0);
  const std::string path = dir + "/w.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {{"x", at::ones({2})}}).ok());
  const std::string before = ReadBytes(path);
  // Unsupported dtype: an error naming the tensor; the existing file is untouched.
  absl::Status s = WriteSafetensors(path, {{"z", at::ones({2}, at::kComplexFloat)}});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("tensor z"), std::string::npos) << s;
  EXPECT_EQ(ReadBytes(path), before);
  // Unwritable destination: an error, nothing left behind.
  s = WriteSafetensors(dir + "/no/such/dir/w.safetensors", {{"x", at::ones({2})}});
  EXPECT_FALSE(s.ok());
  ASSERT_TRUE(WriteSafetensors(path, {{"y", at::zeros({3})}}).ok());
  auto read = ReadSafetensors(path);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->count("y"), 1u);
  int files = 0;
  DIR* d = opendir(dir.c_str());
  while (dirent* e = readdir(d)) files += e->d_name[0] != '.';
  closedir(d);
  EXPECT_EQ(files, 1);  // no temporary file left
}

}  // namespace
}  // namespace hybridmoe
