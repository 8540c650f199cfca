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

constexpr uint64_t kEmpty = ~uint64_t(0);

// Order-preserving unsigned image of a depth (-0 maps like +0, so that they tie as they compare).
__device__ __forceinline__ uint64_t depth_key(float d) {
  if (d == 0.0f) d = 0.0f;
  const uint32_t u = __float_as_uint(d);
  return (u & 0x80000000u) ? uint64_t(~u) : uint64_t(u | 0x80000000u);
}
__device__ __forceinline__ uint64_t depth_key(double d) {
  if (d == 0.0) d = 0.0;
  const uint64_t u = static_cast<uint64_t>(__double_as_longlong(d));
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

template <typename T>
__global__ void vertex_kernel(const T* __restrict__ verts, int64_t n, int64_t H, int64_t W,
                              T* __restrict__ ws) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += stride)
    screen_vertex(verts + k * 4, H, W, ws + k * 4);
}

// pass 0: atomicMin of the depth key; pass 1: atomicMin of the face id where the depth key is the pixel's
// minimum.
template <typename T, int Pass>
__global__ void face_kernel(const T* __restrict__ ws, const int64_t* __restrict__ faces, int64_t B, int64_t V,
                            int64_t F, int64_t H, int64_t W, bool cull, unsigned long long* keys,
                            unsigned long long* ids) {
  for (int64_t item = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; item < B * F;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = item / F, f = item % F;
    const int64_t* fc = faces + f * 3;
    const T* vs = ws + b * V * 4;
    Tri<T> t;
    if (!setup_triangle(vs + fc[0] * 4, vs + fc[1] * 4, vs + fc[2] * 4, H, W, cull, t)) continue;
    for (int64_t i = t.i0; i <= t.i1; ++i) {
      const T py = T(i) + T(0.5);
      const T a0 = edge_row(t.e[0], py), a1 = edge_row(t.e[1], py), a2 = edge_row(t.e[2], py);
      for (int64_t j = t.j0; j <= t.j1; ++j) {
        const T px = T(j) + T(0.5);
        const T e0 = edge_at(t.e[0], a0, px), e1 = edge_at(t.e[1], a1, px), e2 = edge_at(t.e[2], a2, px);
        if (!covers(e0, t.e[0].own) || !covers(e1, t.e[1].own) || !covers(e2, t.e[2].own)) continue;
        const uint64_t key = depth_key(depth_at(t, e0, e1, e2));
        const int64_t p = (b * H + i) * W + j;
        if (Pass == 0) {
          atomicMin(keys + p, static_cast<unsigned long long>(key));
        } else if (keys[p] == key) {
          atomicMin(ids + p, static_cast<unsigned long long>(f));
        }
      }
    }
  }
}

template <typename T>
__global__ void resolve_kernel(const T* __restrict__ ws, const int64_t* __restrict__ faces, int64_t V,
                               int64_t H, int64_t W, int64_t npix, bool cull,
                               const unsigned long long* __restrict__ ids, T* __restrict__ rast) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < npix; p += stride) {
    T* o = rast + p * 4;
    const unsigned long long f = ids[p];
    if (f == kEmpty) {
      o[0] = o[1] = o[2] = o[3] = T(0);
      continue;
    }
    const int64_t b = p / (H * W), i = (p / W) % H, j = p % W;
    const int64_t* fc = faces + f * 3;
    const T* vs = ws + b * V * 4;
    Tri<T> t;
    setup_triangle(vs + fc[0] * 4, vs + fc[1] * 4, vs + fc[2] * 4, H, W, cull, t);
    const T py = T(i) + T(0.5), px = T(j) + T(0.5);
    const T e0 = edge_at(t.e[0], edge_row(t.e[0], py), px);
    const T e1 = edge_at(t.e[1], edge_row(t.e[1], py), px);
    const T e2 = edge_at(t.e[2], edge_row(t.e[2], py), px);
    T u, v;
    barycentrics_at(t, e0, e1, e2, u, v);
    o[0] = u;
    o[1] = v;
    o[2] = depth_at(t, e0, e1, e2);
    o[3] = T(int64_t(f) + 1);
  }
}

template <typename T>
void launch(const T* verts, const int64_t* faces, int64_t B, int64_t V, int64_t F, int64_t H, int64_t W,
            bool cull, T* rast, T* ws, uint64_t* keys, cudaStream_t stream) {
  const int64_t npix = B * H * W;
  if (npix == 0) return;
  constexpr int kThreads = 256;
  unsigned long long* k = reinterpret_cast<unsigned long long*>(keys);
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
