// CUDA blocks of the tiled filter bank (filter_bank_tiled.h holds their bodies, shared with the host emulator).
#pragma once
#include <cuda_runtime.h>

#include "common/cuda_utils.cuh"
#include "scale_space/filter_bank_tiled.h"

namespace pvf {
namespace scale_space {
namespace tiled {

struct DeviceCtx {
  __device__ __forceinline__ int tid() const { return threadIdx.x; }
  __device__ __forceinline__ int nthreads() const { return blockDim.x; }
  __device__ __forceinline__ int64_t block() const { return blockIdx.x; }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  template <typename A>
  __device__ __forceinline__ A* shared() const {
    extern __shared__ __align__(16) unsigned char pvf_tiled_smem[];
    return reinterpret_cast<A*>(pvf_tiled_smem);
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(Geometry g, const T* __restrict__ x,
                                                           const T* __restrict__ kernels, T* __restrict__ out) {
  forward_block<acc_t<T>, T>(DeviceCtx{}, g, x, kernels, out);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) backward_kernel(Geometry g, const T* __restrict__ x,
                                                            const T* __restrict__ grad_out,
                                                            const T* __restrict__ kernels, T* __restrict__ grad_x,
                                                            acc_t<T>* __restrict__ partial) {
  backward_block<acc_t<T>, T>(DeviceCtx{}, g, x, grad_out, kernels, grad_x, partial);
}

template <typename A>
__global__ void __launch_bounds__(kReduceThreads) reduce_kernel(int64_t blocks, const A* __restrict__ partial,
                                                                A* __restrict__ out) {
  __shared__ double red[kReduceThreads];
  reduce_block<A>(DeviceCtx{}, blocks, partial, out, red);
}

}  // namespace tiled
}  // namespace scale_space
}  // namespace pvf
