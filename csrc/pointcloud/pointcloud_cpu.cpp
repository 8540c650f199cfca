// CPU point-cloud kernels. Parallel across batches / queries with OpenMP (common/parallel.h); the
// distance loops run over a coordinate-major copy of each cloud so that they vectorise.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common/parallel.h"
#include "pointcloud/pointcloud.h"
#include "pointcloud/pointcloud_math.h"

namespace pvf {
namespace pointcloud {
namespace {

// Copies cloud rows [0, n) of (P, D) row-major `src` into coordinate-major `dst` (D, P).
template <typename T>
void to_coordinate_major(const T* PVF_RESTRICT src, int64_t n, int64_t P, int64_t D, T* PVF_RESTRICT dst) {
  for (int64_t d = 0; d < D; ++d) {
    T* row = dst + d * P;
    for (int64_t i = 0; i < n; ++i) row[i] = src[i * D + d];
  }
}

// Squared distances from query q to points [j0, j0 + nb) of the coordinate-major cloud ct (D, P).
// DC is D when known at compile time (2 or 3), 0 otherwise.
template <typename T, int DC>
inline void block_distances(const T* PVF_RESTRICT ct, int64_t P, int64_t D, const T* PVF_RESTRICT q, int64_t j0,
                            int64_t nb, T* PVF_RESTRICT out) {
  if constexpr (DC == 3) {
    const T* x = ct + j0;
    const T* y = ct + P + j0;
    const T* z = ct + 2 * P + j0;
    const T qx = q[0], qy = q[1], qz = q[2];
#pragma omp simd
    for (int64_t j = 0; j < nb; ++j) {
      const T dx = x[j] - qx, dy = y[j] - qy, dz = z[j] - qz;
      out[j] = dx * dx + dy * dy + dz * dz;
    }
  } else if constexpr (DC == 2) {
    const T* x = ct + j0;
    const T* y = ct + P + j0;
    const T qx = q[0], qy = q[1];
#pragma omp simd
    for (int64_t j = 0; j < nb; ++j) {
      const T dx = x[j] - qx, dy = y[j] - qy;
      out[j] = dx * dx + dy * dy;
    }
  } else {
    for (int64_t j = 0; j < nb; ++j) out[j] = T(0);
    for (int64_t d = 0; d < D; ++d) {
      const T* row = ct + d * P + j0;
      const T qd = q[d];
#pragma omp simd
      for (int64_t j = 0; j < nb; ++j) {
        const T diff = row[j] - qd;
        out[j] += diff * diff;
      }
    }
  }
}

template <typename T>
inline T block_min(const T* PVF_RESTRICT v, int64_t n) {
  T m = std::numeric_limits<T>::infinity();
#pragma omp simd reduction(min : m)
  for (int64_t j = 0; j < n; ++j) m = v[j] < m ? v[j] : m;
  return m;
}

// Transposes every cloud of p (B, P, D) into workspace (B, D, P), in parallel over batches.
template <typename T>
void clouds_to_coordinate_major(const T* p, int64_t B, int64_t P, int64_t D, const int64_t* lengths, T* ws) {
  parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      to_coordinate_major(p + b * P * D, cloud_length(lengths, b, P), P, D, ws + b * D * P);
  });
}

// ------------------------------------------------------------------ farthest point sampling

#if defined(__AVX512F__)
// One sampling step for float 3-D clouds, 16 points per vector: dist[j] = min(dist[j], |p_j - q|^2) for j in
// [0, n) of the coordinate-major cloud (x, y, z), the maximum of each block of 256 in two accumulators; returns
// the first j holding the largest dist (the scalar path's choice, NaNs included).
inline int64_t fps_step_avx512(const float* x, const float* y, const float* z, const float* q, int64_t n,
                               float* dist) {
  constexpr int64_t kBlock = 256;
  const __m512 qx = _mm512_set1_ps(q[0]), qy = _mm512_set1_ps(q[1]), qz = _mm512_set1_ps(q[2]);
  auto update = [&](int64_t j, __mmask16 valid, __m512& acc) {
    const __m512 dx = _mm512_sub_ps(_mm512_maskz_loadu_ps(valid, x + j), qx);
    const __m512 dy = _mm512_sub_ps(_mm512_maskz_loadu_ps(valid, y + j), qy);
    const __m512 dz = _mm512_sub_ps(_mm512_maskz_loadu_ps(valid, z + j), qz);
    const __m512 d = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(dx, dx), _mm512_mul_ps(dy, dy)), _mm512_mul_ps(dz, dz));
    const __m512 m = _mm512_min_ps(d, _mm512_maskz_loadu_ps(valid, dist + j));  // d < dist ? d : dist
    _mm512_mask_storeu_ps(dist + j, valid, m);
    acc = _mm512_mask_max_ps(acc, valid, m, acc);  // m > acc ? m : acc
  };
  float best = -1.0f;
  int64_t best_block = 0;
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    const int64_t end = std::min(n, j0 + kBlock);
    __m512 acc0 = _mm512_set1_ps(-1.0f), acc1 = acc0;
    int64_t j = j0;
    for (; j + 32 <= end; j += 32) {
      update(j, __mmask16(0xFFFF), acc0);
      update(j + 16, __mmask16(0xFFFF), acc1);
    }
    for (; j < end; j += 16)
      update(j, end - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (end - j)) - 1), acc0);
    const float block_max = _mm512_reduce_max_ps(_mm512_max_ps(acc0, acc1));
    if (block_max > best) {  // strict: the first block holding the maximum wins ties
      best = block_max;
      best_block = j0;
    }
  }
  const __m512 vbest = _mm512_set1_ps(best);
  const int64_t end = std::min(n, best_block + kBlock);
  for (int64_t j = best_block; j < end; j += 16) {
    const __mmask16 valid = end - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (end - j)) - 1);
    const __mmask16 eq = _mm512_mask_cmp_ps_mask(valid, _mm512_maskz_loadu_ps(valid, dist + j), vbest, _CMP_EQ_OQ);
    if (eq) return j + __builtin_ctz(static_cast<unsigned>(eq));
  }
  return best_block;
}
#endif

template <typename T, int DC>
void fps_one_cloud(const T* pts, int64_t N, int64_t D, int64_t n, int64_t first, int64_t K, int64_t* idx, T* ws) {
  T* dist = ws;
  T* ct = ws + N;
  to_coordinate_major(pts, n, N, D, ct);
  std::fill(dist, dist + n, std::numeric_limits<T>::infinity());
  const int64_t k_valid = std::min(K, n);
  int64_t sel = first;
  // Blocks small enough that finding the first maximum inside the winning block is cheap.
  constexpr int64_t kBlock = 256;
  alignas(64) T dbuf[kBlock];
  for (int64_t k = 0; k < k_valid; ++k) {
    idx[k] = sel;
    if (k + 1 == k_valid) break;
    const T* q = pts + sel * D;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float> && DC == 3) {
      sel = fps_step_avx512(ct, ct + N, ct + 2 * N, q, n, dist);
      continue;
    }
#endif
    T best = T(-1);
    int64_t best_block = 0;
    for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
      const int64_t nb = std::min(kBlock, n - j0);
      T* dj = dist + j0;
      T block_max = T(-1);
      if constexpr (DC == 3) {  // fused: distance, running minimum and block maximum in one pass
        const T* x = ct + j0;
        const T* y = ct + N + j0;
        const T* z = ct + 2 * N + j0;
        const T qx = q[0], qy = q[1], qz = q[2];
#pragma omp simd reduction(max : block_max)
        for (int64_t j = 0; j < nb; ++j) {
          const T dx = x[j] - qx, dy = y[j] - qy, dz = z[j] - qz;
          const T d = dx * dx + dy * dy + dz * dz;
          const T m = d < dj[j] ? d : dj[j];
          dj[j] = m;
          block_max = m > block_max ? m : block_max;
        }
      } else {
        block_distances<T, DC>(ct, N, D, q, j0, nb, dbuf);
#pragma omp simd reduction(max : block_max)
        for (int64_t j = 0; j < nb; ++j) {
          const T m = dbuf[j] < dj[j] ? dbuf[j] : dj[j];
          dj[j] = m;
          block_max = m > block_max ? m : block_max;
        }
      }
      if (block_max > best) {  // strict: the first block holding the maximum wins ties
        best = block_max;
        best_block = j0;
      }
    }
    sel = best_block;
    for (int64_t j = best_block; j < std::min(n, best_block + kBlock); ++j) {
      if (dist[j] == best) {
        sel = j;
        break;
      }
    }
  }
  for (int64_t k = k_valid; k < K; ++k) idx[k] = -1;
}

// ------------------------------------------------------------------ kNN and ball query

template <typename T, int DC>
void knn_queries(const T* p1b, const T* ct, int64_t P2, int64_t D, int64_t n2, int64_t i0, int64_t i1, int64_t K,
                 T* dists, int64_t* idx) {
  constexpr int64_t kBlock = 256;
  constexpr int64_t kChunk = 16;
  alignas(64) T dbuf[kBlock];
  for (int64_t i = i0; i < i1; ++i) {
    const T* q = p1b + i * D;
    T* dr = dists + i * K;
    int64_t* ir = idx + i * K;
    int64_t count = 0;
    for (int64_t j0 = 0; j0 < n2; j0 += kBlock) {
      const int64_t nb = std::min(kBlock, n2 - j0);
      block_distances<T, DC>(ct, P2, D, q, j0, nb, dbuf);
      for (int64_t c0 = 0; c0 < nb; c0 += kChunk) {
        const int64_t nc = std::min(kChunk, nb - c0);
        // Skip whole chunks that cannot enter a full list (the common case once the list has settled).
        if (count == K && !(block_min(dbuf + c0, nc) < dr[K - 1])) continue;
        for (int64_t j = c0; j < c0 + nc; ++j) count = topk_insert<T, T>(dr, ir, count, K, dbuf[j], j0 + j);
      }
    }
    for (int64_t k = count; k < K; ++k) {
      dr[k] = T(0);
      ir[k] = 0;
    }
  }
}

#if defined(__AVX512F__)
// block_hits for float 3-D points, 16 at a time: the in-radius lanes of each vector compress into the next free
// slots of hit_d / hit_j (which hold nb + 16 values), in index order.
inline int64_t block_hits_avx512(const float* x, const float* y, const float* z, const float* q, int64_t nb,
                                 float r2, float* hit_d, int32_t* hit_j) {
  const __m512 qx = _mm512_set1_ps(q[0]), qy = _mm512_set1_ps(q[1]), qz = _mm512_set1_ps(q[2]);
  const __m512 vr2 = _mm512_set1_ps(r2);
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t nh = 0;
  for (int64_t j = 0; j < nb; j += 16) {
    const __mmask16 valid = nb - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (nb - j)) - 1);
    const __m512 dx = _mm512_sub_ps(_mm512_maskz_loadu_ps(valid, x + j), qx);
    const __m512 dy = _mm512_sub_ps(_mm512_maskz_loadu_ps(valid, y + j), qy);
    const __m512 dz = _mm512_sub_ps(_mm512_maskz_loadu_ps(valid, z + j), qz);
    const __m512 d = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(dx, dx), _mm512_mul_ps(dy, dy)), _mm512_mul_ps(dz, dz));
    const __mmask16 in = _mm512_mask_cmp_ps_mask(valid, d, vr2, _CMP_LT_OQ);
    // compress in registers, then a full-width store (compress-to-memory is slow on some cores)
    _mm512_storeu_ps(hit_d + nh, _mm512_maskz_compress_ps(in, d));
    _mm512_storeu_si512(hit_j + nh, _mm512_maskz_compress_epi32(in, _mm512_add_epi32(lanes, _mm512_set1_epi32(int(j)))));
    nh += __builtin_popcount(static_cast<unsigned>(in));
  }
  return nh;
}
#endif

// The points [j0, j0 + nb) of the coordinate-major cloud ct within squared radius r2 of q: their squared distances
// into hit_d and block positions into hit_j (both hold nb + 16 values), in index order; returns how many.
template <typename T, int DC>
inline int64_t block_hits(const T* ct, int64_t P, int64_t D, const T* q, int64_t j0, int64_t nb, T r2, T* dbuf,
                          T* hit_d, int32_t* hit_j) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && DC == 3)
    return block_hits_avx512(ct + j0, ct + P + j0, ct + 2 * P + j0, q, nb, r2, hit_d, hit_j);
#endif
  block_distances<T, DC>(ct, P, D, q, j0, nb, dbuf);
  int64_t nh = 0;
  for (int64_t j = 0; j < nb; ++j) {  // branch-free compaction (hits are rare and unpredictable)
    hit_j[nh] = static_cast<int32_t>(j);
    nh += dbuf[j] < r2;
  }
  for (int64_t h = 0; h < nh; ++h) hit_d[h] = dbuf[hit_j[h]];
  return nh;
}

template <typename T, int DC>
void ball_queries(const T* p1b, const T* ct, int64_t P2, int64_t D, int64_t n2, int64_t i0, int64_t i1, int64_t K,
                  T r2, T* dists, int64_t* idx) {
  constexpr int64_t kBlock = 64;
  alignas(64) T dbuf[kBlock];
  alignas(64) T hit_d[kBlock + 16];
  alignas(64) int32_t hit_j[kBlock + 16];
  for (int64_t i = i0; i < i1; ++i) {
    const T* q = p1b + i * D;
    T* dr = dists + i * K;
    int64_t* ir = idx + i * K;
    int64_t count = 0;
    for (int64_t j0 = 0; j0 < n2 && count < K; j0 += kBlock) {
      const int64_t nb = std::min(kBlock, n2 - j0);
      const int64_t nh = block_hits<T, DC>(ct, P2, D, q, j0, nb, r2, dbuf, hit_d, hit_j);
      const int64_t take = std::min(nh, K - count);
      for (int64_t h = 0; h < take; ++h) {
        dr[count + h] = hit_d[h];
        ir[count + h] = j0 + hit_j[h];
      }
      count += take;
    }
    for (int64_t k = count; k < K; ++k) {
      dr[k] = T(0);
      ir[k] = -1;
    }
  }
}

template <typename T, typename Fn>
void for_each_query(int64_t B, int64_t P1, int64_t K, const int64_t* lengths1, T* dists, int64_t* idx,
                    int64_t pad_idx, Fn&& run) {
  // Queries of a batch are independent: split the flattened (B * P1) range.
  parallel_for_dynamic(0, B * P1, 64, [&](int64_t q0, int64_t q1) {
    while (q0 < q1) {
      const int64_t b = q0 / P1;
      const int64_t i0 = q0 % P1;
      const int64_t i1 = std::min(P1, i0 + (q1 - q0));
      const int64_t n1 = cloud_length(lengths1, b, P1);
      const int64_t valid_end = std::min(i1, std::max(i0, n1));
      if (valid_end > i0) run(b, i0, valid_end);
      for (int64_t i = std::max(i0, valid_end); i < i1; ++i) {
        std::fill(dists + (b * P1 + i) * K, dists + (b * P1 + i + 1) * K, T(0));
        std::fill(idx + (b * P1 + i) * K, idx + (b * P1 + i + 1) * K, pad_idx);
      }
      q0 += i1 - i0;
    }
  });
}


// ------------------------------------------------------------------ uniform grid for 3-D kNN

// A uniform grid over one cloud. Cells are numbered x-fastest, so the cells x0..x1 of one (y, z) row hold
// one contiguous range of the sorted points.
template <typename T>
struct Grid {
  T lo[3];
  T h;        // cell edge
  T inv_h;
  int64_t dims[3];
  const int64_t* start;  // dims[0]*dims[1]*dims[2] + 1 cell starts
  const int64_t* order;  // original index of each sorted point
  const T* xyz;          // sorted coordinates, coordinate-major (3, P)
  int64_t P;

  int64_t cell_id(int64_t x, int64_t y, int64_t z) const { return (z * dims[1] + y) * dims[0] + x; }
  int64_t cell_of(T v, int a) const {
    const T f = std::floor((v - lo[a]) * inv_h);
    if (!(f > T(0))) return 0;  // also NaN
    if (f >= static_cast<T>(dims[a] - 1)) return dims[a] - 1;  // compared before the cast: no overflow
    return static_cast<int64_t>(f);
  }
};

// Builds the grid over the first n points of cloud p (P, 3). `xyz` receives the sorted coordinates (3 * P),
// `iws` is knn_index_workspace(P) int64s. points_per_cell sets the cell size from the cloud's density.
template <typename T>
Grid<T> build_grid(const T* p, int64_t n, int64_t P, double points_per_cell, T* xyz, int64_t* iws) {
  Grid<T> g;
  const int64_t max_cells = 2 * P + 8;
  int64_t* start = iws;
  int64_t* cursor = iws + max_cells + 1;
  int64_t* order = cursor + max_cells + 1;
  int64_t* cell = order + P;
  T lo[3], hi[3];
  for (int a = 0; a < 3; ++a) {
    lo[a] = n ? p[a] : T(0);
    hi[a] = lo[a];
  }
  for (int64_t i = 0; i < n; ++i)
    for (int a = 0; a < 3; ++a) {
      lo[a] = std::min(lo[a], p[i * 3 + a]);
      hi[a] = std::max(hi[a], p[i * 3 + a]);
    }
  T ext[3];
  T max_ext = T(0);
  for (int a = 0; a < 3; ++a) {
    ext[a] = hi[a] - lo[a];
    max_ext = std::max(max_ext, ext[a]);
  }
  const double target = std::max(1.0, static_cast<double>(n) / points_per_cell);
  // Flat or degenerate clouds: axes thinner than a cell count as one cell, not as zero volume.
  double h = max_ext > T(0) ? static_cast<double>(max_ext) / std::cbrt(target) : 1.0;
  for (int iter = 0; iter < 64 && max_ext > T(0); ++iter) {
    double vol = 1.0;
    for (int a = 0; a < 3; ++a) vol *= std::max(static_cast<double>(ext[a]), h);
    const double h_new = std::cbrt(vol / target);
    if (std::abs(h_new - h) <= 1e-3 * h) break;
    h = h_new;
  }
  if (!(h > 0) || !std::isfinite(h)) h = 1.0;
  while (true) {
    int64_t cells = 1;
    for (int a = 0; a < 3; ++a) {
      g.dims[a] = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(static_cast<double>(ext[a]) / h)));
      cells *= g.dims[a];
    }
    if (cells <= max_cells) break;
    h *= 1.25;
  }
  for (int a = 0; a < 3; ++a) g.lo[a] = lo[a];
  g.h = static_cast<T>(h);
  g.inv_h = static_cast<T>(1.0 / h);
  const int64_t ncells = g.dims[0] * g.dims[1] * g.dims[2];
  std::fill(start, start + ncells + 1, int64_t(0));
  for (int64_t i = 0; i < n; ++i) {
    const T* q = p + i * 3;
    const int64_t c = g.cell_id(g.cell_of(q[0], 0), g.cell_of(q[1], 1), g.cell_of(q[2], 2));
    cell[i] = c;
    ++start[c + 1];
  }
  for (int64_t c = 0; c < ncells; ++c) start[c + 1] += start[c];
  std::copy(start, start + ncells, cursor);
  for (int64_t i = 0; i < n; ++i) order[cursor[cell[i]]++] = i;
  for (int64_t k = 0; k < n; ++k)
    for (int a = 0; a < 3; ++a) xyz[a * P + k] = p[order[k] * 3 + a];
  g.start = start;
  g.order = order;
  g.xyz = xyz;
  g.P = P;
  return g;
}

// kNN of queries [i0, i1) of cloud p1b against the grid: rings of cells around the query's cell until the
// K-th distance is smaller than the distance to anything outside the searched box.
template <typename T>
void knn_grid_queries(const T* p1b, const Grid<T>& g, int64_t i0, int64_t i1, int64_t K, T* dists, int64_t* idx) {
  constexpr int64_t kBuf = 256;
  alignas(64) T dbuf[kBuf];
  const T* xs = g.xyz;
  const T* ys = g.xyz + g.P;
  const T* zs = g.xyz + 2 * g.P;
  for (int64_t i = i0; i < i1; ++i) {
    const T* q = p1b + i * 3;
    T* dr = dists + i * K;
    int64_t* ir = idx + i * K;
    int64_t count = 0;
    const int64_t c[3] = {g.cell_of(q[0], 0), g.cell_of(q[1], 1), g.cell_of(q[2], 2)};
    auto scan = [&](int64_t b, int64_t e) {
      for (int64_t j0 = b; j0 < e; j0 += kBuf) {
        const int64_t nb = std::min(kBuf, e - j0);
#pragma omp simd
        for (int64_t j = 0; j < nb; ++j) {
          const T dx = xs[j0 + j] - q[0], dy = ys[j0 + j] - q[1], dz = zs[j0 + j] - q[2];
          dbuf[j] = dx * dx + dy * dy + dz * dz;
        }
        for (int64_t j = 0; j < nb; ++j)
          if (count < K || dbuf[j] <= dr[K - 1]) count = topk_insert_lex(dr, ir, count, K, dbuf[j], g.order[j0 + j]);
      }
    };
    const int64_t max_r = std::max({g.dims[0], g.dims[1], g.dims[2]});
    for (int64_t r = 0; r <= max_r; ++r) {
      const int64_t z0 = std::max<int64_t>(0, c[2] - r), z1 = std::min(g.dims[2] - 1, c[2] + r);
      const int64_t y0 = std::max<int64_t>(0, c[1] - r), y1 = std::min(g.dims[1] - 1, c[1] + r);
      const int64_t x0 = std::max<int64_t>(0, c[0] - r), x1 = std::min(g.dims[0] - 1, c[0] + r);
      for (int64_t z = z0; z <= z1; ++z) {
        for (int64_t y = y0; y <= y1; ++y) {
          if (std::abs(z - c[2]) == r || std::abs(y - c[1]) == r) {
            scan(g.start[g.cell_id(x0, y, z)], g.start[g.cell_id(x1, y, z) + 1]);
          } else {
            if (c[0] - r >= 0) scan(g.start[g.cell_id(c[0] - r, y, z)], g.start[g.cell_id(c[0] - r, y, z) + 1]);
            if (r > 0 && c[0] + r < g.dims[0])
              scan(g.start[g.cell_id(c[0] + r, y, z)], g.start[g.cell_id(c[0] + r, y, z) + 1]);
          }
        }
      }
      if (x0 == 0 && y0 == 0 && z0 == 0 && x1 == g.dims[0] - 1 && y1 == g.dims[1] - 1 && z1 == g.dims[2] - 1) break;
      if (count == K) {
        // Distance from q to the nearest point that could lie outside the searched box; sides at the grid's
        // edge are open (no points beyond). A small margin covers the rounding of the cell assignment.
        T bound = std::numeric_limits<T>::infinity();
        for (int a = 0; a < 3; ++a) {
          if (c[a] - r > 0) bound = std::min(bound, q[a] - (g.lo[a] + static_cast<T>(c[a] - r) * g.h));
          if (c[a] + r < g.dims[a] - 1) bound = std::min(bound, g.lo[a] + static_cast<T>(c[a] + r + 1) * g.h - q[a]);
        }
        bound -= g.h * T(1e-4);
        if (bound > T(0) && dr[K - 1] < bound * bound) break;
      }
    }
    for (int64_t k = count; k < K; ++k) {
      dr[k] = T(0);
      ir[k] = 0;
    }
  }
}

template <typename F>
void with_static_dim(int64_t D, F&& f) {
  if (D == 3) f(std::integral_constant<int, 3>{});
  else if (D == 2) f(std::integral_constant<int, 2>{});
  else f(std::integral_constant<int, 0>{});
}

}  // namespace

template <typename T>
void sample_farthest_points_cpu(const T* points, int64_t B, int64_t N, int64_t D, const int64_t* lengths,
                                const int64_t* start, int64_t K, int64_t* idx, T* workspace) {
  with_static_dim(D, [&](auto dc) {
    constexpr int DC = decltype(dc)::value;
    parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        fps_one_cloud<T, DC>(points + b * N * D, N, D, cloud_length(lengths, b, N), start ? start[b] : 0, K,
                             idx + b * K, workspace + b * (D + 1) * N);
    });
  });
}

template <typename T>
void knn_cpu(const T* p1, const T* p2, int64_t B, int64_t P1, int64_t P2, int64_t D, const int64_t* lengths1,
             const int64_t* lengths2, int64_t K, T* dists, int64_t* idx, T* workspace, int64_t* index_workspace) {
  if (D == 3 && P2 >= kGridMinPoints) {
    // One cloud at a time: the O(P2) grid build is serial, the queries run in parallel.
    const double points_per_cell = std::clamp(0.2 * static_cast<double>(K), 1.0, 32.0);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n1 = cloud_length(lengths1, b, P1);
      const Grid<T> grid = build_grid(p2 + b * P2 * 3, cloud_length(lengths2, b, P2), P2, points_per_cell,
                                      workspace + b * 3 * P2, index_workspace + b * knn_index_workspace(P2));
      T* db = dists + b * P1 * K;
      int64_t* ib = idx + b * P1 * K;
      parallel_for_dynamic(0, n1, 64, [&](int64_t i0, int64_t i1) {
        knn_grid_queries<T>(p1 + b * P1 * 3, grid, i0, i1, K, db, ib);
      });
      std::fill(db + n1 * K, db + P1 * K, T(0));
      std::fill(ib + n1 * K, ib + P1 * K, int64_t(0));
    }
    return;
  }
  clouds_to_coordinate_major(p2, B, P2, D, lengths2, workspace);
  with_static_dim(D, [&](auto dc) {
    constexpr int DC = decltype(dc)::value;
    for_each_query(B, P1, K, lengths1, dists, idx, 0, [&](int64_t b, int64_t i0, int64_t i1) {
      knn_queries<T, DC>(p1 + b * P1 * D, workspace + b * D * P2, P2, D, cloud_length(lengths2, b, P2), i0, i1, K,
                         dists + b * P1 * K, idx + b * P1 * K);
    });
  });
}

template <typename T>
void ball_query_cpu(const T* p1, const T* p2, int64_t B, int64_t P1, int64_t P2, int64_t D, const int64_t* lengths1,
                    const int64_t* lengths2, int64_t K, double radius, T* dists, int64_t* idx, T* workspace) {
  clouds_to_coordinate_major(p2, B, P2, D, lengths2, workspace);
  const T r2 = static_cast<T>(radius * radius);  // squared in double, rounded once (as torch compares)
  with_static_dim(D, [&](auto dc) {
    constexpr int DC = decltype(dc)::value;
    for_each_query(B, P1, K, lengths1, dists, idx, -1, [&](int64_t b, int64_t i0, int64_t i1) {
      ball_queries<T, DC>(p1 + b * P1 * D, workspace + b * D * P2, P2, D, cloud_length(lengths2, b, P2), i0, i1, K,
                          r2, dists + b * P1 * K, idx + b * P1 * K);
    });
  });
}

template <typename T>
void gather_columns_cpu(const T* features, int64_t B, int64_t C, int64_t N, const int64_t* idx, int64_t M, T* out) {
  parallel_for(0, B * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(M, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* f = features + r * N;
      const int64_t* ib = idx + (r / C) * M;
      T* o = out + r * M;
      for (int64_t m = 0; m < M; ++m) o[m] = f[ib[m]];
    }
  });
}

template <typename T>
void gather_columns_backward_cpu(const T* grad_out, int64_t B, int64_t C, int64_t N, const int64_t* idx, int64_t M,
                                 T* grad_features) {
  // One (b, c) row per task: every row scatters only into its own row, so no atomics are needed.
  parallel_for(0, B * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(M + N, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* gf = grad_features + r * N;
      std::fill(gf, gf + N, T(0));
      const int64_t* ib = idx + (r / C) * M;
      const T* g = grad_out + r * M;
      for (int64_t m = 0; m < M; ++m) gf[ib[m]] += g[m];
    }
  });
}

template <typename T>
void three_interpolate_cpu(const T* features, int64_t B, int64_t C, int64_t M, const int64_t* idx, const T* weight,
                           int64_t N, T* out) {
  parallel_for(0, B * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / C;
      const T* f = features + r * M;
      const int64_t* ib = idx + b * N * 3;
      const T* wb = weight + b * N * 3;
      T* o = out + r * N;
      for (int64_t n = 0; n < N; ++n)
        o[n] = wb[3 * n] * f[ib[3 * n]] + wb[3 * n + 1] * f[ib[3 * n + 1]] + wb[3 * n + 2] * f[ib[3 * n + 2]];
    }
  });
}

template <typename T>
void three_interpolate_backward_cpu(const T* grad_out, const T* features, int64_t B, int64_t C, int64_t M,
                                    const int64_t* idx, const T* weight, int64_t N, T* grad_features, T* grad_weight) {
  if (grad_features) {
    parallel_for(0, B * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(N + M, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / C;
        T* gf = grad_features + r * M;
        std::fill(gf, gf + M, T(0));
        const int64_t* ib = idx + b * N * 3;
        const T* wb = weight + b * N * 3;
        const T* g = grad_out + r * N;
        for (int64_t n = 0; n < N; ++n)
          for (int j = 0; j < 3; ++j) gf[ib[3 * n + j]] += wb[3 * n + j] * g[n];
      }
    });
  }
  if (grad_weight) {
    // grad_weight[b, n, j] = sum_c grad_out[b, c, n] * features[b, c, idx[b, n, j]]: split (b, n) ranges,
    // walk channels outermost so that every row of grad_out and features is read contiguously.
    constexpr int64_t kTile = 256;
    const int64_t tiles = (N + kTile - 1) / kTile;
    parallel_for(0, B * tiles, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / tiles;
        const int64_t n0 = (t % tiles) * kTile;
        const int64_t n1 = std::min(N, n0 + kTile);
        T* gw = grad_weight + b * N * 3;
        const int64_t* ib = idx + b * N * 3;
        std::fill(gw + 3 * n0, gw + 3 * n1, T(0));
        for (int64_t c = 0; c < C; ++c) {
          const T* g = grad_out + (b * C + c) * N;
          const T* f = features + (b * C + c) * M;
          for (int64_t n = n0; n < n1; ++n)
            for (int j = 0; j < 3; ++j) gw[3 * n + j] += g[n] * f[ib[3 * n + j]];
        }
      }
    });
  }
}

int64_t find_index_out_of_range_cpu(const int64_t* idx, int64_t n, int64_t lo, int64_t hi) {
  for (int64_t i = 0; i < n; ++i)
    if (idx[i] < lo || idx[i] >= hi) return i;
  return -1;
}

#define PVF_INSTANTIATE(T)                                                                                         \
  template void sample_farthest_points_cpu<T>(const T*, int64_t, int64_t, int64_t, const int64_t*, const int64_t*, \
                                              int64_t, int64_t*, T*);                                              \
  template void knn_cpu<T>(const T*, const T*, int64_t, int64_t, int64_t, int64_t, const int64_t*, const int64_t*, \
                           int64_t, T*, int64_t*, T*, int64_t*);                                                   \
  template void ball_query_cpu<T>(const T*, const T*, int64_t, int64_t, int64_t, int64_t, const int64_t*,          \
                                  const int64_t*, int64_t, double, T*, int64_t*, T*);                              \
  template void gather_columns_cpu<T>(const T*, int64_t, int64_t, int64_t, const int64_t*, int64_t, T*);           \
  template void gather_columns_backward_cpu<T>(const T*, int64_t, int64_t, int64_t, const int64_t*, int64_t, T*);  \
  template void three_interpolate_cpu<T>(const T*, int64_t, int64_t, int64_t, const int64_t*, const T*, int64_t,   \
                                         T*);                                                                      \
  template void three_interpolate_backward_cpu<T>(const T*, const T*, int64_t, int64_t, int64_t, const int64_t*,   \
                                                  const T*, int64_t, T*, T*);

PVF_INSTANTIATE(float)
PVF_INSTANTIATE(double)
#undef PVF_INSTANTIATE

}  // namespace pointcloud
}  // namespace pvf
