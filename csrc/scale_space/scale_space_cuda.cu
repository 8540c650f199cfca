// CUDA filter bank and scale attention. The filter bank runs one thread per output element per pass (rows into
// a workspace, then columns); its backward gathers the transposed passes (each position visits the few
// positions the boundary rule maps onto it) and reduces the kernel gradients per (scale, tap) with one
// atomic add per block. Scale attention runs one thread per (batch, position).
#include <cuda_runtime.h>

#include <algorithm>

#include "common/cuda_dispatch.cuh"
#include "common/cuda_utils.cuh"
#include "scale_space/filter_bank_tiled.cuh"
#include "scale_space/scale_space.h"

namespace pvf {
namespace scale_space {
namespace {

constexpr int kThreads = 256;

struct Radii {
  int64_t r[kMaxScales];
};

struct Dims {
  int64_t B, S, C, H, W, R;
  Boundary boundary;
  Radii radii;
};

Dims make_dims(const BankGeometry& g) {
  Dims d{g.B, g.S, g.C, g.H, g.W, g.R, g.boundary, {}};
  for (int64_t s = 0; s < g.S; ++s) d.radii.r[s] = g.radii[s];
  return d;
}

struct Pos {
  int64_t b, s, c, h, w;
};

__device__ __forceinline__ Pos decompose(int64_t i, const Dims& d) {
  Pos q;
  q.w = i % d.W;
  i /= d.W;
  q.h = i % d.H;
  i /= d.H;
  q.c = i % d.C;
  i /= d.C;
  q.s = i % d.S;
  q.b = i / d.S;
  return q;
}

// The 2 r_s + 1 taps of scale s (its kernel row, centred on tap R).
template <typename T>
__device__ __forceinline__ const T* taps(const Dims& d, const T* kernels, int64_t s) {
  return kernels + s * (2 * d.R + 1) + (d.R - d.radii.r[s]);
}

// u[b, s, c, h, w] = sum_t k_s[t] x[b, c, h, w + t - r_s]   (accumulation type)
template <typename T>
__global__ void rows_kernel(Dims d, const T* x, const T* kernels, acc_t<T>* u) {
  using A = acc_t<T>;
  const int64_t total = d.B * d.S * d.C * d.H * d.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const Pos q = decompose(i, d);
    const int64_t r = d.radii.r[q.s];
    const T* k = taps(d, kernels, q.s);
    const T* row = x + ((q.b * d.C + q.c) * d.H + q.h) * d.W;
    A acc = 0;
    for (int64_t t = 0; t <= 2 * r; ++t) {
      const int64_t src = boundary_index(q.w + t - r, d.W, d.boundary);
      if (src >= 0) acc += to_acc(k[t]) * to_acc(row[src]);
    }
    u[i] = acc;
  }
}

// out[b, s, c, h, w] = sum_t k_s[t] u[b, s, c, h + t - r_s, w]
template <typename T>
__global__ void columns_kernel(Dims d, const acc_t<T>* u, const T* kernels, T* out) {
  using A = acc_t<T>;
  const int64_t total = d.B * d.S * d.C * d.H * d.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const Pos q = decompose(i, d);
    const int64_t r = d.radii.r[q.s];
    const T* k = taps(d, kernels, q.s);
    const A* col = u + (i - q.h * d.W);  // column w of the plane
    A acc = 0;
    for (int64_t t = 0; t <= 2 * r; ++t) {
      const int64_t src = boundary_index(q.h + t - r, d.H, d.boundary);
      if (src >= 0) acc += to_acc(k[t]) * col[src * d.W];
    }
    out[i] = from_acc<T>(acc);
  }
}

// tt = (k_s (*)_H)^T grad_out: tt[y] = sum over rows j mapped onto y of sum_t k[t] go[j - t + r].
template <typename T>
__global__ void columns_transposed_kernel(Dims d, const T* grad_out, const T* kernels, acc_t<T>* tt) {
  using A = acc_t<T>;
  const int64_t total = d.B * d.S * d.C * d.H * d.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const Pos q = decompose(i, d);
    const int64_t r = d.radii.r[q.s];
    const T* k = taps(d, kernels, q.s);
    const T* col = grad_out + (i - q.h * d.W);
    A acc = 0;
    visit_preimages(q.h, d.H, r, d.boundary, [&](int64_t j) {
      for (int64_t t = 0; t <= 2 * r; ++t) {
        const int64_t h = j - t + r;
        if (h >= 0 && h < d.H) acc += to_acc(k[t]) * to_acc(col[h * d.W]);
      }
    });
    tt[i] = acc;
  }
}

// grad_x[b, c, h, x] = sum_s sum over columns j mapped onto x of sum_t k_s[t] tt_s[h, j - t + r_s].
template <typename T>
__global__ void grad_x_kernel(Dims d, const acc_t<T>* tt, const T* kernels, T* grad_x) {
  using A = acc_t<T>;
  const int64_t total = d.B * d.C * d.H * d.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = i % d.W, h = (i / d.W) % d.H, c = (i / (d.W * d.H)) % d.C, b = i / (d.W * d.H * d.C);
    A acc = 0;
    for (int64_t s = 0; s < d.S; ++s) {
      const int64_t r = d.radii.r[s];
      const T* k = taps(d, kernels, s);
      const A* row = tt + (((b * d.S + s) * d.C + c) * d.H + h) * d.W;
      visit_preimages(x, d.W, r, d.boundary, [&](int64_t j) {
        for (int64_t t = 0; t <= 2 * r; ++t) {
          const int64_t w = j - t + r;
          if (w >= 0 && w < d.W) acc += to_acc(k[t]) * row[w];
        }
      });
    }
    grad_x[i] = from_acc<T>(acc);
  }
}

// grad_k[s, R - r_s + t] = sum over (b, c, h, w) of go * u[h + t - r_s] + tt * x[w + t - r_s].
// Grid: x = S * L (scale, tap), y = slices of the (b, c) planes.
template <typename T>
__global__ void grad_kernels_kernel(Dims d, const T* x, const T* grad_out, const acc_t<T>* u, const acc_t<T>* tt,
                                    acc_t<T>* grad_k) {
  using A = acc_t<T>;
  __shared__ A partial[kThreads];
  const int64_t L = 2 * d.R + 1, s = blockIdx.x / L, r = d.radii.r[s], t = blockIdx.x % L - (d.R - r);
  if (t < 0 || t > 2 * r) return;  // a tap beyond this scale's radius: its gradient stays zero
  const int64_t HW = d.H * d.W, per_scale = d.B * d.C * HW;
  A acc = 0;
  for (int64_t i = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; i < per_scale;
       i += int64_t(gridDim.y) * blockDim.x) {
    const int64_t w = i % d.W, h = (i / d.W) % d.H, bc = i / HW, b = bc / d.C, c = bc % d.C;
    const int64_t plane = ((b * d.S + s) * d.C + c) * HW;
    const int64_t hs = boundary_index(h + t - r, d.H, d.boundary);
    if (hs >= 0) acc += to_acc(grad_out[plane + h * d.W + w]) * u[plane + hs * d.W + w];
    const int64_t ws = boundary_index(w + t - r, d.W, d.boundary);
    if (ws >= 0) acc += tt[plane + h * d.W + w] * to_acc(x[bc * HW + h * d.W + ws]);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicAdd(grad_k + blockIdx.x, partial[0]);
}

template <typename T>
__global__ void attention_forward_kernel(int64_t B, int64_t S, int64_t P, const T* y, const T* gain, T* out) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * P; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t off = (i / P) * S * P + i % P;
    A a[kMaxScales], m = -acc_infinity<T>(), sum = 0;
    for (int64_t s = 0; s < S; ++s) {
      a[s] = to_acc(gain[s]) * fabs(to_acc(y[off + s * P]));
      m = a[s] > m ? a[s] : m;
    }
    for (int64_t s = 0; s < S; ++s) {
      a[s] = exp(a[s] - m);
      sum += a[s];
    }
    for (int64_t s = 0; s < S; ++s) out[off + s * P] = from_acc<T>(A(S) * a[s] / sum * to_acc(y[off + s * P]));
  }
}

template <typename T>
__global__ void attention_backward_kernel(int64_t B, int64_t S, int64_t P, const T* y, const T* gain,
                                          const T* grad_out, T* grad_y, acc_t<T>* grad_gain) {
  using A = acc_t<T>;
  __shared__ A partial[kMaxScales][kThreads];
  A gg[kMaxScales];
  for (int64_t s = 0; s < S; ++s) gg[s] = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * P; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t off = (i / P) * S * P + i % P;
    A p[kMaxScales], m = -acc_infinity<T>(), sum = 0, q = 0;
    for (int64_t s = 0; s < S; ++s) {
      p[s] = to_acc(gain[s]) * fabs(to_acc(y[off + s * P]));
      m = p[s] > m ? p[s] : m;
    }
    for (int64_t s = 0; s < S; ++s) {
      p[s] = exp(p[s] - m);
      sum += p[s];
    }
    for (int64_t s = 0; s < S; ++s) {
      p[s] /= sum;
      q += p[s] * to_acc(grad_out[off + s * P]) * to_acc(y[off + s * P]);
    }
    for (int64_t s = 0; s < S; ++s) {
      const A yv = to_acc(y[off + s * P]), gv = to_acc(grad_out[off + s * P]);
      const A da = A(S) * p[s] * (gv * yv - q);
      gg[s] += da * fabs(yv);
      const A sg = yv > 0 ? A(1) : (yv < 0 ? A(-1) : A(0));
      grad_y[off + s * P] = from_acc<T>(A(S) * gv * p[s] + to_acc(gain[s]) * sg * da);
    }
  }
  for (int64_t s = 0; s < S; ++s) partial[s][threadIdx.x] = gg[s];
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride)
      for (int64_t s = 0; s < S; ++s) partial[s][threadIdx.x] += partial[s][threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0)
    for (int64_t s = 0; s < S; ++s) atomicAdd(grad_gain + s, partial[s][0]);
}

}  // namespace

void filter_bank_forward_cuda(DType dtype, const BankGeometry& g, const void* x, const void* kernels, void* out,
                              void* workspace, void* stream) {
  const int64_t total = g.B * g.S * g.C * g.H * g.W;
  if (total == 0) return;
  const Dims d = make_dims(g);
  auto st = static_cast<cudaStream_t>(stream);
  dispatch_floating_and_half(dtype, "gaussian_scale_space", [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto* u = static_cast<acc_t<T>*>(workspace);
    rows_kernel<T><<<grid_for(total, kThreads), kThreads, 0, st>>>(d, static_cast<const T*>(x),
                                                                    static_cast<const T*>(kernels), u);
    columns_kernel<T><<<grid_for(total, kThreads), kThreads, 0, st>>>(d, u, static_cast<const T*>(kernels),
                                                                       static_cast<T*>(out));
  });
  PVF_CUDA_CHECK_LAUNCH("gaussian_scale_space");
}

void filter_bank_backward_cuda(DType dtype, const BankGeometry& g, const void* x, const void* grad_out,
                               const void* kernels, void* grad_x, void* grad_kernels, void* workspace, void* stream) {
  const int64_t total = g.B * g.S * g.C * g.H * g.W, L = 2 * g.R + 1;
  const Dims d = make_dims(g);
  auto st = static_cast<cudaStream_t>(stream);
  dispatch_floating_and_half(dtype, "gaussian_scale_space_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    cuda_check(cudaMemsetAsync(grad_kernels, 0, sizeof(A) * g.S * L, st), "gaussian_scale_space_backward");
    const int64_t nx = g.B * g.C * g.H * g.W;
    if (nx > 0 && g.S == 0)
      cuda_check(cudaMemsetAsync(grad_x, 0, sizeof(T) * nx, st), "gaussian_scale_space_backward");
    if (total == 0) return;
    auto* u = static_cast<A*>(workspace);
    A* tt = u + total;
    const T* kp = static_cast<const T*>(kernels);
    rows_kernel<T><<<grid_for(total, kThreads), kThreads, 0, st>>>(d, static_cast<const T*>(x), kp, u);
    columns_transposed_kernel<T><<<grid_for(total, kThreads), kThreads, 0, st>>>(
        d, static_cast<const T*>(grad_out), kp, tt);
    grad_x_kernel<T><<<grid_for(nx, kThreads), kThreads, 0, st>>>(d, tt, kp, static_cast<T*>(grad_x));
    const int64_t per_scale = g.B * g.C * g.H * g.W;
    const unsigned slices = static_cast<unsigned>(std::min<int64_t>(ceil_div(per_scale, kThreads * 8), 256));
    grad_kernels_kernel<T><<<dim3(static_cast<unsigned>(g.S * L), slices), kThreads, 0, st>>>(
        d, static_cast<const T*>(x), static_cast<const T*>(grad_out), u, tt, static_cast<A*>(grad_kernels));
  });
  PVF_CUDA_CHECK_LAUNCH("gaussian_scale_space_backward");
}

void scale_attention_forward_cuda(DType dtype, int64_t B, int64_t S, int64_t P, const void* y, const void* gain,
                                  void* out, void* stream) {
  if (B * P == 0 || S == 0) return;
  dispatch_floating_and_half(dtype, "scale_attention", [&](auto tag) {
    using T = typename decltype(tag)::type;
    attention_forward_kernel<T><<<grid_for(B * P, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        B, S, P, static_cast<const T*>(y), static_cast<const T*>(gain), static_cast<T*>(out));
  });
  PVF_CUDA_CHECK_LAUNCH("scale_attention");
}

void scale_attention_backward_cuda(DType dtype, int64_t B, int64_t S, int64_t P, const void* y, const void* gain,
                                   const void* grad_out, void* grad_y, void* grad_gain, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  dispatch_floating_and_half(dtype, "scale_attention_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    cuda_check(cudaMemsetAsync(grad_gain, 0, sizeof(A) * S, st), "scale_attention_backward");
    if (B * P == 0 || S == 0) return;
    attention_backward_kernel<T><<<grid_for(B * P, kThreads, 1024), kThreads, 0, st>>>(
        B, S, P, static_cast<const T*>(y), static_cast<const T*>(gain), static_cast<const T*>(grad_out),
        static_cast<T*>(grad_y), static_cast<A*>(grad_gain));
  });
  PVF_CUDA_CHECK_LAUNCH("scale_attention_backward");
}

// The tiled candidate ----------------------------------------------------------------------------------------

namespace {

struct NextPlan {
  bool tiled;
  int64_t workspace;   // accumulation-type elements
  int64_t smem_bytes;  // dynamic shared memory of a tiled block
};

// Tiled where its shared memory fits the device and its 32-bit index math holds, else the untiled kernels.
NextPlan plan_next(DType dtype, const BankGeometry& g, bool backward) {
  const int64_t total = g.B * g.S * g.C * g.H * g.W;
  if (total == 0) return {true, 0, 0};
  const int64_t acc = dtype == DType::Float64 ? 8 : 4;
  if (tiled::fits_32bit(g)) {
    const tiled::Geometry tg = tiled::make_geometry(g);
    const int64_t bytes = tiled::layout(tg, backward).total * acc;
    int device = 0, optin = 0;
    cuda_check(cudaGetDevice(&device), "gaussian_scale_space");
    cuda_check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
               "gaussian_scale_space");
    if (bytes <= optin && tg.blocks < (int64_t(1) << 31))
      return {true, backward ? tiled::backward_workspace(tg) : 0, bytes};
  }
  return {false, backward ? 2 * total : total, 0};
}

template <typename K>
void allow_smem(K kernel, int64_t bytes, const char* op) {
  if (bytes > 48 * 1024)
    cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), op);
}

}  // namespace

int64_t filter_bank_next_workspace(DType dtype, const BankGeometry& g, bool backward) {
  return plan_next(dtype, g, backward).workspace;
}

void filter_bank_forward_next_cuda(DType dtype, const BankGeometry& g, const void* x, const void* kernels, void* out,
                                   void* workspace, void* stream) {
  const NextPlan plan = plan_next(dtype, g, false);
  if (!plan.tiled) return filter_bank_forward_cuda(dtype, g, x, kernels, out, workspace, stream);
  if (g.B * g.S * g.C * g.H * g.W == 0) return;
  const tiled::Geometry tg = tiled::make_geometry(g);
  auto st = static_cast<cudaStream_t>(stream);
  dispatch_floating_and_half(dtype, "gaussian_scale_space", [&](auto tag) {
    using T = typename decltype(tag)::type;
    allow_smem(tiled::forward_kernel<T>, plan.smem_bytes, "gaussian_scale_space");
    tiled::forward_kernel<T><<<static_cast<unsigned>(tg.blocks), tiled::kThreads, plan.smem_bytes, st>>>(
        tg, static_cast<const T*>(x), static_cast<const T*>(kernels), static_cast<T*>(out));
  });
  PVF_CUDA_CHECK_LAUNCH("gaussian_scale_space");
}

void filter_bank_backward_next_cuda(DType dtype, const BankGeometry& g, const void* x, const void* grad_out,
                                    const void* kernels, void* grad_x, void* grad_kernels, void* workspace,
                                    void* stream) {
  const NextPlan plan = plan_next(dtype, g, true);
  if (!plan.tiled)
    return filter_bank_backward_cuda(dtype, g, x, grad_out, kernels, grad_x, grad_kernels, workspace, stream);
  const int64_t L = 2 * g.R + 1, nx = g.B * g.C * g.H * g.W;
  auto st = static_cast<cudaStream_t>(stream);
  dispatch_floating_and_half(dtype, "gaussian_scale_space_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    if (nx == 0 || g.S == 0) {  // nothing to filter: zero gradients
      cuda_check(cudaMemsetAsync(grad_kernels, 0, sizeof(A) * g.S * L, st), "gaussian_scale_space_backward");
      if (nx > 0) cuda_check(cudaMemsetAsync(grad_x, 0, sizeof(T) * nx, st), "gaussian_scale_space_backward");
      return;
    }
    const tiled::Geometry tg = tiled::make_geometry(g);
    auto* partial = static_cast<A*>(workspace);
    allow_smem(tiled::backward_kernel<T>, plan.smem_bytes, "gaussian_scale_space_backward");
    tiled::backward_kernel<T><<<static_cast<unsigned>(tg.blocks), tiled::kThreads, plan.smem_bytes, st>>>(
        tg, static_cast<const T*>(x), static_cast<const T*>(grad_out), static_cast<const T*>(kernels),
        static_cast<T*>(grad_x), partial);
    PVF_CUDA_CHECK_LAUNCH("gaussian_scale_space_backward");
    tiled::reduce_kernel<A><<<static_cast<unsigned>(g.S * L), tiled::kReduceThreads, 0, st>>>(
        tg.blocks, partial, static_cast<A*>(grad_kernels));
  });
  PVF_CUDA_CHECK_LAUNCH("gaussian_scale_space_backward");
}

}  // namespace scale_space
}  // namespace pvf
