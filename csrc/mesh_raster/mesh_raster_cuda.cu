// CUDA rasterizer (see mesh_raster.h): a vertex pass, two atomicMin passes over (image, face) bounding boxes
// (nearest depth, then lowest id at that depth) and a per-pixel resolve pass.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_utils.cuh"
#include "common/errors.h"
#include "mesh_raster/mesh_raster.h"
#include "mesh_raster/mesh_raster_math.h"

namespace pvf {
namespace mesh_raster {

namespace {

struct DeviceMin {
  __device__ __forceinline__ void operator()(uint64_t* p, uint64_t v) const {
    atomicMin(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
  }
};

template <typename T>
__global__ void vertex_kernel(const T* __restrict__ verts, int64_t n, int64_t H, int64_t W,
                              T* __restrict__ ws) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += stride)
    screen_vertex(verts + k * 4, H, W, ws + k * 4);
}

// pass 0: atomicMin of the depth key; pass 1: atomicMin of the face id where the depth key is the pixel's
// minimum (mesh_raster_math.h's key_pass_item).
template <typename T, int Pass>
__global__ void face_kernel(const T* __restrict__ ws, const int64_t* __restrict__ faces, int64_t B, int64_t V,
                            int64_t F, int64_t H, int64_t W, bool cull, uint64_t* keys, uint64_t* ids) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t item = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; item < B * F; item += stride)
    key_pass_item<Pass>(ws, faces, item / F, item % F, V, H, W, cull, keys, ids, DeviceMin{});
}

template <typename T>
__global__ void resolve_kernel(const T* __restrict__ ws, const int64_t* __restrict__ faces, int64_t V,
                               int64_t H, int64_t W, int64_t npix, bool cull,
                               const uint64_t* __restrict__ ids, T* __restrict__ rast) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < npix; p += stride)
    resolve_item(ws, faces, p, V, H, W, cull, ids, rast);
}

template <typename T>
void launch(const T* verts, const int64_t* faces, int64_t B, int64_t V, int64_t F, int64_t H, int64_t W,
            bool cull, T* rast, T* ws, uint64_t* keys, cudaStream_t stream) {
  const int64_t npix = B * H * W;
  if (npix == 0) return;
  constexpr int kThreads = 256;
  uint64_t* k = keys;
  cuda_check(cudaMemsetAsync(k, 0xff, sizeof(uint64_t) * 2 * npix, stream),
             "mesh_raster: key workspace init");
  if (B * V > 0) {
    vertex_kernel<T><<<grid_for(B * V, kThreads), kThreads, 0, stream>>>(verts, B * V, H, W, ws);
    PVF_CUDA_CHECK_LAUNCH("mesh_raster: vertex kernel");
  }
  if (B * F > 0) {
    face_kernel<T, 0><<<grid_for(B * F, kThreads), kThreads, 0, stream>>>(ws, faces, B, V, F, H, W, cull, k,
                                                                         k + npix);
    PVF_CUDA_CHECK_LAUNCH("mesh_raster: depth pass");
    face_kernel<T, 1><<<grid_for(B * F, kThreads), kThreads, 0, stream>>>(ws, faces, B, V, F, H, W, cull, k,
                                                                         k + npix);
    PVF_CUDA_CHECK_LAUNCH("mesh_raster: id pass");
  }
  resolve_kernel<T><<<grid_for(npix, kThreads), kThreads, 0, stream>>>(ws, faces, V, H, W, npix, cull,
                                                                      k + npix, rast);
  PVF_CUDA_CHECK_LAUNCH("mesh_raster: resolve kernel");
}

}  // namespace

void rasterize_cuda(DType dtype, const void* verts, const int64_t* faces, int64_t B, int64_t V, int64_t F,
                    int64_t H, int64_t W, bool cull_backfaces, void* rast, void* vertex_ws, uint64_t* keys,
                    void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::Float32:
      launch(static_cast<const float*>(verts), faces, B, V, F, H, W, cull_backfaces,
             static_cast<float*>(rast), static_cast<float*>(vertex_ws), keys, s);
      return;
    case DType::Float64:
      launch(static_cast<const double*>(verts), faces, B, V, F, H, W, cull_backfaces,
             static_cast<double*>(rast), static_cast<double*>(vertex_ws), keys, s);
      return;
    default:
      throw TypeError(str("rasterize_triangles: unsupported dtype ", dtype_name(dtype),
                          " (expected float32 or float64)"));
  }
}

}  // namespace mesh_raster
}  // namespace pvf
