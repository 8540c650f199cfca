// CPU deformable-convolution columns. Every (image, offset group, tap) computes its Ho*Wo bilinear samples once
// (four corner indices and mask-scaled weights) and all channels of the group reuse them. The transposes are
// race-free without atomics: grad_input is parallel over (image, channel) planes, the offset and mask gradients
// over (image, offset group, tap) rows, each reading the group's channels.
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "common/parallel.h"
#include "deform_conv/deform_conv.h"

namespace pvf {
namespace deform_conv {
namespace {

// Samples of one (b, o, k) row: idx[4p + i] and weights w[4p + i] (times the mask), valid[4p + i] in {0, 1}.
template <typename T>
void sample_row(const Geometry& g, const T* offset, const T* mask, int64_t b, int64_t o, int64_t k, int32_t* idx,
                T* w, T* valid, T* ly, T* lx, std::vector<int32_t>& outside,
                std::vector<int32_t>* nan_points = nullptr) {
  outside.clear();
  if (nan_points) nan_points->clear();
  const int64_t K = g.K(), P = g.P();
  const int64_t i = k / g.kw, j = k % g.kw;
  const T* dy = offset + ((b * g.OG + o) * K + k) * 2 * P;
  const T* dx = dy + P;
  const T* m = mask ? mask + ((b * g.OG + o) * K + k) * P : nullptr;
  for (int64_t p = 0; p < P; ++p) {
    const int64_t ho = p / g.Wo, wo = p % g.Wo;
    const T y = T(ho * g.sh - g.ph + i * g.dh) + dy[p];
    const T x = T(wo * g.sw - g.pw + j * g.dw) + dx[p];
    const Sample<T> s = bilinear_sample<T>(y, x, g.H, g.W);
    const T scale = m ? m[p] : T(1);
    // A corner outside the image has weight 0; it indexes a corner of the same sample that is inside, so that
    // 0 * pixel never meets an inf / NaN the sample does not touch. Samples entirely outside index pixel 0 and
    // are listed in `outside`: the caller overwrites their results with zeros.
    if (!s.inside) outside.push_back(static_cast<int32_t>(p));
    if (s.nan && nan_points) nan_points->push_back(static_cast<int32_t>(p));
    int64_t inside_corner = 0;
    for (int c = 3; c >= 0; --c)
      if (s.valid[c]) inside_corner = s.idx[c];
    for (int c = 0; c < 4; ++c) {
      idx[4 * p + c] = static_cast<int32_t>(s.valid[c] ? s.idx[c] : inside_corner);
      w[4 * p + c] = s.w[c] * scale;
      if (valid) valid[4 * p + c] = s.valid[c] ? T(1) : T(0);
    }
    if (ly) {
      ly[p] = s.inside ? s.ly : T(0);
      lx[p] = s.inside ? s.lx : T(0);
    }
  }
}

}  // namespace

template <typename T>
void im2col_cpu(const Geometry& g, const T* input, const T* offset, const T* mask, T* columns) {
  const int64_t K = g.K(), P = g.P(), HW = g.H * g.W, Cg = g.C / g.OG;
  if (HW == 0) {  // every sample is outside an empty image
    std::fill(columns, columns + g.B * g.C * K * P, T(0));
    return;
  }
  // Samples of every (b, o, k) row, shared by the Cg channels of the group.
  const int64_t rows = g.B * g.OG * K;
  std::vector<int32_t> idx(rows * P * 4);
  std::vector<T> w(rows * P * 4);
  std::vector<std::vector<int32_t>> outside(rows), nan_points(rows);
  parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      sample_row(g, offset, mask, r / (g.OG * K), (r / K) % g.OG, r % K, idx.data() + r * P * 4,
                 w.data() + r * P * 4, static_cast<T*>(nullptr), static_cast<T*>(nullptr), static_cast<T*>(nullptr),
                 outside[r], &nan_points[r]);
  });
  parallel_for(0, g.B * g.C, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / g.C, c = q % g.C, o = c / Cg;
      const T* plane = input + q * HW;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t r = (b * g.OG + o) * K + k;
        const int32_t* ir = idx.data() + r * P * 4;
        const T* wr = w.data() + r * P * 4;
        T* col = columns + (q * K + k) * P;
        for (int64_t p = 0; p < P; ++p)
          col[p] = wr[4 * p] * plane[ir[4 * p]] + wr[4 * p + 1] * plane[ir[4 * p + 1]] +
                   wr[4 * p + 2] * plane[ir[4 * p + 2]] + wr[4 * p + 3] * plane[ir[4 * p + 3]];
        for (int32_t p : outside[r]) col[p] = T(0);
        for (int32_t p : nan_points[r]) col[p] = std::numeric_limits<T>::quiet_NaN();  // a NaN offset samples NaN
      }
    }
  });
}

template <typename T>
void col2im_cpu(const Geometry& g, const T* input, const T* offset, const T* mask, const T* grad_columns,
                T* grad_input, T* grad_offset, T* grad_mask) {
  const int64_t K = g.K(), P = g.P(), HW = g.H * g.W, Cg = g.C / g.OG;
  std::fill(grad_input, grad_input + g.B * g.C * HW, T(0));
  std::fill(grad_offset, grad_offset + g.B * g.OG * K * 2 * P, T(0));
  if (grad_mask) std::fill(grad_mask, grad_mask + g.B * g.OG * K * P, T(0));
  if (HW == 0) return;
  const int64_t rows = g.B * g.OG * K;
  std::vector<int32_t> idx(rows * P * 4);
  std::vector<T> w(rows * P * 4);
  parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<int32_t> outside;  // the scatter adds weight * gradient: zero weights need no special case
    for (int64_t r = r0; r < r1; ++r)
      sample_row(g, offset, mask, r / (g.OG * K), (r / K) % g.OG, r % K, idx.data() + r * P * 4,
                 w.data() + r * P * 4, static_cast<T*>(nullptr), static_cast<T*>(nullptr), static_cast<T*>(nullptr),
                 outside);
  });
  // grad_input: each (b, c) plane gathers the scatter of its own columns.
  parallel_for(0, g.B * g.C, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / g.C, c = q % g.C, o = c / Cg;
      T* plane = grad_input + q * HW;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t r = (b * g.OG + o) * K + k;
        const int32_t* ir = idx.data() + r * P * 4;
        const T* wr = w.data() + r * P * 4;
        const T* gc = grad_columns + (q * K + k) * P;
        for (int64_t p = 0; p < P; ++p) {
          const T v = gc[p];
          plane[ir[4 * p]] += wr[4 * p] * v;
          plane[ir[4 * p + 1]] += wr[4 * p + 1] * v;
          plane[ir[4 * p + 2]] += wr[4 * p + 2] * v;
          plane[ir[4 * p + 3]] += wr[4 * p + 3] * v;
        }
      }
    }
  });
  // Offset and mask gradients: each (b, o, k) row sums over its group's channels.
  parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<int32_t> ir(P * 4);
    std::vector<T> wr(P * 4), valid(P * 4), ly(P), lx(P), gy(P), gx(P), gm(P);
    std::vector<int32_t> outside;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / (g.OG * K), o = (r / K) % g.OG, k = r % K;
      sample_row(g, offset, static_cast<const T*>(nullptr), b, o, k, ir.data(), wr.data(), valid.data(), ly.data(),
                 lx.data(), outside);
      std::fill(gy.begin(), gy.end(), T(0));
      std::fill(gx.begin(), gx.end(), T(0));
      std::fill(gm.begin(), gm.end(), T(0));
      for (int64_t c = o * Cg; c < (o + 1) * Cg; ++c) {
        const T* plane = input + (b * g.C + c) * HW;
        const T* gc = grad_columns + ((b * g.C + c) * K + k) * P;
        for (int64_t p = 0; p < P; ++p) {
          const T v0 = valid[4 * p] * plane[ir[4 * p]], v1 = valid[4 * p + 1] * plane[ir[4 * p + 1]];
          const T v2 = valid[4 * p + 2] * plane[ir[4 * p + 2]], v3 = valid[4 * p + 3] * plane[ir[4 * p + 3]];
          const T a = ly[p], e = lx[p], gv = gc[p];
          gy[p] += gv * ((1 - e) * (v2 - v0) + e * (v3 - v1));
          gx[p] += gv * ((1 - a) * (v1 - v0) + a * (v3 - v2));
          gm[p] += gv * (wr[4 * p] * v0 + wr[4 * p + 1] * v1 + wr[4 * p + 2] * v2 + wr[4 * p + 3] * v3);
        }
      }
      for (int32_t p : outside) gy[p] = gx[p] = gm[p] = T(0);
      T* goy = grad_offset + ((b * g.OG + o) * K + k) * 2 * P;
      T* gox = goy + P;
      const T* m = mask ? mask + ((b * g.OG + o) * K + k) * P : nullptr;
      for (int64_t p = 0; p < P; ++p) {
        const T scale = m ? m[p] : T(1);
        goy[p] = scale * gy[p];
        gox[p] = scale * gx[p];
      }
      if (grad_mask) std::copy(gm.begin(), gm.end(), grad_mask + ((b * g.OG + o) * K + k) * P);
    }
  });
}

#define PVF_INSTANTIATE(T)                                                                        \
  template void im2col_cpu<T>(const Geometry&, const T*, const T*, const T*, T*);               \
  template void col2im_cpu<T>(const Geometry&, const T*, const T*, const T*, const T*, T*, T*, T*);
PVF_INSTANTIATE(float)
PVF_INSTANTIATE(double)
#undef PVF_INSTANTIATE

}  // namespace deform_conv
}  // namespace pvf
