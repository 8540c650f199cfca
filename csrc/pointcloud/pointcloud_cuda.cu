// CUDA point-cloud kernels. Storage types float32/float64/float16/bfloat16; arithmetic in acc_t<T>
// (float for the half types). Launch errors are reported as pvf::DeviceError.
#include <cuda_runtime.h>

#include "common/cuda_dispatch.cuh"
#include "common/cuda_utils.cuh"
#include "pointcloud/pointcloud.h"
#include "pointcloud/pointcloud_math.h"

namespace pvf {
namespace pointcloud {
namespace {

constexpr int kThreads = 256;

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

template <typename T>
__device__ __forceinline__ acc_t<T> sq_dist(const T* a, const T* b, int64_t D) {
  acc_t<T> s = 0;
  for (int64_t d = 0; d < D; ++d) {
    const acc_t<T> diff = to_acc(a[d]) - to_acc(b[d]);
    s += diff * diff;
  }
  return s;
}

// ------------------------------------------------------------------ farthest point sampling
// One block per cloud; each iteration updates the distances in a strided loop and reduces
// (max distance, lowest index) across the block.
template <typename T, int THREADS>
__global__ void fps_kernel(const T* __restrict__ points, int64_t N, int64_t D, const int64_t* __restrict__ lengths,
                           const int64_t* __restrict__ start, int64_t K, int64_t* __restrict__ idx,
                           acc_t<T>* __restrict__ workspace) {
  using A = acc_t<T>;
  __shared__ A s_val[THREADS];
  __shared__ int64_t s_idx[THREADS];
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t n = cloud_length(lengths, b, N);
  const T* p = points + b * N * D;
  A* dist = workspace + b * N;
  int64_t* out = idx + b * K;
  for (int64_t i = tid; i < n; i += THREADS) dist[i] = acc_infinity<T>();
  const int64_t k_valid = K < n ? K : n;
  int64_t sel = start ? start[b] : 0;
  __syncthreads();
  for (int64_t k = 0; k < k_valid; ++k) {
    if (tid == 0) out[k] = sel;
    if (k + 1 == k_valid) break;
    const T* q = p + sel * D;
    A best = A(-1);
    int64_t best_i = n;
    for (int64_t i = tid; i < n; i += THREADS) {
      const A d = sq_dist(p + i * D, q, D);
      const A m = d < dist[i] ? d : dist[i];
      dist[i] = m;
      if (m > best) {
        best = m;
        best_i = i;
      }
    }
    s_val[tid] = best;
    s_idx[tid] = best_i;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
      if (tid < s) {
        const A v = s_val[tid + s];
        const int64_t j = s_idx[tid + s];
        if (v > s_val[tid] || (v == s_val[tid] && j < s_idx[tid])) {
          s_val[tid] = v;
          s_idx[tid] = j;
        }
      }
      __syncthreads();
    }
    sel = s_idx[0];
    __syncthreads();
  }
  for (int64_t k = k_valid + tid; k < K; k += THREADS) out[k] = -1;
}

// ------------------------------------------------------------------ kNN: one thread per query
// MAXK > 0 keeps the running top-K in registers/local memory; MAXK == 0 inserts straight into the output
// rows (any K).
template <typename T, int MAXK>
__global__ void knn_kernel(const T* __restrict__ p1, const T* __restrict__ p2, int64_t B, int64_t P1, int64_t P2,
                           int64_t D, const int64_t* __restrict__ lengths1, const int64_t* __restrict__ lengths2,
                           int64_t K, T* __restrict__ dists, int64_t* __restrict__ idx) {
  using A = acc_t<T>;
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < B * P1; q += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = q / P1;
    const int64_t i = q % P1;
    T* dr = dists + q * K;
    int64_t* ir = idx + q * K;
    int64_t count = 0;
    if (i < cloud_length(lengths1, b, P1)) {
      const int64_t n2 = cloud_length(lengths2, b, P2);
      const T* pq = p1 + q * D;
      const T* pb = p2 + b * P2 * D;
      if constexpr (MAXK > 0) {
        A ld[MAXK];
        int64_t li[MAXK];
        for (int64_t j = 0; j < n2; ++j) count = topk_insert<A, A>(ld, li, count, K, sq_dist(pq, pb + j * D, D), j);
        for (int64_t k = 0; k < count; ++k) {
          dr[k] = from_acc<T>(ld[k]);
          ir[k] = li[k];
        }
      } else {
        for (int64_t j = 0; j < n2; ++j) count = topk_insert<A, T>(dr, ir, count, K, sq_dist(pq, pb + j * D, D), j);
      }
    }
    for (int64_t k = count; k < K; ++k) {
      dr[k] = from_acc<T>(A(0));
      ir[k] = 0;
    }
  }
}

template <typename T>
__global__ void ball_query_kernel(const T* __restrict__ p1, const T* __restrict__ p2, int64_t B, int64_t P1,
                                  int64_t P2, int64_t D, const int64_t* __restrict__ lengths1,
                                  const int64_t* __restrict__ lengths2, int64_t K, acc_t<T> r2,
                                  T* __restrict__ dists, int64_t* __restrict__ idx) {
  using A = acc_t<T>;
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < B * P1; q += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = q / P1;
    const int64_t i = q % P1;
    T* dr = dists + q * K;
    int64_t* ir = idx + q * K;
    int64_t count = 0;
    if (i < cloud_length(lengths1, b, P1)) {
      const int64_t n2 = cloud_length(lengths2, b, P2);
      const T* pq = p1 + q * D;
      const T* pb = p2 + b * P2 * D;
      for (int64_t j = 0; j < n2 && count < K; ++j) {
        const A d = sq_dist(pq, pb + j * D, D);
        if (d < r2) {
          dr[count] = from_acc<T>(d);
          ir[count] = j;
          ++count;
        }
      }
    }
    for (int64_t k = count; k < K; ++k) {
      dr[k] = from_acc<T>(A(0));
      ir[k] = -1;
    }
  }
}

// ------------------------------------------------------------------ gathers and interpolation
template <typename T>
__global__ void gather_columns_kernel(const T* __restrict__ f, int64_t B, int64_t C, int64_t N,
                                      const int64_t* __restrict__ idx, int64_t M, T* __restrict__ out) {
  const int64_t total = B * C * M;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = t % M;
    const int64_t r = t / M;  // b * C + c
    out[t] = f[r * N + idx[(r / C) * M + m]];
  }
}

// Accumulation buffer type of the scatter-add gradients: float for half types.
template <typename T> struct GradBuf { using type = T; };
template <> struct GradBuf<__half> { using type = float; };
template <> struct GradBuf<__nv_bfloat16> { using type = float; };

template <typename T>
__global__ void gather_columns_backward_kernel(const T* __restrict__ g, int64_t B, int64_t C, int64_t N,
                                               const int64_t* __restrict__ idx, int64_t M,
                                               typename GradBuf<T>::type* __restrict__ gf) {
  const int64_t total = B * C * M;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = t % M;
    const int64_t r = t / M;
    atomicAdd(gf + r * N + idx[(r / C) * M + m], static_cast<typename GradBuf<T>::type>(to_acc(g[t])));
  }
}

template <typename T>
__global__ void three_interpolate_kernel(const T* __restrict__ f, int64_t B, int64_t C, int64_t M,
                                         const int64_t* __restrict__ idx, const T* __restrict__ w, int64_t N,
                                         T* __restrict__ out) {
  const int64_t total = B * C * N;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t % N;
    const int64_t r = t / N;
    const int64_t base = ((r / C) * N + n) * 3;
    const T* fr = f + r * M;
    acc_t<T> s = 0;
    for (int j = 0; j < 3; ++j) s += to_acc(w[base + j]) * to_acc(fr[idx[base + j]]);
    out[t] = from_acc<T>(s);
  }
}

template <typename T>
__global__ void three_interpolate_grad_features_kernel(const T* __restrict__ g, int64_t B, int64_t C, int64_t M,
                                                       const int64_t* __restrict__ idx, const T* __restrict__ w,
                                                       int64_t N, typename GradBuf<T>::type* __restrict__ gf) {
  using G = typename GradBuf<T>::type;
  const int64_t total = B * C * N;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t % N;
    const int64_t r = t / N;
    const int64_t base = ((r / C) * N + n) * 3;
    const acc_t<T> gv = to_acc(g[t]);
    for (int j = 0; j < 3; ++j) atomicAdd(gf + r * M + idx[base + j], static_cast<G>(to_acc(w[base + j]) * gv));
  }
}

template <typename T>
__global__ void three_interpolate_grad_weight_kernel(const T* __restrict__ g, const T* __restrict__ f, int64_t B,
                                                     int64_t C, int64_t M, const int64_t* __restrict__ idx, int64_t N,
                                                     T* __restrict__ gw) {
  const int64_t total = B * N * 3;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = t / (N * 3);
    const int64_t n = (t / 3) % N;
    const int64_t src = idx[t];
    acc_t<T> s = 0;
    for (int64_t c = 0; c < C; ++c) s += to_acc(g[(b * C + c) * N + n]) * to_acc(f[(b * C + c) * M + src]);
    gw[t] = from_acc<T>(s);
  }
}

__global__ void index_range_kernel(const int64_t* __restrict__ idx, int64_t n, int64_t lo, int64_t hi,
                                   int32_t* __restrict__ flag) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x)
    if (idx[t] < lo || idx[t] >= hi) *flag = 1;
}

}  // namespace

void sample_farthest_points_cuda(DType dtype, const void* points, int64_t B, int64_t N, int64_t D,
                                 const int64_t* lengths, const int64_t* start, int64_t K, int64_t* idx,
                                 void* workspace, void* stream) {
  if (B == 0) return;
  dispatch_floating_and_half(dtype, "sample_farthest_points", [&](auto tag) {
    using T = typename decltype(tag)::type;
    fps_kernel<T, 512><<<static_cast<unsigned>(B), 512, 0, as_stream(stream)>>>(
        static_cast<const T*>(points), N, D, lengths, start, K, idx, static_cast<acc_t<T>*>(workspace));
  });
  PVF_CUDA_CHECK_LAUNCH("sample_farthest_points");
}

void knn_cuda(DType dtype, const void* p1, const void* p2, int64_t B, int64_t P1, int64_t P2, int64_t D,
              const int64_t* lengths1, const int64_t* lengths2, int64_t K, void* dists, int64_t* idx, void* stream) {
  if (B * P1 == 0) return;
  dispatch_floating_and_half(dtype, "knn_points", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto grid = grid_for(B * P1, kThreads);
    auto args = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, as_stream(stream)>>>(static_cast<const T*>(p1), static_cast<const T*>(p2), B, P1,
                                                      P2, D, lengths1, lengths2, K, static_cast<T*>(dists), idx);
    };
    if (K <= 16) args(knn_kernel<T, 16>);
    else if (K <= 64) args(knn_kernel<T, 64>);
    else if (K <= 128) args(knn_kernel<T, 128>);
    else args(knn_kernel<T, 0>);
  });
  PVF_CUDA_CHECK_LAUNCH("knn_points");
}

void ball_query_cuda(DType dtype, const void* p1, const void* p2, int64_t B, int64_t P1, int64_t P2, int64_t D,
                     const int64_t* lengths1, const int64_t* lengths2, int64_t K, double radius, void* dists,
                     int64_t* idx, void* stream) {
  if (B * P1 == 0) return;
  dispatch_floating_and_half(dtype, "ball_query", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const acc_t<T> r2 = static_cast<acc_t<T>>(radius * radius);
    ball_query_kernel<T><<<grid_for(B * P1, kThreads), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(p1), static_cast<const T*>(p2), B, P1, P2, D, lengths1, lengths2, K, r2,
        static_cast<T*>(dists), idx);
  });
  PVF_CUDA_CHECK_LAUNCH("ball_query");
}

void gather_columns_cuda(DType dtype, const void* features, int64_t B, int64_t C, int64_t N, const int64_t* idx,
                         int64_t M, void* out, void* stream) {
  if (B * C * M == 0) return;
  dispatch_floating_and_half(dtype, "gather_points", [&](auto tag) {
    using T = typename decltype(tag)::type;
    gather_columns_kernel<T><<<grid_for(B * C * M, kThreads), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(features), B, C, N, idx, M, static_cast<T*>(out));
  });
  PVF_CUDA_CHECK_LAUNCH("gather_points");
}

void gather_columns_backward_cuda(DType dtype, const void* grad_out, int64_t B, int64_t C, int64_t N,
                                  const int64_t* idx, int64_t M, void* grad_features, void* stream) {
  dispatch_floating_and_half(dtype, "gather_points_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using G = typename GradBuf<T>::type;
    cuda_check(cudaMemsetAsync(grad_features, 0, sizeof(G) * B * C * N, as_stream(stream)), "gather_points_backward");
    if (B * C * M == 0) return;
    gather_columns_backward_kernel<T><<<grid_for(B * C * M, kThreads), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(grad_out), B, C, N, idx, M, static_cast<G*>(grad_features));
  });
  PVF_CUDA_CHECK_LAUNCH("gather_points_backward");
}

void three_interpolate_cuda(DType dtype, const void* features, int64_t B, int64_t C, int64_t M, const int64_t* idx,
                            const void* weight, int64_t N, void* out, void* stream) {
  if (B * C * N == 0) return;
  dispatch_floating_and_half(dtype, "three_interpolate", [&](auto tag) {
    using T = typename decltype(tag)::type;
    three_interpolate_kernel<T><<<grid_for(B * C * N, kThreads), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(features), B, C, M, idx, static_cast<const T*>(weight), N, static_cast<T*>(out));
  });
  PVF_CUDA_CHECK_LAUNCH("three_interpolate");
}

void three_interpolate_backward_cuda(DType dtype, const void* grad_out, const void* features, int64_t B, int64_t C,
                                     int64_t M, const int64_t* idx, const void* weight, int64_t N,
                                     void* grad_features, void* grad_weight, void* stream) {
  dispatch_floating_and_half(dtype, "three_interpolate_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using G = typename GradBuf<T>::type;
    if (grad_features) {
      cuda_check(cudaMemsetAsync(grad_features, 0, sizeof(G) * B * C * M, as_stream(stream)),
                 "three_interpolate_backward");
      if (B * C * N > 0)
        three_interpolate_grad_features_kernel<T><<<grid_for(B * C * N, kThreads), kThreads, 0, as_stream(stream)>>>(
            static_cast<const T*>(grad_out), B, C, M, idx, static_cast<const T*>(weight), N,
            static_cast<G*>(grad_features));
    }
    if (grad_weight && B * N > 0)
      three_interpolate_grad_weight_kernel<T><<<grid_for(B * N * 3, kThreads), kThreads, 0, as_stream(stream)>>>(
          static_cast<const T*>(grad_out), static_cast<const T*>(features), B, C, M, idx, N,
          static_cast<T*>(grad_weight));
  });
  PVF_CUDA_CHECK_LAUNCH("three_interpolate_backward");
}

void index_out_of_range_cuda(const int64_t* idx, int64_t n, int64_t lo, int64_t hi, int32_t* flag, void* stream) {
  cuda_check(cudaMemsetAsync(flag, 0, sizeof(int32_t), as_stream(stream)), "index check");
  if (n == 0) return;
  index_range_kernel<<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(idx, n, lo, hi, flag);
  PVF_CUDA_CHECK_LAUNCH("index check");
}

}  // namespace pointcloud
}  // namespace pvf
