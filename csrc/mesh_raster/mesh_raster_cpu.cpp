// CPU rasterizer (see mesh_raster.h). Floating-point contraction is off in this translation unit: the edge
// functions and depths must round exactly like the plain-PyTorch reference (one rounding per operation).
#pragma GCC optimize("fp-contract=off")
#include <algorithm>
#include <climits>
#include <cstring>
#include <type_traits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common/parallel.h"
#include "mesh_raster/mesh_raster.h"
#include "mesh_raster/mesh_raster_math.h"

namespace pvf {
namespace mesh_raster {

namespace {

// Rasterizes face f of image b into the rows [r0, r1) of rast (B, H, W, 4); faces arrive in increasing id, so
// a pixel changes hands only for a strictly smaller depth (equal depths stay with the lower id).
template <typename T>
inline void raster_face(const Tri<T>& t, int64_t f, int64_t r0, int64_t r1, int64_t W, T* img) {
  const int64_t i0 = std::max(t.i0, r0), i1 = std::min(t.i1, r1 - 1);
  for (int64_t i = i0; i <= i1; ++i) {
    const T py = T(i) + T(0.5);
    const T a0 = edge_row(t.e[0], py), a1 = edge_row(t.e[1], py), a2 = edge_row(t.e[2], py);
    T* row = img + i * W * 4;
    for (int64_t j = t.j0; j <= t.j1; ++j) {
      const T px = T(j) + T(0.5);
      const T e0 = edge_at(t.e[0], a0, px), e1 = edge_at(t.e[1], a1, px), e2 = edge_at(t.e[2], a2, px);
      // one branch per pixel (the three tests combined without short-circuit)
      if (!(covers(e0, t.e[0].own) & covers(e1, t.e[1].own) & covers(e2, t.e[2].own))) continue;
      const T depth = depth_at(t, e0, e1, e2);
      T* o = row + j * 4;
      if (o[3] == T(0) || depth < o[2]) {
        barycentrics_at(t, e0, e1, e2, o[0], o[1]);
        o[2] = depth;
        o[3] = T(f + 1);
      }
    }
  }
}

// Faces [0, F) of one image into rows [r0, r1), scalar: setup, then the box scan.
template <typename T>
void raster_faces(const T* vs, const int64_t* faces, int64_t F, int64_t H, int64_t W, bool cull, int64_t r0,
                  int64_t r1, T* img) {
  Tri<T> t;
  for (int64_t f = 0; f < F; ++f) {
    const int64_t* fc = faces + f * 3;
    if (!setup_triangle(vs + fc[0] * 4, vs + fc[1] * 4, vs + fc[2] * 4, H, W, cull, t)) continue;
    if (t.i1 < r0 || t.i0 >= r1) continue;
    raster_face(t, f, r0, r1, W, img);
  }
}

#if defined(__AVX512F__)
// The same, 16 faces at a time (float32). A dense mesh's faces are mostly smaller than a pixel: most hold no
// pixel centre in their box, and most of the others one. The vector part computes, for 16 faces, what
// setup_triangle computes first (the culling tests and the pixel box, as masks), and for the faces whose box
// holds exactly one centre the edge functions, coverage and depth there, with the scalar code's operations in
// its order (each rounded once; intrinsics are never contracted), so the values are bitwise the scalar ones.
// The surviving faces are then taken in id order: one-centre faces write their pixel from the vector values,
// the others go through the scalar setup and box scan. The z-buffer sees the faces in the scalar order.
struct Edge16 {
  __m512 lx, ly, dx, dy;
  __mmask16 flip, own;
};

inline Edge16 make_edge16(__m512 ax, __m512 ay, __m512 bx, __m512 by, __mmask16 front) {
  const __mmask16 swap = _mm512_cmp_ps_mask(ax, bx, _CMP_GT_OQ) |
                         (_mm512_cmp_ps_mask(ax, bx, _CMP_EQ_OQ) & _mm512_cmp_ps_mask(ay, by, _CMP_GT_OQ));
  Edge16 e;
  e.lx = _mm512_mask_blend_ps(swap, ax, bx);
  e.ly = _mm512_mask_blend_ps(swap, ay, by);
  e.dx = _mm512_sub_ps(_mm512_mask_blend_ps(swap, bx, ax), e.lx);
  e.dy = _mm512_sub_ps(_mm512_mask_blend_ps(swap, by, ay), e.ly);
  e.flip = static_cast<__mmask16>(~(swap ^ front));  // swap == front
  const __mmask16 own = _mm512_cmp_ps_mask(by, ay, _CMP_GT_OQ) |
                        (_mm512_cmp_ps_mask(by, ay, _CMP_EQ_OQ) & _mm512_cmp_ps_mask(bx, ax, _CMP_LT_OQ));
  e.own = static_cast<__mmask16>((front & own) | (~front & ~own));
  return e;
}

// edge_at(e, edge_row(e, py), px), negated where flip; and the coverage test.
inline __m512 edge16(const Edge16& e, __m512 px, __m512 py) {
  const __m512 row = _mm512_mul_ps(e.dx, _mm512_sub_ps(py, e.ly));
  const __m512 v = _mm512_sub_ps(row, _mm512_mul_ps(e.dy, _mm512_sub_ps(px, e.lx)));
  return _mm512_mask_xor_ps(v, e.flip, v, _mm512_set1_ps(-0.0f));
}
inline __mmask16 covers16(__m512 e, __mmask16 own) {
  return _mm512_cmp_ps_mask(e, _mm512_setzero_ps(), _CMP_GT_OQ) |
         (_mm512_cmp_ps_mask(e, _mm512_setzero_ps(), _CMP_EQ_OQ) & own);
}
// ceil_in / floor_in of setup_triangle: clamp to [lo, hi], then round (exact for the clamped values).
inline __m512i ceil16(__m512 v, float lo, float hi) {
  v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(lo)), _mm512_set1_ps(hi));
  return _mm512_cvtps_epi32(_mm512_roundscale_ps(v, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC));
}
inline __m512i floor16(__m512 v, float lo, float hi) {
  v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(lo)), _mm512_set1_ps(hi));
  return _mm512_cvtps_epi32(_mm512_roundscale_ps(v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
}

// The vertex indices of faces [base, base + n) (n <= 16) as three int32 vectors of float offsets (4 * index):
// the 48 int64 of the (F, 3) table are loaded, narrowed and de-interleaved (element 3 l + k is vertex k of
// face l). Indices fit int32 (the caller checks V < 2^29).
inline void face_offsets16(const int64_t* fc, int n, __m512i out[3]) {
  const int count = 3 * n;
  __m512i q[3];
  for (int h = 0; h < 3; ++h) {  // elements 16 h .. 16 h + 15
    const int lo = std::max(0, std::min(8, count - 16 * h)), hi = std::max(0, std::min(8, count - 16 * h - 8));
    const __m256i a = _mm512_cvtepi64_epi32(_mm512_maskz_loadu_epi64(__mmask8((1u << lo) - 1), fc + 16 * h));
    const __m256i b = _mm512_cvtepi64_epi32(_mm512_maskz_loadu_epi64(__mmask8((1u << hi) - 1), fc + 16 * h + 8));
    q[h] = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
  }
  // element 3 l + k: taken from q0|q1 when < 32 (kFromAB), then kept or replaced from q2 (kFromTC)
  alignas(64) static constexpr int32_t kFromAB[3][16] = {{0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0, 0, 0, 0, 0}, {1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 0, 0, 0, 0, 0}, {2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0, 0, 0, 0, 0, 0}};
  alignas(64) static constexpr int32_t kFromTC[3][16] = {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 17, 20, 23, 26, 29}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 18, 21, 24, 27, 30}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 19, 22, 25, 28, 31}};
  for (int k = 0; k < 3; ++k) {
    const __m512i t = _mm512_permutex2var_epi32(q[0], _mm512_load_si512(kFromAB[k]), q[1]);
    out[k] = _mm512_slli_epi32(_mm512_permutex2var_epi32(t, _mm512_load_si512(kFromTC[k]), q[2]), 2);
  }
}

// screen_vertex for vertices [0, n) of clip (n, 4) into out (n, 4), four vertices per vector, with the scalar
// function's operations (exact divisions and products, so bitwise equal).
void screen_vertices_avx512(const float* clip, int64_t n, int64_t H, int64_t W, float* out) {
  const __m512 one = _mm512_set1_ps(1.0f), nan = _mm512_set1_ps(NAN);
  const float sx = static_cast<float>(W) * 0.5f, sy = static_cast<float>(H) * 0.5f;
  const __m512 scale = _mm512_setr4_ps(sx, sy, 1.0f, 1.0f);
  constexpr __mmask16 kXY = 0x3333, kIW = 0x4444;
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    const __m512 v = _mm512_loadu_ps(clip + 4 * k);
    const __m512 w = _mm512_permute_ps(v, 0xFF);  // each vertex's w in its four lanes
    const __m512 q = _mm512_div_ps(v, w);          // x/w, y/w, z/w, 1
    const __m512 xy = _mm512_mul_ps(_mm512_add_ps(q, one), scale);
    const __m512 iw = _mm512_div_ps(one, w);
    // a vertex is usable when its four values are finite and w > 0
    const __mmask16 bad = _mm512_fpclass_ps_mask(v, 0x99) |                                   // NaN or Inf
                          (_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NGT_UQ) & 0x8888);  // !(w > 0)
    uint32_t per_vertex = 0;
    for (int j = 0; j < 4; ++j) per_vertex |= ((bad >> (4 * j)) & 0xFu) ? (0x4u << (4 * j)) : 0u;
    // lanes (sx, sy, 1/w, z/w): z/w moves from lane 2 to lane 3
    __m512 r = _mm512_mask_blend_ps(kXY, _mm512_permute_ps(q, 0xA4), xy);
    r = _mm512_mask_blend_ps(kIW, r, _mm512_mask_blend_ps(__mmask16(per_vertex), iw, nan));
    _mm512_storeu_ps(out + 4 * k, r);
  }
  for (; k < n; ++k) screen_vertex(clip + 4 * k, H, W, out + 4 * k);
}

void raster_faces_avx512(const float* vs, const int64_t* faces, int64_t F, int64_t H, int64_t W, bool cull,
                         int64_t r0, int64_t r1, float* img) {
  constexpr int kSpan = 3;  // boxes of up to kSpan x kSpan centres are scanned in vector
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512 inf = _mm512_set1_ps(INFINITY);
  alignas(64) float u_s[kSpan * kSpan][16], v_s[kSpan * kSpan][16], depth_s[kSpan * kSpan][16];
  alignas(64) int32_t i0_s[16], j0_s[16];
  __mmask16 cov_s[kSpan * kSpan];
  const __m512i kLanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // pixel offsets and face ids fit int32 (and the ids are exact floats up to 2^24, as in the scalar code)
  const bool small_image = H * W * 4 < (int64_t(1) << 31) && F < (int64_t(1) << 30);
  uint32_t lane_cov[16];  // per face: the offsets it covers (bit di * kSpan + dj)
  Tri<float> t;
  for (int64_t base = 0; base < F; base += 16) {
    const int n = static_cast<int>(std::min<int64_t>(16, F - base));
    __m512i offs[3];
    face_offsets16(faces + base * 3, n, offs);
    __mmask16 live = n == 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    __m512 x[3], y[3], iw[3];
    for (int k = 0; k < 3; ++k) {
      const __m512i ik = offs[k];
      const __m512i iy = _mm512_add_epi32(ik, _mm512_set1_epi32(1));
      const __m512i ii = _mm512_add_epi32(ik, _mm512_set1_epi32(2));
      x[k] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, ik, vs, 4);
      y[k] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, iy, vs, 4);
      iw[k] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, ii, vs, 4);
      live &= _mm512_cmp_ps_mask(iw[k], iw[k], _CMP_ORD_Q);  // a NaN 1/w culls the face
    }
    // the pixel box (setup_triangle's order of tests does not matter: a face fails if any fails)
    const __m512 ymin = _mm512_min_ps(_mm512_min_ps(y[0], y[1]), y[2]);
    const __m512 ymax = _mm512_max_ps(_mm512_max_ps(y[0], y[1]), y[2]);
    const __m512 xmin = _mm512_min_ps(_mm512_min_ps(x[0], x[1]), x[2]);
    const __m512 xmax = _mm512_max_ps(_mm512_max_ps(x[0], x[1]), x[2]);
    const __m512i i0 = ceil16(_mm512_sub_ps(ymin, half), 0.0f, static_cast<float>(H));
    const __m512i i1 = floor16(_mm512_sub_ps(ymax, half), -1.0f, static_cast<float>(H - 1));
    const __m512i j0 = ceil16(_mm512_sub_ps(xmin, half), 0.0f, static_cast<float>(W));
    const __m512i j1 = floor16(_mm512_sub_ps(xmax, half), -1.0f, static_cast<float>(W - 1));
    const __m512i lo_row = _mm512_set1_epi32(static_cast<int32_t>(r0));
    const __m512i hi_row = _mm512_set1_epi32(static_cast<int32_t>(r1));
    live &= _mm512_cmple_epi32_mask(i0, i1) & _mm512_cmple_epi32_mask(j0, j1);
    live &= _mm512_cmpge_epi32_mask(i1, lo_row) & _mm512_cmplt_epi32_mask(i0, hi_row);
    const __m512 area = _mm512_sub_ps(_mm512_mul_ps(_mm512_sub_ps(x[1], x[0]), _mm512_sub_ps(y[2], y[0])),
                                      _mm512_mul_ps(_mm512_sub_ps(y[1], y[0]), _mm512_sub_ps(x[2], x[0])));
    const __m512 abs_area = _mm512_abs_ps(area);
    live &= _mm512_cmp_ps_mask(area, _mm512_setzero_ps(), _CMP_NEQ_OQ) &  // not zero, not NaN
            _mm512_cmp_ps_mask(abs_area, inf, _CMP_LT_OQ);                // finite
    const __mmask16 front = _mm512_cmp_ps_mask(area, _mm512_setzero_ps(), _CMP_GT_OQ);
    if (cull) live &= front;
    if (!live) continue;
    // boxes of at most kSpan x kSpan centres: every centre tested in vector, offset by offset
    const __m512i di_max = _mm512_sub_epi32(i1, i0), dj_max = _mm512_sub_epi32(j1, j0);
    const __m512i span = _mm512_set1_epi32(kSpan - 1);
    const __mmask16 small =
        live & _mm512_cmple_epi32_mask(di_max, span) & _mm512_cmple_epi32_mask(dj_max, span);
    int rows = 0, cols = 0;
    if (small) {
      rows = _mm512_mask_reduce_max_epi32(small, di_max) + 1;
      cols = _mm512_mask_reduce_max_epi32(small, dj_max) + 1;
      const Edge16 e0 = make_edge16(x[1], y[1], x[2], y[2], front);
      const Edge16 e1 = make_edge16(x[2], y[2], x[0], y[0], front);
      const Edge16 e2 = make_edge16(x[0], y[0], x[1], y[1], front);
      __m512 zw[3];
      for (int k = 0; k < 3; ++k) {
        const __m512i ik = _mm512_add_epi32(offs[k], _mm512_set1_epi32(3));
        zw[k] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), small, ik, vs, 4);
      }
      for (int di = 0; di < rows; ++di) {
        const __m512i row = _mm512_add_epi32(i0, _mm512_set1_epi32(di));
        const __mmask16 in_rows = small & _mm512_cmple_epi32_mask(_mm512_set1_epi32(di), di_max) &
                                  _mm512_cmpge_epi32_mask(row, lo_row) & _mm512_cmplt_epi32_mask(row, hi_row);
        const __m512 py = _mm512_add_ps(_mm512_cvtepi32_ps(row), half);
        for (int dj = 0; dj < cols; ++dj) {
          const int o = di * kSpan + dj;
          const __mmask16 in_box = in_rows & _mm512_cmple_epi32_mask(_mm512_set1_epi32(dj), dj_max);
          cov_s[o] = 0;
          if (!in_box) continue;
          const __m512 px = _mm512_add_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(j0, _mm512_set1_epi32(dj))), half);
          const __m512 v0 = edge16(e0, px, py), v1 = edge16(e1, px, py), v2 = edge16(e2, px, py);
          cov_s[o] = in_box & covers16(v0, e0.own) & covers16(v1, e1.own) & covers16(v2, e2.own);
          if (!cov_s[o]) continue;
          const __m512 depth = _mm512_div_ps(
              _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(v0, zw[0]), _mm512_mul_ps(v1, zw[1])),
                            _mm512_mul_ps(v2, zw[2])),
              abs_area);
          // barycentrics_at's operations
          const __m512 q0 = _mm512_mul_ps(v0, iw[0]), q1 = _mm512_mul_ps(v1, iw[1]), q2 = _mm512_mul_ps(v2, iw[2]);
          const __m512 sum = _mm512_add_ps(_mm512_add_ps(q0, q1), q2);
          _mm512_store_ps(depth_s[o], depth);
          _mm512_store_ps(u_s[o], _mm512_div_ps(q1, sum));
          _mm512_store_ps(v_s[o], _mm512_div_ps(q2, sum));
        }
      }
      _mm512_store_si512(i0_s, i0), _mm512_store_si512(j0_s, j0);
      if (rows * cols > 1) {
        std::memset(lane_cov, 0, sizeof(lane_cov));
        for (int di = 0; di < rows; ++di)
          for (int dj = 0; dj < cols; ++dj) {
            const int o = di * kSpan + dj;
            for (uint32_t c = cov_s[o]; c; c &= c - 1) lane_cov[__builtin_ctz(c)] |= 1u << o;
          }
      }
    }
    const bool one_centre = rows * cols == 1;  // every small box holds one centre: offset 0 only
#if defined(__AVX512CD__)
    // Every live face has one centre and no two covered faces share it: the pixels are independent, so the
    // z-test and the writes go in vector (gathers and scatters) without changing the result.
    if (one_centre && live == small && small_image) {
      const __mmask16 c = cov_s[0];
      if (!c) continue;
      const __m512i pix = _mm512_slli_epi32(
          _mm512_add_epi32(_mm512_mullo_epi32(_mm512_load_si512(i0_s), _mm512_set1_epi32(static_cast<int32_t>(W))),
                           _mm512_load_si512(j0_s)),
          2);
      const __m512i clash = _mm512_and_si512(_mm512_maskz_conflict_epi32(c, pix), _mm512_set1_epi32(c));
      if (!_mm512_test_epi32_mask(clash, clash)) {
        const __m512i off2 = _mm512_add_epi32(pix, _mm512_set1_epi32(2));
        const __m512i off3 = _mm512_add_epi32(pix, _mm512_set1_epi32(3));
        const __m512 old_depth = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), c, off2, img, 4);
        const __m512 old_id = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), c, off3, img, 4);
        const __m512 depth = _mm512_load_ps(depth_s[0]);
        const __mmask16 win = c & (_mm512_cmp_ps_mask(old_id, _mm512_setzero_ps(), _CMP_EQ_OQ) |
                                   _mm512_cmp_ps_mask(depth, old_depth, _CMP_LT_OQ));
        const __m512 id = _mm512_cvtepi32_ps(
            _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(base + 1)), kLanes));
        _mm512_mask_i32scatter_ps(img, win, pix, _mm512_load_ps(u_s[0]), 4);
        _mm512_mask_i32scatter_ps(img, win, _mm512_add_epi32(pix, _mm512_set1_epi32(1)), _mm512_load_ps(v_s[0]), 4);
        _mm512_mask_i32scatter_ps(img, win, off2, depth, 4);
        _mm512_mask_i32scatter_ps(img, win, off3, id, 4);
        continue;
      }
    }
#endif
    // the surviving faces in id order
    for (uint32_t m = live; m; m &= m - 1) {
      const int l = __builtin_ctz(m);
      const int64_t f = base + l;
      if ((small >> l) & 1u) {
        for (uint32_t c = one_centre ? (cov_s[0] >> l) & 1u : lane_cov[l]; c; c &= c - 1) {
          const int o = __builtin_ctz(c), di = o / kSpan, dj = o % kSpan;
          float* px = img + ((static_cast<int64_t>(i0_s[l]) + di) * W + j0_s[l] + dj) * 4;
          const float depth = depth_s[o][l];
          if (px[3] == 0.0f || depth < px[2]) {
            px[0] = u_s[o][l];
            px[1] = v_s[o][l];
            px[2] = depth;
            px[3] = static_cast<float>(f + 1);
          }
        }
        continue;
      }
      const int64_t* g = faces + f * 3;
      if (!setup_triangle(vs + g[0] * 4, vs + g[1] * 4, vs + g[2] * 4, H, W, cull, t)) continue;
      raster_face(t, f, r0, r1, W, img);
    }
  }
}
#endif

}  // namespace

template <typename T>
void rasterize_cpu(const T* verts, const int64_t* faces, int64_t B, int64_t V, int64_t F, int64_t H,
                   int64_t W, bool cull_backfaces, T* rast, T* vertex_ws) {
  if (B == 0 || H == 0 || W == 0) return;
  // Bands: enough work items for every thread (about 4 per thread), none shorter than kRowsPerTile rows. The
  // banding does not change the result: each pixel is decided by the one band holding its row.
  const int64_t max_bands = (H + kRowsPerTile - 1) / kRowsPerTile;
  const int64_t want = (4 * static_cast<int64_t>(num_threads()) + B - 1) / B;
  const int64_t bands = std::max<int64_t>(1, std::min(want, max_bands));
  const int64_t band_h = (H + bands - 1) / bands;
  // With one band per image (batches of >= 4 images per thread) each work item transforms its own image's
  // vertices: one parallel region instead of two (an OpenMP region's end costs spinning threads).
  const auto screen = [&](int64_t lo, int64_t hi) {
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>) {
      screen_vertices_avx512(verts + lo * 4, hi - lo, H, W, vertex_ws + lo * 4);
      return;
    }
#endif
    for (int64_t k = lo; k < hi; ++k) screen_vertex(verts + k * 4, H, W, vertex_ws + k * 4);
  };
  if (bands > 1) parallel_for(0, B * V, 4096, screen);
  parallel_for_dynamic(0, B * bands, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t item = lo; item < hi; ++item) {
      const int64_t b = item / bands;
      if (bands == 1) screen(b * V, (b + 1) * V);
      const int64_t r0 = (item % bands) * band_h, r1 = std::min(H, r0 + band_h);
      if (r0 >= r1) continue;
      T* img = rast + b * H * W * 4;
      std::memset(img + r0 * W * 4, 0, sizeof(T) * (r1 - r0) * W * 4);
      const T* vs = vertex_ws + b * V * 4;
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float>) {
        if (V < (int64_t(1) << 29) && H < (1 << 24) && W < (1 << 24)) {
          raster_faces_avx512(vs, faces, F, H, W, cull_backfaces, r0, r1, img);
          continue;
        }
      }
#endif
      raster_faces(vs, faces, F, H, W, cull_backfaces, r0, r1, img);
    }
  });
}

template void rasterize_cpu<float>(const float*, const int64_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                   bool, float*, float*);
template void rasterize_cpu<double>(const double*, const int64_t*, int64_t, int64_t, int64_t, int64_t,
                                    int64_t, bool, double*, double*);

}  // namespace mesh_raster
}  // namespace pvf
