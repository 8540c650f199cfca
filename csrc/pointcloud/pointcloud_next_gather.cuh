// Candidate ("cuda:next") gather kernels: column gather and its scatter-add adjoint (gather_points,
// grouping_operation), three-point interpolation and its gradients, and the gradient of neighbour distances
// (knn_points / ball_query backward).
//
// Out-of-range indices never touch memory: the candidate bindings do not range-check indices on the host
// (that needs a device-to-host copy and a synchronisation per call), so every kernel here skips an index
// outside [0, N): a gathered value reads as 0, a scattered gradient is dropped.
#pragma once
#include "pointcloud/pointcloud_next_common.cuh"

namespace pvf {
namespace pointcloud {
namespace next {

constexpr int kGatherThreads = 512;
constexpr int kGatherSmemBudget = 100 * 1024;  // per block: keeps two blocks per SM

constexpr int kGatherUnroll = 4;  // independent loads in flight per thread

__device__ __forceinline__ bool index_ok(int64_t j, int n) {
  return static_cast<uint64_t>(j) < static_cast<uint64_t>(n);
}

// dst[e] = src[e] for e < n, by the block, kGatherUnroll loads in flight per thread.
template <typename S, typename D>
__device__ __forceinline__ void block_copy(const S* __restrict__ src, D* __restrict__ dst, int n) {
  const int nt = blockDim.x;
  int e = threadIdx.x;
  for (; e + (kGatherUnroll - 1) * nt < n; e += kGatherUnroll * nt) {
    S v[kGatherUnroll];
#pragma unroll
    for (int u = 0; u < kGatherUnroll; ++u) v[u] = src[e + u * nt];
#pragma unroll
    for (int u = 0; u < kGatherUnroll; ++u) dst[e + u * nt] = static_cast<D>(v[u]);
  }
  for (; e < n; e += nt) dst[e] = static_cast<D>(src[e]);
}

// -------------------------------------------------------------------- column gather
// Shared-memory path: one block per (cloud b, group of G channels). The block copies the G feature rows
// (G * N values, contiguous) into shared memory, then reads each index once for all G channels: the random
// reads hit shared memory, the index reads are shared by G channels, and the writes are coalesced rows.
template <typename T, int G>
__global__ void __launch_bounds__(kGatherThreads, 1)
    gather_smem_kernel(const T* __restrict__ f, int C, int N, const int64_t* __restrict__ idx, int M, int groups,
                       T* __restrict__ out) {
  PVF_DYNAMIC_SMEM(T, s_rows);
  const int b = blockIdx.x / groups;
  const int c0 = (blockIdx.x - b * groups) * G;
  const int rows = imin(G, C - c0);
  block_copy(f + (static_cast<int64_t>(b) * C + c0) * N, s_rows, rows * N);
  __syncthreads();
  const int64_t* ib = idx + static_cast<int64_t>(b) * M;
  T* ob = out + (static_cast<int64_t>(b) * C + c0) * M;
  const T zero = from_acc<T>(acc_t<T>(0));
  const int nt = blockDim.x;
  for (int m0 = threadIdx.x; m0 < M; m0 += kGatherUnroll * nt) {
    int64_t j[kGatherUnroll];
#pragma unroll
    for (int u = 0; u < kGatherUnroll; ++u) j[u] = m0 + u * nt < M ? ib[m0 + u * nt] : -1;
#pragma unroll
    for (int u = 0; u < kGatherUnroll; ++u) {
      const int m = m0 + u * nt;
      if (m >= M) break;
      const bool ok = index_ok(j[u], N);
      const int jj = ok ? static_cast<int>(j[u]) : 0;
#pragma unroll
      for (int g = 0; g < G; ++g)
        if (g < rows) ob[static_cast<int64_t>(g) * M + m] = ok ? s_rows[g * N + jj] : zero;
    }
  }
}

// Global path: one thread per output value, blocks along one (b, c) row; 32-bit index math.
template <typename T>
__global__ void gather_global_kernel(const T* __restrict__ f, int C, int N, const int64_t* __restrict__ idx, int M,
                                     int chunks, T* __restrict__ out) {
  const int row = blockIdx.x / chunks;  // b * C + c
  const int m = (blockIdx.x - row * chunks) * blockDim.x + threadIdx.x;
  if (m >= M) return;
  const int b = row / C;
  const int64_t j = idx[static_cast<int64_t>(b) * M + m];
  out[static_cast<int64_t>(row) * M + m] =
      index_ok(j, N) ? f[static_cast<int64_t>(row) * N + j] : from_acc<T>(acc_t<T>(0));
}

// Channels per block of the shared-memory paths (0: global path) for rows of N values of `elem` bytes.
inline int gather_group(int64_t C, int64_t N, int64_t M, int elem) {
  const int64_t budget = max_dynamic_smem() < kGatherSmemBudget ? max_dynamic_smem() : kGatherSmemBudget;
  if (N == 0 || M * 8 < N) return 0;  // few gathers per row: reading whole rows would cost more
  for (int g : {4, 2, 1})
    if ((g == 1 || g <= C) && g * N * elem <= budget) return g;
  return 0;
}

inline bool gather_supported(int64_t B, int64_t C, int64_t N, int64_t M) {
  return N < INT_MAX && M < INT_MAX && C < INT_MAX && B * C * div_up(M, 256) <= INT_MAX;  // global path's grid
}

// out (B, C, M) = features (B, C, N) gathered along idx (B, M); an index outside [0, N) gives 0.
template <typename T>
bool gather_launch(const T* f, int64_t B, int64_t C, int64_t N, const int64_t* idx, int64_t M, T* out,
                   cudaStream_t stream) {
  if (!gather_supported(B, C, N, M)) return false;
  if (B * C * M == 0) return true;
  const int c = static_cast<int>(C), n = static_cast<int>(N), m = static_cast<int>(M);
  const int G = gather_group(C, N, M, sizeof(T));
  if (G > 0) {
    const int groups = static_cast<int>(div_up(C, G));
    const int bytes = static_cast<int>(G * N * sizeof(T));
    auto launch = [&](auto kernel) {
      allow_dynamic_smem(kernel, bytes);
      PVF_LAUNCH(kernel, dim3(static_cast<unsigned>(B * groups)), dim3(kGatherThreads), bytes, stream)(
          f, c, n, idx, m, groups, out);
    };
    if (G == 4) launch(gather_smem_kernel<T, 4>);
    else if (G == 2) launch(gather_smem_kernel<T, 2>);
    else launch(gather_smem_kernel<T, 1>);
    return true;
  }
  const int threads = 256;
  const int chunks = static_cast<int>(div_up(M, threads));
  auto kernel = gather_global_kernel<T>;
  PVF_LAUNCH(kernel, dim3(static_cast<unsigned>(B * C * chunks)), dim3(threads), 0, stream)(f, c, n, idx, m, chunks,
                                                                                            out);
  return true;
}

// -------------------------------------------------------------------- scatter-add (gather backward)
// Shared-memory path: the block accumulates its G gradient rows in shared memory (shared atomics), then
// writes them whole: no memset and no global atomics.
template <typename T, int G>
__global__ void __launch_bounds__(kGatherThreads, 1)
    scatter_smem_kernel(const T* __restrict__ grad, int C, int N, const int64_t* __restrict__ idx, int M, int groups,
                        acc_t<T>* __restrict__ grad_features) {
  using A = acc_t<T>;
  PVF_DYNAMIC_SMEM(A, s_acc);
  const int b = blockIdx.x / groups;
  const int c0 = (blockIdx.x - b * groups) * G;
  const int rows = imin(G, C - c0);
  for (int e = threadIdx.x; e < rows * N; e += blockDim.x) s_acc[e] = A(0);
  __syncthreads();
  const int64_t* ib = idx + static_cast<int64_t>(b) * M;
  const T* gb = grad + (static_cast<int64_t>(b) * C + c0) * M;
  const int nt = blockDim.x;
  for (int m0 = threadIdx.x; m0 < M; m0 += kGatherUnroll * nt) {
    int64_t j[kGatherUnroll];
    A v[kGatherUnroll][G];
#pragma unroll
    for (int u = 0; u < kGatherUnroll; ++u) {
      const int m = m0 + u * nt;
      j[u] = m < M ? ib[m] : -1;
#pragma unroll
      for (int g = 0; g < G; ++g) v[u][g] = m < M && g < rows ? to_acc(gb[static_cast<int64_t>(g) * M + m]) : A(0);
    }
#pragma unroll
    for (int u = 0; u < kGatherUnroll; ++u) {
      if (!index_ok(j[u], N)) continue;
#pragma unroll
      for (int g = 0; g < G; ++g)
        if (g < rows) atomicAdd(s_acc + g * N + static_cast<int>(j[u]), v[u][g]);
    }
  }
  __syncthreads();
  block_copy(s_acc, grad_features + (static_cast<int64_t>(b) * C + c0) * N, rows * N);
}

template <typename T>
__global__ void scatter_global_kernel(const T* __restrict__ grad, int C, int N, const int64_t* __restrict__ idx,
                                      int M, int chunks, acc_t<T>* __restrict__ grad_features) {
  const int row = blockIdx.x / chunks;
  const int m = (blockIdx.x - row * chunks) * blockDim.x + threadIdx.x;
  if (m >= M) return;
  const int b = row / C;
  const int64_t j = idx[static_cast<int64_t>(b) * M + m];
  if (index_ok(j, N))
    atomicAdd(grad_features + static_cast<int64_t>(row) * N + j, to_acc(grad[static_cast<int64_t>(row) * M + m]));
}

// grad_features (B, C, N) in acc_t<T> (float for half types), overwritten: the scatter-add of grad (B, C, M)
// along idx (B, M); indices outside [0, N) are dropped.
template <typename T>
bool scatter_launch(const T* grad, int64_t B, int64_t C, int64_t N, const int64_t* idx, int64_t M,
                    acc_t<T>* grad_features, cudaStream_t stream) {
  using A = acc_t<T>;
  if (!gather_supported(B, C, N, M)) return false;
  if (B * C * N == 0) return true;
  const int c = static_cast<int>(C), n = static_cast<int>(N), m = static_cast<int>(M);
  const int G = gather_group(C, N, M, sizeof(A));
  if (G > 0) {
    const int groups = static_cast<int>(div_up(C, G));
    const int bytes = static_cast<int>(G * N * sizeof(A));
    auto launch = [&](auto kernel) {
      allow_dynamic_smem(kernel, bytes);
      PVF_LAUNCH(kernel, dim3(static_cast<unsigned>(B * groups)), dim3(kGatherThreads), bytes, stream)(
          grad, c, n, idx, m, groups, grad_features);
    };
    if (G == 4) launch(scatter_smem_kernel<T, 4>);
    else if (G == 2) launch(scatter_smem_kernel<T, 2>);
    else launch(scatter_smem_kernel<T, 1>);
    return true;
  }
#if defined(PVF_SIMT_EMULATION)
  for (int64_t e = 0; e < B * C * N; ++e) grad_features[e] = A(0);
#else
  cuda_check(cudaMemsetAsync(grad_features, 0, sizeof(A) * B * C * N, stream), "gather_points_backward");
#endif
  if (M == 0) return true;
  const int threads = 256;
  const int chunks = static_cast<int>(div_up(M, threads));
  auto kernel = scatter_global_kernel<T>;
  PVF_LAUNCH(kernel, dim3(static_cast<unsigned>(B * C * chunks)), dim3(threads), 0, stream)(grad, c, n, idx, m,
                                                                                            chunks, grad_features);
  return true;
}

// -------------------------------------------------------------------- three-point interpolation
template <typename T>
__global__ void interpolate_kernel(const T* __restrict__ f, int C, int M, const int64_t* __restrict__ idx,
                                   const T* __restrict__ w, int N, int chunks, T* __restrict__ out) {
  using A = acc_t<T>;
  const int row = blockIdx.x / chunks;  // b * C + c
  const int n = (blockIdx.x - row * chunks) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int b = row / C;
  const int64_t base = (static_cast<int64_t>(b) * N + n) * 3;
  const T* fr = f + static_cast<int64_t>(row) * M;
  A s = A(0);
  for (int j = 0; j < 3; ++j) {
    const int64_t k = idx[base + j];
    if (index_ok(k, M)) s += to_acc(w[base + j]) * to_acc(fr[k]);
  }
  out[static_cast<int64_t>(row) * N + n] = from_acc<T>(s);
}

template <typename T>
__global__ void interpolate_grad_features_kernel(const T* __restrict__ g, int C, int M,
                                                 const int64_t* __restrict__ idx, const T* __restrict__ w, int N,
                                                 int chunks, acc_t<T>* __restrict__ gf) {
  const int row = blockIdx.x / chunks;
  const int n = (blockIdx.x - row * chunks) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int b = row / C;
  const int64_t base = (static_cast<int64_t>(b) * N + n) * 3;
  const acc_t<T> gv = to_acc(g[static_cast<int64_t>(row) * N + n]);
  for (int j = 0; j < 3; ++j) {
    const int64_t k = idx[base + j];
    if (index_ok(k, M)) atomicAdd(gf + static_cast<int64_t>(row) * M + k, to_acc(w[base + j]) * gv);
  }
}

template <typename T>
__global__ void interpolate_grad_weight_kernel(const T* __restrict__ g, const T* __restrict__ f, int B, int C, int M,
                                               const int64_t* __restrict__ idx, int N, T* __restrict__ gw) {
  using A = acc_t<T>;
  const int t = blockIdx.x * blockDim.x + threadIdx.x;  // (b, n, j)
  if (t >= B * N * 3) return;
  const int b = t / (N * 3);
  const int n = (t - b * N * 3) / 3;
  const int64_t k = idx[t];
  A s = A(0);
  if (index_ok(k, M))
    for (int c = 0; c < C; ++c) {
      const int64_t row = static_cast<int64_t>(b) * C + c;
      s += to_acc(g[row * N + n]) * to_acc(f[row * M + k]);
    }
  gw[t] = from_acc<T>(s);
}

inline bool interpolate_supported(int64_t B, int64_t C, int64_t M, int64_t N) {
  return M < INT_MAX && C < INT_MAX && B * N * 3 < INT_MAX && B * C * div_up(N, 256) <= INT_MAX;
}

template <typename T>
bool interpolate_launch(const T* f, int64_t B, int64_t C, int64_t M, const int64_t* idx, const T* w, int64_t N,
                        T* out, cudaStream_t stream) {
  if (!interpolate_supported(B, C, M, N)) return false;
  if (B * C * N == 0) return true;
  const int chunks = static_cast<int>(div_up(N, 256));
  auto kernel = interpolate_kernel<T>;
  PVF_LAUNCH(kernel, dim3(static_cast<unsigned>(B * C * chunks)), dim3(256), 0, stream)(
      f, static_cast<int>(C), static_cast<int>(M), idx, w, static_cast<int>(N), chunks, out);
  return true;
}

// grad_features (acc_t<T>, overwritten) and/or grad_weight (T); either may be null.
template <typename T>
bool interpolate_backward_launch(const T* grad, const T* f, int64_t B, int64_t C, int64_t M, const int64_t* idx,
                                 const T* w, int64_t N, acc_t<T>* grad_features, T* grad_weight, cudaStream_t stream) {
  if (!interpolate_supported(B, C, M, N)) return false;
  const int c = static_cast<int>(C), m = static_cast<int>(M), n = static_cast<int>(N);
  if (grad_features) {
#if defined(PVF_SIMT_EMULATION)
    for (int64_t e = 0; e < B * C * M; ++e) grad_features[e] = acc_t<T>(0);
#else
    cuda_check(cudaMemsetAsync(grad_features, 0, sizeof(acc_t<T>) * B * C * M, stream), "three_interpolate_backward");
#endif
    if (B * C * N > 0) {
      const int chunks = static_cast<int>(div_up(N, 256));
      auto kernel = interpolate_grad_features_kernel<T>;
      PVF_LAUNCH(kernel, dim3(static_cast<unsigned>(B * C * chunks)), dim3(256), 0, stream)(grad, c, m, idx, w, n,
                                                                                          chunks, grad_features);
    }
  }
  if (grad_weight && B * N > 0) {
    auto kernel = interpolate_grad_weight_kernel<T>;
    PVF_LAUNCH(kernel, dim3(static_cast<unsigned>(div_up(B * N * 3, 256))), dim3(256), 0, stream)(
        grad, f, static_cast<int>(B), c, m, idx, n, grad_weight);
  }
  return true;
}

// -------------------------------------------------------------------- neighbour distances backward
// dists[b, i, k] = |p1[b, i] - p2[b, idx[b, i, k]]|^2 where i < lengths1[b], k < lengths2[b] and idx >= 0 (the
// rule that covers both knn_points' 0 padding and ball_query's -1 padding); its gradient: grad_p1 (T) per row,
// grad_p2 (acc_t<T>, overwritten) by atomics. One thread per (b, i).
template <typename T>
__global__ void neighbour_backward_kernel(const T* __restrict__ p1, const T* __restrict__ p2, int B, int P1, int P2,
                                          int D, const int64_t* __restrict__ lengths1,
                                          const int64_t* __restrict__ lengths2, const int64_t* __restrict__ idx, int K,
                                          const T* __restrict__ grad, T* __restrict__ grad_p1,
                                          acc_t<T>* __restrict__ grad_p2) {
  using A = acc_t<T>;
  const int q = blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= B * P1) return;
  const int b = q / P1, i = q - b * P1;
  const int kk = i < clamped_length(lengths1, b, P1) ? imin(K, clamped_length(lengths2, b, P2)) : 0;
  const int64_t* ir = idx + static_cast<int64_t>(q) * K;
  const T* gr = grad + static_cast<int64_t>(q) * K;
  const T* a = p1 + static_cast<int64_t>(q) * D;
  for (int c = 0; c < D; ++c) {
    const A ac = to_acc(a[c]);
    A s = A(0);
    for (int k = 0; k < kk; ++k) {
      const int64_t j = ir[k];
      if (!index_ok(j, P2)) continue;
      const int64_t at = (static_cast<int64_t>(b) * P2 + j) * D + c;
      const A coef = A(2) * to_acc(gr[k]) * (ac - to_acc(p2[at]));
      s += coef;
      atomicAdd(grad_p2 + at, -coef);
    }
    grad_p1[static_cast<int64_t>(q) * D + c] = from_acc<T>(s);
  }
}

inline bool neighbour_backward_supported(int64_t B, int64_t P1, int64_t P2, int64_t K) {
  return B * P1 < INT_MAX - 256 && P2 < INT_MAX && K < INT_MAX;
}

template <typename T>
bool neighbour_backward_launch(const T* p1, const T* p2, int64_t B, int64_t P1, int64_t P2, int64_t D,
                               const int64_t* lengths1, const int64_t* lengths2, const int64_t* idx, int64_t K,
                               const T* grad, T* grad_p1, acc_t<T>* grad_p2, cudaStream_t stream) {
  if (!neighbour_backward_supported(B, P1, P2, K)) return false;
#if defined(PVF_SIMT_EMULATION)
  for (int64_t e = 0; e < B * P2 * D; ++e) grad_p2[e] = acc_t<T>(0);
#else
  cuda_check(cudaMemsetAsync(grad_p2, 0, sizeof(acc_t<T>) * B * P2 * D, stream), "knn_points_backward");
#endif
  if (B * P1 == 0) return true;
  auto kernel = neighbour_backward_kernel<T>;
  PVF_LAUNCH(kernel, dim3(static_cast<unsigned>(div_up(B * P1, 256))), dim3(256), 0, stream)(
      p1, p2, static_cast<int>(B), static_cast<int>(P1), static_cast<int>(P2), static_cast<int>(D), lengths1,
      lengths2, idx, static_cast<int>(K), grad, grad_p1, grad_p2);
  return true;
}

}  // namespace next
}  // namespace pointcloud
}  // namespace pvf
