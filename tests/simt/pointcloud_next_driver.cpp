// C entry points (for ctypes) that run the candidate point-cloud launchers of csrc/pointcloud/pointcloud_next_*.cuh
// on the SIMT emulation. dtype: 0 float32, 1 float64. Each returns 1 when the launcher ran, 0 when it declined
// (sizes beyond its 32-bit plan).
#include "simt_emulation.h"

#include "pointcloud/pointcloud_next_gather.cuh"
#include "pointcloud/pointcloud_next_search.cuh"

namespace nx = pvf::pointcloud::next;

template <typename F>
static int by_dtype(int dtype, F f) {
  return dtype == 0 ? f(float{}) : f(double{});
}

extern "C" {

void emu_set_max_dynamic_smem(int bytes) { simt::max_dynamic_smem = bytes; }

int emu_fps_plan(int64_t N, int64_t D, int wide, int* threads) {
  const nx::FpsPlan p = nx::fps_plan(N, D, wide != 0);
  *threads = p.threads;
  return p.ppt;
}

int emu_fps(int dtype, const void* points, int64_t B, int64_t N, int64_t D, const int64_t* lengths,
            const int64_t* start, int64_t K, int64_t* idx, void* workspace) {
  return by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return int(nx::fps_launch<T>(static_cast<const T*>(points), B, N, D, lengths, start, K, idx,
                                 static_cast<T*>(workspace), nullptr));
  });
}

int emu_knn(int dtype, const void* p1, const void* p2, int64_t B, int64_t P1, int64_t P2, int64_t D,
            const int64_t* lengths1, const int64_t* lengths2, int64_t K, void* dists, int64_t* idx) {
  return by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return int(nx::knn_launch<T>(static_cast<const T*>(p1), static_cast<const T*>(p2), B, P1, P2, D, lengths1,
                                 lengths2, K, static_cast<T*>(dists), idx, nullptr));
  });
}

int emu_ball_query(int dtype, const void* p1, const void* p2, int64_t B, int64_t P1, int64_t P2, int64_t D,
                   const int64_t* lengths1, const int64_t* lengths2, int64_t K, double radius, void* dists,
                   int64_t* idx) {
  return by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return int(nx::ball_query_launch<T>(static_cast<const T*>(p1), static_cast<const T*>(p2), B, P1, P2, D,
                                        lengths1, lengths2, K, radius, static_cast<T*>(dists), idx, nullptr));
  });
}

int emu_gather(int dtype, const void* features, int64_t B, int64_t C, int64_t N, const int64_t* idx, int64_t M,
               void* out) {
  return by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return int(nx::gather_launch<T>(static_cast<const T*>(features), B, C, N, idx, M, static_cast<T*>(out), nullptr));
  });
}

int emu_scatter(int dtype, const void* grad, int64_t B, int64_t C, int64_t N, const int64_t* idx, int64_t M,
                void* grad_features) {
  return by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return int(nx::scatter_launch<T>(static_cast<const T*>(grad), B, C, N, idx, M, static_cast<T*>(grad_features),
                                     nullptr));
  });
}

int emu_interpolate(int dtype, const void* features, int64_t B, int64_t C, int64_t M, const int64_t* idx,
                    const void* weight, int64_t N, void* out) {
  return by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return int(nx::interpolate_launch<T>(static_cast<const T*>(features), B, C, M, idx, static_cast<const T*>(weight),
                                         N, static_cast<T*>(out), nullptr));
  });
}

int emu_interpolate_backward(int dtype, const void* grad, const void* features, int64_t B, int64_t C, int64_t M,
                             const int64_t* idx, const void* weight, int64_t N, void* grad_features,
                             void* grad_weight) {
  return by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return int(nx::interpolate_backward_launch<T>(static_cast<const T*>(grad), static_cast<const T*>(features), B, C,
                                                  M, idx, static_cast<const T*>(weight), N,
                                                  static_cast<T*>(grad_features), static_cast<T*>(grad_weight),
                                                  nullptr));
  });
}

int emu_neighbour_backward(int dtype, const void* p1, const void* p2, int64_t B, int64_t P1, int64_t P2, int64_t D,
                           const int64_t* lengths1, const int64_t* lengths2, const int64_t* idx, int64_t K,
                           const void* grad, void* grad_p1, void* grad_p2) {
  return by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return int(nx::neighbour_backward_launch<T>(static_cast<const T*>(p1), static_cast<const T*>(p2), B, P1, P2, D,
                                                lengths1, lengths2, idx, K, static_cast<const T*>(grad),
                                                static_cast<T*>(grad_p1), static_cast<T*>(grad_p2), nullptr));
  });
}

}  // extern "C"
