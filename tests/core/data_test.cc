// core/data.cc header edge cases: NumPy .npy (big-endian dtype, Fortran order, a shape larger than the
// file) and Megatron .idx (counts that overflow the index file, including counts whose byte product wraps
// 64 bits, and a negative sequence size). Each must be refused with one line naming the file and the fault;
// a well-formed file of each kind opens, so the writers below are known to be right.
#include "core/data.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace hybridmoe {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

template <typename T>
void Append(std::string* s, T v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(v));  // little-endian host
}

// A version-1 .npy file: magic, header dict padded to a 64-byte boundary, then `data`.
std::string Npy(const std::string& descr, bool fortran, const std::string& shape, const std::string& data) {
  std::string dict =
      "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") + ", 'shape': " + shape + ", }";
  while ((10 + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string s("\x93NUMPY\x01\x00", 8);
  Append<uint16_t>(&s, static_cast<uint16_t>(dict.size()));
  return s + dict + data;
}

std::string U16(const std::vector<uint16_t>& ids) {
  std::string s;
  for (uint16_t id : ids) Append(&s, id);
  return s;
}

// An MMIDIDX v1 index (dtype code 8 = uint16) with the given header counts and per-sequence sizes.
std::string Idx(uint64_t sequences, uint64_t documents, const std::vector<int32_t>& sizes) {
  std::string s("MMIDIDX\x00\x00", 9);
  Append<uint64_t>(&s, 1);
  Append<uint8_t>(&s, 8);
  Append<uint64_t>(&s, sequences);
  Append<uint64_t>(&s, documents);
  for (int32_t n : sizes) Append(&s, n);
  int64_t pointer = 0;
  for (int32_t n : sizes) {
    Append(&s, pointer);
    pointer += 2 * static_cast<int64_t>(n);
  }
  for (size_t d = 0; d <= sizes.size(); ++d) Append<int64_t>(&s, static_cast<int64_t>(d));
  return s;
}

absl::StatusOr<std::unique_ptr<TokenFile>> Open(const std::string& path, DataConfig::Format format) {
  return TokenFile::Open(path, format, DataConfig::UINT16, 1000);
}

// Refused, as InvalidArgument, with one line that names `file` and contains every one of `what`.
void ExpectRefused(const absl::StatusOr<std::unique_ptr<TokenFile>>& f, const std::string& file,
                   const std::vector<std::string>& what) {
  ASSERT_FALSE(f.ok()) << file << " was accepted";
  const std::string msg(f.status().message());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_NE(msg.find(file), std::string::npos) << "message does not name " << file << ": " << msg;
  for (const std::string& w : what) EXPECT_NE(msg.find(w), std::string::npos) << "lacks '" << w << "': " << msg;
}

const std::vector<uint16_t> kIds = {1, 2, 3, 4, 5, 6};

TEST(NpyHeader, WellFormedOpens) {
  const std::string path = TempPath("good.npy");
  WriteFile(path, Npy("<u2", false, "(6,)", U16(kIds)));
  auto f = Open(path, DataConfig::AUTO);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->num_tokens(), 6);
  EXPECT_EQ((*f)->format_name(), "npy <u2");
  int64_t out[6];
  ASSERT_TRUE((*f)->Read(0, 6, out).ok());
  for (int i = 0; i < 6; ++i) EXPECT_EQ(out[i], kIds[i]);
}

TEST(NpyHeader, BigEndianDtypeIsRefused) {
  const std::string path = TempPath("big_endian.npy");
  WriteFile(path, Npy(">u2", false, "(6,)", U16(kIds)));
  ExpectRefused(Open(path, DataConfig::AUTO), path, {"'>u2'", "little-endian"});
  const std::string path8 = TempPath("big_endian_i8.npy");
  WriteFile(path8, Npy(">i8", false, "(3,)", std::string(24, '\0')));
  ExpectRefused(Open(path8, DataConfig::NPY), path8, {"'>i8'", "little-endian"});
}

TEST(NpyHeader, FortranOrderIsRefused) {
  const std::string path = TempPath("fortran.npy");
  WriteFile(path, Npy("<u2", true, "(2, 3)", U16(kIds)));
  ExpectRefused(Open(path, DataConfig::AUTO), path, {"Fortran-order"});
}

TEST(NpyHeader, ShapeLargerThanTheFileIsRefused) {
  const std::string path = TempPath("long_shape.npy");
  WriteFile(path, Npy("<u2", false, "(7,)", U16(kIds)));
  ExpectRefused(Open(path, DataConfig::AUTO), path, {"shape (7,)", "14 bytes", "12 data bytes follow"});
  // A shape whose element count would wrap 64 bits (2^32 * 2^32 = 2^64) must not come out as a match.
  const std::string wrap = TempPath("wrap_shape.npy");
  WriteFile(wrap, Npy("<u2", false, "(4294967296, 4294967296)", U16(kIds)));
  ExpectRefused(Open(wrap, DataConfig::AUTO), wrap, {"shape (4294967296, 4294967296)", "more than the file's"});
  const std::string huge = TempPath("huge_shape.npy");
  WriteFile(huge, Npy("<u2", false, "(123456789012345678901234567890,)", U16(kIds)));
  ExpectRefused(Open(huge, DataConfig::AUTO), huge, {"more than the file's"});
}

class MegatronIndex : public ::testing::Test {
 protected:
  void SetUp() override { WriteFile(bin_, U16(kIds)); }
  std::string bin_ = TempPath("mega.bin"), idx_ = TempPath("mega.idx");
};

TEST_F(MegatronIndex, WellFormedOpens) {
  WriteFile(idx_, Idx(2, 3, {4, 2}));
  auto f = Open(bin_, DataConfig::AUTO);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->num_tokens(), 6);
  EXPECT_EQ((*f)->format_name(), "megatron dtype 8");
}

TEST_F(MegatronIndex, CountsBeyondTheFileAreRefused) {
  WriteFile(idx_, Idx(3, 3, {4, 2}));  // one sequence more than the entries written
  ExpectRefused(Open(bin_, DataConfig::AUTO), idx_, {"3 sequences", "more than its"});
  WriteFile(idx_, Idx(2, 4, {4, 2}));  // one document offset more
  ExpectRefused(Open(bin_, DataConfig::AUTO), idx_, {"4 documents", "more than its"});
}

TEST_F(MegatronIndex, CountsWhoseByteSizeWrapsAreRefused) {
  // 2^62 sequences: 12 * 2^62 wraps to 2^63 and 4 * 2^62 + 8 * 2^62 wraps to 0, so a product check passes and
  // the size loop reads far past the map. Same for documents = 2^61 (8 * 2^61 = 2^64 = 0).
  WriteFile(idx_, Idx(uint64_t{1} << 62, 3, {4, 2}));
  ExpectRefused(Open(bin_, DataConfig::MEGATRON), idx_, {"4611686018427387904 sequences", "more than its"});
  WriteFile(idx_, Idx(2, uint64_t{1} << 61, {4, 2}));
  ExpectRefused(Open(bin_, DataConfig::MEGATRON), idx_, {"2305843009213693952 documents", "more than its"});
}

TEST_F(MegatronIndex, NegativeSizeIsRefused) {
  WriteFile(idx_, Idx(2, 3, {8, -2}));  // sums to the right token count, but one size is negative
  ExpectRefused(Open(bin_, DataConfig::AUTO), idx_, {"sequence 1 has negative size -2"});
}

TEST_F(MegatronIndex, SizesThatDisagreeWithTheBinAreRefused) {
  WriteFile(idx_, Idx(2, 3, {4, 3}));
  ExpectRefused(Open(bin_, DataConfig::AUTO), bin_, {"12 bytes", "lists 7 tokens", "mega.idx"});
}

}  // namespace
}  // namespace hybridmoe
