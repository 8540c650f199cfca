// CUDA kernels of upfirdn2d and bias_act, mirroring the CPU kernels' arithmetic (stylegan2.h, stylegan2_math.h):
// one thread per output element in a grid-stride loop; upfirdn2d sums the taps that meet input samples (tap_source)
// with ty ascending, then tx ascending, in the accumulation type (float for half/bfloat16). The separable case is
// the horizontal pass into a workspace of the accumulation type, then the vertical pass. Not yet run on a GPU: the
// ops register these kernels as the candidate "cuda:next" (see pyvision_fast/ops/stylegan2.py).
#include <cuda_runtime.h>

#include "common/cuda_dispatch.cuh"
#include "common/cuda_utils.cuh"
#include "stylegan2/stylegan2.h"
#include "stylegan2/stylegan2_math.h"

namespace pvf {
namespace stylegan2 {
namespace {

constexpr int kThreads = 256;

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

template <typename T>
__global__ void upfirdn2d_kernel(const T* __restrict__ x, const acc_t<T>* __restrict__ taps, Upfirdn2dGeometry g,
                                 T* __restrict__ out) {
  using A = acc_t<T>;
  const int64_t total = g.planes * g.y.out * g.x.out;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ox = i % g.x.out;
    const int64_t oy = (i / g.x.out) % g.y.out;
    const int64_t p = i / (g.x.out * g.y.out);
    const T* xp = x + p * g.y.in * g.x.in;
    A acc = A(0);
    for (int64_t ty = 0; ty < g.y.f; ++ty) {
      const int64_t iy = tap_source(oy, ty, g.y.up, g.y.down, g.y.pad0, g.y.in);
      if (iy < 0) continue;
      for (int64_t tx = 0; tx < g.x.f; ++tx) {
        const int64_t ix = tap_source(ox, tx, g.x.up, g.x.down, g.x.pad0, g.x.in);
        if (ix < 0) continue;
        acc += taps[ty * g.x.f + tx] * to_acc(xp[iy * g.x.in + ix]);
      }
    }
    out[i] = from_acc<T>(acc);
  }
}

// Separable, horizontal pass: tmp (planes, H, out_x) in the accumulation type.
template <typename T>
__global__ void upfirdn2d_rows_kernel(const T* __restrict__ x, const acc_t<T>* __restrict__ taps_x,
                                      Upfirdn2dGeometry g, acc_t<T>* __restrict__ tmp) {
  using A = acc_t<T>;
  const int64_t total = g.planes * g.y.in * g.x.out;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ox = i % g.x.out;
    const int64_t row = i / g.x.out;  // plane * H + iy
    const T* xr = x + row * g.x.in;
    A acc = A(0);
    for (int64_t tx = 0; tx < g.x.f; ++tx) {
      const int64_t ix = tap_source(ox, tx, g.x.up, g.x.down, g.x.pad0, g.x.in);
      if (ix >= 0) acc += taps_x[tx] * to_acc(xr[ix]);
    }
    tmp[i] = acc;
  }
}

// Separable, vertical pass over tmp.
template <typename T>
__global__ void upfirdn2d_cols_kernel(const acc_t<T>* __restrict__ tmp, const acc_t<T>* __restrict__ taps_y,
                                      Upfirdn2dGeometry g, T* __restrict__ out) {
  using A = acc_t<T>;
  const int64_t total = g.planes * g.y.out * g.x.out;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ox = i % g.x.out;
    const int64_t oy = (i / g.x.out) % g.y.out;
    const int64_t p = i / (g.x.out * g.y.out);
    const A* tp = tmp + p * g.y.in * g.x.out;
    A acc = A(0);
    for (int64_t ty = 0; ty < g.y.f; ++ty) {
      const int64_t iy = tap_source(oy, ty, g.y.up, g.y.down, g.y.pad0, g.y.in);
      if (iy >= 0) acc += taps_y[ty] * tp[iy * g.x.out + ox];
    }
    out[i] = from_acc<T>(acc);
  }
}

template <typename T>
__global__ void bias_act_kernel(const T* __restrict__ x, const T* __restrict__ b, int64_t n, int64_t C,
                                int64_t inner, Act act, acc_t<T> alpha, acc_t<T> gain, acc_t<T> clamp,
                                T* __restrict__ y) {
  using A = acc_t<T>;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const A bias = b != nullptr ? to_acc(b[(i / inner) % C]) : A(0);
    y[i] = from_acc<T>(bias_act_value<A>(act, to_acc(x[i]) + bias, alpha, gain, clamp));
  }
}

template <typename T>
__global__ void bias_act_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                         const T* __restrict__ b, int64_t n, int64_t C, int64_t inner, Act act,
                                         acc_t<T> alpha, acc_t<T> gain, acc_t<T> clamp, T* __restrict__ dx) {
  using A = acc_t<T>;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const A bias = b != nullptr ? to_acc(b[(i / inner) % C]) : A(0);
    dx[i] = from_acc<T>(bias_act_grad<A>(act, to_acc(x[i]) + bias, to_acc(dy[i]), alpha, gain, clamp));
  }
}

}  // namespace

void upfirdn2d_cuda(DType dtype, const Upfirdn2dGeometry& g, const void* x, const void* taps, const void* taps_x,
                    const void* taps_y, void* out, void* workspace, void* stream) {
  const int64_t total = g.planes * g.y.out * g.x.out;
  if (total <= 0) return;
  dispatch_floating_and_half(dtype, "upfirdn2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    if (g.separable) {
      const int64_t rows = g.planes * g.y.in * g.x.out;
      if (rows > 0) {
        upfirdn2d_rows_kernel<T><<<grid_for(rows, kThreads), kThreads, 0, as_stream(stream)>>>(
            static_cast<const T*>(x), static_cast<const A*>(taps_x), g, static_cast<A*>(workspace));
        PVF_CUDA_CHECK_LAUNCH("upfirdn2d (rows)");
      }
      upfirdn2d_cols_kernel<T><<<grid_for(total, kThreads), kThreads, 0, as_stream(stream)>>>(
          static_cast<const A*>(workspace), static_cast<const A*>(taps_y), g, static_cast<T*>(out));
      PVF_CUDA_CHECK_LAUNCH("upfirdn2d (columns)");
    } else {
      upfirdn2d_kernel<T><<<grid_for(total, kThreads), kThreads, 0, as_stream(stream)>>>(
          static_cast<const T*>(x), static_cast<const A*>(taps), g, static_cast<T*>(out));
      PVF_CUDA_CHECK_LAUNCH("upfirdn2d");
    }
  });
}

void bias_act_cuda(DType dtype, const void* x, const void* b, int64_t outer, int64_t C, int64_t inner, Act act,
                   double alpha, double gain, double clamp, void* y, void* stream) {
  const int64_t n = outer * C * inner;
  if (n <= 0) return;
  dispatch_floating_and_half(dtype, "bias_act", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    bias_act_kernel<T><<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(b), n, C, inner, act, A(alpha), A(gain), A(clamp),
        static_cast<T*>(y));
    PVF_CUDA_CHECK_LAUNCH("bias_act");
  });
}

void bias_act_backward_cuda(DType dtype, const void* dy, const void* x, const void* b, int64_t outer, int64_t C,
                            int64_t inner, Act act, double alpha, double gain, double clamp, void* dx, void* stream) {
  const int64_t n = outer * C * inner;
  if (n <= 0) return;
  dispatch_floating_and_half(dtype, "bias_act_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    bias_act_backward_kernel<T><<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(b), n, C, inner, act, A(alpha),
        A(gain), A(clamp), static_cast<T*>(dx));
    PVF_CUDA_CHECK_LAUNCH("bias_act_backward");
  });
}

}  // namespace stylegan2
}  // namespace pvf
