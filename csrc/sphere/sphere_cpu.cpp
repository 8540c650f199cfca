// CPU table gather / scatter, channels last: every table entry is read once per row and serves all C channels,
// which are contiguous in both the input pixel and the column (the channel loop vectorises). The scatter is
// race-free without atomics: threads own disjoint (image, channel range) pairs.
#include <algorithm>

#include "common/parallel.h"
#include "sphere/sphere.h"

namespace pvf {
namespace sphere {

namespace {

// One row's columns when the channel count is a small constant (RGB input of a patch embedding): the channel
// loop unrolled, every table entry read once.
template <int NC, typename T>
inline void im2col_row_small(const Geometry& g, const T* image, const int32_t* ix, const T* wt, T* col) {
  for (int64_t k = 0; k < g.K; ++k, ix += 4, wt += 4, col += NC) {
    const T *s0 = image + clamp_pixel(ix[0], g.HW) * g.sp, *s1 = image + clamp_pixel(ix[1], g.HW) * g.sp,
            *s2 = image + clamp_pixel(ix[2], g.HW) * g.sp, *s3 = image + clamp_pixel(ix[3], g.HW) * g.sp;
    for (int c = 0; c < NC; ++c) {
      const int64_t o = c * g.sc;
      col[c] = wt[0] * s0[o] + wt[1] * s1[o] + wt[2] * s2[o] + wt[3] * s3[o];
    }
  }
}

}  // namespace

template <typename T>
void table_im2col_cpu(const Geometry& g, const T* input, const int32_t* index, const T* weight, int64_t r0,
                      int64_t r1, T* columns) {
  const int64_t C = g.C, K = g.K;
  // Rows are visited location-major (all images of one output location in turn), so that a location's table
  // entries are read from memory once and then from L1 for every image of the chunk.
  const int64_t b0 = r0 / g.P, nb = (r1 - 1) / g.P + 1 - b0;
  parallel_for(0, g.P * nb, 16, [&](int64_t a, int64_t e) {
    for (int64_t q = a; q < e; ++q) {
      const int64_t p = q / nb, b = b0 + q % nb, r = b * g.P + p;
      if (r < r0 || r >= r1) continue;
      const T* image = input + b * g.sb;
      T* row = columns + (r - r0) * K * C;
      if (C == 3) {
        im2col_row_small<3>(g, image, index + p * K * 4, weight + p * K * 4, row);
        continue;
      }
      if (C == 1) {
        im2col_row_small<1>(g, image, index + p * K * 4, weight + p * K * 4, row);
        continue;
      }
      for (int64_t k = 0; k < K; ++k) {
        const int32_t* ix = index + (p * K + k) * 4;
        const T* wt = weight + (p * K + k) * 4;
        const T *s0 = image + clamp_pixel(ix[0], g.HW) * g.sp, *s1 = image + clamp_pixel(ix[1], g.HW) * g.sp,
                *s2 = image + clamp_pixel(ix[2], g.HW) * g.sp, *s3 = image + clamp_pixel(ix[3], g.HW) * g.sp;
        const T w0 = wt[0], w1 = wt[1], w2 = wt[2], w3 = wt[3];
        T* col = row + k * C;
        if (g.sc == 1) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) col[c] = w0 * s0[c] + w1 * s1[c] + w2 * s2[c] + w3 * s3[c];
        } else {
          for (int64_t c = 0; c < C; ++c) {
            const int64_t o = c * g.sc;
            col[c] = w0 * s0[o] + w1 * s1[o] + w2 * s2[o] + w3 * s3[o];
          }
        }
      }
    }
  });
}

template <typename T>
void table_col2im_cpu(const Geometry& g, const T* grad_columns, const int32_t* index, const T* weight, int64_t r0,
                      int64_t r1, T* grad_input) {
  const int64_t C = g.C, K = g.K;
  const int64_t b0 = r0 / g.P, b1 = (r1 - 1) / g.P + 1;  // images touched by the rows
  // Channel ranges of at least 8 channels, enough of them to occupy the threads.
  const int64_t want = std::max<int64_t>(1, (num_threads() + (b1 - b0) - 1) / (b1 - b0));
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(want, C / 8));
  const int64_t width = (C + blocks - 1) / blocks;
  parallel_for(0, (b1 - b0) * blocks, 1, [&](int64_t a, int64_t e) {
    for (int64_t item = a; item < e; ++item) {
      const int64_t b = b0 + item / blocks, c0 = (item % blocks) * width, c1 = std::min(C, c0 + width);
      T* image = grad_input + b * g.HW * C;
      const int64_t ra = std::max(r0, b * g.P), rb = std::min(r1, (b + 1) * g.P);
      for (int64_t r = ra; r < rb; ++r) {
        const int64_t p = r % g.P;
        for (int64_t k = 0; k < K; ++k) {
          const int32_t* ix = index + (p * K + k) * 4;
          const T* wt = weight + (p * K + k) * 4;
          const T* col = grad_columns + ((r - r0) * K + k) * C;
          for (int i = 0; i < 4; ++i) {
            T* dst = image + clamp_pixel(ix[i], g.HW) * C;
            const T w = wt[i];
#pragma omp simd
            for (int64_t c = c0; c < c1; ++c) dst[c] += w * col[c];
          }
        }
      }
    }
  });
}

template void table_im2col_cpu<float>(const Geometry&, const float*, const int32_t*, const float*, int64_t, int64_t,
                                      float*);
template void table_im2col_cpu<double>(const Geometry&, const double*, const int32_t*, const double*, int64_t,
                                       int64_t, double*);
template void table_col2im_cpu<float>(const Geometry&, const float*, const int32_t*, const float*, int64_t, int64_t,
                                      float*);
template void table_col2im_cpu<double>(const Geometry&, const double*, const int32_t*, const double*, int64_t,
                                       int64_t, double*);

}  // namespace sphere
}  // namespace pvf
