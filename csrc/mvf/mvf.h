// Multi-view fusion (MVFNet): the sum of three depthwise 3-tap convolutions along T, H and W with zero
// padding, in one pass, with an optional inference epilogue (folded BatchNorm scale/shift, HardSwish) and
// pass-through channels.
//
// Layout: x is (N, C, T, H, W) with arbitrary element strides for N, C, T, H and stride 1 along W (both the
// (N, C, T, H, W)-contiguous layout and the (N*T, C, H, W) frame layout of 2-D video networks qualify).
// Channels c < F ("fused" channels) are convolved; channels F <= c < C are copied. Kernels are (F, 3),
// tap k reading offset k - 1. out has the strides `so` (same sizes as x).
#pragma once
#include <cstdint>

#include "common/tensor_view.h"

namespace pvf {
namespace mvf {

struct Geometry {
  int64_t N, C, T, H, W;   // sizes
  int64_t F;               // fused channels
  int64_t sx[4];           // strides of x for n, c, t, h (w stride is 1)
  int64_t so[4];           // strides of out / grad_out
  int64_t sg[4];           // strides of grad_x (backward only)
};

// y = wT*x(t-1..t+1) + wH*x(h-1..h+1) + wW*x(w-1..w+1); with scale: z = scale*y + shift; hardswish: z*relu6(z+3)/6.
template <typename T>
void mvf_forward_cpu(const Geometry& g, const T* x, const T* wt, const T* wh, const T* ww, const T* scale,
                     const T* shift, bool hardswish, T* out);

// Gradients. grad_out has strides g.so; grad_x has strides g.sg. gy_workspace holds N*F*T*H*W
// elements (the gradient before the epilogue, contiguous (N, F, T, H, W); the CPU kernel reads it only when
// gy_given and needs none otherwise). grad_w* are (F, 3), overwritten.
// gy_given: gy_workspace already holds the fused channels' gradient before the epilogue (computed by the caller,
// e.g. through a training-mode BatchNorm); grad_out is then read for the pass-through channels only and the
// epilogue arguments are ignored.
template <typename T>
void mvf_backward_cpu(const Geometry& g, const T* x, const T* grad_out, const T* wt, const T* wh, const T* ww,
                      const T* scale, const T* shift, bool hardswish, T* grad_x, T* grad_wt, T* grad_wh, T* grad_ww,
                      T* gy_workspace, bool gy_given);

// Training-mode BatchNorm on the fused channels (statistics over N, T, H, W of the views' sum y), then HardSwish
// if asked: out[:, c] = act(gamma[c] * (y - mean[c]) / sqrt(var[c] + eps) + beta[c]) for c < F; channels
// F..C-1 copied. Writes the batch mean and the biased variance (F,): two passes (mean, then centred squares),
// vector sums per clip combined in double. The copy of channels F..C-1 runs beside the fused channels, not before
// them: with two threads one streams the copy while the other computes (PVF_MVF_OVERLAP=0: copy first). The
// backward does the same with the pass-through part of grad_x.
template <typename T>
void mvf_forward_bn_train_cpu(const Geometry& g, const T* x, const T* wt, const T* wh, const T* ww, const T* gamma,
                              const T* beta, double eps, bool hardswish, T* out, T* mean, T* var);

// Its gradients for x, the kernels, gamma and beta (all (F,) / (F, 3) outputs overwritten), from the forward's
// mean and var; the views are recomputed, nothing else is kept from the forward.
template <typename T>
void mvf_backward_bn_train_cpu(const Geometry& g, const T* x, const T* grad_out, const T* wt, const T* wh,
                               const T* ww, const T* gamma, const T* beta, const T* mean, const T* var, double eps,
                               bool hardswish, T* grad_x, T* grad_wt, T* grad_wh, T* grad_ww, T* grad_gamma,
                               T* grad_beta);

// CUDA: float32/float64/float16/bfloat16 (float accumulation). grad_w* are float32 for half inputs
// (atomic accumulation), the input dtype otherwise; zeroed by the launcher.
void mvf_forward_cuda(DType dtype, const Geometry& g, const void* x, const void* wt, const void* wh, const void* ww,
                      const void* scale, const void* shift, bool hardswish, void* out, void* stream);
void mvf_backward_cuda(DType dtype, const Geometry& g, const void* x, const void* grad_out, const void* wt,
                       const void* wh, const void* ww, const void* scale, const void* shift, bool hardswish,
                       void* grad_x, void* grad_wt, void* grad_wh, void* grad_ww, void* gy_workspace, bool gy_given,
                       void* stream);

}  // namespace mvf
}  // namespace pvf
