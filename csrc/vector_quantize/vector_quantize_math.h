// Math shared by the CPU and CUDA vector-quantisation kernels.
#pragma once
#include <cstdint>

#include "common/macros.h"

namespace pvf {
namespace vector_quantize {

// Running minimum in scan order: (d, k) replaces (best, best_k) only when d is strictly smaller, so scanning codes
// by increasing index keeps the lowest index among equal distances, and a NaN distance never replaces anything.
template <typename Acc>
PVF_HOST_DEVICE void argmin_update(Acc d, int64_t k, Acc& best, int64_t& best_k) {
  if (d < best) {
    best = d;
    best_k = k;
  }
}

// Merges two partial minima over disjoint sets of codes (SIMD lanes, codebook blocks, threads): the smaller
// distance, the lower index on equal distances; a NaN never wins.
template <typename Acc>
PVF_HOST_DEVICE void argmin_merge(Acc d, int64_t k, Acc& best, int64_t& best_k) {
  if (d < best || (d == best && k < best_k)) {
    best = d;
    best_k = k;
  }
}

// Squared Euclidean distance summed from the differences, in the accumulation type, channel 0 first.
template <typename Acc, typename T>
PVF_HOST_DEVICE Acc squared_distance(const T* a, const T* b, int64_t D) {
  Acc s = 0;
  for (int64_t d = 0; d < D; ++d) {
    const Acc diff = static_cast<Acc>(a[d]) - static_cast<Acc>(b[d]);
    s += diff * diff;
  }
  return s;
}

}  // namespace vector_quantize
}  // namespace pvf
