// StyleGAN2's resampling and activation kernels (the upfirdn2d / bias_act plugins of NVlabs' stylegan2-ada-pytorch,
// re-implemented from their documented semantics).
//
// upfirdn2d, on every plane (one per batch item and channel) of x (planes, H, W), contiguous:
//  1. upsample by zero insertion: xu[m] = x[m / up] when m % up == 0, else 0, for m in [0, in * up)
//     (up - 1 zeros after every sample, both axes);
//  2. pad by pad0 before and pad1 after (a negative pad crops): z[j] = xu[j - pad0], j in [0, L),
//     L = in * up + pad0 + pad1 (xu outside [0, in * up) is 0);
//  3. correlate with taps: c[i] = sum_t z[i + t] * taps[t], i in [0, L - f] (the caller passes the taps already
//     oriented and scaled: the filter flipped unless flip_filter, times gain ** (filter rank / 2));
//  4. downsample: y[o] = c[o * down], o in [0, out), out = (L - f + down) / down  (floor; the caller checked L >= f).
// In 2-D the axes combine: a 2-D filter taps (fh, fw) row-major, or a separable one (taps_x (fw,) applied along W
// first, then taps_y (fh,) along H: y = sum_ty taps_y[ty] * (sum_tx taps_x[tx] * z), NVlabs' order).
// Sum order per output element: ty ascending, then tx ascending (2-D); the same on the CPU and the GPU. Only
// taps that meet an input sample are evaluated (polyphase): no zero of the upsampled or padded image is multiplied.
//
// bias_act, on x viewed as (outer, C, inner) contiguous (C = the size of the bias dimension):
//   z = x + b[c] (b may be null), a = act(z) (Act below; alpha is lrelu's slope), v = a * gain,
//   y = clamp(v, -clamp, clamp) when clamp >= 0 (NaN stays NaN).
// bias_act_backward: dx = dy * gain * act'(z), zero where the clamp is active (|v| >= clamp, NVlabs' rule: the
// gradient passes only strictly inside the clamp range); the caller reduces dx to db.
//
// Kernels never allocate: outputs and workspaces come from the caller. Arguments have been checked by the
// bindings (csrc/bindings/stylegan2_args.h). CUDA launchers take the element type as a DType and the stream as
// `void*`; they throw pvf::DeviceError if a launch fails.
#pragma once
#include <cstdint>

#include "common/tensor_view.h"

namespace pvf {
namespace stylegan2 {

// One axis of upfirdn2d: input size, output size, up, down, pad before, filter size.
struct Axis {
  int64_t in = 0, out = 0, up = 1, down = 1, pad0 = 0, f = 1;
};

struct Upfirdn2dGeometry {
  int64_t planes = 0;  // N * C
  Axis x, y;           // x: along W, y: along H
  bool separable = false;
};

// (in * up + pad0 + pad1 - f + down) / down: the output size (floor division; >= 1 when in*up + pad0 + pad1 >= f).
inline int64_t upfirdn_out_size(int64_t in, int64_t up, int64_t down, int64_t pad0, int64_t pad1, int64_t f) {
  const int64_t num = in * up + pad0 + pad1 - f + down;
  return num >= 0 ? num / down : -((-num + down - 1) / down);
}

// Elements of T one CPU work slot needs (a slot serves one thread); the workspace holds `slots` of them.
int64_t upfirdn2d_slot_size_cpu(const Upfirdn2dGeometry& g);

// ---------------------------------------------------------------- CPU (T = float or double)

// OpenMP over planes (over output rows when there are fewer planes than threads). taps: (fh, fw) 2-D, or taps_x
// (fw,) / taps_y (fh,) when g.separable (taps then unused). workspace: slots * upfirdn2d_slot_size_cpu(g).
template <typename T>
void upfirdn2d_cpu(const Upfirdn2dGeometry& g, const T* x, const T* taps, const T* taps_x, const T* taps_y, T* out,
                   T* workspace, int64_t slots);

enum class Act : int { Linear = 0, Relu = 1, Lrelu = 2, Tanh = 3, Sigmoid = 4, Elu = 5, Selu = 6, Softplus = 7,
                       Swish = 8 };
constexpr int kNumActs = 9;

template <typename T>
void bias_act_cpu(const T* x, const T* b, int64_t outer, int64_t C, int64_t inner, Act act, double alpha,
                  double gain, double clamp, T* y);
template <typename T>
void bias_act_backward_cpu(const T* dy, const T* x, const T* b, int64_t outer, int64_t C, int64_t inner, Act act,
                           double alpha, double gain, double clamp, T* dx);

// ---------------------------------------------------------------- CUDA (float32/64, float16, bfloat16)

// One thread per output element (2-D), float accumulation for half types. Separable: a horizontal pass into
// `workspace` (planes * H * out_x elements of the accumulation type: float for half types, else T), then the
// vertical pass; 2-D filters need no workspace. taps in the accumulation type.
void upfirdn2d_cuda(DType dtype, const Upfirdn2dGeometry& g, const void* x, const void* taps, const void* taps_x,
                    const void* taps_y, void* out, void* workspace, void* stream);
void bias_act_cuda(DType dtype, const void* x, const void* b, int64_t outer, int64_t C, int64_t inner, Act act,
                   double alpha, double gain, double clamp, void* y, void* stream);
void bias_act_backward_cuda(DType dtype, const void* dy, const void* x, const void* b, int64_t outer, int64_t C,
                            int64_t inner, Act act, double alpha, double gain, double clamp, void* dx, void* stream);

}  // namespace stylegan2
}  // namespace pvf
