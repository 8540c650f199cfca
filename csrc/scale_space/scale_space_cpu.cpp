// CPU filter bank and scale attention. Parallel over (b, c) planes (filter bank) or position blocks (attention);
// the inner loops run along W and vectorise. Kernel and gain gradients accumulate per thread in double and are
// reduced in chunk order at the end (ChunkPartials), so they are deterministic.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/parallel.h"
#include "common/simd.h"
#include "scale_space/scale_space.h"

namespace pvf {
namespace scale_space {
namespace {

// buf[j] = row[j - r] with the boundary rule, j in [0, W + 2r).
template <typename T>
inline void pad_row(const T* row, int64_t W, int64_t r, Boundary b, T* buf) {
  std::memcpy(buf + r, row, sizeof(T) * W);
  for (int64_t j = 0; j < r; ++j) {
    const int64_t lo = boundary_index(j - r, W, b), hi = boundary_index(W + j, W, b);
    buf[j] = lo < 0 ? T(0) : row[lo];
    buf[W + r + j] = hi < 0 ? T(0) : row[hi];
  }
}

// The weighted-row sums use explicit 32-byte vectors (common/simd.h): compilers otherwise vectorise across the
// taps (with gathers).
using simd::Vec;
using simd::dot;

// out[o + j] = sum_i wts[i] * rows[i][o + j] for NV vectors of j, the accumulators held in registers.
template <int NV, typename T>
inline void weighted_rows_block(const T* const* rows, const T* wts, int64_t m, int64_t o, T* out) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  V acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = V{};
  for (int64_t i = 0; i < m; ++i) {
    const V a = V{} + wts[i];
    const T* p = rows[i] + o;
    for (int v = 0; v < NV; ++v) {
      V x;
      std::memcpy(&x, p + v * L, sizeof(V));
      acc[v] += a * x;
    }
  }
  std::memcpy(out + o, acc, sizeof(acc));
}

// out[j] = sum_i wts[i] * rows[i][j] for j < n: the inner loop of every filtering pass.
template <typename T>
inline void weighted_rows(const T* const* rows, const T* wts, int64_t m, int64_t n, T* out) {
  constexpr int L = Vec<T>::lanes;
  int64_t o = 0;
  for (; o + 8 * L <= n; o += 8 * L) weighted_rows_block<8>(rows, wts, m, o, out);
  for (; o + L <= n; o += L) weighted_rows_block<1>(rows, wts, m, o, out);
  for (; o < n; ++o) {
    T acc = 0;
    for (int64_t i = 0; i < m; ++i) acc += wts[i] * rows[i][o];
    out[o] = acc;
  }
}

// u = k (*)_W x for one H x W plane; k has n = 2r + 1 taps. rows: scratch for n pointers.
template <typename T>
void filter_rows(const T* x, int64_t H, int64_t W, const T* k, int64_t r, Boundary b, T* buf, const T** rows,
                 T* u) {
  const int64_t n = 2 * r + 1;
  for (int64_t t = 0; t < n; ++t) rows[t] = buf + t;
  for (int64_t h = 0; h < H; ++h) {
    pad_row(x + h * W, W, r, b, buf);
    weighted_rows(rows, k, n, W, u + h * W);
  }
}

// out = k (*)_H u for one plane.
template <typename T>
void filter_columns(const T* u, int64_t H, int64_t W, const T* k, int64_t r, Boundary b, const T** rows, T* wts,
                    T* out) {
  const int64_t n = 2 * r + 1;
  for (int64_t h = 0; h < H; ++h) {
    int64_t m = 0;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t src = boundary_index(h + t - r, H, b);
      if (src < 0) continue;
      rows[m] = u + src * W;
      wts[m++] = k[t];
    }
    weighted_rows(rows, wts, m, W, out + h * W);
  }
}

// tt = (k (*)_H)^T g for one plane: row y gathers the rows of every position the boundary maps onto y.
template <typename T>
void filter_columns_transposed(const T* g, int64_t H, int64_t W, const T* k, int64_t r, Boundary b,
                               const T** rows, T* wts, T* tt) {
  const int64_t n = 2 * r + 1;
  for (int64_t y = 0; y < H; ++y) {
    int64_t m = 0;
    visit_preimages(y, H, r, b, [&](int64_t j) {
      for (int64_t t = 0; t < n; ++t) {
        const int64_t h = j - t + r;
        if (h < 0 || h >= H) continue;
        rows[m] = g + h * W;
        wts[m++] = k[t];
      }
    });
    weighted_rows(rows, wts, m, W, tt + y * W);
  }
}

}  // namespace

template <typename T>
void filter_bank_forward_cpu(const BankGeometry& g, const T* x, const T* kernels, T* out) {
  const int64_t HW = g.H * g.W, L = 2 * g.R + 1;
  if (HW == 0) return;  // empty planes: nothing to write (and no pixel a boundary rule could map onto)
  parallel_for(0, g.B * g.C, 1, [&](int64_t p0, int64_t p1) {
    std::vector<T> u(HW), buf(g.W + 2 * g.R), wts(L);
    std::vector<const T*> rows(L);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / g.C, c = p % g.C;
      for (int64_t s = 0; s < g.S; ++s) {
        const int64_t r = g.radii[s];
        const T* k = kernels + s * L + (g.R - r);
        filter_rows(x + p * HW, g.H, g.W, k, r, g.boundary, buf.data(), rows.data(), u.data());
        filter_columns(u.data(), g.H, g.W, k, r, g.boundary, rows.data(), wts.data(),
                       out + ((b * g.S + s) * g.C + c) * HW);
      }
    }
  });
}

template <typename T>
void filter_bank_backward_cpu(const BankGeometry& g, const T* x, const T* grad_out, const T* kernels, T* grad_x,
                              T* grad_kernels) {
  const int64_t H = g.H, W = g.W, HW = H * W, L = 2 * g.R + 1;
  if (HW == 0) {  // empty planes: grad_x is empty, the kernels' gradient zero
    std::fill(grad_kernels, grad_kernels + g.S * L, T(0));
    return;
  }
  ChunkPartials partials(g.S * L);
  parallel_for(0, g.B * g.C, 1, [&](int64_t p0, int64_t p1) {
    std::vector<T> u(HW), tt(HW), buf(W + 2 * g.R), tpad(W + 4 * g.R), gbuf(W + 2 * g.R);
    std::vector<T> wts((g.R + 1) * L);  // the most (row, tap) pairs a transposed row gathers (replicate edge)
    std::vector<const T*> rows((g.R + 1) * L);
    std::vector<double> gk(g.S * L, 0.0);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / g.C, c = p % g.C;
      const T* xp = x + p * HW;
      T* gx = grad_x + p * HW;
      std::fill(gx, gx + HW, T(0));
      for (int64_t s = 0; s < g.S; ++s) {
        const int64_t r = g.radii[s], n = 2 * r + 1;
        const T* k = kernels + s * L + (g.R - r);
        double* gks = gk.data() + s * L + (g.R - r);
        const T* go = grad_out + ((b * g.S + s) * g.C + c) * HW;
        filter_rows(xp, H, W, k, r, g.boundary, buf.data(), rows.data(), u.data());
        // Vertical pass: kernel gradient against u, and tt = (k (*)_H)^T go.
        for (int64_t h = 0; h < H; ++h)
          for (int64_t t = 0; t < n; ++t) {
            const int64_t src = boundary_index(h + t - r, H, g.boundary);
            if (src >= 0) gks[t] += dot(go + h * W, u.data() + src * W, W);
          }
        filter_columns_transposed(go, H, W, k, r, g.boundary, rows.data(), wts.data(), tt.data());
        // Horizontal pass: kernel gradient against the padded x rows, grad_x += (k (*)_W)^T tt.
        for (int64_t h = 0; h < H; ++h) {
          const T* tr = tt.data() + h * W;
          pad_row(xp + h * W, W, r, g.boundary, buf.data());
          for (int64_t t = 0; t < n; ++t) gks[t] += dot(tr, buf.data() + t, W);
          // gbuf[j] = sum_t k[t] tt[j - t], j in [0, W + 2r): a correlation of the zero-padded row.
          std::fill(tpad.begin(), tpad.begin() + 2 * r, T(0));
          std::memcpy(tpad.data() + 2 * r, tr, sizeof(T) * W);
          std::fill(tpad.begin() + 2 * r + W, tpad.begin() + 4 * r + W, T(0));
          for (int64_t t = 0; t < n; ++t) rows[t] = tpad.data() + 2 * r - t;
          weighted_rows(rows.data(), k, n, W + 2 * r, gbuf.data());
          T* gxr = gx + h * W;
#pragma omp simd
          for (int64_t w = 0; w < W; ++w) gxr[w] += gbuf[w + r];
          for (int64_t j = 0; j < r; ++j) {
            const int64_t lo = boundary_index(j - r, W, g.boundary), hi = boundary_index(W + j, W, g.boundary);
            if (lo >= 0) gxr[lo] += gbuf[j];
            if (hi >= 0) gxr[hi] += gbuf[W + r + j];
          }
        }
      }
    }
    partials.add(p0, std::move(gk));
  });
  const std::vector<double> gk_total = partials.sum();
  for (int64_t i = 0; i < g.S * L; ++i) grad_kernels[i] = static_cast<T>(gk_total[i]);
}

namespace {

constexpr int64_t kBlock = 256;  // positions per attention block

template <typename T> struct ExpTraits;
template <> struct ExpTraits<float> {
  using Bits = int32_t;
  static constexpr float lowest = -87.0f;  // exp(lowest) is still a normal float
  static constexpr int mantissa = 23, bias = 127, degree = 7;
};
template <> struct ExpTraits<double> {
  using Bits = int64_t;
  static constexpr double lowest = -708.0;
  static constexpr int mantissa = 52, bias = 1023, degree = 13;
};

template <typename T>
constexpr T kInverse[14] = {T(0),     T(1),      T(1) / 2,  T(1) / 3,  T(1) / 4,  T(1) / 5,  T(1) / 6,
                            T(1) / 7, T(1) / 8,  T(1) / 9,  T(1) / 10, T(1) / 11, T(1) / 12, T(1) / 13};

// sum_{k <= D} r^k / k! in Horner form 1 + r (1 + r/2 (1 + r/3 (...))), unrolled at compile time.
template <typename T, int K, int D>
inline T taylor_exp(T r) {
  if constexpr (K > D) {
    return T(1);
  } else {
    return T(1) + r * kInverse<T>[K] * taylor_exp<T, K + 1, D>(r);
  }
}

// exp(x) for x <= 0 in a form compilers vectorise (libm's exp is a scalar call): x = n ln2 + r with
// |r| <= ln2 / 2, exp(r) by its Taylor polynomial (error below the dtype's epsilon), 2^n from the exponent bits.
// Inputs below `lowest` return exp(lowest) (< 1e-37 or 1e-307), a difference no softmax weight can show.
template <typename T>
inline T exp_nonpositive(T x) {
  using E = ExpTraits<T>;
  using Bits = typename E::Bits;
  x = x < E::lowest ? E::lowest : x;
  // n = floor(x log2(e) + 1/2) by truncating a positive number (std::floor vectorises only without trapping math)
  const Bits ni = static_cast<Bits>(x * T(1.4426950408889634) + T(0.5 + E::bias)) - E::bias;
  const T n = static_cast<T>(ni);
  const T r = (x - n * T(0.693145751953125)) - n * T(1.428606765330187e-06);  // Cody-Waite ln 2
  return taylor_exp<T, 1, E::degree>(r) * __builtin_bit_cast(T, static_cast<Bits>((ni + E::bias) << E::mantissa));
}

// p[s * P + j] = softmax over s of gain_s |y[s * P + j]| for the n positions of one block (p may alias out).
template <typename T>
inline void softmax_weights(int64_t S, int64_t P, int64_t n, const T* y, const T* gain, T* m, T* sum, T* p) {
  for (int64_t j = 0; j < n; ++j) m[j] = gain[0] * std::abs(y[j]);
  for (int64_t s = 1; s < S; ++s) {
    const T gs = gain[s];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const T a = gs * std::abs(y[s * P + j]);
      m[j] = a > m[j] ? a : m[j];
    }
  }
  std::fill(sum, sum + n, T(0));
  for (int64_t s = 0; s < S; ++s) {
    const T gs = gain[s];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const T e = exp_nonpositive(gs * std::abs(y[s * P + j]) - m[j]);
      p[s * P + j] = e;
      sum[j] += e;
    }
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) sum[j] = T(1) / sum[j];
  for (int64_t s = 0; s < S; ++s)
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) p[s * P + j] *= sum[j];
}

}  // namespace

template <typename T>
void scale_attention_forward_cpu(int64_t B, int64_t S, int64_t P, const T* y, const T* gain, T* out) {
  const int64_t blocks = (P + kBlock - 1) / kBlock;
  parallel_for(0, B * blocks, 4, [&](int64_t i0, int64_t i1) {
    T m[kBlock], sum[kBlock];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / blocks, p0 = (i % blocks) * kBlock, n = std::min(kBlock, P - p0);
      const T* yb = y + b * S * P + p0;
      T* ob = out + b * S * P + p0;
      softmax_weights(S, P, n, yb, gain, m, sum, ob);
      for (int64_t s = 0; s < S; ++s)
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) ob[s * P + j] *= T(S) * yb[s * P + j];
    }
  });
}

template <typename T>
void scale_attention_backward_cpu(int64_t B, int64_t S, int64_t P, const T* y, const T* gain, const T* grad_out,
                                  T* grad_y, T* grad_gain) {
  const int64_t blocks = (P + kBlock - 1) / kBlock;
  ChunkPartials partials(S);
  parallel_for(0, B * blocks, 4, [&](int64_t i0, int64_t i1) {
    T m[kBlock], sum[kBlock], q[kBlock];
    std::vector<double> gg(S, 0.0);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / blocks, p0 = (i % blocks) * kBlock, n = std::min(kBlock, P - p0);
      const int64_t off = b * S * P + p0;
      const T *yb = y + off, *gb = grad_out + off;
      T* gyb = grad_y + off;  // holds the softmax weights p until the last loop
      softmax_weights(S, P, n, yb, gain, m, sum, gyb);
      std::fill(q, q + n, T(0));
      for (int64_t s = 0; s < S; ++s)
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) q[j] += gyb[s * P + j] * gb[s * P + j] * yb[s * P + j];
      // d out_s / d a_s = S p_s (g_s y_s - q); a_s = gain_s |y_s|.
      for (int64_t s = 0; s < S; ++s) {
        T acc = 0;
        const T gs = gain[s];
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < n; ++j) {
          const T yv = yb[s * P + j], pv = gyb[s * P + j], gv = gb[s * P + j];
          const T da = T(S) * pv * (gv * yv - q[j]);
          acc += da * std::abs(yv);
          const T sg = yv > 0 ? T(1) : (yv < 0 ? T(-1) : T(0));
          gyb[s * P + j] = T(S) * gv * pv + gs * sg * da;
        }
        gg[s] += acc;
      }
    }
    partials.add(i0, std::move(gg));
  });
  const std::vector<double> gg_total = partials.sum();
  for (int64_t s = 0; s < S; ++s) grad_gain[s] = static_cast<T>(gg_total[s]);
}

#define PVF_INSTANTIATE(T)                                                                                        \
  template void filter_bank_forward_cpu<T>(const BankGeometry&, const T*, const T*, T*);                         \
  template void filter_bank_backward_cpu<T>(const BankGeometry&, const T*, const T*, const T*, T*, T*);          \
  template void scale_attention_forward_cpu<T>(int64_t, int64_t, int64_t, const T*, const T*, T*);              \
  template void scale_attention_backward_cpu<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, T*, T*);
PVF_INSTANTIATE(float)
PVF_INSTANTIATE(double)
#undef PVF_INSTANTIATE

}  // namespace scale_space
}  // namespace pvf
