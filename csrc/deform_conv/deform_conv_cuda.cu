// CUDA deformable-convolution columns: one thread per (image, offset group, tap, output position) computes the
// bilinear sample once and serves every channel of its offset group (coalesced along the output positions).
// The backward kernel does the same, scattering grad_input with atomics and summing the offset and mask
// gradients over the group's channels in registers.
#include <cuda_runtime.h>

#include <cmath>

#include "common/cuda_dispatch.cuh"
#include "common/cuda_utils.cuh"
#include "deform_conv/deform_conv.h"

namespace pvf {
namespace deform_conv {
namespace {

constexpr int kThreads = 256;

struct Row {
  int64_t b, o, k, p;
};

__device__ __forceinline__ Row decompose(int64_t t, const Geometry& g) {
  const int64_t P = g.Ho * g.Wo, K = g.kh * g.kw;
  Row r;
  r.p = t % P;
  t /= P;
  r.k = t % K;
  t /= K;
  r.o = t % g.OG;
  r.b = t / g.OG;
  return r;
}

// The sample of thread t: its (image, group, tap, position), the (b, o, k) row index into offset and mask,
// the bilinear sample and the mask value.
template <typename A>
struct TapSample {
  Row r;
  int64_t row;
  Sample<A> s;
  A m;
};

template <typename T, typename A = acc_t<T>>
__device__ __forceinline__ TapSample<A> tap_sample(int64_t t, const Geometry& g, const T* offset, const T* mask) {
  const int64_t P = g.Ho * g.Wo;
  TapSample<A> ts;
  ts.r = decompose(t, g);
  ts.row = (ts.r.b * g.OG + ts.r.o) * g.kh * g.kw + ts.r.k;
  const T* off = offset + ts.row * 2 * P + ts.r.p;
  const int64_t i = ts.r.k / g.kw, j = ts.r.k % g.kw, ho = ts.r.p / g.Wo, wo = ts.r.p % g.Wo;
  ts.s = bilinear_sample<A>(A(ho * g.sh - g.ph + i * g.dh) + to_acc(off[0]),
                            A(wo * g.sw - g.pw + j * g.dw) + to_acc(off[P]), g.H, g.W);
  ts.m = mask ? to_acc(mask[ts.row * P + ts.r.p]) : A(1);
  return ts;
}

template <typename T>
__global__ void im2col_kernel(Geometry g, const T* input, const T* offset, const T* mask, T* columns) {
  using A = acc_t<T>;
  const int64_t P = g.Ho * g.Wo, K = g.kh * g.kw, HW = g.H * g.W, Cg = g.C / g.OG;
  const int64_t total = g.B * g.OG * K * P;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const TapSample<A> ts = tap_sample<T>(t, g, offset, mask);
    const Row& r = ts.r;
    const Sample<A>& s = ts.s;
    const A m = ts.m;
    for (int64_t c = r.o * Cg; c < (r.o + 1) * Cg; ++c) {
      const T* plane = input + (r.b * g.C + c) * HW;
      A v = 0;
      if (s.inside)
        for (int q = 0; q < 4; ++q)
          if (s.valid[q]) v += s.w[q] * to_acc(plane[s.idx[q]]);
      columns[((r.b * g.C + c) * K + r.k) * P + r.p] = from_acc<T>(s.nan ? A(NAN) : m * v);  // NaN offset: NaN
    }
  }
}

template <typename T>
__global__ void col2im_kernel(Geometry g, const T* input, const T* offset, const T* mask, const T* grad_columns,
                              acc_t<T>* grad_input, T* grad_offset, T* grad_mask) {
  using A = acc_t<T>;
  const int64_t P = g.Ho * g.Wo, K = g.kh * g.kw, HW = g.H * g.W, Cg = g.C / g.OG;
  const int64_t total = g.B * g.OG * K * P;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const TapSample<A> ts = tap_sample<T>(t, g, offset, mask);
    const Row& r = ts.r;
    const Sample<A>& s = ts.s;
    const int64_t row = ts.row;
    const A m = ts.m;
    A gy = 0, gx = 0, gm = 0;
    if (s.inside) {
      for (int64_t c = r.o * Cg; c < (r.o + 1) * Cg; ++c) {
        const T* plane = input + (r.b * g.C + c) * HW;
        const A gv = to_acc(grad_columns[((r.b * g.C + c) * K + r.k) * P + r.p]);
        A v[4];
        for (int q = 0; q < 4; ++q) {
          v[q] = s.valid[q] ? to_acc(plane[s.idx[q]]) : A(0);
          if (s.valid[q] && s.w[q] != A(0)) atomicAdd(grad_input + (r.b * g.C + c) * HW + s.idx[q], m * s.w[q] * gv);
        }
        gy += gv * ((1 - s.lx) * (v[2] - v[0]) + s.lx * (v[3] - v[1]));
        gx += gv * ((1 - s.ly) * (v[1] - v[0]) + s.ly * (v[3] - v[2]));
        gm += gv * (s.w[0] * v[0] + s.w[1] * v[1] + s.w[2] * v[2] + s.w[3] * v[3]);
      }
    }
    grad_offset[row * 2 * P + r.p] = from_acc<T>(m * gy);
    grad_offset[row * 2 * P + P + r.p] = from_acc<T>(m * gx);
    if (grad_mask) grad_mask[row * P + r.p] = from_acc<T>(gm);
  }
}

}  // namespace

void im2col_cuda(DType dtype, const Geometry& g, const void* input, const void* offset, const void* mask,
                 void* columns, void* stream) {
  const int64_t total = g.B * g.OG * g.K() * g.P();
  if (total == 0) return;
  dispatch_floating_and_half(dtype, "deform_conv2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    im2col_kernel<T><<<grid_for(total, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        g, static_cast<const T*>(input), static_cast<const T*>(offset), static_cast<const T*>(mask),
        static_cast<T*>(columns));
  });
  PVF_CUDA_CHECK_LAUNCH("deform_conv2d");
}

void col2im_cuda(DType dtype, const Geometry& g, const void* input, const void* offset, const void* mask,
                 const void* grad_columns, void* grad_input_acc, void* grad_offset, void* grad_mask, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  dispatch_floating_and_half(dtype, "deform_conv2d_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const int64_t n_input = g.B * g.C * g.H * g.W;
    if (n_input > 0)
      cuda_check(cudaMemsetAsync(grad_input_acc, 0, sizeof(A) * n_input, st), "deform_conv2d_backward");
    const int64_t total = g.B * g.OG * g.K() * g.P();
    if (total == 0) return;
    col2im_kernel<T><<<grid_for(total, kThreads), kThreads, 0, st>>>(
        g, static_cast<const T*>(input), static_cast<const T*>(offset), static_cast<const T*>(mask),
        static_cast<const T*>(grad_columns), static_cast<A*>(grad_input_acc), static_cast<T*>(grad_offset),
        static_cast<T*>(grad_mask));
  });
  PVF_CUDA_CHECK_LAUNCH("deform_conv2d_backward");
}

}  // namespace deform_conv
}  // namespace pvf
