// Arithmetic shared by the CPU and CUDA rasterizers. Every operation is rounded on its own (the CUDA side
// uses the _rn intrinsics, which nvcc never contracts into FMAs nor replaces under --use_fast_math; the CPU
// translation unit turns contraction off), so both kernels and the plain-PyTorch reference agree bitwise.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace pvf {
namespace mesh_raster {

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float add_(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float mul_(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float div_(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double add_(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub_(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul_(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double div_(double a, double b) { return __ddiv_rn(a, b); }
#define PVF_MR_FN __device__ __forceinline__
#else
template <typename T> inline T add_(T a, T b) { return a + b; }
template <typename T> inline T sub_(T a, T b) { return a - b; }
template <typename T> inline T mul_(T a, T b) { return a * b; }
template <typename T> inline T div_(T a, T b) { return a / b; }
#define PVF_MR_FN inline
#endif

// Screen-space vertex: (sx, sy, 1/w, z/w); iw is NaN for a vertex that culls its triangles.
template <typename T>
PVF_MR_FN void screen_vertex(const T* clip, int64_t H, int64_t W, T* out) {
  const T x = clip[0], y = clip[1], z = clip[2], w = clip[3];
  const bool ok = w > T(0) && std::isfinite(x) && std::isfinite(y) && std::isfinite(z) && std::isfinite(w);
  out[0] = mul_(add_(div_(x, w), T(1)), T(W) * T(0.5));
  out[1] = mul_(add_(div_(y, w), T(1)), T(H) * T(0.5));
  out[2] = ok ? div_(T(1), w) : T(NAN);
  out[3] = div_(z, w);
}

// One edge a -> b, stored from its lexicographically smaller endpoint l: e(p) = dx (py - ly) - dy (px - lx),
// negated when flip (the stored direction differs from the edge's direction in the counter-clockwise
// orientation of the triangle). own: centres exactly on the edge belong to this triangle.
template <typename T>
struct Edge {
  T lx, ly, dx, dy;
  bool flip, own;
};

template <typename T>
PVF_MR_FN Edge<T> make_edge(T ax, T ay, T bx, T by, bool front) {
  const bool swap = ax > bx || (ax == bx && ay > by);
  Edge<T> e;
  e.lx = swap ? bx : ax;
  e.ly = swap ? by : ay;
  e.dx = sub_(swap ? ax : bx, e.lx);
  e.dy = sub_(swap ? ay : by, e.ly);
  e.flip = swap == front;  // swap XOR back-facing
  const bool own = by > ay || (by == ay && bx < ax);
  e.own = front ? own : !own;
  return e;
}

template <typename T>
PVF_MR_FN T edge_row(const Edge<T>& e, T py) { return mul_(e.dx, sub_(py, e.ly)); }

template <typename T>
PVF_MR_FN T edge_at(const Edge<T>& e, T row, T px) {
  const T v = sub_(row, mul_(e.dy, sub_(px, e.lx)));
  return e.flip ? -v : v;
}

template <typename T>
PVF_MR_FN bool covers(T e, bool own) { return e > T(0) || (e == T(0) && own); }

// A triangle set up for scanning: its edges (edge k opposite vertex k), |area|, per-vertex 1/w and z/w, and
// the clamped pixel bounding box [i0, i1] x [j0, j1] (empty when culled).
template <typename T>
struct Tri {
  Edge<T> e[3];
  T area, iw[3], zw[3];
  int64_t i0, i1, j0, j1;
};

template <typename T>
PVF_MR_FN T min3(T a, T b, T c) { return (b < a ? b : a) < c ? (b < a ? b : a) : c; }
template <typename T>
PVF_MR_FN T max3(T a, T b, T c) { return (a < b ? b : a) < c ? c : (a < b ? b : a); }
template <typename T>
PVF_MR_FN T clampf(T v, T lo, T hi) { return v < lo ? lo : (v > hi ? hi : v); }
// ceil / floor of v clamped to the integers [lo, hi] (v not NaN), by truncation: exactly clamp(ceil(v)) and
// clamp(floor(v)), without the library's branches.
template <typename T>
PVF_MR_FN int64_t ceil_in(T v, int64_t lo, int64_t hi) {
  v = clampf(v, T(lo), T(hi));
  const int64_t c = static_cast<int64_t>(v);
  return c + static_cast<int64_t>(static_cast<T>(c) < v);
}
template <typename T>
PVF_MR_FN int64_t floor_in(T v, int64_t lo, int64_t hi) {
  v = clampf(v, T(lo), T(hi));
  const int64_t c = static_cast<int64_t>(v);
  return c - static_cast<int64_t>(v < static_cast<T>(c));
}

// Sets up face (v0, v1, v2) from the screen-space vertices s_k = (sx, sy, 1/w, z/w). Returns false when the
// face covers nothing (culled vertex, zero or non-finite area, back face under cull_backfaces, empty box).
template <typename T>
PVF_MR_FN bool setup_triangle(const T* s0, const T* s1, const T* s2, int64_t H, int64_t W,
                              bool cull_backfaces, Tri<T>& t) {
  if (std::isnan(s0[2]) || std::isnan(s1[2]) || std::isnan(s2[2])) return false;
  // vertices passing that test have finite coordinates and w > 0: sx, sy are finite or +-inf (clamped below)
  const T x0 = s0[0], y0 = s0[1], x1 = s1[0], y1 = s1[1], x2 = s2[0], y2 = s2[1];
  // the box first: most faces of a dense mesh hold no pixel centre, and the tests below are all required
  t.i0 = ceil_in(sub_(min3(y0, y1, y2), T(0.5)), 0, H);
  t.i1 = floor_in(sub_(max3(y0, y1, y2), T(0.5)), -1, H - 1);
  if (t.i0 > t.i1) return false;
  t.j0 = ceil_in(sub_(min3(x0, x1, x2), T(0.5)), 0, W);
  t.j1 = floor_in(sub_(max3(x0, x1, x2), T(0.5)), -1, W - 1);
  if (t.j0 > t.j1) return false;
  const T area = sub_(mul_(sub_(x1, x0), sub_(y2, y0)), mul_(sub_(y1, y0), sub_(x2, x0)));
  if (!(area != T(0)) || !std::isfinite(area)) return false;
  const bool front = area > T(0);
  if (cull_backfaces && !front) return false;
  t.e[0] = make_edge(x1, y1, x2, y2, front);
  t.e[1] = make_edge(x2, y2, x0, y0, front);
  t.e[2] = make_edge(x0, y0, x1, y1, front);
  t.area = front ? area : -area;
  t.iw[0] = s0[2], t.iw[1] = s1[2], t.iw[2] = s2[2];
  t.zw[0] = s0[3], t.zw[1] = s1[3], t.zw[2] = s2[3];
  return true;
}

// Depth z/w at a covered centre with edge values e0..e2.
template <typename T>
PVF_MR_FN T depth_at(const Tri<T>& t, T e0, T e1, T e2) {
  return div_(add_(add_(mul_(e0, t.zw[0]), mul_(e1, t.zw[1])), mul_(e2, t.zw[2])), t.area);
}

// Perspective-correct barycentrics (u, v) of vertices 1 and 2.
template <typename T>
PVF_MR_FN void barycentrics_at(const Tri<T>& t, T e0, T e1, T e2, T& u, T& v) {
  const T r0 = mul_(e0, t.iw[0]), r1 = mul_(e1, t.iw[1]), r2 = mul_(e2, t.iw[2]);
  const T s = add_(add_(r0, r1), r2);
  u = div_(r1, s);
  v = div_(r2, s);
}

// ---------------------------------------------------------------- the CUDA kernel's per-item bodies
// Kept here, with the atomic passed in, so that a host build (tests/test_mesh_raster.py) runs them too.

constexpr uint64_t kEmptyKey = ~uint64_t(0);

// Order-preserving unsigned image of a depth (-0 maps like +0, so that they tie as they compare).
PVF_MR_FN uint64_t depth_key(float d) {
  if (d == 0.0f) d = 0.0f;
#if defined(__CUDA_ARCH__)
  const uint32_t u = __float_as_uint(d);
#else
  uint32_t u;
  std::memcpy(&u, &d, sizeof(u));
#endif
  return (u & 0x80000000u) ? uint64_t(~u) : uint64_t(u | 0x80000000u);
}
PVF_MR_FN uint64_t depth_key(double d) {
  if (d == 0.0) d = 0.0;
#if defined(__CUDA_ARCH__)
  const uint64_t u = static_cast<uint64_t>(__double_as_longlong(d));
#else
  uint64_t u;
  std::memcpy(&u, &d, sizeof(u));
#endif
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// One (image b, face f) item of the depth pass (Pass 0: amin(keys[p], depth key)) or of the id pass (Pass 1:
// amin(ids[p], f) where the face's depth key is the pixel's minimum). amin(ptr, value) is an atomic minimum.
template <int Pass, typename T, typename AMin>
PVF_MR_FN void key_pass_item(const T* ws, const int64_t* faces, int64_t b, int64_t f, int64_t V, int64_t H,
                             int64_t W, bool cull, uint64_t* keys, uint64_t* ids, const AMin& amin) {
  const int64_t* fc = faces + f * 3;
  const T* vs = ws + b * V * 4;
  Tri<T> t;
  if (!setup_triangle(vs + fc[0] * 4, vs + fc[1] * 4, vs + fc[2] * 4, H, W, cull, t)) return;
  for (int64_t i = t.i0; i <= t.i1; ++i) {
    const T py = T(i) + T(0.5);
    const T a0 = edge_row(t.e[0], py), a1 = edge_row(t.e[1], py), a2 = edge_row(t.e[2], py);
    for (int64_t j = t.j0; j <= t.j1; ++j) {
      const T px = T(j) + T(0.5);
      const T e0 = edge_at(t.e[0], a0, px), e1 = edge_at(t.e[1], a1, px), e2 = edge_at(t.e[2], a2, px);
      if (!covers(e0, t.e[0].own) || !covers(e1, t.e[1].own) || !covers(e2, t.e[2].own)) continue;
      const uint64_t key = depth_key(depth_at(t, e0, e1, e2));
      const int64_t p = (b * H + i) * W + j;
      if (Pass == 0)
        amin(keys + p, key);
      else if (keys[p] == key)
        amin(ids + p, static_cast<uint64_t>(f));
    }
  }
}

// Pixel p of rast (B, H, W, 4) from the id pass's winner ids[p] (kEmptyKey: no triangle).
template <typename T>
PVF_MR_FN void resolve_item(const T* ws, const int64_t* faces, int64_t p, int64_t V, int64_t H, int64_t W,
                            bool cull, const uint64_t* ids, T* rast) {
  T* o = rast + p * 4;
  const uint64_t f = ids[p];
  if (f == kEmptyKey) {
    o[0] = o[1] = o[2] = o[3] = T(0);
    return;
  }
  const int64_t b = p / (H * W), i = (p / W) % H, j = p % W;
  const int64_t* fc = faces + f * 3;
  const T* vs = ws + b * V * 4;
  Tri<T> t;
  setup_triangle(vs + fc[0] * 4, vs + fc[1] * 4, vs + fc[2] * 4, H, W, cull, t);
  const T py = T(i) + T(0.5), px = T(j) + T(0.5);
  const T e0 = edge_at(t.e[0], edge_row(t.e[0], py), px);
  const T e1 = edge_at(t.e[1], edge_row(t.e[1], py), px);
  const T e2 = edge_at(t.e[2], edge_row(t.e[2], py), px);
  barycentrics_at(t, e0, e1, e2, o[0], o[1]);
  o[2] = depth_at(t, e0, e1, e2);
  o[3] = T(static_cast<int64_t>(f) + 1);
}

}  // namespace mesh_raster
}  // namespace pvf
