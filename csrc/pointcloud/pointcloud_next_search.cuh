// Candidate ("cuda:next") search kernels: farthest point sampling, k nearest neighbours, ball query.
// Semantics are those of pointcloud.h; the differences are listed at each launcher (lengths and start
// indices are clamped instead of validated on the host).
#pragma once
#include <type_traits>

#include "pointcloud/pointcloud_next_common.cuh"

namespace pvf {
namespace pointcloud {
namespace next {

// ==================================================================== farthest point sampling
//
// One block per cloud. Register path (D == 3, N <= 1024 * PPT): every thread keeps PPT points and their running
// distances in registers (point i = j * blockDim + tid, slot j). Per iteration: the distance update and each
// thread's (max, lowest index), a warp argmax with two redux instructions, one __syncthreads, and every warp
// reduces the per-warp results again, so all threads know the next point without a second barrier. The
// per-warp results are double-buffered by iteration parity: a warp that writes buffer k&1 in iteration k has
// passed barrier k-1, which every warp reaches only after reading buffer k&1 in iteration k-2.
// Global path (any D, any N): the same reduction with the distances in a workspace.

constexpr int kFpsMaxThreads = 1024;

template <typename A>
__device__ __forceinline__ void fps_block_argmax(A best, unsigned cand, typename DistKey<A>::type (*s_key)[32],
                                                 unsigned (*s_idx)[32], int& buf, int& sel) {
  using Key = typename DistKey<A>::type;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  // best is -1 for a thread without valid points (its cand is kNoIndex): key 0 ties with a real distance 0,
  // and the lower (real) index wins.
  const Key key = DistKey<A>::of(best > A(0) ? best : A(0));
  const Key wkey = warp_max(key);
  const unsigned widx = warp_min(key == wkey ? cand : kNoIndex);
  if (lane == 0) {
    s_key[buf][warp] = wkey;
    s_idx[buf][warp] = widx;
  }
  __syncthreads();
  const Key v = lane < nwarps ? s_key[buf][lane] : Key(0);
  const unsigned vi = lane < nwarps ? s_idx[buf][lane] : kNoIndex;
  const Key bkey = warp_max(v);
  sel = static_cast<int>(warp_min(v == bkey ? vi : kNoIndex));
  buf ^= 1;
}

// min(d, old) keeping old when d is NaN: what `d < old ? d : old` computes, in one instruction.
__device__ __forceinline__ float keep_min(float d, float old) { return fminf(d, old); }
__device__ __forceinline__ double keep_min(double d, double old) { return fmin(d, old); }

__device__ __forceinline__ int fps_start(const int64_t* start, int b, int n) {
  if (start == nullptr || n == 0) return 0;
  const int64_t s = start[b];
  return s < 0 ? 0 : (s >= n ? n - 1 : static_cast<int>(s));
}

template <typename T, int PPT>
__global__ void __launch_bounds__(kFpsMaxThreads, 1)
    fps_registers_kernel(const T* __restrict__ points, int N, const int64_t* __restrict__ lengths,
                         const int64_t* __restrict__ start, int K, int64_t* __restrict__ idx) {
  using A = acc_t<T>;
  using Key = typename DistKey<A>::type;
  __shared__ Key s_key[2][32];
  __shared__ unsigned s_idx[2][32];
  const int b = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int n = clamped_length(lengths, b, N);
  const T* p = points + static_cast<int64_t>(b) * N * 3;
  int64_t* out = idx + static_cast<int64_t>(b) * K;
  const int k_valid = K < n ? K : n;
  A x[PPT], y[PPT], z[PPT], dist[PPT];
#pragma unroll
  for (int j = 0; j < PPT; ++j) {
    const int i = j * nt + tid;
    if (i < n) {
      x[j] = to_acc(p[3 * i]);
      y[j] = to_acc(p[3 * i + 1]);
      z[j] = to_acc(p[3 * i + 2]);
      dist[j] = acc_infinity<T>();
    } else {  // never selected: its distance stays below every real one
      x[j] = y[j] = z[j] = A(0);
      dist[j] = A(-1);
    }
  }
  int sel = fps_start(start, b, n);
  int buf = 0;
  for (int k = 0; k < k_valid; ++k) {
    if (tid == 0) out[k] = sel;
    if (k + 1 == k_valid) break;
    const A qx = to_acc(p[3 * sel]), qy = to_acc(p[3 * sel + 1]), qz = to_acc(p[3 * sel + 2]);
    A best = A(-1);
    int best_j = 0;
#pragma unroll
    for (int j = 0; j < PPT; ++j) {
      const A dx = x[j] - qx, dy = y[j] - qy, dz = z[j] - qz;
      A d = A(0);
      d += dx * dx;
      d += dy * dy;
      d += dz * dz;
      const A m = keep_min(d, dist[j]);
      dist[j] = m;
      if (m > best) {
        best = m;
        best_j = j;
      }
    }
    const unsigned cand = best >= A(0) ? static_cast<unsigned>(best_j * nt + tid) : kNoIndex;
    fps_block_argmax<A>(best, cand, s_key, s_idx, buf, sel);
  }
  for (int k = k_valid + tid; k < K; k += nt) out[k] = -1;
}

template <typename T>
__global__ void __launch_bounds__(kFpsMaxThreads, 1)
    fps_global_kernel(const T* __restrict__ points, int N, int D, const int64_t* __restrict__ lengths,
                      const int64_t* __restrict__ start, int K, int64_t* __restrict__ idx,
                      acc_t<T>* __restrict__ workspace) {
  using A = acc_t<T>;
  using Key = typename DistKey<A>::type;
  __shared__ Key s_key[2][32];
  __shared__ unsigned s_idx[2][32];
  const int b = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int n = clamped_length(lengths, b, N);
  const T* p = points + static_cast<int64_t>(b) * N * D;
  A* dist = workspace + static_cast<int64_t>(b) * N;
  int64_t* out = idx + static_cast<int64_t>(b) * K;
  const int k_valid = K < n ? K : n;
  // Each thread only ever touches dist[i] for its own i (same stride every iteration): no barrier needed.
  for (int i = tid; i < n; i += nt) dist[i] = acc_infinity<T>();
  int sel = fps_start(start, b, n);
  int buf = 0;
  for (int k = 0; k < k_valid; ++k) {
    if (tid == 0) out[k] = sel;
    if (k + 1 == k_valid) break;
    const T* q = p + static_cast<int64_t>(sel) * D;
    A best = A(-1);
    int best_i = 0;
    for (int i = tid; i < n; i += nt) {
      const T* pi = p + static_cast<int64_t>(i) * D;
      A d = A(0);
      for (int c = 0; c < D; ++c) {
        const A diff = to_acc(pi[c]) - to_acc(q[c]);
        d += diff * diff;
      }
      const A m = keep_min(d, dist[i]);
      dist[i] = m;
      if (m > best) {
        best = m;
        best_i = i;
      }
    }
    const unsigned cand = best >= A(0) ? static_cast<unsigned>(best_i) : kNoIndex;
    fps_block_argmax<A>(best, cand, s_key, s_idx, buf, sel);
  }
  for (int k = k_valid + tid; k < K; k += nt) out[k] = -1;
}

// Points per thread of the register path (0: global path) and the block size.
struct FpsPlan {
  int ppt;
  int threads;
};

inline FpsPlan fps_plan(int64_t N, int64_t D, bool wide_acc) {
  const int64_t max_ppt = wide_acc ? 4 : 8;  // registers: 4 * PPT accumulators per thread, 64 at most
  if (D == 3 && N <= max_ppt * kFpsMaxThreads) {
    int ppt = 1;
    while (ppt * static_cast<int64_t>(kFpsMaxThreads) < N) ppt *= 2;
    const int64_t threads = div_up(div_up(N, ppt), 32) * 32;
    return {ppt, static_cast<int>(threads < 32 ? 32 : threads)};
  }
  const int64_t threads = div_up(N < kFpsMaxThreads ? N : kFpsMaxThreads, 32) * 32;
  return {0, static_cast<int>(threads < 32 ? 32 : threads)};
}

inline bool fps_supported(int64_t B, int64_t N, int64_t K) {
  return B <= INT_MAX && N < INT_MAX / 3 && K <= INT_MAX;
}

// idx (B, K); workspace: B * N accumulators (read only on the global path). lengths and start are clamped:
// n = clamp(lengths[b], 0, N), start = clamp(start[b], 0, n - 1). Returns false (nothing launched) where the
// sizes exceed fps_supported.
template <typename T>
bool fps_launch(const T* points, int64_t B, int64_t N, int64_t D, const int64_t* lengths, const int64_t* start,
                int64_t K, int64_t* idx, acc_t<T>* workspace, cudaStream_t stream) {
  if (!fps_supported(B, N, K)) return false;
  if (B == 0) return true;
  const FpsPlan plan = fps_plan(N, D, sizeof(acc_t<T>) == 8);
  const dim3 grid(static_cast<unsigned>(B)), block(static_cast<unsigned>(plan.threads));
  const int n = static_cast<int>(N), k = static_cast<int>(K);
  auto launch = [&](auto kernel) { PVF_LAUNCH(kernel, grid, block, 0, stream)(points, n, lengths, start, k, idx); };
  switch (plan.ppt) {
    case 1: launch(fps_registers_kernel<T, 1>); break;
    case 2: launch(fps_registers_kernel<T, 2>); break;
    case 4: launch(fps_registers_kernel<T, 4>); break;
    case 8:
      if constexpr (sizeof(acc_t<T>) == 4) launch(fps_registers_kernel<T, 8>);
      break;
    default: {
      auto kernel = fps_global_kernel<T>;
      PVF_LAUNCH(kernel, grid, block, 0, stream)(points, n, static_cast<int>(D), lengths, start, k, idx, workspace);
    }
  }
  return true;
}

// ==================================================================== k nearest neighbours
//
// One thread per query, 256 queries per block; the block streams the reference cloud through shared memory
// in tiles. Each thread keeps its top MAXK (a power of two >= K) as sorted integer keys and indices in
// registers, updated by an unrolled branch-free insertion (compile-time indices only). For K < MAXK the first
// MAXK - K slots hold key 0 and never move, so the K-th distance is always the last slot.
// MAXK >= 8: a candidate whose key is below the thread's current K-th key is appended to a per-thread buffer
// in shared memory (column tid, conflict-free); when a lane's buffer may fill, the warp merges all buffers
// into the lists. The threshold is stale between merges, which only admits more candidates; they are merged
// in index order and all later than those already merged, so the result equals the one-by-one insertion.
// That replaces the warp-divergent insertion on every new neighbour of any of 32 queries by a few stores.
// The order is (distance, index): ties keep the lower index, as in the current kernel.

constexpr int kKnnThreads = 256;
constexpr int kKnnTile = 256;             // reference points per tile, D == 3
constexpr int kKnnRawTileBytes = 8192;    // coordinates per tile for other D
constexpr int kKnnMaxD = kKnnRawTileBytes / 8;
constexpr int kKnnUnroll = 4;

template <typename A>
struct alignas(4 * sizeof(A)) Point4 {
  A x, y, z, w;
};

// Inserts (key, j) into the ascending list, after equal keys; no-op when key >= the last key.
template <int MAXK, typename Key>
__device__ __forceinline__ void sorted_insert(Key (&lk)[MAXK], int (&li)[MAXK], Key key, int j) {
#pragma unroll
  for (int r = MAXK - 1; r > 0; --r) {
    const bool shift = lk[r - 1] > key;
    const bool here = lk[r] > key;
    li[r] = shift ? li[r - 1] : (here ? j : li[r]);
    lk[r] = shift ? lk[r - 1] : (here ? key : lk[r]);
  }
  const bool first = lk[0] > key;
  li[0] = first ? j : li[0];
  lk[0] = first ? key : lk[0];
}

template <typename A, bool D3>
struct KnnSmem;
template <typename A>
struct KnnSmem<A, true> {
  static constexpr int kElems = 4 * kKnnTile;
};
template <typename A>
struct KnnSmem<A, false> {
  static constexpr int kElems = kKnnRawTileBytes / static_cast<int>(sizeof(A));
};

// Minimum blocks per SM for the register budget: 0 (unspecified: ptxas sizes it, which fits the float D == 3
// kernels in 36-104 registers without spilling) for float accumulation and D == 3; 1 otherwise (up to 255
// registers), where ptxas' own choice of a tighter budget spills.
template <typename A, int MAXK, bool D3>
constexpr int knn_min_blocks() {
  return sizeof(A) == 4 && D3 ? 0 : 1;
}

template <typename T, int MAXK, bool D3>
__global__ void __launch_bounds__(kKnnThreads, (knn_min_blocks<acc_t<T>, MAXK, D3>()))
    knn_registers_kernel(const T* __restrict__ p1, const T* __restrict__ p2, int P1, int P2, int D,
                         const int64_t* __restrict__ lengths1, const int64_t* __restrict__ lengths2, int K,
                         int tiles_per_cloud, T* __restrict__ dists, int64_t* __restrict__ idx) {
  using A = acc_t<T>;
  using DK = DistKey<A>;
  using Key = typename DK::type;
  constexpr bool kBuffered = MAXK >= 8;
  constexpr int kBuf = kBuffered ? (sizeof(A) == 4 ? 16 : 8) : 1;
  constexpr int U = kKnnUnroll;
  __shared__ __align__(32) A s_tile[KnnSmem<A, D3>::kElems];
  __shared__ Key s_bk[kBuffered ? kBuf * kKnnThreads : 1];
  __shared__ int s_bj[kBuffered ? kBuf * kKnnThreads : 1];

  const int tid = threadIdx.x;
  const int b = blockIdx.x / tiles_per_cloud;
  const int first = (blockIdx.x - b * tiles_per_cloud) * kKnnThreads;
  const int i = first + tid;
  const int n1 = clamped_length(lengths1, b, P1), n2 = clamped_length(lengths2, b, P2);
  const int64_t row = static_cast<int64_t>(b) * P1 + i;
  const T* pq = p1 + row * D;
  const T* pb = p2 + static_cast<int64_t>(b) * P2 * D;
  const int tile_points = D3 ? kKnnTile : KnnSmem<A, false>::kElems / D;

  A qx = A(0), qy = A(0), qz = A(0);
  if (D3 && i < P1) {
    qx = to_acc(pq[0]);
    qy = to_acc(pq[1]);
    qz = to_acc(pq[2]);
  }
  Key lk[MAXK];
  int li[MAXK];
#pragma unroll
  for (int r = 0; r < MAXK; ++r) {
    lk[r] = r < MAXK - K ? Key(0) : DK::kPad;
    li[r] = 0;
  }
  Key thr = DK::kPad;
  int cnt = 0;

  auto flush = [&]() {
    const int most = static_cast<int>(warp_max(static_cast<unsigned>(cnt)));
    for (int s = 0; s < most; ++s) {
      if (s < cnt) sorted_insert<MAXK>(lk, li, s_bk[s * kKnnThreads + tid], s_bj[s * kKnnThreads + tid]);
    }
    cnt = 0;
    thr = lk[MAXK - 1];
  };
  auto step = [&](int t, int j) {
    A d = A(0);
    if constexpr (D3) {
      const Point4<A> pt = reinterpret_cast<const Point4<A>*>(s_tile)[t];
      const A dx = qx - pt.x, dy = qy - pt.y, dz = qz - pt.z;
      d += dx * dx;
      d += dy * dy;
      d += dz * dz;
    } else {
      for (int c = 0; c < D; ++c) {
        const A diff = (i < P1 ? to_acc(pq[c]) : A(0)) - s_tile[t * D + c];
        d += diff * diff;
      }
    }
    const Key key = DK::of(d);
    if constexpr (MAXK == 1) {
      const bool better = key < lk[0];
      li[0] = better ? j : li[0];
      lk[0] = better ? key : lk[0];
    } else if constexpr (!kBuffered) {
      if (key < lk[MAXK - 1]) sorted_insert<MAXK>(lk, li, key, j);
    } else {
      if (key < thr) {
        s_bk[cnt * kKnnThreads + tid] = key;
        s_bj[cnt * kKnnThreads + tid] = j;
        ++cnt;
      }
    }
  };

  if (first < n1) {  // uniform per block: the block has a query to answer
    for (int base = 0; base < n2; base += tile_points) {
      const int m = imin(tile_points, n2 - base);
      __syncthreads();  // the previous tile is consumed
      if constexpr (D3) {
        Point4<A>* s_pts = reinterpret_cast<Point4<A>*>(s_tile);
        for (int t = tid; t < m; t += kKnnThreads) {
          const T* src = pb + static_cast<int64_t>(base + t) * 3;
          s_pts[t] = Point4<A>{to_acc(src[0]), to_acc(src[1]), to_acc(src[2]), A(0)};
        }
      } else {
        const T* src = pb + static_cast<int64_t>(base) * D;
        for (int e = tid; e < m * D; e += kKnnThreads) s_tile[e] = to_acc(src[e]);
      }
      __syncthreads();
      int t = 0;
      for (; t + U <= m; t += U) {
#pragma unroll
        for (int u = 0; u < U; ++u) step(t + u, base + t + u);
        if constexpr (kBuffered) {
          if (__any_sync(kFullMask, cnt > kBuf - U)) flush();
        }
      }
      for (; t < m; ++t) step(t, base + t);
      if constexpr (kBuffered) {
        if (__any_sync(kFullMask, cnt > kBuf - U)) flush();
      }
    }
    if constexpr (kBuffered) flush();
  }

  if (i < P1) {
    T* dr = dists + row * K;
    int64_t* ir = idx + row * K;
    const int count = i < n1 ? imin(K, n2) : 0;
#pragma unroll
    for (int r = 0; r < MAXK; ++r) {
      const int k = r - (MAXK - K);
      if (k >= 0) {
        dr[k] = from_acc<T>(k < count ? DK::value(lk[r]) : A(0));
        ir[k] = k < count ? li[r] : 0;
      }
    }
  }
}

// K > 32: one thread per query, the sorted list kept in the query's output rows (slow path, any K). For
// float accumulation the idx row holds (key << 32 | j) until the end (the order (distance, index) exactly);
// for float64 the dists row holds the distances and the idx row the indices.
template <typename T>
__global__ void __launch_bounds__(kKnnThreads, 1)
    knn_rows_kernel(const T* __restrict__ p1, const T* __restrict__ p2, int B, int P1, int P2, int D,
                    const int64_t* __restrict__ lengths1, const int64_t* __restrict__ lengths2, int K,
                    T* __restrict__ dists, int64_t* __restrict__ idx) {
  using A = acc_t<T>;
  using DK = DistKey<A>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kKnnThreads + threadIdx.x;
  if (row >= static_cast<int64_t>(B) * P1) return;
  const int b = static_cast<int>(row / P1), i = static_cast<int>(row - static_cast<int64_t>(b) * P1);
  T* dr = dists + row * K;
  int64_t* ir = idx + row * K;
  int count = 0;
  if (i < clamped_length(lengths1, b, P1)) {
    const int n2 = clamped_length(lengths2, b, P2);
    const T* pq = p1 + row * D;
    const T* pb = p2 + static_cast<int64_t>(b) * P2 * D;
    A* drow = reinterpret_cast<A*>(dr);  // float64 only (T == A)
    for (int j = 0; j < n2; ++j) {
      A d = A(0);
      for (int c = 0; c < D; ++c) {
        const A diff = to_acc(pq[c]) - to_acc(pb[static_cast<int64_t>(j) * D + c]);
        d += diff * diff;
      }
      if constexpr (sizeof(A) == 4) {
        const unsigned long long e = (static_cast<unsigned long long>(DK::of(d)) << 32) | static_cast<unsigned>(j);
        auto at = [&](int k) { return static_cast<unsigned long long>(ir[k]); };
        int pos;
        if (count < K) {
          pos = count++;
        } else {
          if (!(e < at(K - 1))) continue;
          pos = K - 1;
        }
        for (; pos > 0 && at(pos - 1) > e; --pos) ir[pos] = ir[pos - 1];
        ir[pos] = static_cast<int64_t>(e);
      } else {
        const auto key = DK::of(d);
        int pos;
        if (count < K) {
          pos = count++;
        } else {
          if (!(key < DK::of(drow[K - 1]))) continue;
          pos = K - 1;
        }
        for (; pos > 0 && DK::of(drow[pos - 1]) > key; --pos) {
          drow[pos] = drow[pos - 1];
          ir[pos] = ir[pos - 1];
        }
        drow[pos] = d;
        ir[pos] = j;
      }
    }
    if constexpr (sizeof(A) == 4) {
      for (int k = 0; k < count; ++k) {
        const unsigned long long e = static_cast<unsigned long long>(ir[k]);
        dr[k] = from_acc<T>(DK::value(static_cast<unsigned>(e >> 32)));
        ir[k] = static_cast<int64_t>(e & 0xffffffffull);
      }
    }
  }
  for (int k = count; k < K; ++k) {
    dr[k] = from_acc<T>(A(0));
    ir[k] = 0;
  }
}

inline bool knn_supported(int64_t B, int64_t P1, int64_t P2, int64_t D, int64_t K) {
  return P1 < INT_MAX && P2 < INT_MAX && K <= INT_MAX && B * div_up(P1, kKnnThreads) <= INT_MAX &&
         B * P1 <= INT_MAX && (K > 32 || D == 3 || D <= kKnnMaxD);
}

// dists, idx (B, P1, K). lengths are clamped to [0, P]. Returns false (nothing launched) where the sizes
// exceed knn_supported.
template <typename T>
bool knn_launch(const T* p1, const T* p2, int64_t B, int64_t P1, int64_t P2, int64_t D, const int64_t* lengths1,
                const int64_t* lengths2, int64_t K, T* dists, int64_t* idx, cudaStream_t stream) {
  if (!knn_supported(B, P1, P2, D, K)) return false;
  if (B * P1 == 0) return true;
  const int p1n = static_cast<int>(P1), p2n = static_cast<int>(P2), d = static_cast<int>(D), k = static_cast<int>(K);
  if (K > 32) {
    auto kernel = knn_rows_kernel<T>;
    PVF_LAUNCH(kernel, dim3(static_cast<unsigned>(div_up(B * P1, kKnnThreads))), dim3(kKnnThreads), 0, stream)(
        p1, p2, static_cast<int>(B), p1n, p2n, d, lengths1, lengths2, k, dists, idx);
    return true;
  }
  const int tiles = static_cast<int>(div_up(P1, kKnnThreads));
  const dim3 grid(static_cast<unsigned>(B * tiles)), block(kKnnThreads);
  auto launch = [&](auto kernel) {
    PVF_LAUNCH(kernel, grid, block, 0, stream)(p1, p2, p1n, p2n, d, lengths1, lengths2, k, tiles, dists, idx);
  };
  auto with_maxk = [&](auto d3) {
    constexpr bool kD3 = decltype(d3)::value;
    if (K == 1) launch(knn_registers_kernel<T, 1, kD3>);
    else if (K <= 2) launch(knn_registers_kernel<T, 2, kD3>);
    else if (K <= 4) launch(knn_registers_kernel<T, 4, kD3>);
    else if (K <= 8) launch(knn_registers_kernel<T, 8, kD3>);
    else if (K <= 16) launch(knn_registers_kernel<T, 16, kD3>);
    else launch(knn_registers_kernel<T, 32, kD3>);
  };
  if (D == 3) with_maxk(std::true_type{});
  else with_maxk(std::false_type{});
  return true;
}

// ==================================================================== ball query
//
// One warp per query: the warp tests 32 consecutive reference points at a time, __ballot_sync + popc give each
// point inside the ball its slot, and the warp stops as soon as K points are found. First K in index order,
// squared distance < r2, as in the current kernel.

constexpr int kBallThreads = 256;

template <typename T, bool D3>
__global__ void __launch_bounds__(kBallThreads, 1)
    ball_query_warp_kernel(const T* __restrict__ p1, const T* __restrict__ p2, int B, int P1, int P2, int D,
                           const int64_t* __restrict__ lengths1, const int64_t* __restrict__ lengths2, int K,
                           acc_t<T> r2, T* __restrict__ dists, int64_t* __restrict__ idx) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const int q = blockIdx.x * (kBallThreads / 32) + (threadIdx.x >> 5);
  if (q >= B * P1) return;  // the whole warp
  const int b = q / P1, i = q - b * P1;
  T* dr = dists + static_cast<int64_t>(q) * K;
  int64_t* ir = idx + static_cast<int64_t>(q) * K;
  int count = 0;
  if (i < clamped_length(lengths1, b, P1)) {
    const int n2 = clamped_length(lengths2, b, P2);
    const T* pq = p1 + static_cast<int64_t>(q) * D;
    const T* pb = p2 + static_cast<int64_t>(b) * P2 * D;
    A qx = A(0), qy = A(0), qz = A(0);
    if (D3) {
      qx = to_acc(pq[0]);
      qy = to_acc(pq[1]);
      qz = to_acc(pq[2]);
    }
    const unsigned below = (1u << lane) - 1u;
    for (int base = 0; base < n2 && count < K; base += 32) {  // count is the same in every lane
      const int j = base + lane;
      bool inside = false;
      A d = A(0);
      if (j < n2) {
        const T* pj = pb + static_cast<int64_t>(j) * D;
        if constexpr (D3) {
          const A dx = qx - to_acc(pj[0]), dy = qy - to_acc(pj[1]), dz = qz - to_acc(pj[2]);
          d += dx * dx;
          d += dy * dy;
          d += dz * dz;
        } else {
          for (int c = 0; c < D; ++c) {
            const A diff = to_acc(pq[c]) - to_acc(pj[c]);
            d += diff * diff;
          }
        }
        inside = d < r2;
      }
      const unsigned ballot = __ballot_sync(kFullMask, inside);
      const int pos = count + __popc(ballot & below);
      if (inside && pos < K) {
        dr[pos] = from_acc<T>(d);
        ir[pos] = j;
      }
      count += __popc(ballot);
    }
    count = imin(count, K);
  }
  for (int k = count + lane; k < K; k += 32) {
    dr[k] = from_acc<T>(A(0));
    ir[k] = -1;
  }
}

inline bool ball_query_supported(int64_t B, int64_t P1, int64_t P2, int64_t K) {
  return B * P1 < INT_MAX - kBallThreads && P2 < INT_MAX && K <= INT_MAX;
}

template <typename T>
bool ball_query_launch(const T* p1, const T* p2, int64_t B, int64_t P1, int64_t P2, int64_t D,
                       const int64_t* lengths1, const int64_t* lengths2, int64_t K, double radius, T* dists,
                       int64_t* idx, cudaStream_t stream) {
  if (!ball_query_supported(B, P1, P2, K)) return false;
  if (B * P1 == 0) return true;
  const acc_t<T> r2 = static_cast<acc_t<T>>(radius * radius);
  const dim3 grid(static_cast<unsigned>(div_up(B * P1, kBallThreads / 32))), block(kBallThreads);
  auto launch = [&](auto kernel) {
    PVF_LAUNCH(kernel, grid, block, 0, stream)(p1, p2, static_cast<int>(B), static_cast<int>(P1),
                                               static_cast<int>(P2), static_cast<int>(D), lengths1, lengths2,
                                               static_cast<int>(K), r2, dists, idx);
  };
  if (D == 3) launch(ball_query_warp_kernel<T, true>);
  else launch(ball_query_warp_kernel<T, false>);
  return true;
}

}  // namespace next
}  // namespace pointcloud
}  // namespace pvf
