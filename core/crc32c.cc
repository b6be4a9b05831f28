#include "core/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace hybridmoe {
namespace {

constexpr uint32_t kPolyReflected = 0x82F63B78u;

// kTables[0] is the byte-at-a-time table; kTables[k][b] is the CRC register after byte b followed by k zero bytes.
using Tables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Tables MakeTables() {
  Tables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1u) ? kPolyReflected : 0u);
    t[0][i] = crc;
  }
  for (int k = 1; k < 8; ++k) {
    for (uint32_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFFu];
  }
  return t;
}

constexpr Tables kTables = MakeTables();

uint64_t Load64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;  // little-endian hosts only (x86-64, aarch64 as configured here)
}

// The raw register (no pre/post inversion), so that both paths compose.
uint32_t PortableRaw(uint32_t state, const unsigned char* p, size_t n) {
  for (; n >= 8; n -= 8, p += 8) {
    const uint64_t v = Load64(p) ^ state;
    state = kTables[7][v & 0xFF] ^ kTables[6][(v >> 8) & 0xFF] ^ kTables[5][(v >> 16) & 0xFF] ^
            kTables[4][(v >> 24) & 0xFF] ^ kTables[3][(v >> 32) & 0xFF] ^ kTables[2][(v >> 40) & 0xFF] ^
            kTables[1][(v >> 48) & 0xFF] ^ kTables[0][v >> 56];
  }
  for (; n > 0; --n, ++p) state = kTables[0][(state ^ *p) & 0xFFu] ^ (state >> 8);
  return state;
}

#if defined(__x86_64__)

// Bytes per stream of the three-stream loop. The register after a stream is moved past the next stream's
// bytes (a multiplication by x^(8 * kStream) mod P, linear in the register) with four 256-entry tables.
constexpr size_t kStream = 4096;

__attribute__((target("sse4.2"))) uint32_t HardwareOneStream(uint32_t state, const unsigned char* p, size_t n) {
  uint64_t s = state;
  for (; n >= 8; n -= 8, p += 8) s = _mm_crc32_u64(s, Load64(p));
  uint32_t s32 = static_cast<uint32_t>(s);
  for (; n > 0; --n, ++p) s32 = _mm_crc32_u8(s32, *p);
  return s32;
}

struct ShiftTables {
  std::array<std::array<uint32_t, 256>, 4> t;
  ShiftTables() {
    static const unsigned char zeros[kStream] = {};
    for (int k = 0; k < 4; ++k) {
      for (uint32_t b = 0; b < 256; ++b) t[k][b] = PortableRaw(b << (8 * k), zeros, kStream);
    }
  }
  uint32_t Shift(uint32_t v) const {
    return t[0][v & 0xFF] ^ t[1][(v >> 8) & 0xFF] ^ t[2][(v >> 16) & 0xFF] ^ t[3][v >> 24];
  }
};

__attribute__((target("sse4.2"))) uint32_t HardwareRaw(uint32_t state, const unsigned char* p, size_t n) {
  if (n >= 3 * kStream) {
    static const ShiftTables shift;
    for (; n >= 3 * kStream; n -= 3 * kStream, p += 3 * kStream) {
      uint64_t a = state, b = 0, c = 0;
      const unsigned char* pb = p + kStream;
      const unsigned char* pc = p + 2 * kStream;
      for (size_t i = 0; i < kStream; i += 8) {
        a = _mm_crc32_u64(a, Load64(p + i));
        b = _mm_crc32_u64(b, Load64(pb + i));
        c = _mm_crc32_u64(c, Load64(pc + i));
      }
      // R(s, A B C) = shift(shift(R(s, A)) ^ R(0, B)) ^ R(0, C).
      state = shift.Shift(shift.Shift(static_cast<uint32_t>(a)) ^ static_cast<uint32_t>(b)) ^ static_cast<uint32_t>(c);
    }
  }
  return HardwareOneStream(state, p, n);
}

bool DetectHardware() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}

#endif

}  // namespace

uint32_t Crc32cExtendPortable(uint32_t crc, const void* data, size_t n) {
  // Pre- and post-inversion make the running value composable across calls.
  return ~PortableRaw(~crc, static_cast<const unsigned char*>(data), n);
}

bool Crc32cHardwareAvailable() {
#if defined(__x86_64__)
  static const bool available = DetectHardware();
  return available;
#else
  return false;
#endif
}

uint32_t Crc32cExtendHardware(uint32_t crc, const void* data, size_t n) {
#if defined(__x86_64__)
  return ~HardwareRaw(~crc, static_cast<const unsigned char*>(data), n);
#else
  return Crc32cExtendPortable(crc, data, n);
#endif
}

uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n) {
  return Crc32cHardwareAvailable() ? Crc32cExtendHardware(crc, data, n) : Crc32cExtendPortable(crc, data, n);
}

namespace {

// a * b modulo the polynomial, both reflected (bit 31 is x^0).
uint32_t MultiplyModPoly(uint32_t a, uint32_t b) {
  uint32_t product = 0;
  for (uint32_t bit = 1u << 31; bit != 0; bit >>= 1) {
    if (a & bit) product ^= b;
    b = (b & 1u) ? (b >> 1) ^ kPolyReflected : b >> 1;  // b *= x
  }
  return product;
}

// kPowers[k] = x^(2^k) modulo the polynomial.
std::array<uint32_t, 67> MakePowers() {
  std::array<uint32_t, 67> p{};  // k up to 3 + 63: every bit of 8 * len_b
  p[0] = 1u << 30;               // x^1
  for (size_t k = 1; k < p.size(); ++k) p[k] = MultiplyModPoly(p[k - 1], p[k - 1]);
  return p;
}

}  // namespace

uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  static const std::array<uint32_t, 67> powers = MakePowers();
  // x^(8 len_b) = product of x^(2^k) over the bits k of 8 len_b (bit 3 of it is bit 0 of len_b).
  uint32_t shift = 1u << 31;  // x^0
  for (size_t k = 3; len_b != 0; len_b >>= 1, ++k) {
    if (len_b & 1u) shift = MultiplyModPoly(powers[k], shift);
  }
  return MultiplyModPoly(shift, crc_a) ^ crc_b;
}

const char* Crc32cImplementation() { return Crc32cHardwareAvailable() ? "sse4.2" : "slicing-by-8"; }

}  // namespace hybridmoe
