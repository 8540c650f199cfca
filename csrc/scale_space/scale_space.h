// Gaussian scale space (a bank of separable filters applied at S scales in one call) and scale attention
// (a softmax across scale groups), for SCAN-CNN's scale-space layers (our reconstruction, see
// pyvision_fast/nn/scale_space.py).
//
// Filter bank. x is (B, C, H, W) contiguous, kernels (S, L) contiguous with L = 2R + 1 taps centred on tap R;
// scale s uses the taps R - r_s .. R + r_s (its radius r_s <= R, taps beyond are treated as zero). Every
// (b, c) plane is filtered along W, then along H (correlation, tap k reading offset k - r_s) into
// out (B, S, C, H, W) contiguous:
//   u = k_s (*)_W x,   out[:, s] = k_s (*)_H u.
// Boundary: positions outside the plane read zero (Zeros), the mirror image without repeating the edge
// (Reflect, needs r_s < H and r_s < W), or the edge value (Replicate).
//
// Scale attention. y is (B, S, P) contiguous (P = channels per scale times H times W), gain (S,):
//   a_s = gain_s |y_s|,  p = softmax_s(a),  out_s = S p_s y_s
// per (b, position): uniform weights (gain = 0) give the identity.
#pragma once
#include <cstdint>

#include "common/tensor_view.h"

namespace pvf {
namespace scale_space {

enum class Boundary : int { Zeros = 0, Reflect = 1, Replicate = 2 };

struct BankGeometry {
  int64_t B, C, H, W;  // input sizes
  int64_t S, R;        // scales; kernel half-width (L = 2R + 1)
  const int64_t* radii;  // (S,) host array, 0 <= radii[s] <= R
  Boundary boundary;
};

// Source index of position j of a line of n samples, or -1 (a zero) - shared by CPU and CUDA code.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline int64_t boundary_index(int64_t j, int64_t n, Boundary b) {
  if (j >= 0 && j < n) return j;
  switch (b) {
    case Boundary::Reflect: return j < 0 ? -j : 2 * (n - 1) - j;  // |j| and the overshoot are < n (checked)
    case Boundary::Replicate: return j < 0 ? 0 : n - 1;
    default: return -1;
  }
}

// Calls f(j) for every j in [-r, n + r) that the boundary rule maps onto position y of a line of n samples
// (the transposed filter gathers from these): y itself, plus mirrored or clamped positions near the edges.
template <typename F>
#if defined(__CUDACC__)
__host__ __device__
#endif
inline void visit_preimages(int64_t y, int64_t n, int64_t r, Boundary b, F&& f) {
  f(y);
  if (b == Boundary::Reflect) {
    if (y >= 1 && y <= r) f(-y);
    const int64_t j = 2 * (n - 1) - y;
    if (j > n - 1 && j <= n - 1 + r) f(j);
  } else if (b == Boundary::Replicate) {
    if (y == 0)
      for (int64_t j = -r; j < 0; ++j) f(j);
    if (y == n - 1)
      for (int64_t j = n; j < n + r; ++j) f(j);
  }
}

template <typename T>
void filter_bank_forward_cpu(const BankGeometry& g, const T* x, const T* kernels, T* out);

// grad_kernels (S, L) is overwritten; taps beyond a scale's radius get 0.
template <typename T>
void filter_bank_backward_cpu(const BankGeometry& g, const T* x, const T* grad_out, const T* kernels, T* grad_x,
                              T* grad_kernels);

template <typename T>
void scale_attention_forward_cpu(int64_t B, int64_t S, int64_t P, const T* y, const T* gain, T* out);

// grad_gain (S,) is overwritten.
template <typename T>
void scale_attention_backward_cpu(int64_t B, int64_t S, int64_t P, const T* y, const T* gain, const T* grad_out,
                                  T* grad_y, T* grad_gain);

// CUDA: float32/float64/float16/bfloat16 (float accumulation). The radii live on the host (passed by value
// to the kernels, S <= kMaxScales). The filter bank's workspace holds 2 * B*S*C*H*W accumulation-type elements
// (backward) or B*S*C*H*W (forward); grad_kernels and grad_gain are in the accumulation type (float32 for
// half inputs) and are zeroed by the launcher.
constexpr int kMaxScales = 16;
void filter_bank_forward_cuda(DType dtype, const BankGeometry& g, const void* x, const void* kernels, void* out,
                              void* workspace, void* stream);
void filter_bank_backward_cuda(DType dtype, const BankGeometry& g, const void* x, const void* grad_out,
                               const void* kernels, void* grad_x, void* grad_kernels, void* workspace, void* stream);
// The tiled filter bank (filter_bank_tiled.h), the "cuda:next" candidate: same arguments and results as the two
// above. Its backward's workspace holds the kernel-tap partials of every block; filter_bank_next_workspace gives
// the accumulation-type elements a call needs (sizes whose tiles do not fit shared memory run the kernels above,
// with their workspace). Call it with the tensors' device current.
int64_t filter_bank_next_workspace(DType dtype, const BankGeometry& g, bool backward);
void filter_bank_forward_next_cuda(DType dtype, const BankGeometry& g, const void* x, const void* kernels, void* out,
                                   void* workspace, void* stream);
void filter_bank_backward_next_cuda(DType dtype, const BankGeometry& g, const void* x, const void* grad_out,
                                    const void* kernels, void* grad_x, void* grad_kernels, void* workspace,
                                    void* stream);
void scale_attention_forward_cuda(DType dtype, int64_t B, int64_t S, int64_t P, const void* y, const void* gain,
                                  void* out, void* stream);
void scale_attention_backward_cuda(DType dtype, int64_t B, int64_t S, int64_t P, const void* y, const void* gain,
                                   const void* grad_out, void* grad_y, void* grad_gain, void* stream);

}  // namespace scale_space
}  // namespace pvf
