// CPU kernels of upfirdn2d and bias_act.
//
// upfirdn2d, polyphase along W. With g = gcd(up, down), S = up / g and D = down / g, the output columns of
// phase p (ox = p + j * S) all meet input samples through the same taps, and tap t of phase p reads input column
// b + j * D (b = (p * down + t - pad0) / up, for the taps where that division is exact): a multiply-add over j.
// When D > 1 an input row is first split into D contiguous sub-rows (column m goes to sub-row m % D, index m / D),
// so every tap reads contiguously; when S > 1 each phase accumulates into its own contiguous row and the phases are
// interleaved into the output row at the end. Every inner loop then adds up to 4 terms `w * src[j]` into dst[j]
// over contiguous rows (one pass over dst per 4 terms), which the compiler vectorises, and no inserted zero or
// padding is ever multiplied. Along H the taps that meet an input row are found per output row (tap_source) and
// only those rows are read.
//  * 2-D filters: per output row, the sum over the valid tap rows ty of the horizontal pass of input row iy with
//    tap row ty (ty ascending, tx ascending per element, as the CUDA kernel).
//  * separable filters: the horizontal pass of every input row into a (H, out_x) plane, then per output row the
//    sum of the valid planes' rows times taps_y[ty].
// Threads take planes (N * C); with fewer planes than threads (an RGB image) they take rows of each plane.
// Workspace: per slot (thread) the plane buffer (split rows, or the separable intermediate), one split row and the
// phase rows; in row mode slot 0's plane buffer is shared.
//
// bias_act: (outer, C, inner) rows, OpenMP over outer * C, the bias added per row.
#include <algorithm>
#include <climits>
#include <cstring>
#include <numeric>
#include <vector>

#include "common/parallel.h"
#include "stylegan2/stylegan2.h"
#include "stylegan2/stylegan2_math.h"

namespace pvf {
namespace stylegan2 {
namespace {

// Tap t of one phase: destination j in [lo, hi) reads source sub-row r at index k0 + j.
struct TapRun {
  int64_t t, r, k0, lo, hi;
};

struct AxisPlan {
  int64_t S = 1, D = 1, Wd = 0, nj_max = 0;
  std::vector<std::vector<TapRun>> runs;  // per phase
  std::vector<int64_t> interior_lo, interior_hi;  // per phase: the j range every run of the phase covers
};

AxisPlan plan_axis(const Axis& a) {
  AxisPlan P;
  const int64_t g = std::gcd(a.up, a.down);
  P.S = a.up / g;
  P.D = a.down / g;
  P.Wd = (a.in + P.D - 1) / P.D;
  P.nj_max = (a.out + P.S - 1) / P.S;
  P.runs.resize(P.S);
  for (int64_t p = 0; p < P.S; ++p) {
    const int64_t nj = p < a.out ? (a.out - p + P.S - 1) / P.S : 0;
    for (int64_t t = 0; t < a.f; ++t) {
      const int64_t num = p * a.down + t - a.pad0;
      if (floor_mod(num, a.up) != 0) continue;
      const int64_t b = floor_div(num, a.up);
      int64_t lo = b >= 0 ? 0 : (-b + P.D - 1) / P.D;
      int64_t hi = a.in - 1 - b >= 0 ? (a.in - 1 - b) / P.D + 1 : 0;
      lo = std::min(lo, nj);
      hi = std::min(hi, nj);
      if (lo >= hi) continue;
      P.runs[p].push_back(TapRun{t, floor_mod(b, P.D), floor_div(b, P.D), lo, hi});
    }
  }
  P.interior_lo.assign(P.S, 0);
  P.interior_hi.assign(P.S, 0);
  for (int64_t p = 0; p < P.S; ++p) {
    int64_t lo = 0, hi = INT64_MAX;
    for (const TapRun& run : P.runs[p]) {
      lo = std::max(lo, run.lo);
      hi = std::min(hi, run.hi);
    }
    if (!P.runs[p].empty() && lo < hi) {
      P.interior_lo[p] = lo;
      P.interior_hi[p] = hi;
    }
  }
  return P;
}

template <typename T>
inline void axpy(T* PVF_RESTRICT dst, const T* PVF_RESTRICT src, T w, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] += w * src[j];
}

// Splits one row of W samples into D sub-rows of Wd (column m -> sub-row m % D, index m / D); pads with zeros.
template <typename T>
inline void split_row(const T* PVF_RESTRICT row, int64_t W, int64_t D, int64_t Wd, T* PVF_RESTRICT out) {
  for (int64_t r = 0; r < D; ++r) {
    T* o = out + r * Wd;
    for (int64_t k = 0; k < Wd; ++k) {
      const int64_t m = k * D + r;
      o[k] = m < W ? row[m] : T(0);
    }
  }
}

// dst[j] += sum_k w[k] * src[k][j], the K taps added in order k = 0, 1, ... (as K separate axpy passes would, in
// one pass over dst).
template <int K, typename T>
inline void fused_taps(T* PVF_RESTRICT dst, const T* const* src, const T* w, int64_t n) {
  const T* s[K];
  T wk[K];
  for (int k = 0; k < K; ++k) {
    s[k] = src[k];
    wk[k] = w[k];
  }
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) {
    T acc = dst[j];
    for (int k = 0; k < K; ++k) acc += wk[k] * s[k][j];
    dst[j] = acc;
  }
}

// dst (phase-major rows of nj_max; the output row itself when S == 1) += the horizontal pass of src (D sub-rows of
// Wd, or the input row when D == 1) with taps w. Each element receives its taps in increasing t: the border parts
// of each run one run at a time, the interior that all runs of the phase share (AxisPlan) in fused passes of up
// to 4 taps.
template <typename T>
inline void hpass_accumulate(const AxisPlan& P, const T* src, const T* w, T* dst) {
  for (int64_t p = 0; p < P.S; ++p) {
    T* d = dst + p * P.nj_max;
    const std::vector<TapRun>& runs = P.runs[p];
    const int64_t lo = P.interior_lo[p], hi = P.interior_hi[p];
    if (lo >= hi) {  // no common interior (tiny rows): one pass per run
      for (const TapRun& run : runs)
        axpy(d + run.lo, src + run.r * P.Wd + run.k0 + run.lo, w[run.t], run.hi - run.lo);
      continue;
    }
    for (const TapRun& run : runs)
      if (run.lo < lo) axpy(d + run.lo, src + run.r * P.Wd + run.k0 + run.lo, w[run.t], lo - run.lo);
    for (size_t k0 = 0; k0 < runs.size(); k0 += 4) {
      const int n = static_cast<int>(std::min<size_t>(4, runs.size() - k0));
      const T* s[4];
      T wk[4];
      for (int k = 0; k < n; ++k) {
        const TapRun& run = runs[k0 + k];
        s[k] = src + run.r * P.Wd + run.k0 + lo;
        wk[k] = w[run.t];
      }
      switch (n) {
        case 4: fused_taps<4>(d + lo, s, wk, hi - lo); break;
        case 3: fused_taps<3>(d + lo, s, wk, hi - lo); break;
        case 2: fused_taps<2>(d + lo, s, wk, hi - lo); break;
        default: fused_taps<1>(d + lo, s, wk, hi - lo); break;
      }
    }
    for (const TapRun& run : runs)
      if (run.hi > hi) axpy(d + hi, src + run.r * P.Wd + run.k0 + hi, w[run.t], run.hi - hi);
  }
}

template <typename T>
inline void interleave(const AxisPlan& P, const T* acc, int64_t out, T* row) {
  for (int64_t p = 0; p < P.S; ++p) {
    const T* a = acc + p * P.nj_max;
    for (int64_t j = 0, o = p; o < out; ++j, o += P.S) row[o] = a[j];
  }
}

struct SlotLayout {
  int64_t plane = 0, row = 0, acc = 0;
  int64_t total() const { return plane + row + acc; }
};

SlotLayout slot_layout(const Upfirdn2dGeometry& g) {
  const int64_t gx = std::gcd(g.x.up, g.x.down);
  const int64_t S = g.x.up / gx, D = g.x.down / gx, Wd = (g.x.in + D - 1) / D;
  SlotLayout L;
  if (g.separable) {
    L.plane = g.y.in * g.x.out;
    L.row = D > 1 ? D * Wd : 0;
  } else {
    L.plane = D > 1 ? g.y.in * D * Wd : 0;
  }
  L.acc = S > 1 ? S * ((g.x.out + S - 1) / S) : 0;
  return L;
}

template <typename T>
struct Upfirdn2dRunner {
  const Upfirdn2dGeometry& g;
  const AxisPlan& P;
  const T *taps, *taps_x, *taps_y;
  SlotLayout L;

  // Input rows [iy0, iy1) of plane x into the plane buffer: split rows (2-D filter, D > 1) or the horizontal pass
  // (separable).
  void prepare(const T* x, int64_t iy0, int64_t iy1, T* plane, T* row, T* acc) const {
    const int64_t W = g.x.in, outW = g.x.out;
    if (!g.separable) {
      if (P.D > 1)
        for (int64_t iy = iy0; iy < iy1; ++iy) split_row(x + iy * W, W, P.D, P.Wd, plane + iy * P.D * P.Wd);
      return;
    }
    for (int64_t iy = iy0; iy < iy1; ++iy) {
      const T* src = x + iy * W;
      if (P.D > 1) {
        split_row(src, W, P.D, P.Wd, row);
        src = row;
      }
      T* dst = plane + iy * outW;
      T* d = P.S > 1 ? acc : dst;
      std::fill(d, d + (P.S > 1 ? P.S * P.nj_max : outW), T(0));
      hpass_accumulate(P, src, taps_x, d);
      if (P.S > 1) interleave(P, acc, outW, dst);
    }
  }

  // Output rows [oy0, oy1) of one plane.
  void rows(const T* x, const T* plane, int64_t oy0, int64_t oy1, T* acc, T* out) const {
    const int64_t W = g.x.in, outW = g.x.out, H = g.y.in;
    for (int64_t oy = oy0; oy < oy1; ++oy) {
      T* yrow = out + oy * outW;
      if (g.separable) {
        std::fill(yrow, yrow + outW, T(0));
        for (int64_t ty = 0; ty < g.y.f; ++ty) {
          const int64_t iy = tap_source(oy, ty, g.y.up, g.y.down, g.y.pad0, H);
          if (iy >= 0) axpy(yrow, plane + iy * outW, taps_y[ty], outW);
        }
        continue;
      }
      T* dst = P.S > 1 ? acc : yrow;
      std::fill(dst, dst + (P.S > 1 ? P.S * P.nj_max : outW), T(0));
      for (int64_t ty = 0; ty < g.y.f; ++ty) {
        const int64_t iy = tap_source(oy, ty, g.y.up, g.y.down, g.y.pad0, H);
        if (iy >= 0) hpass_accumulate(P, P.D > 1 ? plane + iy * P.D * P.Wd : x + iy * W, taps + ty * g.x.f, dst);
      }
      if (P.S > 1) interleave(P, acc, outW, yrow);
    }
  }
};

// Runs f(slot, i0, i1) over [0, n) split into at most `slots` contiguous chunks, one per thread.
template <typename F>
void for_slots(int64_t n, int64_t slots, const F& f) {
  const int64_t chunks = std::max<int64_t>(1, std::min(n, slots));
  const int64_t per = (n + chunks - 1) / chunks;
  parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t i0 = c * per, i1 = std::min(n, i0 + per);
      if (i0 < i1) f(c, i0, i1);
    }
  });
}

}  // namespace

int64_t upfirdn2d_slot_size_cpu(const Upfirdn2dGeometry& g) { return slot_layout(g).total(); }

template <typename T>
void upfirdn2d_cpu(const Upfirdn2dGeometry& g, const T* x, const T* taps, const T* taps_x, const T* taps_y, T* out,
                   T* workspace, int64_t slots) {
  const int64_t H = g.y.in, W = g.x.in, outH = g.y.out, outW = g.x.out;
  if (g.planes <= 0 || outH <= 0 || outW <= 0) return;
  const AxisPlan P = plan_axis(g.x);
  const Upfirdn2dRunner<T> run{g, P, taps, taps_x, taps_y, slot_layout(g)};
  const SlotLayout& L = run.L;
  slots = std::max<int64_t>(1, std::min<int64_t>(slots, num_threads()));
  auto slot_ptr = [&](int64_t s) { return workspace + s * L.total(); };
  const int64_t work = g.planes * outH * outW;
  if (g.planes >= slots || work < (int64_t(1) << 15)) {
    for_slots(g.planes, work < (int64_t(1) << 15) ? 1 : slots, [&](int64_t s, int64_t p0, int64_t p1) {
      T* plane = slot_ptr(s);
      T* row = plane + L.plane;
      T* acc = row + L.row;
      for (int64_t p = p0; p < p1; ++p) {
        const T* xp = x + p * H * W;
        run.prepare(xp, 0, H, plane, row, acc);
        run.rows(xp, plane, 0, outH, acc, out + p * outH * outW);
      }
    });
    return;
  }
  // Fewer planes than threads: the threads share slot 0's plane buffer and split each plane's rows.
  T* shared = workspace;
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* xp = x + p * H * W;
    if (L.plane > 0)
      for_slots(H, slots, [&](int64_t s, int64_t i0, int64_t i1) {
        T* row = slot_ptr(s) + L.plane;
        run.prepare(xp, i0, i1, shared, row, row + L.row);
      });
    for_slots(outH, slots, [&](int64_t s, int64_t i0, int64_t i1) {
      run.rows(xp, shared, i0, i1, slot_ptr(s) + L.plane + L.row, out + p * outH * outW);
    });
  }
}

template <typename T>
void bias_act_cpu(const T* x, const T* b, int64_t outer, int64_t C, int64_t inner, Act act, double alpha,
                  double gain, double clamp, T* y) {
  const int64_t rows = outer * C;
  const T a = T(alpha), gn = T(gain), c = T(clamp);
  parallel_for(0, rows, std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(inner, 1)),
               [&](int64_t r0, int64_t r1) {
                 for (int64_t r = r0; r < r1; ++r) {
                   const T bias = b != nullptr ? b[r % C] : T(0);
                   const T* PVF_RESTRICT xr = x + r * inner;
                   T* PVF_RESTRICT yr = y + r * inner;
                   switch (act) {  // the common activations as loops of their own, which vectorise
                     case Act::Linear:
                       for (int64_t i = 0; i < inner; ++i) yr[i] = bias_act_value(Act::Linear, xr[i] + bias, a, gn, c);
                       break;
                     case Act::Relu:
                       for (int64_t i = 0; i < inner; ++i) yr[i] = bias_act_value(Act::Relu, xr[i] + bias, a, gn, c);
                       break;
                     case Act::Lrelu:
                       for (int64_t i = 0; i < inner; ++i) yr[i] = bias_act_value(Act::Lrelu, xr[i] + bias, a, gn, c);
                       break;
                     default:
                       for (int64_t i = 0; i < inner; ++i) yr[i] = bias_act_value(act, xr[i] + bias, a, gn, c);
                   }
                 }
               });
}

template <typename T>
void bias_act_backward_cpu(const T* dy, const T* x, const T* b, int64_t outer, int64_t C, int64_t inner, Act act,
                           double alpha, double gain, double clamp, T* dx) {
  const int64_t rows = outer * C;
  const T a = T(alpha), gn = T(gain), c = T(clamp);
  parallel_for(0, rows, std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(inner, 1)),
               [&](int64_t r0, int64_t r1) {
                 for (int64_t r = r0; r < r1; ++r) {
                   const T bias = b != nullptr ? b[r % C] : T(0);
                   const T* PVF_RESTRICT xr = x + r * inner;
                   const T* PVF_RESTRICT gr = dy + r * inner;
                   T* PVF_RESTRICT dr = dx + r * inner;
                   switch (act) {
                     case Act::Linear:
                       for (int64_t i = 0; i < inner; ++i)
                         dr[i] = bias_act_grad(Act::Linear, xr[i] + bias, gr[i], a, gn, c);
                       break;
                     case Act::Relu:
                       for (int64_t i = 0; i < inner; ++i)
                         dr[i] = bias_act_grad(Act::Relu, xr[i] + bias, gr[i], a, gn, c);
                       break;
                     case Act::Lrelu:
                       for (int64_t i = 0; i < inner; ++i)
                         dr[i] = bias_act_grad(Act::Lrelu, xr[i] + bias, gr[i], a, gn, c);
                       break;
                     default:
                       for (int64_t i = 0; i < inner; ++i) dr[i] = bias_act_grad(act, xr[i] + bias, gr[i], a, gn, c);
                   }
                 }
               });
}

#define PVF_SG2_INSTANTIATE(T)                                                                                    \
  template void upfirdn2d_cpu<T>(const Upfirdn2dGeometry&, const T*, const T*, const T*, const T*, T*, T*,       \
                                 int64_t);                                                                       \
  template void bias_act_cpu<T>(const T*, const T*, int64_t, int64_t, int64_t, Act, double, double, double, T*); \
  template void bias_act_backward_cpu<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, Act, double,   \
                                         double, double, T*);
PVF_SG2_INSTANTIATE(float)
PVF_SG2_INSTANTIATE(double)
#undef PVF_SG2_INSTANTIATE

}  // namespace stylegan2
}  // namespace pvf
