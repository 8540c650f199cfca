// Math shared by the CPU and CUDA StyleGAN2 kernels: index arithmetic of upfirdn2d and the activation table of
// bias_act (values and derivatives), so that both paths evaluate the same expressions.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/macros.h"
#include "stylegan2/stylegan2.h"

namespace pvf {
namespace stylegan2 {

using std::exp;
using std::expm1;
using std::log1p;
using std::tanh;

PVF_HOST_DEVICE int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}
PVF_HOST_DEVICE int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }

// The input index that tap t of output o reads on one axis, or -1 when that tap meets an inserted zero or the
// padding: q = o * down + t - pad0 in upsampled coordinates, an input sample when q % up == 0 and q / up < in.
PVF_HOST_DEVICE int64_t tap_source(int64_t o, int64_t t, int64_t up, int64_t down, int64_t pad0, int64_t in) {
  const int64_t q = o * down + t - pad0;
  if (q < 0 || q % up != 0) return -1;
  const int64_t i = q / up;
  return i < in ? i : -1;
}

// SELU's constants (Klambauer et al., as torch.nn.functional.selu).
constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
// torch.nn.functional.softplus's default threshold: above it softplus(x) = x.
constexpr double kSoftplusThreshold = 20.0;

template <typename A>
PVF_HOST_DEVICE A sigmoid_of(A z) {
  return A(1) / (A(1) + exp(-z));
}

// act(z); A is float or double.
template <typename A>
PVF_HOST_DEVICE A activate(Act act, A z, A alpha) {
  switch (act) {
    case Act::Linear: return z;
    case Act::Relu: return z < A(0) ? A(0) : z;  // NaN stays NaN, as torch.relu
    case Act::Lrelu: return z > A(0) ? z : z * alpha;
    case Act::Tanh: return tanh(z);
    case Act::Sigmoid: return sigmoid_of(z);
    case Act::Elu: return z > A(0) ? z : expm1(z);
    case Act::Selu: return z > A(0) ? A(kSeluScale) * z : A(kSeluScale * kSeluAlpha) * expm1(z);
    case Act::Softplus: return z > A(kSoftplusThreshold) ? z : log1p(exp(z));
    case Act::Swish: return z * sigmoid_of(z);
  }
  return z;
}

// d act / dz at z (torch's conventions at the kinks: relu' (0) = 0, lrelu'(0) = alpha, elu'(0) = 1).
template <typename A>
PVF_HOST_DEVICE A activate_grad(Act act, A z, A alpha) {
  switch (act) {
    case Act::Linear: return A(1);
    case Act::Relu: return z > A(0) ? A(1) : A(0);
    case Act::Lrelu: return z > A(0) ? A(1) : alpha;
    case Act::Tanh: {
      const A t = tanh(z);
      return A(1) - t * t;
    }
    case Act::Sigmoid: {
      const A s = sigmoid_of(z);
      return s * (A(1) - s);
    }
    case Act::Elu: return z > A(0) ? A(1) : exp(z);
    case Act::Selu: return z > A(0) ? A(kSeluScale) : A(kSeluScale * kSeluAlpha) * exp(z);
    case Act::Softplus: return z > A(kSoftplusThreshold) ? A(1) : sigmoid_of(z);
    case Act::Swish: {
      const A s = sigmoid_of(z);
      return s + z * s * (A(1) - s);
    }
  }
  return A(1);
}

// y = clamp(act(z) * gain) (clamp < 0: none; NaN passes through).
template <typename A>
PVF_HOST_DEVICE A bias_act_value(Act act, A z, A alpha, A gain, A clamp) {
  A v = activate(act, z, alpha) * gain;
  if (clamp >= A(0)) v = v > clamp ? clamp : (v < -clamp ? -clamp : v);
  return v;
}

// dy * d y / d z: zero where the clamp is active (only strictly inside (-clamp, clamp) does the gradient pass).
template <typename A>
PVF_HOST_DEVICE A bias_act_grad(Act act, A z, A dy, A alpha, A gain, A clamp) {
  if (clamp >= A(0)) {
    const A v = activate(act, z, alpha) * gain;
    if (!(v > -clamp && v < clamp)) return A(0);
  }
  return dy * gain * activate_grad(act, z, alpha);
}

}  // namespace stylegan2
}  // namespace pvf
