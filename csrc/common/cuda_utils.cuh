// CUDA helpers: error checks after every runtime call and launch, grid sizing, and the
// conversions between storage types (half, bfloat16) and the float accumulation type.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/errors.h"

namespace pvf {

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state so later calls can proceed
    throw DeviceError(str(what, ": CUDA error ", static_cast<int>(err), " (", cudaGetErrorString(err), ")"));
  }
}

// After a <<<...>>> launch: reports configuration errors (bad grid, no device, no kernel image for this GPU).
#define PVF_CUDA_CHECK_LAUNCH(what) ::pvf::cuda_check(cudaGetLastError(), what)

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid size for a grid-stride loop over n items, capped to keep launches cheap.
inline unsigned int grid_for(int64_t n, int threads, int64_t cap = 65535LL * 8) {
  int64_t blocks = ceil_div(n, threads);
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned int>(blocks > cap ? cap : blocks);
}

// Accumulation type: float for half/bfloat16 storage, the type itself otherwise.
template <typename T> struct AccType { using type = T; };
template <> struct AccType<__half> { using type = float; };
template <> struct AccType<__nv_bfloat16> { using type = float; };
template <typename T> using acc_t = typename AccType<T>::type;

template <typename T> __device__ __forceinline__ acc_t<T> to_acc(T v) { return v; }
template <> __device__ __forceinline__ float to_acc<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

template <typename T> __device__ __forceinline__ acc_t<T> acc_infinity();
template <> __device__ __forceinline__ float acc_infinity<float>() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double acc_infinity<double>() { return __longlong_as_double(0x7ff0000000000000LL); }
template <> __device__ __forceinline__ float acc_infinity<__half>() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ float acc_infinity<__nv_bfloat16>() { return __int_as_float(0x7f800000); }

}  // namespace pvf
