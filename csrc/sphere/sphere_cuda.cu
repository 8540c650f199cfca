// CUDA table gather / scatter, channels last: one thread per (row, tap, channel), consecutive threads on
// consecutive channels, so input reads and column writes coalesce; the scatter uses atomics.
#include <cuda_runtime.h>

#include "common/cuda_dispatch.cuh"
#include "common/cuda_utils.cuh"
#include "sphere/sphere.h"

namespace pvf {
namespace sphere {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void im2col_kernel(Geometry g, const T* input, const int32_t* index, const T* weight, int64_t r0,
                              int64_t r1, T* columns) {
  using A = acc_t<T>;
  const int64_t total = (r1 - r0) * g.K * g.C;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = t % g.C, k = (t / g.C) % g.K, r = r0 + t / (g.C * g.K);
    const int64_t b = r / g.P, p = r % g.P;
    const T* image = input + b * g.sb + c * g.sc;
    const int64_t e = (p * g.K + k) * 4;
    A v = 0;
    for (int i = 0; i < 4; ++i) v += to_acc(weight[e + i]) * to_acc(image[clamp_pixel(index[e + i], g.HW) * g.sp]);
    columns[t] = from_acc<T>(v);
  }
}

template <typename T>
__global__ void col2im_kernel(Geometry g, const T* grad_columns, const int32_t* index, const T* weight, int64_t r0,
                              int64_t r1, acc_t<T>* grad_input) {
  using A = acc_t<T>;
  const int64_t total = (r1 - r0) * g.K * g.C;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = t % g.C, k = (t / g.C) % g.K, r = r0 + t / (g.C * g.K);
    const int64_t b = r / g.P, p = r % g.P;
    const int64_t e = (p * g.K + k) * 4;
    const A v = to_acc(grad_columns[t]);
    for (int i = 0; i < 4; ++i) {
      const A w = to_acc(weight[e + i]);
      if (w != A(0)) atomicAdd(grad_input + (b * g.HW + clamp_pixel(index[e + i], g.HW)) * g.C + c, w * v);
    }
  }
}

}  // namespace

void table_im2col_cuda(DType dtype, const Geometry& g, const void* input, const int32_t* index, const void* weight,
                       int64_t r0, int64_t r1, void* columns, void* stream) {
  const int64_t total = (r1 - r0) * g.K * g.C;
  if (total <= 0) return;
  dispatch_floating_and_half(dtype, "sphere_conv2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    im2col_kernel<T><<<grid_for(total, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        g, static_cast<const T*>(input), index, static_cast<const T*>(weight), r0, r1, static_cast<T*>(columns));
  });
  PVF_CUDA_CHECK_LAUNCH("sphere_conv2d");
}

void table_col2im_cuda(DType dtype, const Geometry& g, const void* grad_columns, const int32_t* index,
                       const void* weight, int64_t r0, int64_t r1, void* grad_input_acc, void* stream) {
  const int64_t total = (r1 - r0) * g.K * g.C;
  if (total <= 0) return;
  dispatch_floating_and_half(dtype, "sphere_conv2d_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    col2im_kernel<T><<<grid_for(total, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        g, static_cast<const T*>(grad_columns), index, static_cast<const T*>(weight), r0, r1,
        static_cast<acc_t<T>*>(grad_input_acc));
  });
  PVF_CUDA_CHECK_LAUNCH("sphere_conv2d_backward");
}

}  // namespace sphere
}  // namespace pvf
