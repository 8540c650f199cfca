// CUDA multi-view fusion: the pass-through channels as one strided copy where the layout allows, one thread per
// output element for the stencils, one block per channel for the kernel gradients (block reduction, no atomics).
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_dispatch.cuh"
#include "common/cuda_utils.cuh"
#include "mvf/mvf.h"
#include "mvf/mvf_math.h"

namespace pvf {
namespace mvf {
namespace {

constexpr int kThreads = 256;

template <typename T> struct WBuf { using type = T; };
template <> struct WBuf<__half> { using type = float; };
template <> struct WBuf<__nv_bfloat16> { using type = float; };

struct Index {
  int64_t n, c, t, h, w;
};

__device__ __forceinline__ Index decompose(int64_t i, const Geometry& g, int64_t C) {
  Index r;
  r.w = i % g.W;
  i /= g.W;
  r.h = i % g.H;
  i /= g.H;
  r.t = i % g.T;
  i /= g.T;
  r.c = i % C;
  r.n = i / C;
  return r;
}

// Stencil value at (n, c, t, h, w) of a tensor with strides s (w stride 1), taps a[3] (T), b[3] (H), d[3] (W).
template <typename T, typename A>
__device__ __forceinline__ A stencil(const T* p, const int64_t* s, const Index& q, const Geometry& g, const A* a,
                                     const A* b, const A* d) {
  const T* base = p + q.n * s[0] + q.c * s[1] + q.t * s[2] + q.h * s[3] + q.w;
  A y = (a[1] + b[1] + d[1]) * to_acc(base[0]);
  if (q.t > 0) y += a[0] * to_acc(base[-s[2]]);
  if (q.t + 1 < g.T) y += a[2] * to_acc(base[s[2]]);
  if (q.h > 0) y += b[0] * to_acc(base[-s[3]]);
  if (q.h + 1 < g.H) y += b[2] * to_acc(base[s[3]]);
  if (q.w > 0) y += d[0] * to_acc(base[-1]);
  if (q.w + 1 < g.W) y += d[2] * to_acc(base[1]);
  return y;
}

template <typename T>
__global__ void forward_kernel(Geometry g, const T* x, const T* wt, const T* wh, const T* ww, const T* scale,
                               const T* shift, bool hs, T* out) {
  using A = acc_t<T>;
  const int64_t total = g.N * g.C * g.T * g.H * g.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const Index q = decompose(i, g, g.C);
    T* o = out + q.n * g.so[0] + q.c * g.so[1] + q.t * g.so[2] + q.h * g.so[3] + q.w;
    const T* xi = x + q.n * g.sx[0] + q.c * g.sx[1] + q.t * g.sx[2] + q.h * g.sx[3] + q.w;
    if (q.c >= g.F) {
      *o = *xi;
      continue;
    }
    A a[3], b[3], d[3];
    for (int k = 0; k < 3; ++k) {
      a[k] = to_acc(wt[3 * q.c + k]);
      b[k] = to_acc(wh[3 * q.c + k]);
      d[k] = to_acc(ww[3 * q.c + k]);
    }
    A z = stencil(x, g.sx, q, g, a, b, d);
    if (scale) z = to_acc(scale[q.c]) * z + to_acc(shift[q.c]);
    if (hs) z = hardswish(z);
    *o = from_acc<T>(z);
  }
}

// gy (contiguous (N, F, T, H, W), accumulation type) and the pass-through part of grad_x.
template <typename T>
__global__ void grad_pre_kernel(Geometry g, const T* x, const T* go, const T* wt, const T* wh, const T* ww,
                                const T* scale, const T* shift, bool hs, T* gx, acc_t<T>* gy, bool gy_given) {
  using A = acc_t<T>;
  const int64_t total = g.N * g.C * g.T * g.H * g.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const Index q = decompose(i, g, g.C);
    if (gy_given && q.c < g.F) continue;  // the caller computed the fused channels' gradient
    const A gv = to_acc(go[q.n * g.so[0] + q.c * g.so[1] + q.t * g.so[2] + q.h * g.so[3] + q.w]);
    if (q.c >= g.F) {
      gx[q.n * g.sg[0] + q.c * g.sg[1] + q.t * g.sg[2] + q.h * g.sg[3] + q.w] = from_acc<T>(gv);
      continue;
    }
    A val = gv;
    if (scale || hs) {
      A a[3], b[3], d[3];
      for (int k = 0; k < 3; ++k) {
        a[k] = to_acc(wt[3 * q.c + k]);
        b[k] = to_acc(wh[3 * q.c + k]);
        d[k] = to_acc(ww[3 * q.c + k]);
      }
      const A s = scale ? to_acc(scale[q.c]) : A(1);
      const A z = s * stencil(x, g.sx, q, g, a, b, d) + (scale ? to_acc(shift[q.c]) : A(0));
      val = gv * (hs ? hardswish_grad(z) : A(1)) * s;
    }
    gy[(((q.n * g.F + q.c) * g.T + q.t) * g.H + q.h) * g.W + q.w] = val;
  }
}

template <typename T>
__global__ void grad_x_kernel(Geometry g, const acc_t<T>* gy, const T* wt, const T* wh, const T* ww, T* gx) {
  using A = acc_t<T>;
  const int64_t total = g.N * g.F * g.T * g.H * g.W;
  const int64_t sy[4] = {g.F * g.T * g.H * g.W, g.T * g.H * g.W, g.H * g.W, g.W};
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const Index q = decompose(i, g, g.F);
    A a[3], b[3], d[3];
    for (int k = 0; k < 3; ++k) {  // mirrored taps
      a[k] = to_acc(wt[3 * q.c + 2 - k]);
      b[k] = to_acc(wh[3 * q.c + 2 - k]);
      d[k] = to_acc(ww[3 * q.c + 2 - k]);
    }
    gx[q.n * g.sg[0] + q.c * g.sg[1] + q.t * g.sg[2] + q.h * g.sg[3] + q.w] =
        from_acc<T>(stencil(gy, sy, q, g, a, b, d));
  }
}

template <typename T>
__global__ void grad_w_kernel(Geometry g, const T* x, const acc_t<T>* gy, typename WBuf<T>::type* gwt,
                              typename WBuf<T>::type* gwh, typename WBuf<T>::type* gww) {
  using A = acc_t<T>;
  __shared__ A partial[9][kThreads];
  const int64_t c = blockIdx.x;
  A s[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t per_channel = g.N * g.T * g.H * g.W;
  for (int64_t i = threadIdx.x; i < per_channel; i += blockDim.x) {
    int64_t r = i;
    const int64_t w = r % g.W;
    r /= g.W;
    const int64_t h = r % g.H;
    r /= g.H;
    const int64_t t = r % g.T;
    const int64_t n = r / g.T;
    const A gv = gy[(((n * g.F + c) * g.T + t) * g.H + h) * g.W + w];
    const T* base = x + n * g.sx[0] + c * g.sx[1] + t * g.sx[2] + h * g.sx[3] + w;
    const A xc = to_acc(base[0]);
    s[1] += gv * xc;
    if (t > 0) s[0] += gv * to_acc(base[-g.sx[2]]);
    if (t + 1 < g.T) s[2] += gv * to_acc(base[g.sx[2]]);
    if (h > 0) s[3] += gv * to_acc(base[-g.sx[3]]);
    if (h + 1 < g.H) s[5] += gv * to_acc(base[g.sx[3]]);
    if (w > 0) s[6] += gv * to_acc(base[-1]);
    if (w + 1 < g.W) s[8] += gv * to_acc(base[1]);
  }
  s[4] = s[1];
  s[7] = s[1];
  for (int k = 0; k < 9; ++k) partial[k][threadIdx.x] = s[k];
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride)
      for (int k = 0; k < 9; ++k) partial[k][threadIdx.x] += partial[k][threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    using G = typename WBuf<T>::type;
    for (int k = 0; k < 3; ++k) {
      gwt[3 * c + k] = static_cast<G>(partial[k][0]);
      gwh[3 * c + k] = static_cast<G>(partial[3 + k][0]);
      gww[3 * c + k] = static_cast<G>(partial[6 + k][0]);
    }
  }
}

// Copies the pass-through channels [F, C) of src (strides ss, in elements) to dst (strides sd) with one
// cudaMemcpy2DAsync when, in both, that block is rows of one contiguous run at a fixed pitch: the (N*T, C, H, W)
// frame layout (N*T rows of (C-F)*H*W) and the contiguous (N, C, T, H, W) layout (N rows of (C-F)*T*H*W) are.
// Returns false, copying nothing, for other layouts.
bool copy_passthrough_rows(const Geometry& g, const int64_t* ss, const int64_t* sd, const void* src, void* dst,
                           size_t item, cudaStream_t stream) {
  struct Dim {
    int64_t size, a, b;  // size, stride in src, stride in dst
  };
  const Dim all[5] = {{g.N, ss[0], sd[0]}, {g.C - g.F, ss[1], sd[1]}, {g.T, ss[2], sd[2]}, {g.H, ss[3], sd[3]},
                      {g.W, 1, 1}};
  Dim d[5];
  int n = 0;
  for (const Dim& x : all)
    if (x.size != 1) d[n++] = x;
  for (int i = 1; i < n; ++i)  // innermost (smallest src stride) first
    for (int j = i; j > 0 && d[j].a < d[j - 1].a; --j) {
      const Dim t = d[j];
      d[j] = d[j - 1];
      d[j - 1] = t;
    }
  int i = 0;
  int64_t run = 1;  // elements of the contiguous run
  while (i < n && d[i].a == run && d[i].b == run) run *= d[i++].size;
  int64_t rows = 1, pitch_a = run, pitch_b = run;
  if (i < n) {
    pitch_a = d[i].a;
    pitch_b = d[i].b;
    rows = d[i++].size;
    while (i < n && d[i].a == pitch_a * rows && d[i].b == pitch_b * rows) rows *= d[i++].size;
  }
  const int64_t max_pitch = INT32_MAX / static_cast<int64_t>(item);  // cudaMemcpy2D's pitch limit, in elements
  if (i < n || pitch_a < run || pitch_b < run || pitch_a > max_pitch || pitch_b > max_pitch) return false;
  const char* from = static_cast<const char*>(src) + g.F * ss[1] * static_cast<int64_t>(item);
  char* to = static_cast<char*>(dst) + g.F * sd[1] * static_cast<int64_t>(item);
  cuda_check(cudaMemcpy2DAsync(to, pitch_b * item, from, pitch_a * item, run * item, rows, cudaMemcpyDeviceToDevice,
                               stream),
             "multi_view_fusion (pass-through channels)");
  return true;
}

}  // namespace

void mvf_forward_cuda(DType dtype, const Geometry& g, const void* x, const void* wt, const void* wh, const void* ww,
                      const void* scale, const void* shift, bool hardswish, void* out, void* stream) {
  if (g.N * g.C * g.T * g.H * g.W == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  dispatch_floating_and_half(dtype, "multi_view_fusion", [&](auto tag) {
    using T = typename decltype(tag)::type;
    // The pass-through channels as one strided copy where the layout allows; the kernel then covers the fused
    // channels only (a Geometry with C = F), else every channel.
    Geometry k = g;
    if (g.F == g.C || copy_passthrough_rows(g, g.sx, g.so, x, out, sizeof(T), s)) k.C = g.F;
    const int64_t total = k.N * k.C * k.T * k.H * k.W;
    if (total == 0) return;
    forward_kernel<T><<<grid_for(total, kThreads), kThreads, 0, s>>>(
        k, static_cast<const T*>(x), static_cast<const T*>(wt), static_cast<const T*>(wh), static_cast<const T*>(ww),
        static_cast<const T*>(scale), static_cast<const T*>(shift), hardswish, static_cast<T*>(out));
  });
  PVF_CUDA_CHECK_LAUNCH("multi_view_fusion");
}

void mvf_backward_cuda(DType dtype, const Geometry& g, const void* x, const void* grad_out, const void* wt,
                       const void* wh, const void* ww, const void* scale, const void* shift, bool hardswish,
                       void* grad_x, void* grad_wt, void* grad_wh, void* grad_ww, void* gy_workspace, bool gy_given,
                       void* stream) {
  const int64_t total = g.N * g.C * g.T * g.H * g.W;
  auto s = static_cast<cudaStream_t>(stream);
  dispatch_floating_and_half(dtype, "multi_view_fusion_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    using G = typename WBuf<T>::type;
    if (g.F > 0) {
      cuda_check(cudaMemsetAsync(grad_wt, 0, sizeof(G) * g.F * 3, s), "multi_view_fusion_backward");
      cuda_check(cudaMemsetAsync(grad_wh, 0, sizeof(G) * g.F * 3, s), "multi_view_fusion_backward");
      cuda_check(cudaMemsetAsync(grad_ww, 0, sizeof(G) * g.F * 3, s), "multi_view_fusion_backward");
    }
    if (total == 0) return;
    A* gy = static_cast<A*>(gy_workspace);
    // The pass-through part of grad_x as one strided copy where the layouts allow (as in the forward).
    Geometry k = g;
    if (g.F == g.C || copy_passthrough_rows(g, g.so, g.sg, grad_out, grad_x, sizeof(T), s)) k.C = g.F;
    const int64_t pre = gy_given && k.C == g.F ? 0 : k.N * k.C * k.T * k.H * k.W;
    if (pre > 0)
      grad_pre_kernel<T><<<grid_for(pre, kThreads), kThreads, 0, s>>>(
          k, static_cast<const T*>(x), static_cast<const T*>(grad_out), static_cast<const T*>(wt),
          static_cast<const T*>(wh), static_cast<const T*>(ww), static_cast<const T*>(scale),
          static_cast<const T*>(shift), hardswish, static_cast<T*>(grad_x), gy, gy_given);
    const int64_t fused = g.N * g.F * g.T * g.H * g.W;
    if (fused == 0) return;
    grad_x_kernel<T><<<grid_for(fused, kThreads), kThreads, 0, s>>>(
        g, gy, static_cast<const T*>(wt), static_cast<const T*>(wh), static_cast<const T*>(ww),
        static_cast<T*>(grad_x));
    grad_w_kernel<T><<<static_cast<unsigned>(g.F), kThreads, 0, s>>>(
        g, static_cast<const T*>(x), gy, static_cast<G*>(grad_wt), static_cast<G*>(grad_wh), static_cast<G*>(grad_ww));
  });
  PVF_CUDA_CHECK_LAUNCH("multi_view_fusion_backward");
}

}  // namespace mvf
}  // namespace pvf
