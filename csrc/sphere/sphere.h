// Spherical convolution with a fixed sampling table (pyvision_fast.geometry.equirect), channels-last: the
// columns of a convolution whose taps are read through a precomputed, batch-invariant table of four source
// pixels and four bilinear weights per (output location, tap), and their transpose.
//
// input (B, H, W, C) with element strides (sb, sp, sc) for image, pixel (h * W + w) and channel: channels last
// (sp = C, sc = 1, the fast case) or the plain (B, C, H, W) layout viewed so (sp = 1, sc = H * W).
// Table index (P, K, 4) int32 in [0, H*W) and weight (P, K, 4). Tables are validated once where they are made
// (pyvision_fast.geometry.equirect.validate), never per call; the kernels clamp every index into [0, H*W) all
// the same, so that no table, however wrong, makes them touch memory outside the image.
// Rows are the flattened (b, p) pairs, p an output location; a call covers rows [r0, r1) and
//   columns[r - r0, k, c] = sum_i weight[p, k, i] * input[b, index[p, k, i], c]       (r = b * P + p)
// so that columns (rows, K*C) times the weight as (K*C, C_out) gives the channels-last output rows.
#pragma once
#include <cstdint>

#include "common/macros.h"
#include "common/tensor_view.h"

namespace pvf {
namespace sphere {

PVF_HOST_DEVICE int64_t clamp_pixel(int32_t ix, int64_t HW) { return ix < 0 ? 0 : (ix >= HW ? HW - 1 : ix); }

struct Geometry {
  int64_t B, HW, C, P, K;
  int64_t sb, sp, sc;  // input strides (forward); grad_input is always contiguous (B, H, W, C)
};

template <typename T>
void table_im2col_cpu(const Geometry& g, const T* input, const int32_t* index, const T* weight, int64_t r0,
                      int64_t r1, T* columns);

// grad_input (B, H, W, C) += the transpose applied to grad_columns (r1 - r0, K, C) (accumulates: the caller zeroes
// it once and passes the row chunks in turn).
template <typename T>
void table_col2im_cpu(const Geometry& g, const T* grad_columns, const int32_t* index, const T* weight, int64_t r0,
                      int64_t r1, T* grad_input);

// CUDA: float32/float64/float16/bfloat16. col2im accumulates with atomics into grad_input_acc (float32 for half
// inputs, else the input dtype; the caller zeroes it once).
void table_im2col_cuda(DType dtype, const Geometry& g, const void* input, const int32_t* index, const void* weight,
                       int64_t r0, int64_t r1, void* columns, void* stream);
void table_col2im_cuda(DType dtype, const Geometry& g, const void* grad_columns, const int32_t* index,
                       const void* weight, int64_t r0, int64_t r1, void* grad_input_acc, void* stream);

}  // namespace sphere
}  // namespace pvf
