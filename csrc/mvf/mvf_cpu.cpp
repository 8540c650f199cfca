// CPU multi-view fusion: parallel over (n, c, t) planes; rows of W vectorise, with the two edge columns
// handled apart.
#include <algorithm>
#include <cstring>

#include "common/parallel.h"
#include "mvf/mvf.h"
#include "mvf/mvf_math.h"

namespace pvf {
namespace mvf {
namespace {

// Stencil of one (n, c, t) plane of a fused channel into `out` rows of stride `out_row`.
template <typename T>
inline void stencil_plane(const T* x_prev, const T* x_cur, const T* x_next, int64_t H, int64_t W, int64_t sh,
                          const T* wt, const T* wh, const T* ww, T* out, int64_t out_row) {
  const T center = wt[1] + wh[1] + ww[1];
  for (int64_t h = 0; h < H; ++h) {
    const T* row = x_cur + h * sh;
    const T* up = h > 0 ? row - sh : nullptr;
    const T* down = h + 1 < H ? row + sh : nullptr;
    const T* tp = x_prev ? x_prev + h * sh : nullptr;
    const T* tn = x_next ? x_next + h * sh : nullptr;
    T* o = out + h * out_row;
#pragma omp simd
    for (int64_t w = 0; w < W; ++w) o[w] = center * row[w];
    if (tp) {
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) o[w] += wt[0] * tp[w];
    }
    if (tn) {
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) o[w] += wt[2] * tn[w];
    }
    if (up) {
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) o[w] += wh[0] * up[w];
    }
    if (down) {
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) o[w] += wh[2] * down[w];
    }
#pragma omp simd
    for (int64_t w = 1; w < W; ++w) o[w] += ww[0] * row[w - 1];
#pragma omp simd
    for (int64_t w = 0; w < W - 1; ++w) o[w] += ww[2] * row[w + 1];
  }
}

// Copies channels F..C-1 of src (strides ss) to dst (strides sd). When both hold each (n, t) slab of those
// channels as one contiguous block (the frame layout), it is one memcpy per slab; otherwise row by row.
// Plane p of a (N, channels, T) range of planes, T fastest.
struct Plane {
  int64_t n, c, t;
};
inline Plane plane_of(int64_t p, int64_t channels, int64_t T) { return {p / (T * channels), (p / T) % channels, p % T}; }

template <typename T>
void copy_passthrough(const Geometry& g, const T* src, const int64_t* ss, T* dst, const int64_t* sd) {
  const int64_t pc = g.C - g.F;
  if (pc <= 0 || g.H * g.W == 0) return;
  const int64_t HW = g.H * g.W;
  const bool blocks = ss[1] == HW && sd[1] == HW && ss[3] == g.W && sd[3] == g.W;
  if (blocks) {
    parallel_for(0, g.N * g.T, 1, [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t n = s / g.T, t = s % g.T;
        std::memcpy(dst + n * sd[0] + g.F * sd[1] + t * sd[2], src + n * ss[0] + g.F * ss[1] + t * ss[2],
                    sizeof(T) * pc * HW);
      }
    });
    return;
  }
  parallel_for(0, g.N * pc * g.T, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const Plane q = plane_of(p, pc, g.T);
      const int64_t n = q.n, c = g.F + q.c, t = q.t;
      const T* sp = src + n * ss[0] + c * ss[1] + t * ss[2];
      T* dp = dst + n * sd[0] + c * sd[1] + t * sd[2];
      for (int64_t h = 0; h < g.H; ++h) std::memcpy(dp + h * sd[3], sp + h * ss[3], sizeof(T) * g.W);
    }
  });
}

template <typename T>
inline T dot(const T* PVF_RESTRICT a, const T* PVF_RESTRICT b, int64_t n) {
  T s = T(0);
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <typename T>
inline T epilogue(T y, const T* scale, const T* shift, int64_t c, bool hs) {
  T z = scale ? scale[c] * y + shift[c] : y;
  return hs ? hardswish(z) : z;
}

}  // namespace

template <typename T>
void mvf_forward_cpu(const Geometry& g, const T* x, const T* wt, const T* wh, const T* ww, const T* scale,
                     const T* shift, bool hardswish, T* out) {
  copy_passthrough(g, x, g.sx, out, g.so);
  const int64_t planes = g.N * g.F * g.T;
  parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const auto [n, c, t] = plane_of(p, g.F, g.T);
      const T* xp = x + n * g.sx[0] + c * g.sx[1] + t * g.sx[2];
      T* op = out + n * g.so[0] + c * g.so[1] + t * g.so[2];
      stencil_plane(t > 0 ? xp - g.sx[2] : nullptr, xp, t + 1 < g.T ? xp + g.sx[2] : nullptr, g.H, g.W, g.sx[3],
                    wt + 3 * c, wh + 3 * c, ww + 3 * c, op, g.so[3]);
      if (scale || hardswish) {
        for (int64_t h = 0; h < g.H; ++h) {
          T* o = op + h * g.so[3];
          for (int64_t w = 0; w < g.W; ++w) o[w] = epilogue(o[w], scale, shift, c, hardswish);
        }
      }
    }
  });
}

template <typename T>
void mvf_backward_cpu(const Geometry& g, const T* x, const T* grad_out, const T* wt, const T* wh, const T* ww,
                      const T* scale, const T* shift, bool hardswish, T* grad_x, T* grad_wt, T* grad_wh, T* grad_ww,
                      T* gy, bool gy_given) {
  const int64_t HW = g.H * g.W;
  // Pass 1: gy = gradient before the epilogue, contiguous (N, F, T, H, W); pass-through channels copy grad_out.
  copy_passthrough(g, grad_out, g.so, grad_x, g.sg);
  const int64_t planes = gy_given ? 0 : g.N * g.F * g.T;
  parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const auto [n, c, t] = plane_of(p, g.F, g.T);
      const T* gp = grad_out + n * g.so[0] + c * g.so[1] + t * g.so[2];
      T* gyp = gy + ((n * g.F + c) * g.T + t) * HW;
      if (!scale && !hardswish) {
        for (int64_t h = 0; h < g.H; ++h) std::memcpy(gyp + h * g.W, gp + h * g.so[3], sizeof(T) * g.W);
        continue;
      }
      // Recompute the pre-activation to differentiate the epilogue.
      const T* xp = x + n * g.sx[0] + c * g.sx[1] + t * g.sx[2];
      stencil_plane(t > 0 ? xp - g.sx[2] : nullptr, xp, t + 1 < g.T ? xp + g.sx[2] : nullptr, g.H, g.W, g.sx[3],
                    wt + 3 * c, wh + 3 * c, ww + 3 * c, gyp, g.W);
      const T s = scale ? scale[c] : T(1);
      const T b = scale ? shift[c] : T(0);
      for (int64_t h = 0; h < g.H; ++h) {
        for (int64_t w = 0; w < g.W; ++w) {
          const T z = s * gyp[h * g.W + w] + b;
          const T d = hardswish ? hardswish_grad(z) : T(1);
          gyp[h * g.W + w] = gp[h * g.so[3] + w] * d * s;
        }
      }
    }
  });
  // Pass 2: grad_x of fused channels = the stencil with mirrored taps applied to gy.
  const int64_t fused_planes = g.N * g.F * g.T;
  parallel_for(0, fused_planes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const auto [n, c, t] = plane_of(p, g.F, g.T);
      const T* gyp = gy + p * HW;
      const T mt[3] = {wt[3 * c + 2], wt[3 * c + 1], wt[3 * c]};
      const T mh[3] = {wh[3 * c + 2], wh[3 * c + 1], wh[3 * c]};
      const T mw[3] = {ww[3 * c + 2], ww[3 * c + 1], ww[3 * c]};
      stencil_plane(t > 0 ? gyp - HW : nullptr, gyp, t + 1 < g.T ? gyp + HW : nullptr, g.H, g.W, g.W, mt, mh, mw,
                    grad_x + n * g.sg[0] + c * g.sg[1] + t * g.sg[2], g.sg[3]);
    }
  });
  // Pass 3: kernel gradients, one channel per task (sums over n, t, h, w; no atomics).
  parallel_for(0, g.F, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double at[3] = {0, 0, 0}, ah[3] = {0, 0, 0}, aw[3] = {0, 0, 0};
      for (int64_t n = 0; n < g.N; ++n) {
        for (int64_t t = 0; t < g.T; ++t) {
          const T* gyp = gy + ((n * g.F + c) * g.T + t) * HW;
          const T* xp = x + n * g.sx[0] + c * g.sx[1] + t * g.sx[2];
          for (int64_t h = 0; h < g.H; ++h) {
            const T* gr = gyp + h * g.W;
            const T* row = xp + h * g.sx[3];
            const T s_c = dot(gr, row, g.W);
            const T s_tp = t > 0 ? dot(gr, row - g.sx[2], g.W) : T(0);
            const T s_tn = t + 1 < g.T ? dot(gr, row + g.sx[2], g.W) : T(0);
            const T s_hu = h > 0 ? dot(gr, row - g.sx[3], g.W) : T(0);
            const T s_hd = h + 1 < g.H ? dot(gr, row + g.sx[3], g.W) : T(0);
            const T s_wl = g.W > 1 ? dot(gr + 1, row, g.W - 1) : T(0);   // gy[w] * x[w - 1]
            const T s_wr = g.W > 1 ? dot(gr, row + 1, g.W - 1) : T(0);   // gy[w] * x[w + 1]
            at[0] += s_tp; at[1] += s_c; at[2] += s_tn;
            ah[0] += s_hu; ah[1] += s_c; ah[2] += s_hd;
            aw[0] += s_wl; aw[1] += s_c; aw[2] += s_wr;
          }
        }
      }
      for (int k = 0; k < 3; ++k) {
        grad_wt[3 * c + k] = static_cast<T>(at[k]);
        grad_wh[3 * c + k] = static_cast<T>(ah[k]);
        grad_ww[3 * c + k] = static_cast<T>(aw[k]);
      }
    }
  });
}

template void mvf_forward_cpu<float>(const Geometry&, const float*, const float*, const float*, const float*,
                                     const float*, const float*, bool, float*);
template void mvf_forward_cpu<double>(const Geometry&, const double*, const double*, const double*, const double*,
                                      const double*, const double*, bool, double*);
template void mvf_backward_cpu<float>(const Geometry&, const float*, const float*, const float*, const float*,
                                      const float*, const float*, const float*, bool, float*, float*, float*, float*,
                                      float*, bool);
template void mvf_backward_cpu<double>(const Geometry&, const double*, const double*, const double*, const double*,
                                       const double*, const double*, const double*, bool, double*, double*, double*,
                                       double*, double*, bool);

}  // namespace mvf
}  // namespace pvf
