// Tiled filter bank (the "cuda:next" candidate of gaussian_scale_space): the bodies of its CUDA blocks.
//
// One block takes a 32 x 32 tile of one (b, c) plane and every scale. It stages the tile and its halo (the
// largest radius Rm on each side) in shared memory once, then per scale runs the separable passes out of shared
// memory: forward, rows (into u) then columns (into out). Backward, per scale, from the same x tile and the
// grad tile of that scale:
//   u  = rows pass of x over the halo rows             (for the vertical half of d/dk)
//   T  = transposed columns pass of grad (M_H^T grad) over the halo columns
//   d/dk[t] = sum over the tile of grad * u[h + t - r] + T * x[w + t - r]   -> one partial per (block, scale, tap)
//   grad_x += transposed rows pass of T               (= M_H^T grad M_W, summed over the scales in shared memory)
// The kernel-tap partials are reduced by a second kernel (one block per (scale, tap), summed in double): no
// atomics, the same result on every run.
//
// Shapes and semantics are filter_bank_forward_cuda's (scale_space.h). Positions outside the plane follow the
// boundary rule when the x tile is loaded (the halo holds x at the mapped positions); the transposed passes
// gather from the positions the rule maps onto each output (interior outputs: one; the edges add the mirrored
// or clamped ones in a second, edge-only pass).
//
// The bodies are written against a context (thread index, block index, barrier, shared memory) so that the same
// code runs as CUDA blocks (filter_bank_tiled.cuh) and under the host emulator of the tests
// (tests/cuda_emulation/), which runs every thread of a block as an OS thread with a real barrier. Indices are
// 32-bit within a plane (the launcher checks H * W and the halo fit); plane offsets are 64-bit.
#pragma once
#include <cstdint>

#include "scale_space/scale_space.h"

#if defined(__CUDACC__)
#define PVF_TILE_FN __device__ __forceinline__
#define PVF_TILE_HD __host__ __device__ inline
#else
#define PVF_TILE_FN inline
#define PVF_TILE_HD inline
#endif

namespace pvf {
namespace scale_space {
namespace tiled {

constexpr int kTile = 32;          // output tile: kTile x kTile positions of one plane
constexpr int kLdU = kTile + 1;    // row stride of the kTile-wide buffers (odd: conflict-free column walks)
constexpr int kThreads = 256;      // threads per block (any multiple of 32 works; the emulator tests others)
constexpr int kReduceThreads = 256;

struct Geometry {
  int B, C, H, W, S;
  int L, Rk;      // kernels: S rows of L = 2 Rk + 1 taps
  int Rm;         // the largest radius: the halo on each side
  int boundary;   // Boundary as int
  int radii[kMaxScales];
  int tiles_w;    // tiles per row of tiles
  int tiles;      // tiles per plane
  int HB;         // halo tile extent, kTile + 2 Rm (rows and columns)
  int ld;         // row stride of the halo tiles (odd)
  int64_t blocks; // B * C * tiles
};

// Shared-memory layout in elements of the accumulation type.
struct Layout {
  int64_t ks, kf, xs, us, gs, ts, red, gx, total;
};

inline Geometry make_geometry(const BankGeometry& b) {
  Geometry g{};
  g.B = static_cast<int>(b.B);
  g.C = static_cast<int>(b.C);
  g.H = static_cast<int>(b.H);
  g.W = static_cast<int>(b.W);
  g.S = static_cast<int>(b.S);
  g.L = static_cast<int>(2 * b.R + 1);
  g.Rk = static_cast<int>(b.R);
  g.boundary = static_cast<int>(b.boundary);
  g.Rm = 0;
  for (int s = 0; s < g.S; ++s) {
    g.radii[s] = static_cast<int>(b.radii[s]);
    g.Rm = g.radii[s] > g.Rm ? g.radii[s] : g.Rm;
  }
  g.tiles_w = static_cast<int>((b.W + kTile - 1) / kTile);
  g.tiles = g.tiles_w * static_cast<int>((b.H + kTile - 1) / kTile);
  g.HB = kTile + 2 * g.Rm;
  g.ld = g.HB | 1;
  g.blocks = b.B * b.C * g.tiles;
  return g;
}

// Whether the 32-bit index math holds for these sizes (else the launcher uses the untiled kernels).
inline bool fits_32bit(const BankGeometry& b) {
  const int64_t lim = int64_t(1) << 30;
  return b.H < lim && b.W < lim && b.H * b.W < lim && b.R < (1 << 20) && b.B * b.C < lim &&
         (b.W + kTile - 1) / kTile * ((b.H + kTile - 1) / kTile) < lim;
}

PVF_TILE_HD Layout layout(const Geometry& g, bool backward) {
  Layout l{};
  int64_t o = 0;
  l.ks = o;
  o += int64_t(g.S) * g.L;
  l.kf = o;
  o += int64_t(g.S) * g.L;
  l.xs = o;
  o += int64_t(g.HB + 3) * g.ld;  // 3 spare rows: the tap-quad loops may read (and discard) past the last row
  l.us = o;
  o += int64_t(g.HB + 3) * kLdU;
  if (backward) {
    l.gs = o;
    o += int64_t(g.HB) * g.ld;
    l.ts = o;
    o += int64_t(kTile) * g.ld;
    l.red = o;
    o += int64_t(2 * g.Rm + 1) * kTile;
    l.gx = o;
    o += int64_t(kTile) * kLdU;
  }
  l.total = o;
  return l;
}

// Elements of the backward workspace: one kernel-tap partial per (scale, tap, block).
inline int64_t backward_workspace(const Geometry& g) { return int64_t(g.S) * g.L * g.blocks; }

// radii[s] without indexing the parameter array by a register (which would copy it to the stack).
PVF_TILE_FN int radius_of(const Geometry& g, int s) {
  int r = 0;
#pragma unroll
  for (int i = 0; i < kMaxScales; ++i) r = i == s ? g.radii[i] : r;
  return r;
}

PVF_TILE_FN int bnd(int j, int n, int boundary) {
  if (j >= 0 && j < n) return j;
  if (boundary == 1) return j < 0 ? -j : 2 * (n - 1) - j;
  if (boundary == 2) return j < 0 ? 0 : n - 1;
  return -1;
}

// The taps of every scale, shifted to start at 0: ks[s][t] = k_s[t] for t <= 2 r_s, zero beyond; kf the same
// reversed (the transposed passes correlate with the reversed taps).
template <typename A, typename T, typename Ctx>
PVF_TILE_FN void load_taps(const Ctx& ctx, const Geometry& g, const T* kernels, A* ks, A* kf) {
  for (int s = 0; s < g.S; ++s) {
    const int r = radius_of(g, s);
    const T* row = kernels + s * g.L + (g.Rk - r);
    for (int t = ctx.tid(); t < g.L; t += ctx.nthreads()) {
      ks[s * g.L + t] = t <= 2 * r ? static_cast<A>(row[t]) : A(0);
      kf[s * g.L + t] = t <= 2 * r ? static_cast<A>(row[2 * r - t]) : A(0);
    }
  }
}

// dst[i][j] (rows_alloc x ld) = the plane at (h0 - Rm + i, w0 - Rm + j) for i, j < HB, zero elsewhere.
// mapped: positions outside the plane follow the boundary rule (x); otherwise they read zero (grad).
template <typename A, typename T, typename Ctx>
PVF_TILE_FN void load_tile(const Ctx& ctx, const Geometry& g, const T* plane, int h0, int w0, bool mapped,
                           int rows_alloc, A* dst) {
  const int lane = ctx.tid() & 31, warp = ctx.tid() >> 5, warps = ctx.nthreads() >> 5;
  for (int i = warp; i < rows_alloc; i += warps) {
    const int p = h0 - g.Rm + i;
    int sp = -1;
    if (i < g.HB) sp = mapped ? (p <= g.H - 1 + g.Rm ? bnd(p, g.H, g.boundary) : -1) : (p >= 0 && p < g.H ? p : -1);
    for (int j = lane; j < g.ld; j += 32) {
      const int q = w0 - g.Rm + j;
      int sq = -1;
      if (j < g.HB) sq = mapped ? (q <= g.W - 1 + g.Rm ? bnd(q, g.W, g.boundary) : -1) : (q >= 0 && q < g.W ? q : -1);
      dst[i * g.ld + j] = sp >= 0 && sq >= 0 ? static_cast<A>(plane[int64_t(sp) * g.W + sq]) : A(0);
    }
  }
}

// Rows pass: out[i][j0 + v] = sum_{t < taps} k[t] src[i][j0 + c0 + t + v] for rows i in [i0, i1), j0 = 0, 4, ..., 28,
// handed to emit(i, j0, acc[4]). A thread takes 4 consecutive outputs of one row and slides a 7-value window along
// the row, 4 taps at a time (4 loads + 4 tap loads for 16 FMAs); lanes walk rows, conflict-free for an odd ld.
template <typename A, typename Ctx, typename Emit>
PVF_TILE_FN void rows_pass(const Ctx& ctx, const A* src, int ld, int c0, const A* k, int taps, int i0, int i1,
                           Emit&& emit) {
  const int rows = i1 - i0;
  for (int e = ctx.tid(); e < rows * (kTile / 4); e += ctx.nthreads()) {
    const int i = i0 + e % rows, j0 = 4 * (e / rows);
    const A* p = src + i * ld + j0 + c0;
    A acc[4] = {A(0), A(0), A(0), A(0)};
    A d0 = p[0], d1 = p[1], d2 = p[2];
    int t = 0;
    for (; t + 4 <= taps; t += 4) {
      const A d3 = p[t + 3], d4 = p[t + 4], d5 = p[t + 5], d6 = p[t + 6];
      const A k0 = k[t], k1 = k[t + 1], k2 = k[t + 2], k3 = k[t + 3];
      acc[0] += k0 * d0; acc[0] += k1 * d1; acc[0] += k2 * d2; acc[0] += k3 * d3;
      acc[1] += k0 * d1; acc[1] += k1 * d2; acc[1] += k2 * d3; acc[1] += k3 * d4;
      acc[2] += k0 * d2; acc[2] += k1 * d3; acc[2] += k2 * d4; acc[2] += k3 * d5;
      acc[3] += k0 * d3; acc[3] += k1 * d4; acc[3] += k2 * d5; acc[3] += k3 * d6;
      d0 = d4;
      d1 = d5;
      d2 = d6;
    }
    for (; t < taps; ++t) {
      const A kt = k[t];
      for (int v = 0; v < 4; ++v) acc[v] += kt * p[t + v];
    }
    emit(i, j0, acc);
  }
}

// Columns pass: out[i0 + v][j] = sum_{t < taps} k[t] src[i0 + r0 + t + v][j] for i0 = 0, 4, ..., 28 and columns
// j in [j_begin, j_end), handed to emit(i0, j, acc[4]). The same 4-output sliding window, down a column; lanes
// walk columns (contiguous).
template <typename A, typename Ctx, typename Emit>
PVF_TILE_FN void columns_pass(const Ctx& ctx, const A* src, int ld, int r0, const A* k, int taps, int j_begin,
                              int j_end, Emit&& emit) {
  const int cols = j_end - j_begin;
  for (int e = ctx.tid(); e < cols * (kTile / 4); e += ctx.nthreads()) {
    const int j = j_begin + e % cols, i0 = 4 * (e / cols);
    const A* p = src + (i0 + r0) * ld + j;
    A acc[4] = {A(0), A(0), A(0), A(0)};
    A d0 = p[0], d1 = p[ld], d2 = p[2 * ld];
    int t = 0;
    for (; t + 4 <= taps; t += 4) {
      const A d3 = p[(t + 3) * ld], d4 = p[(t + 4) * ld], d5 = p[(t + 5) * ld], d6 = p[(t + 6) * ld];
      const A k0 = k[t], k1 = k[t + 1], k2 = k[t + 2], k3 = k[t + 3];
      acc[0] += k0 * d0; acc[0] += k1 * d1; acc[0] += k2 * d2; acc[0] += k3 * d3;
      acc[1] += k0 * d1; acc[1] += k1 * d2; acc[1] += k2 * d3; acc[1] += k3 * d4;
      acc[2] += k0 * d2; acc[2] += k1 * d3; acc[2] += k2 * d4; acc[2] += k3 * d5;
      acc[3] += k0 * d3; acc[3] += k1 * d4; acc[3] += k2 * d5; acc[3] += k3 * d6;
      d0 = d4;
      d1 = d5;
      d2 = d6;
    }
    for (; t < taps; ++t) {
      const A kt = k[t];
      for (int v = 0; v < 4; ++v) acc[v] += kt * p[(t + v) * ld];
    }
    emit(i0, j, acc);
  }
}

struct TileIndex {
  int64_t plane;  // b * C + c
  int h0, w0;
};

template <typename Ctx>
PVF_TILE_FN TileIndex tile_of(const Ctx& ctx, const Geometry& g) {
  const int64_t blk = ctx.block();
  TileIndex ti;
  ti.plane = blk / g.tiles;
  const int tile = static_cast<int>(blk - ti.plane * g.tiles);
  ti.h0 = (tile / g.tiles_w) * kTile;
  ti.w0 = (tile % g.tiles_w) * kTile;
  return ti;
}

template <typename A, typename T, typename Ctx>
PVF_TILE_FN void forward_block(const Ctx& ctx, const Geometry& g, const T* __restrict__ x,
                               const T* __restrict__ kernels, T* __restrict__ out) {
  A* sm = ctx.template shared<A>();
  const Layout l = layout(g, false);
  A *ks = sm + l.ks, *kf = sm + l.kf, *xs = sm + l.xs, *us = sm + l.us;
  const TileIndex ti = tile_of(ctx, g);
  const int64_t HW = int64_t(g.H) * g.W;
  const int64_t b = ti.plane / g.C, c = ti.plane - b * g.C;
  load_taps(ctx, g, kernels, ks, kf);
  load_tile(ctx, g, x + ti.plane * HW, ti.h0, ti.w0, true, g.HB + 3, xs);
  ctx.sync();
  for (int s = 0; s < g.S; ++s) {
    const int r = radius_of(g, s), off = g.Rm - r, taps = 2 * r + 1;
    const A* k = ks + s * g.L;
    rows_pass(ctx, xs, g.ld, off, k, taps, off, off + kTile + 2 * r, [&](int i, int j0, const A* acc) {
      for (int v = 0; v < 4; ++v) us[i * kLdU + j0 + v] = acc[v];
    });
    ctx.sync();
    T* o = out + ((b * g.S + s) * g.C + c) * HW;
    columns_pass(ctx, us, kLdU, off, k, taps, 0, kTile, [&](int i0, int j, const A* acc) {
      const int w = ti.w0 + j;
      for (int v = 0; v < 4; ++v) {
        const int h = ti.h0 + i0 + v;
        if (h < g.H && w < g.W) o[int64_t(h) * g.W + w] = static_cast<T>(acc[v]);
      }
    });
    ctx.sync();
  }
}

// Visits the positions p != y of [-r, n + r) that the boundary rule maps onto y (the extra preimages at the edges).
template <typename F>
PVF_TILE_FN void extra_preimages(int y, int n, int r, int boundary, F&& f) {
  if (boundary == 1) {
    if (y >= 1 && y <= r) f(-y);
    const int j = 2 * (n - 1) - y;
    if (j > n - 1 && j <= n - 1 + r) f(j);
  } else if (boundary == 2) {
    if (y == 0)
      for (int j = -r; j < 0; ++j) f(j);
    if (y == n - 1)
      for (int j = n; j < n + r; ++j) f(j);
  }
}

template <typename A, typename T, typename Ctx>
PVF_TILE_FN void backward_block(const Ctx& ctx, const Geometry& g, const T* __restrict__ x,
                                const T* __restrict__ grad_out, const T* __restrict__ kernels, T* __restrict__ grad_x,
                                A* __restrict__ partial) {
  A* sm = ctx.template shared<A>();
  const Layout l = layout(g, true);
  A *ks = sm + l.ks, *kf = sm + l.kf, *xs = sm + l.xs, *us = sm + l.us, *gs = sm + l.gs, *ts = sm + l.ts,
    *red = sm + l.red, *gxs = sm + l.gx;
  const TileIndex ti = tile_of(ctx, g);
  const int64_t HW = int64_t(g.H) * g.W;
  const int64_t b = ti.plane / g.C, c = ti.plane - b * g.C;
  const int ld = g.ld, Rm = g.Rm, h0 = ti.h0, w0 = ti.w0;
  load_taps(ctx, g, kernels, ks, kf);
  load_tile(ctx, g, x + ti.plane * HW, h0, w0, true, g.HB + 3, xs);
  for (int i = ctx.tid(); i < (g.HB + 3) * kLdU; i += ctx.nthreads()) us[i] = A(0);  // spare rows stay finite
  for (int i = ctx.tid(); i < kTile * kLdU; i += ctx.nthreads()) gxs[i] = A(0);
  // Edge tiles: some outputs have more than one preimage under the boundary rule.
  const bool edge_rows = g.boundary != 0 && (h0 <= Rm || h0 + kTile >= g.H - 1 - Rm);
  const bool edge_cols = g.boundary != 0 && (w0 <= Rm || w0 + kTile >= g.W - 1 - Rm);
  for (int s = 0; s < g.S; ++s) {
    const int r = radius_of(g, s), off = Rm - r, taps = 2 * r + 1;
    const A *k = ks + s * g.L, *kr = kf + s * g.L;
    load_tile(ctx, g, grad_out + ((b * g.S + s) * g.C + c) * HW, h0, w0, false, g.HB, gs);
    ctx.sync();
    // u = rows pass of x over the halo rows [off, off + kTile + 2r); T = M_H^T grad on the tile rows, over the
    // halo columns [off, off + kTile + 2r) (interior rows: the columns pass with reversed taps).
    rows_pass(ctx, xs, ld, off, k, taps, off, off + kTile + 2 * r, [&](int i, int j0, const A* acc) {
      for (int v = 0; v < 4; ++v) us[i * kLdU + j0 + v] = acc[v];
    });
    columns_pass(ctx, gs, ld, off, kr, taps, off, off + kTile + 2 * r, [&](int i0, int j, const A* acc) {
      for (int v = 0; v < 4; ++v) ts[(i0 + v) * ld + j] = h0 + i0 + v < g.H ? acc[v] : A(0);
    });
    ctx.sync();
    if (edge_rows) {  // T at the rows with mirrored or clamped preimages
      const int cols = kTile + 2 * r;
      for (int e = ctx.tid(); e < kTile * cols; e += ctx.nthreads()) {
        const int i = e / cols, j = off + e % cols, y = h0 + i;
        if (y >= g.H) continue;
        A acc = 0;
        extra_preimages(y, g.H, r, g.boundary, [&](int p) {
          for (int t = 0; t < taps; ++t) {
            const int h = p - t + r;
            if (h >= 0 && h < g.H) acc += k[t] * gs[(h - h0 + Rm) * ld + j];
          }
        });
        ts[i * ld + j] += acc;
      }
      ctx.sync();
    }
    // Kernel-tap partials over the tile: red[t][j] = sum_i grad[i][j] u[i + off + t][j] + T[i][j] x[i][j + off + t];
    // a thread takes 4 taps of one column and slides u down the rows.
    const int quads = (taps + 3) / 4;
    for (int e = ctx.tid(); e < quads * kTile; e += ctx.nthreads()) {
      const int j = e % kTile, t = 4 * (e / kTile);
      A acc[4] = {A(0), A(0), A(0), A(0)};
      const A* up = us + (off + t) * kLdU + j;
      A u0 = up[0], u1 = up[kLdU], u2 = up[2 * kLdU];
      for (int i = 0; i < kTile; ++i) {
        const A u3 = up[(i + 3) * kLdU];
        const A gv = gs[(Rm + i) * ld + Rm + j], tv = ts[i * ld + Rm + j];
        const A* xr = xs + (Rm + i) * ld + j + off + t;
        acc[0] += gv * u0;  // one FMA per product (a sum of products first would add a multiply and an add)
        acc[0] += tv * xr[0];
        acc[1] += gv * u1;
        acc[1] += tv * xr[1];
        acc[2] += gv * u2;
        acc[2] += tv * xr[2];
        acc[3] += gv * u3;
        acc[3] += tv * xr[3];
        u0 = u1;
        u1 = u2;
        u2 = u3;
      }
      for (int m = 0; m < 4; ++m)
        if (t + m < taps) red[(t + m) * kTile + j] = acc[m];
    }
    // grad_x += T M_W on the tile (interior columns: the rows pass with reversed taps).
    rows_pass(ctx, ts, ld, off, kr, taps, 0, kTile, [&](int i, int j0, const A* acc) {
      for (int v = 0; v < 4; ++v) gxs[i * kLdU + j0 + v] += acc[v];
    });
    ctx.sync();
    if (edge_cols) {  // grad_x at the columns with mirrored or clamped preimages
      for (int e = ctx.tid(); e < kTile * kTile; e += ctx.nthreads()) {
        const int i = e / kTile, j = e % kTile, xw = w0 + j;
        if (xw >= g.W) continue;
        A acc = 0;
        extra_preimages(xw, g.W, r, g.boundary, [&](int q) {
          for (int t = 0; t < taps; ++t) {
            const int w = q - t + r;
            if (w >= 0 && w < g.W) acc += k[t] * ts[i * ld + (w - w0 + Rm)];
          }
        });
        gxs[i * kLdU + j] += acc;
      }
    }
    // This block's partial of every tap of scale s (zero beyond the scale's radius), in (scale, tap, block) order.
    for (int t = ctx.tid(); t < g.L; t += ctx.nthreads()) {
      const int tt = t - (g.Rk - r);
      A sum = 0;
      if (tt >= 0 && tt < taps)
        for (int j = 0; j < kTile; ++j) sum += red[tt * kTile + j];
      partial[(int64_t(s) * g.L + t) * g.blocks + ctx.block()] = sum;
    }
    ctx.sync();
  }
  T* gx = grad_x + ti.plane * HW;
  for (int e = ctx.tid(); e < kTile * kTile; e += ctx.nthreads()) {
    const int i = e / kTile, j = e % kTile, h = h0 + i, w = w0 + j;
    if (h < g.H && w < g.W) gx[int64_t(h) * g.W + w] = static_cast<T>(gxs[i * kLdU + j]);
  }
}

// grad_kernels[row] = sum over the blocks of partial[row][block], in double; one block per (scale, tap) row.
// red: kReduceThreads doubles of shared memory.
template <typename A, typename Ctx>
PVF_TILE_FN void reduce_block(const Ctx& ctx, int64_t blocks, const A* __restrict__ partial, A* __restrict__ out,
                              double* red) {
  const int64_t row = ctx.block();
  const A* p = partial + row * blocks;
  double sum = 0;
  for (int64_t i = ctx.tid(); i < blocks; i += ctx.nthreads()) sum += static_cast<double>(p[i]);
  red[ctx.tid()] = sum;
  ctx.sync();
  for (int stride = ctx.nthreads() / 2; stride > 0; stride >>= 1) {
    if (ctx.tid() < stride) red[ctx.tid()] += red[ctx.tid() + stride];
    ctx.sync();
  }
  if (ctx.tid() == 0) out[row] = static_cast<A>(red[0]);
}

}  // namespace tiled
}  // namespace scale_space
}  // namespace pvf
