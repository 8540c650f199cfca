// Shared pieces of the candidate ("cuda:next") point-cloud kernels: distance keys, warp reductions, length
// clamping and the launch helpers.
//
// The kernels in pointcloud_next_*.cuh are written so that they also compile as plain C++ against the SIMT
// emulation of tests/simt (PVF_SIMT_EMULATION: one host thread per CUDA thread, real barriers and warp
// collectives), which is how they are executed on machines without a GPU. Hence: launches go through
// PVF_LAUNCH, dynamic shared memory through PVF_DYNAMIC_SMEM, and only the intrinsics that the emulation
// provides are used (full-mask *_sync collectives, __syncthreads, atomicAdd, bit casts).
#pragma once
#include <climits>
#include <cstdint>

#if defined(PVF_SIMT_EMULATION)
#include "simt_emulation.h"
#else
#include <cuda_runtime.h>

#include "common/cuda_utils.cuh"
#define PVF_LAUNCH(kernel, grid, block, smem, stream) kernel<<<(grid), (block), (smem), (stream)>>>
#define PVF_DYNAMIC_SMEM(type, name)                            \
  extern __shared__ __align__(16) unsigned char name##_bytes[]; \
  type* name = reinterpret_cast<type*>(name##_bytes)
#endif

namespace pvf {
namespace pointcloud {
namespace next {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr unsigned kNoIndex = 0xffffffffu;

// A squared distance as an unsigned integer with the same order: distances are sums of squares, so they are
// +0, positive, +inf or NaN, and the bit pattern of a non-negative IEEE value orders like the value. NaN
// (canonical 0x7fff... on the GPU) orders after +inf; kPad (all ones) after everything, for empty slots.
// Integer keys make every comparison exact and give NaN a place, as torch.sort does.
template <typename A>
struct DistKey;

template <>
struct DistKey<float> {
  using type = unsigned int;
  static constexpr type kPad = 0xffffffffu;
  static __device__ __forceinline__ type of(float d) { return __float_as_uint(d); }
  static __device__ __forceinline__ float value(type k) { return __uint_as_float(k); }
};

template <>
struct DistKey<double> {
  using type = unsigned long long;
  static constexpr type kPad = ~0ull;
  static __device__ __forceinline__ type of(double d) { return static_cast<type>(__double_as_longlong(d)); }
  static __device__ __forceinline__ double value(type k) { return __longlong_as_double(static_cast<long long>(k)); }
};

// Warp-wide max / min of every lane's value; all 32 lanes must call (full mask).
__device__ __forceinline__ unsigned warp_max(unsigned v) {
#if !defined(PVF_SIMT_EMULATION) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned w = __shfl_xor_sync(kFullMask, v, o);
    v = w > v ? w : v;
  }
  return v;
#else
  return __reduce_max_sync(kFullMask, v);
#endif
}

__device__ __forceinline__ unsigned warp_min(unsigned v) {
#if !defined(PVF_SIMT_EMULATION) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned w = __shfl_xor_sync(kFullMask, v, o);
    v = w < v ? w : v;
  }
  return v;
#else
  return __reduce_min_sync(kFullMask, v);
#endif
}

__device__ __forceinline__ unsigned long long warp_max(unsigned long long v) {
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long w = __shfl_xor_sync(kFullMask, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// The number of valid points of cloud b: lengths[b] clamped to [0, full] (the candidate bindings do not read
// lengths back to the host to validate them, so the kernels must never trust them).
__device__ __forceinline__ int clamped_length(const int64_t* lengths, int b, int full) {
  if (lengths == nullptr) return full;
  const int64_t v = lengths[b];
  return v < 0 ? 0 : (v > full ? full : static_cast<int>(v));
}

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Largest dynamic shared memory one block of the current device may use (opt-in limit), cached per device.
inline int max_dynamic_smem() {
#if defined(PVF_SIMT_EMULATION)
  return simt::max_dynamic_smem;
#else
  static int cached[64] = {};
  int dev = 0;
  cuda_check(cudaGetDevice(&dev), "point-cloud kernels");
  if (dev < 0 || dev >= 64) return 48 * 1024;
  if (cached[dev] == 0) {
    int v = 0;
    cuda_check(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "point-cloud kernels");
    cached[dev] = v > 0 ? v : 48 * 1024;
  }
  return cached[dev];
#endif
}

// Allows `kernel` to be launched with `bytes` of dynamic shared memory (needed above 48 KiB).
template <typename Kernel>
inline void allow_dynamic_smem(Kernel kernel, int bytes) {
#if defined(PVF_SIMT_EMULATION)
  (void)kernel;
  (void)bytes;
#else
  if (bytes > 48 * 1024)
    cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
               "point-cloud kernels");
#endif
}

}  // namespace next
}  // namespace pointcloud
}  // namespace pvf
