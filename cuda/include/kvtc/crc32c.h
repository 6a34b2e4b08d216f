// CRC32C (Castagnoli), the checksum of every record section. Debian ships no CRC32C library for
// C++ (google/crc32c is not packaged in bookworm), so this is the standard slice-by-8 table code
// with the SSE4.2 instruction used when the CPU has it. Test vector: "123456789" -> 0xE3069283.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvtc {

uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);

// CRC32C of A followed by B from crc(A), crc(B) and B's length (zlib's crc32_combine method).
uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, size_t size_b);

// CRC32C of `count` consecutive pieces from their CRCs: every piece `block` bytes but the last,
// `last` bytes (one shift constant for all: a combine per piece costs one multiplication mod P).
uint32_t Crc32cConcat(const uint32_t* crcs, size_t count, size_t block, size_t last);

// Crc32c over OpenMP threads: 1 MiB pieces, combined in order (serial below 4 MiB).
uint32_t Crc32cParallel(const void* data, size_t size);

}  // namespace kvtc
