// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of TFRecord framing, plus
// TFRecord's masking. Masking rotates the CRC right by 15 bits and adds 0xa282ead8 so that the CRC of
// data that itself contains CRCs does not degenerate. Table-driven, one byte per step: fast enough for
// log records (a few hundred bytes per training step).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace hybridmoe {

// Extends `crc` (the CRC-32C of some prefix, 0 for the empty prefix) with `n` more bytes.
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n);

inline uint32_t Crc32c(const void* data, size_t n) { return Crc32cExtend(0, data, n); }
inline uint32_t Crc32c(std::string_view bytes) { return Crc32c(bytes.data(), bytes.size()); }

constexpr uint32_t kCrc32cMaskDelta = 0xa282ead8u;

constexpr uint32_t MaskCrc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + kCrc32cMaskDelta; }

constexpr uint32_t UnmaskCrc32c(uint32_t masked) {
  const uint32_t rotated = masked - kCrc32cMaskDelta;
  return (rotated >> 17) | (rotated << 15);
}

}  // namespace hybridmoe
