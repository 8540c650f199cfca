// Point-cloud kernels: farthest point sampling, k-nearest neighbours, ball query, column gathers
// (gather_points / grouping_operation) and three-point interpolation.
//
// Conventions for every function below:
//  * All arrays are contiguous, row-major, on the device the function is for; sizes are element counts.
//  * B is the batch; clouds are (B, P, D) with D coordinates per point; features are (B, C, N).
//  * Index arrays are int64. `lengths` arrays (B,) are optional (nullptr = full length); their values
//    are already checked to lie in [0, P].
//  * Kernels never allocate: outputs and workspaces come from the caller. Arguments have been checked
//    by the bindings (csrc/bindings) before these functions are called.
//  * CUDA launchers take the element type as a DType, the stream as `void*` (a cudaStream_t), and
//    accumulate half/bfloat16 in float. They throw pvf::DeviceError if a launch fails.
#pragma once
#include <cstdint>

#include "common/tensor_view.h"

namespace pvf {
namespace pointcloud {

// ---------------------------------------------------------------- CPU (T = float or double)

// Farthest point sampling. points (B, N, D) -> idx (B, K). Starts at start[b] (or 0 when start is null),
// the per-point distance to the selected set starts at +inf, ties go to the lowest index.
// Where K exceeds a cloud's length the remaining idx are -1.
// workspace: B * (D + 1) * N elements (distances and a coordinate-major copy of each cloud).
template <typename T>
void sample_farthest_points_cpu(const T* points, int64_t B, int64_t N, int64_t D, const int64_t* lengths,
                                const int64_t* start, int64_t K, int64_t* idx, T* workspace);

// K nearest neighbours of every p1 point among the p2 points of the same cloud, by squared Euclidean
// distance. p1 (B, P1, D), p2 (B, P2, D) -> dists (B, P1, K) ascending, idx (B, P1, K); equal distances
// keep index order. Where a cloud of p2 has fewer than K points, and for p1 rows past lengths1, the
// outputs are 0 (PyTorch3D's padding). workspace: B * D * P2 elements.
//
// For D == 3 and clouds of at least kGridMinPoints points the search runs on a uniform grid over each p2
// cloud (counting-sorted, rings of cells around the query until the K-th distance is inside the searched
// box); results are identical to the brute-force search. index_workspace: B * knn_index_workspace(P2) int64.
template <typename T>
void knn_cpu(const T* p1, const T* p2, int64_t B, int64_t P1, int64_t P2, int64_t D, const int64_t* lengths1,
             const int64_t* lengths2, int64_t K, T* dists, int64_t* idx, T* workspace, int64_t* index_workspace);

constexpr int64_t kGridMinPoints = 64;
// int64 workspace of the grid over one cloud of P points: cell starts and cursors (at most 2P + 8 cells),
// the sorted order and each point's cell.
inline int64_t knn_index_workspace(int64_t P) { return 2 * (2 * P + 9) + 2 * P; }

// Ball query: for every p1 point, the first K points of p2 in index order with squared distance
// < radius^2. dists (B, P1, K) squared distances, idx (B, P1, K); unused slots are dists 0, idx -1.
// workspace: B * D * P2 elements.
template <typename T>
void ball_query_cpu(const T* p1, const T* p2, int64_t B, int64_t P1, int64_t P2, int64_t D, const int64_t* lengths1,
                    const int64_t* lengths2, int64_t K, double radius, T* dists, int64_t* idx, T* workspace);

// Column gather: out[b, c, m] = features[b, c, idx[b, m]]; features (B, C, N), idx (B, M) in [0, N).
// gather_points uses it directly, grouping_operation with idx (B, M, S) viewed as (B, M*S).
template <typename T>
void gather_columns_cpu(const T* features, int64_t B, int64_t C, int64_t N, const int64_t* idx, int64_t M, T* out);

// Its adjoint: grad_features (B, C, N) = scatter-add of grad_out (B, C, M) along idx (overwrites grad_features).
template <typename T>
void gather_columns_backward_cpu(const T* grad_out, int64_t B, int64_t C, int64_t N, const int64_t* idx, int64_t M,
                                 T* grad_features);

// out[b, c, n] = sum_j weight[b, n, j] * features[b, c, idx[b, n, j]], j < 3.
// features (B, C, M), idx (B, N, 3) in [0, M), weight (B, N, 3) -> out (B, C, N).
template <typename T>
void three_interpolate_cpu(const T* features, int64_t B, int64_t C, int64_t M, const int64_t* idx, const T* weight,
                           int64_t N, T* out);

// Gradients of three_interpolate: grad_features (B, C, M) and/or grad_weight (B, N, 3); either may be null.
template <typename T>
void three_interpolate_backward_cpu(const T* grad_out, const T* features, int64_t B, int64_t C, int64_t M,
                                    const int64_t* idx, const T* weight, int64_t N, T* grad_features, T* grad_weight);

// Checks that every idx value lies in [lo, hi); returns the first offending position or -1.
int64_t find_index_out_of_range_cpu(const int64_t* idx, int64_t n, int64_t lo, int64_t hi);

// ---------------------------------------------------------------- CUDA (any of float32/64, float16, bfloat16)

void sample_farthest_points_cuda(DType dtype, const void* points, int64_t B, int64_t N, int64_t D,
                                 const int64_t* lengths, const int64_t* start, int64_t K, int64_t* idx,
                                 void* workspace /* B * N of float (double for float64) */, void* stream);
void knn_cuda(DType dtype, const void* p1, const void* p2, int64_t B, int64_t P1, int64_t P2, int64_t D,
              const int64_t* lengths1, const int64_t* lengths2, int64_t K, void* dists, int64_t* idx, void* stream);
void ball_query_cuda(DType dtype, const void* p1, const void* p2, int64_t B, int64_t P1, int64_t P2, int64_t D,
                     const int64_t* lengths1, const int64_t* lengths2, int64_t K, double radius, void* dists,
                     int64_t* idx, void* stream);
void gather_columns_cuda(DType dtype, const void* features, int64_t B, int64_t C, int64_t N, const int64_t* idx,
                         int64_t M, void* out, void* stream);
// grad_features is float32 for half/bfloat16 inputs (atomic accumulation), the input dtype otherwise; zeroed here.
void gather_columns_backward_cuda(DType dtype, const void* grad_out, int64_t B, int64_t C, int64_t N,
                                  const int64_t* idx, int64_t M, void* grad_features, void* stream);
void three_interpolate_cuda(DType dtype, const void* features, int64_t B, int64_t C, int64_t M, const int64_t* idx,
                            const void* weight, int64_t N, void* out, void* stream);
// grad_features as for gather_columns_backward_cuda; grad_weight in the input dtype. Either may be null.
void three_interpolate_backward_cuda(DType dtype, const void* grad_out, const void* features, int64_t B, int64_t C,
                                     int64_t M, const int64_t* idx, const void* weight, int64_t N,
                                     void* grad_features, void* grad_weight, void* stream);
// Writes 1 to *flag if any idx value lies outside [lo, hi) (flag is a device int32, zeroed here).
void index_out_of_range_cuda(const int64_t* idx, int64_t n, int64_t lo, int64_t hi, int32_t* flag, void* stream);

// ---------------------------------------------------------------- CUDA candidates ("cuda:next")
// The same contracts as the CUDA functions above, with these differences (so that no call needs to read
// device data back to the host):
//  * lengths are clamped to [0, P] and FPS start indices to [0, n - 1] instead of being validated by the caller;
//  * index inputs are not range-checked by the caller: an index outside its valid range is skipped (a gathered
//    or interpolated value reads it as 0, a scatter-add drops it);
//  * knn: the order is (squared distance, index) on the exact bits of the accumulated distance, NaN after +inf.
// Each returns false, launching nothing, where the sizes exceed what its 32-bit index math handles (over 2^31
// points or outputs); the caller then validates on the host and uses the functions above.
bool sample_farthest_points_cuda_next(DType dtype, const void* points, int64_t B, int64_t N, int64_t D,
                                      const int64_t* lengths, const int64_t* start, int64_t K, int64_t* idx,
                                      void* workspace, void* stream);
bool knn_cuda_next(DType dtype, const void* p1, const void* p2, int64_t B, int64_t P1, int64_t P2, int64_t D,
                   const int64_t* lengths1, const int64_t* lengths2, int64_t K, void* dists, int64_t* idx,
                   void* stream);
bool ball_query_cuda_next(DType dtype, const void* p1, const void* p2, int64_t B, int64_t P1, int64_t P2, int64_t D,
                          const int64_t* lengths1, const int64_t* lengths2, int64_t K, double radius, void* dists,
                          int64_t* idx, void* stream);
bool gather_columns_cuda_next(DType dtype, const void* features, int64_t B, int64_t C, int64_t N, const int64_t* idx,
                              int64_t M, void* out, void* stream);
// grad_features: float32 for half/bfloat16 inputs, the input dtype otherwise; overwritten.
bool gather_columns_backward_cuda_next(DType dtype, const void* grad_out, int64_t B, int64_t C, int64_t N,
                                       const int64_t* idx, int64_t M, void* grad_features, void* stream);
bool three_interpolate_cuda_next(DType dtype, const void* features, int64_t B, int64_t C, int64_t M,
                                 const int64_t* idx, const void* weight, int64_t N, void* out, void* stream);
bool three_interpolate_backward_cuda_next(DType dtype, const void* grad_out, const void* features, int64_t B,
                                          int64_t C, int64_t M, const int64_t* idx, const void* weight, int64_t N,
                                          void* grad_features, void* grad_weight, void* stream);
// Gradient of neighbour distances dists[b, i, k] = |p1[b, i] - p2[b, idx[b, i, k]]|^2 (knn_points, ball_query)
// over the slots with i < lengths1[b], k < lengths2[b] and idx in [0, P2): grad_p1 (B, P1, D) in the input
// dtype, grad_p2 (B, P2, D) float32 for half/bfloat16 inputs, the input dtype otherwise; both overwritten.
bool neighbour_dists_backward_cuda_next(DType dtype, const void* p1, const void* p2, int64_t B, int64_t P1,
                                        int64_t P2, int64_t D, const int64_t* lengths1, const int64_t* lengths2,
                                        const int64_t* idx, int64_t K, const void* grad_dists, void* grad_p1,
                                        void* grad_p2, void* stream);

}  // namespace pointcloud
}  // namespace pvf
