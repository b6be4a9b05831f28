// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum of TFRecord framing and of every
// checkpoint file's manifest entry, plus TFRecord's masking. Masking rotates the CRC right by 15 bits and
// adds 0xa282ead8 so that the CRC of data that itself contains CRCs does not degenerate.
//
// Two implementations of one function, chosen once at run time: the SSE4.2 `crc32` instruction (x86-64
// CPUs that report sse4.2; 8 bytes per instruction, three independent streams over large buffers so the
// instruction's 3-cycle latency is hidden, joined by a carry-less shift) and, everywhere else, slicing-by-8
// (eight 256-entry tables, 8 bytes per step). Both give identical results; tests/core/crc32c_test.cc checks
// each against RFC 3720's vectors and against the other. tools/bench --sections=checkpoint reports GB/s.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace hybridmoe {

// Extends `crc` (the CRC-32C of some prefix, 0 for the empty prefix) with `n` more bytes.
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n);

inline uint32_t Crc32c(const void* data, size_t n) { return Crc32cExtend(0, data, n); }

// The CRC-32C of A followed by B, from Crc32c(A), Crc32c(B) and the length of B, without the bytes: crc_a is
// multiplied by x^(8 len_b) modulo the polynomial (square-and-multiply over a table of x^(2^k), O(log len_b)
// carry-less products), then crc_b is added. Lets pieces of a file checksummed in any order (the checkpoint
// loader's reads) be joined into the file's CRC.
uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);
inline uint32_t Crc32c(std::string_view bytes) { return Crc32c(bytes.data(), bytes.size()); }

// The two implementations behind Crc32cExtend, for tests and benchmarks. Crc32cExtendHardware may only be
// called when Crc32cHardwareAvailable().
uint32_t Crc32cExtendPortable(uint32_t crc, const void* data, size_t n);
uint32_t Crc32cExtendHardware(uint32_t crc, const void* data, size_t n);
bool Crc32cHardwareAvailable();
// "sse4.2" or "slicing-by-8": what Crc32cExtend runs on this CPU.
const char* Crc32cImplementation();

constexpr uint32_t kCrc32cMaskDelta = 0xa282ead8u;

constexpr uint32_t MaskCrc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + kCrc32cMaskDelta; }

constexpr uint32_t UnmaskCrc32c(uint32_t masked) {
  const uint32_t rotated = masked - kCrc32cMaskDelta;
  return (rotated >> 17) | (rotated << 15);
}

}  // namespace hybridmoe
