// Copies for outputs larger than the cache: non-temporal (streaming) stores write the destination without
// first reading it into the cache (no read-for-ownership) and without evicting the working set. A large copy
// then moves 2 bytes per byte copied instead of 3. Callers run stream_fence() on every thread that streamed
// before the data is read elsewhere (the end of a parallel_for chunk).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>

#if defined(__SSE2__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <unistd.h>
#endif

namespace pvf {

// The last-level cache of the core we run on, in bytes: Linux's sysfs entry for cpu0's level-3 cache (the cache
// one core complex shares: sysconf reports the whole socket's on AMD EPYC), else sysconf, else 32 MiB.
inline size_t last_level_cache_bytes() {
  size_t bytes = 0;
#if defined(__linux__)
  if (std::FILE* f = std::fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r")) {
    unsigned long value = 0;
    char unit = 0;
    if (std::fscanf(f, "%lu%c", &value, &unit) >= 1)
      bytes = value * (unit == 'K' ? 1024UL : unit == 'M' ? 1024UL * 1024 : 1UL);
    std::fclose(f);
  }
#if defined(_SC_LEVEL3_CACHE_SIZE)
  if (bytes == 0) {
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    bytes = l3 > 0 ? static_cast<size_t>(l3) : 0;
  }
#endif
#endif
  return bytes > 0 ? bytes : size_t(32) << 20;
}

// Bytes above which an output is written with streaming stores: half the last-level cache, so that outputs a
// consumer could still find in the cache keep normal stores.
inline size_t streaming_threshold_bytes() {
  static const size_t threshold = last_level_cache_bytes() / 2;
  return threshold;
}

inline void stream_copy(void* dst, const void* src, size_t bytes) {
#if defined(__SSE2__)
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
#if defined(__AVX__)
  constexpr size_t kVec = 32;
#else
  constexpr size_t kVec = 16;
#endif
  size_t head = (kVec - (reinterpret_cast<uintptr_t>(d) & (kVec - 1))) & (kVec - 1);
  if (head > bytes) head = bytes;
  std::memcpy(d, s, head);
  d += head;
  s += head;
  bytes -= head;
  for (; bytes >= 2 * kVec; bytes -= 2 * kVec, d += 2 * kVec, s += 2 * kVec) {
#if defined(__AVX__)
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + kVec));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + kVec), b);
#else
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + kVec));
    _mm_stream_si128(reinterpret_cast<__m128i*>(d), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + kVec), b);
#endif
  }
  std::memcpy(d, s, bytes);
#else
  std::memcpy(dst, src, bytes);
#endif
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace pvf
