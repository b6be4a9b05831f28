// Tests core/crc32c.*: both implementations (SSE4.2 instruction, slicing-by-8) against the RFC 3720 B.4
// known answers, against a plain bitwise reference over random buffers of every length class, offset and
// split (including the three-stream blocks of the hardware path and their joins), and the dispatch.
#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/crc32c.h"

namespace hybridmoe {
namespace {

// One bit at a time, straight from the definition.
uint32_t BitwiseCrc32c(uint32_t crc, const unsigned char* p, size_t n) {
  uint32_t s = ~crc;
  for (size_t i = 0; i < n; ++i) {
    s ^= p[i];
    for (int b = 0; b < 8; ++b) s = (s >> 1) ^ ((s & 1u) ? 0x82F63B78u : 0u);
  }
  return ~s;
}

using Impl = uint32_t (*)(uint32_t, const void*, size_t);

std::vector<std::pair<std::string, Impl>> Implementations() {
  std::vector<std::pair<std::string, Impl>> impls = {{"slicing-by-8", &Crc32cExtendPortable},
                                                     {"dispatch", &Crc32cExtend}};
  if (Crc32cHardwareAvailable()) impls.push_back({"sse4.2", &Crc32cExtendHardware});
  return impls;
}

uint32_t Of(Impl f, const std::string& s) { return f(0, s.data(), s.size()); }

TEST(Crc32cTest, Rfc3720KnownAnswersEveryImplementation) {
  std::string up(32, '\0'), down(32, '\0');
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<char>(i);
    down[i] = static_cast<char>(31 - i);
  }
  // RFC 3720 B.4: an iSCSI read (10) command PDU.
  const unsigned char pdu[48] = {0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
                                 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
                                 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  for (const auto& [name, f] : Implementations()) {
    SCOPED_TRACE(name);
    EXPECT_EQ(Of(f, ""), 0u);
    EXPECT_EQ(Of(f, "123456789"), 0xE3069283u);
    EXPECT_EQ(Of(f, std::string(32, '\0')), 0x8A9136AAu);
    EXPECT_EQ(Of(f, std::string(32, '\xff')), 0x62A8AB43u);
    EXPECT_EQ(Of(f, up), 0x46DD794Eu);
    EXPECT_EQ(Of(f, down), 0x113FDB5Cu);
    EXPECT_EQ(f(0, pdu, sizeof(pdu)), 0xD9963A56u);
  }
}

TEST(Crc32cTest, HardwareIsUsedWhereTheCpuHasIt) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  EXPECT_EQ(Crc32cHardwareAvailable(), __builtin_cpu_supports("sse4.2") != 0);
#endif
  EXPECT_STREQ(Crc32cImplementation(), Crc32cHardwareAvailable() ? "sse4.2" : "slicing-by-8");
}

TEST(Crc32cTest, RandomBuffersMatchTheBitwiseReference) {
  std::mt19937_64 rng(7);
  // Lengths around the 8-byte steps and the hardware path's 3 x 4096-byte blocks.
  std::vector<size_t> lengths;
  for (size_t n = 0; n < 80; ++n) lengths.push_back(n);
  for (size_t n : {4095, 4096, 4097, 12287, 12288, 12289, 12288 + 7, 24576, 24583, 40000, 100003}) lengths.push_back(n);
  std::vector<unsigned char> buffer(100003 + 16);
  for (auto& b : buffer) b = static_cast<unsigned char>(rng());
  for (size_t n : lengths) {
    for (size_t offset : {0, 1, 3, 7}) {
      const unsigned char* p = buffer.data() + offset;
      const uint32_t seed = static_cast<uint32_t>(rng());
      const uint32_t want = BitwiseCrc32c(seed, p, n);
      for (const auto& [name, f] : Implementations()) {
        ASSERT_EQ(f(seed, p, n), want) << name << " n " << n << " offset " << offset;
      }
    }
  }
}

TEST(Crc32cTest, ExtendEqualsWholeAcrossBlockJoins) {
  std::mt19937_64 rng(11);
  std::vector<unsigned char> data(3 * 12288 + 100);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  const uint32_t whole = BitwiseCrc32c(0, data.data(), data.size());
  for (size_t cut : {size_t{1}, size_t{4096}, size_t{12287}, size_t{12288}, size_t{12289}, size_t{20000}}) {
    for (const auto& [name, f] : Implementations()) {
      const uint32_t head = f(0, data.data(), cut);
      EXPECT_EQ(f(head, data.data() + cut, data.size() - cut), whole) << name << " cut " << cut;
    }
  }
}

TEST(Crc32cTest, CombineJoinsPiecesChecksummedSeparately) {
  std::mt19937_64 rng(12);
  std::vector<unsigned char> data(70000);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  const uint32_t whole = BitwiseCrc32c(0, data.data(), data.size());
  for (size_t cut : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{4096}, size_t{65535}, data.size()}) {
    const uint32_t a = BitwiseCrc32c(0, data.data(), cut);
    const uint32_t b = BitwiseCrc32c(0, data.data() + cut, data.size() - cut);
    EXPECT_EQ(Crc32cCombine(a, b, data.size() - cut), whole) << "cut " << cut;
  }
  // Many pieces of random lengths, joined left to right, as the checkpoint loader joins a file's reads.
  uint32_t joined = 0;
  for (size_t at = 0; at < data.size();) {
    const size_t n = std::min<size_t>(data.size() - at, rng() % 5000);
    joined = Crc32cCombine(joined, Crc32c(data.data() + at, n), n);
    at += n;
  }
  EXPECT_EQ(joined, whole);
  // A long run of zeros (exercises high powers): CRC(A 0^n) through Extend against Combine.
  const std::vector<unsigned char> zeros(1 << 20, 0);
  const uint32_t a = Crc32c(data.data(), 100);
  EXPECT_EQ(Crc32cCombine(a, Crc32c(zeros.data(), zeros.size()), zeros.size()),
            Crc32cExtend(a, zeros.data(), zeros.size()));
}

}  // namespace
}  // namespace hybridmoe
