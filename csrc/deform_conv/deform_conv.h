// Deformable convolution v1/v2 (torchvision semantics): the sampling columns and their transposes. The matrix
// products with the weight are done by the caller (torch / cuBLAS).
//
// input (B, C, H, W); offset (B, 2 * OG * K, Ho, Wo) with K = kh * kw and, for offset group o and tap
// k = i * kw + j, channel 2 (o K + k) holding dy and channel 2 (o K + k) + 1 holding dx; mask (B, OG * K, Ho, Wo)
// or none. Channel c belongs to offset group c / (C / OG). The tap samples input[b, c] bilinearly at
//   y = ho * sh - ph + i * dh + dy,   x = wo * sw - pw + j * dw + dx
// (zero outside (-1, H) x (-1, W), partial weights at the border: corners outside the image read zero), times
// the mask. columns (B, C * K, Ho * Wo): row c * K + k, column ho * Wo + wo.
#pragma once
#include <cstdint>

#include "common/tensor_view.h"

namespace pvf {
namespace deform_conv {

struct Geometry {
  int64_t B, C, H, W;  // input
  int64_t Ho, Wo;      // output
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t OG;  // offset groups, C % OG == 0
  int64_t K() const { return kh * kw; }
  int64_t P() const { return Ho * Wo; }
};

// Bilinear sample of one plane at (y, x) with torchvision's rules (A: the coordinate type).
template <typename A>
struct Sample {
  int64_t idx[4];  // h0 w0, h0 w1, h1 w0, h1 w1 (flattened; 0 where the corner is outside)
  A w[4];          // bilinear weights, 0 where the corner is outside or the point is outside (-1, H) x (-1, W)
  A ly, lx;        // fractional parts (for the coordinate gradients)
  bool valid[4];   // the corner lies in the image (and the point inside (-1, H) x (-1, W))
  bool inside;
  bool nan;        // y or x is NaN: outside for every weight and gradient, but the sample itself is NaN (as in
                   // torchvision, whose weights are then NaN); the callers write NaN into the column
};

template <typename A>
#if defined(__CUDACC__)
__host__ __device__
#endif
inline Sample<A> bilinear_sample(A y, A x, int64_t H, int64_t W) {
  Sample<A> s{};
  s.inside = y > A(-1) && y < A(H) && x > A(-1) && x < A(W);  // false for NaN as well
  s.nan = y != y || x != x;
  if (!s.inside) return s;
  const int64_t h0 = static_cast<int64_t>(y + A(1)) - 1, w0 = static_cast<int64_t>(x + A(1)) - 1;  // floor, y > -1
  s.ly = y - h0;
  s.lx = x - w0;
  const bool vh0 = h0 >= 0, vh1 = h0 + 1 < H, vw0 = w0 >= 0, vw1 = w0 + 1 < W;
  const bool v[4] = {vh0 && vw0, vh0 && vw1, vh1 && vw0, vh1 && vw1};
  const int64_t idx[4] = {h0 * W + w0, h0 * W + w0 + 1, (h0 + 1) * W + w0, (h0 + 1) * W + w0 + 1};
  const A w[4] = {(1 - s.ly) * (1 - s.lx), (1 - s.ly) * s.lx, s.ly * (1 - s.lx), s.ly * s.lx};
  for (int i = 0; i < 4; ++i) {
    s.valid[i] = v[i];
    s.idx[i] = v[i] ? idx[i] : 0;
    s.w[i] = v[i] ? w[i] : A(0);
  }
  return s;
}

// columns (B, C*K, P) from input, offset and mask (nullptr: no mask).
template <typename T>
void im2col_cpu(const Geometry& g, const T* input, const T* offset, const T* mask, T* columns);

// The transposes: grad_input (B, C, H, W), grad_offset (like offset) and grad_mask (like mask; nullptr without
// mask) from grad_columns (B, C*K, P); all overwritten.
template <typename T>
void col2im_cpu(const Geometry& g, const T* input, const T* offset, const T* mask, const T* grad_columns,
                T* grad_input, T* grad_offset, T* grad_mask);

// CUDA: float32/float64/float16/bfloat16. col2im accumulates grad_input with atomics into `grad_input_acc`
// (float32 for half types, else the input dtype; zeroed by the launcher), then the caller casts.
void im2col_cuda(DType dtype, const Geometry& g, const void* input, const void* offset, const void* mask,
                 void* columns, void* stream);
void col2im_cuda(DType dtype, const Geometry& g, const void* input, const void* offset, const void* mask,
                 const void* grad_columns, void* grad_input_acc, void* grad_offset, void* grad_mask, void* stream);

}  // namespace deform_conv
}  // namespace pvf
