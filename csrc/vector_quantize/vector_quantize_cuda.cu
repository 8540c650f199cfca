// CUDA vector quantisation: fused distance + argmin, the (N, K) distance matrix never exists.
//
// Small fixed D (1, 2, 3, 4, 8; VQGAN f8's codebook has D = 4): a block of kThreads threads owns kRows * kThreads
// vectors (rows r * kThreads + threadIdx.x of its range, so that the loads of z and the stores of z_q coalesce),
// each thread keeping its kRows vectors in registers in the accumulation type. The block stages the codebook in
// shared memory, one tile of up to kTileBytes at a time (converted to the accumulation type once), and every thread
// scans the tile: all threads read the same code at the same time (a shared-memory broadcast), and each code's
// kRows * D differences, squares and adds run from registers. The running minimum per vector is updated with a
// strict < in increasing code order: the lowest index wins ties, NaN never wins (vector_quantize_math.h).
//
// Any other D: one thread per vector, codes read from global memory (every thread of a warp reads the same code,
// served by L1), the vector itself re-read from global memory per code (L1/L2).
//
// half / bfloat16 accumulate in float, float64 in double. z_q copies the chosen rows in the storage type.
#include <cuda_runtime.h>

#include "common/cuda_dispatch.cuh"
#include "common/cuda_utils.cuh"
#include "vector_quantize/vector_quantize.h"
#include "vector_quantize/vector_quantize_math.h"

namespace pvf {
namespace vector_quantize {
namespace {

constexpr int kThreads = 256;
constexpr int kRows = 2;
constexpr int64_t kTileBytes = 32 << 10;

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

template <typename T>
__device__ __forceinline__ void copy_row(const T* __restrict__ codebook, int64_t k, int64_t D, T* __restrict__ out) {
  const T* e = codebook + k * D;
  for (int64_t d = 0; d < D; ++d) out[d] = e[d];
}

// D a compile-time constant, codebook tiles in shared memory. (No __launch_bounds__: with it, ptxas 13 spilled
// 4 bytes of the float16 D = 1 instantiation at 32 registers; without it none spills.)
template <typename T, int D>
__global__ void quantize_tiled_kernel(const T* __restrict__ z, const T* __restrict__ codebook, int64_t N, int64_t K,
                                      int tile_codes, T* __restrict__ z_q, int64_t* __restrict__ indices) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* tile = reinterpret_cast<A*>(smem_raw);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * (kThreads * kRows) + threadIdx.x;
  A zr[kRows][D];
  A best[kRows];
  int64_t best_k[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t i = first + r * kThreads;
    const int64_t row = i < N ? i : N - 1;  // rows past N compute on a valid row and store nothing
#pragma unroll
    for (int d = 0; d < D; ++d) zr[r][d] = to_acc(z[row * D + d]);
    best[r] = acc_infinity<T>();
    best_k[r] = 0;
  }
  for (int64_t k0 = 0; k0 < K; k0 += tile_codes) {
    const int n = static_cast<int>(K - k0 < tile_codes ? K - k0 : tile_codes);
    __syncthreads();  // the previous tile has been read by every thread
    const T* src = codebook + k0 * D;
    for (int e = threadIdx.x; e < n * D; e += kThreads) tile[e] = to_acc(src[e]);
    __syncthreads();
    for (int c = 0; c < n; ++c) {
      A e[D];
#pragma unroll
      for (int d = 0; d < D; ++d) e[d] = tile[c * D + d];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        A s = A(0);
#pragma unroll
        for (int d = 0; d < D; ++d) {
          const A diff = zr[r][d] - e[d];
          s += diff * diff;
        }
        argmin_update<A>(s, k0 + c, best[r], best_k[r]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t i = first + r * kThreads;
    if (i < N) {
      indices[i] = best_k[r];
      if (z_q != nullptr) copy_row(codebook, best_k[r], D, z_q + i * D);
    }
  }
}

// Any D: one thread per vector, operands from global memory.
template <typename T>
__global__ void __launch_bounds__(kThreads) quantize_generic_kernel(const T* __restrict__ z,
                                                                    const T* __restrict__ codebook, int64_t N,
                                                                    int64_t K, int64_t D, T* __restrict__ z_q,
                                                                    int64_t* __restrict__ indices) {
  using A = acc_t<T>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= N) return;
  const T* q = z + i * D;
  A best = acc_infinity<T>();
  int64_t best_k = 0;
  for (int64_t k = 0; k < K; ++k) {
    const T* e = codebook + k * D;
    A s = A(0);
    for (int64_t d = 0; d < D; ++d) {
      const A diff = to_acc(q[d]) - to_acc(e[d]);
      s += diff * diff;
    }
    argmin_update<A>(s, k, best, best_k);
  }
  indices[i] = best_k;
  if (z_q != nullptr) copy_row(codebook, best_k, D, z_q + i * D);
}

template <typename T, int D>
void launch_tiled(const T* z, const T* codebook, int64_t N, int64_t K, T* z_q, int64_t* indices, cudaStream_t s) {
  using A = acc_t<T>;
  const int64_t per_tile = kTileBytes / (D * static_cast<int64_t>(sizeof(A)));
  const int tile_codes = static_cast<int>(K < per_tile ? K : per_tile);
  const size_t smem = static_cast<size_t>(tile_codes) * D * sizeof(A);
  const int64_t blocks = ceil_div(N, int64_t(kThreads) * kRows);
  quantize_tiled_kernel<T, D><<<static_cast<unsigned int>(blocks), kThreads, smem, s>>>(z, codebook, N, K,
                                                                                         tile_codes, z_q, indices);
  PVF_CUDA_CHECK_LAUNCH("vector_quantize");
}

}  // namespace

void vector_quantize_cuda(DType dtype, const void* z, const void* codebook, int64_t N, int64_t K, int64_t D,
                          void* z_q, int64_t* indices, void* stream) {
  if (N <= 0) return;
  if (ceil_div(N, kThreads) > 0x7fffffffLL)
    throw ValueError(str("vector_quantize: ", N, " vectors exceed the CUDA grid (at most 2^31 - 1 blocks of ",
                         kThreads, ")"));
  const cudaStream_t s = as_stream(stream);
  dispatch_floating_and_half(dtype, "vector_quantize", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* zt = static_cast<const T*>(z);
    const T* cb = static_cast<const T*>(codebook);
    T* out = static_cast<T*>(z_q);
    switch (D) {
      case 1: launch_tiled<T, 1>(zt, cb, N, K, out, indices, s); return;
      case 2: launch_tiled<T, 2>(zt, cb, N, K, out, indices, s); return;
      case 3: launch_tiled<T, 3>(zt, cb, N, K, out, indices, s); return;
      case 4: launch_tiled<T, 4>(zt, cb, N, K, out, indices, s); return;
      case 8: launch_tiled<T, 8>(zt, cb, N, K, out, indices, s); return;
      default: break;
    }
    quantize_generic_kernel<T><<<static_cast<unsigned int>(ceil_div(N, kThreads)), kThreads, 0, s>>>(
        zt, cb, N, K, D, out, indices);
    PVF_CUDA_CHECK_LAUNCH("vector_quantize");
  });
}

}  // namespace vector_quantize
}  // namespace pvf
