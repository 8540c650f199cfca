// Entry points of the candidate ("cuda:next") point-cloud kernels: dtype dispatch and launch checks. The
// kernels and their launch plans are in pointcloud_next_search.cuh and pointcloud_next_gather.cuh.
#include <cuda_runtime.h>

#include "common/cuda_dispatch.cuh"
#include "common/cuda_utils.cuh"
#include "pointcloud/pointcloud.h"
#include "pointcloud/pointcloud_next_gather.cuh"
#include "pointcloud/pointcloud_next_search.cuh"

namespace pvf {
namespace pointcloud {

namespace {
inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
}  // namespace

bool sample_farthest_points_cuda_next(DType dtype, const void* points, int64_t B, int64_t N, int64_t D,
                                      const int64_t* lengths, const int64_t* start, int64_t K, int64_t* idx,
                                      void* workspace, void* stream) {
  bool done = false;
  dispatch_floating_and_half(dtype, "sample_farthest_points", [&](auto tag) {
    using T = typename decltype(tag)::type;
    done = next::fps_launch<T>(static_cast<const T*>(points), B, N, D, lengths, start, K, idx,
                               static_cast<acc_t<T>*>(workspace), as_stream(stream));
  });
  PVF_CUDA_CHECK_LAUNCH("sample_farthest_points");
  return done;
}

bool knn_cuda_next(DType dtype, const void* p1, const void* p2, int64_t B, int64_t P1, int64_t P2, int64_t D,
                   const int64_t* lengths1, const int64_t* lengths2, int64_t K, void* dists, int64_t* idx,
                   void* stream) {
  bool done = false;
  dispatch_floating_and_half(dtype, "knn_points", [&](auto tag) {
    using T = typename decltype(tag)::type;
    done = next::knn_launch<T>(static_cast<const T*>(p1), static_cast<const T*>(p2), B, P1, P2, D, lengths1,
                               lengths2, K, static_cast<T*>(dists), idx, as_stream(stream));
  });
  PVF_CUDA_CHECK_LAUNCH("knn_points");
  return done;
}

bool ball_query_cuda_next(DType dtype, const void* p1, const void* p2, int64_t B, int64_t P1, int64_t P2, int64_t D,
                          const int64_t* lengths1, const int64_t* lengths2, int64_t K, double radius, void* dists,
                          int64_t* idx, void* stream) {
  bool done = false;
  dispatch_floating_and_half(dtype, "ball_query", [&](auto tag) {
    using T = typename decltype(tag)::type;
    done = next::ball_query_launch<T>(static_cast<const T*>(p1), static_cast<const T*>(p2), B, P1, P2, D, lengths1,
                                      lengths2, K, radius, static_cast<T*>(dists), idx, as_stream(stream));
  });
  PVF_CUDA_CHECK_LAUNCH("ball_query");
  return done;
}

bool gather_columns_cuda_next(DType dtype, const void* features, int64_t B, int64_t C, int64_t N, const int64_t* idx,
                              int64_t M, void* out, void* stream) {
  bool done = false;
  dispatch_floating_and_half(dtype, "gather_points", [&](auto tag) {
    using T = typename decltype(tag)::type;
    done = next::gather_launch<T>(static_cast<const T*>(features), B, C, N, idx, M, static_cast<T*>(out),
                                  as_stream(stream));
  });
  PVF_CUDA_CHECK_LAUNCH("gather_points");
  return done;
}

bool gather_columns_backward_cuda_next(DType dtype, const void* grad_out, int64_t B, int64_t C, int64_t N,
                                       const int64_t* idx, int64_t M, void* grad_features, void* stream) {
  bool done = false;
  dispatch_floating_and_half(dtype, "gather_points_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    done = next::scatter_launch<T>(static_cast<const T*>(grad_out), B, C, N, idx, M,
                                   static_cast<acc_t<T>*>(grad_features), as_stream(stream));
  });
  PVF_CUDA_CHECK_LAUNCH("gather_points_backward");
  return done;
}

bool three_interpolate_cuda_next(DType dtype, const void* features, int64_t B, int64_t C, int64_t M,
                                 const int64_t* idx, const void* weight, int64_t N, void* out, void* stream) {
  bool done = false;
  dispatch_floating_and_half(dtype, "three_interpolate", [&](auto tag) {
    using T = typename decltype(tag)::type;
    done = next::interpolate_launch<T>(static_cast<const T*>(features), B, C, M, idx, static_cast<const T*>(weight),
                                       N, static_cast<T*>(out), as_stream(stream));
  });
  PVF_CUDA_CHECK_LAUNCH("three_interpolate");
  return done;
}

bool three_interpolate_backward_cuda_next(DType dtype, const void* grad_out, const void* features, int64_t B,
                                          int64_t C, int64_t M, const int64_t* idx, const void* weight, int64_t N,
                                          void* grad_features, void* grad_weight, void* stream) {
  bool done = false;
  dispatch_floating_and_half(dtype, "three_interpolate_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    done = next::interpolate_backward_launch<T>(static_cast<const T*>(grad_out), static_cast<const T*>(features), B,
                                                C, M, idx, static_cast<const T*>(weight), N,
                                                static_cast<acc_t<T>*>(grad_features), static_cast<T*>(grad_weight),
                                                as_stream(stream));
  });
  PVF_CUDA_CHECK_LAUNCH("three_interpolate_backward");
  return done;
}

bool neighbour_dists_backward_cuda_next(DType dtype, const void* p1, const void* p2, int64_t B, int64_t P1,
                                        int64_t P2, int64_t D, const int64_t* lengths1, const int64_t* lengths2,
                                        const int64_t* idx, int64_t K, const void* grad_dists, void* grad_p1,
                                        void* grad_p2, void* stream) {
  bool done = false;
  dispatch_floating_and_half(dtype, "knn_points_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    done = next::neighbour_backward_launch<T>(static_cast<const T*>(p1), static_cast<const T*>(p2), B, P1, P2, D,
                                              lengths1, lengths2, idx, K, static_cast<const T*>(grad_dists),
                                              static_cast<T*>(grad_p1), static_cast<acc_t<T>*>(grad_p2),
                                              as_stream(stream));
  });
  PVF_CUDA_CHECK_LAUNCH("knn_points_backward");
  return done;
}

}  // namespace pointcloud
}  // namespace pvf
