// 32-byte vectors through GCC/Clang vector extensions, for the loops compilers do not vectorise on their own:
// floating-point reductions (no reassociation without -ffast-math) and loops where they pick slow masked loads.
// Reductions keep two accumulators in registers; lane order differs from a serial sum, like any SIMD sum.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace pvf {
namespace simd {

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int lanes = 32 / sizeof(T);
};

template <typename T>
inline typename Vec<T>::type load(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store(T* p, typename Vec<T>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

// p[0..n) in the first n lanes, zeros in the others (0 <= n <= lanes); reads nothing past p + n.
template <typename T>
inline typename Vec<T>::type load_first(const T* p, int64_t n) {
  typename Vec<T>::type v{};
#if defined(__AVX2__)
  alignas(32) static constexpr int32_t kMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  if constexpr (sizeof(T) == 4 && Vec<T>::lanes == 8) {
    const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask + 8 - n));
    const __m256 r = _mm256_maskload_ps(reinterpret_cast<const float*>(p), m);
    std::memcpy(&v, &r, sizeof(v));
    return v;
  } else if constexpr (sizeof(T) == 8 && Vec<T>::lanes == 4) {
    const __m256i m = _mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kMask + 8 - n)));
    const __m256d r = _mm256_maskload_pd(reinterpret_cast<const double*>(p), m);
    std::memcpy(&v, &r, sizeof(v));
    return v;
  }
#endif
  for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
}

template <typename T>
inline T horizontal_sum(typename Vec<T>::type v) {
  T s = 0;
  for (int i = 0; i < Vec<T>::lanes; ++i) s += v[i];
  return s;
}

// sum_i a[i] * b[i]
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  V s0 = V{}, s1 = V{};
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    s0 += load(a + i) * load(b + i);
    s1 += load(a + i + L) * load(b + i + L);
  }
  for (; i + L <= n; i += L) s0 += load(a + i) * load(b + i);
  T s = horizontal_sum<T>(s0 + s1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// sum_i a[i]
template <typename T>
inline T sum(const T* a, int64_t n) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  V s0 = V{}, s1 = V{};
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    s0 += load(a + i);
    s1 += load(a + i + L);
  }
  for (; i + L <= n; i += L) s0 += load(a + i);
  T s = horizontal_sum<T>(s0 + s1);
  for (; i < n; ++i) s += a[i];
  return s;
}

// sum_i (a[i] - c)^2
template <typename T>
inline T centred_sum_of_squares(const T* a, T c, int64_t n) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  const V cv = V{} + c;
  V s0 = V{}, s1 = V{};
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    const V d0 = load(a + i) - cv, d1 = load(a + i + L) - cv;
    s0 += d0 * d0;
    s1 += d1 * d1;
  }
  for (; i + L <= n; i += L) {
    const V d = load(a + i) - cv;
    s0 += d * d;
  }
  T s = horizontal_sum<T>(s0 + s1);
  for (; i < n; ++i) s += (a[i] - c) * (a[i] - c);
  return s;
}

}  // namespace simd
}  // namespace pvf
