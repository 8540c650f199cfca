// Epilogue math shared by the CPU and CUDA multi-view fusion kernels.
#pragma once
#include "common/macros.h"

namespace pvf {
namespace mvf {

template <typename A>
PVF_HOST_DEVICE A hardswish(A z) {
  const A r = z + A(3) < A(0) ? A(0) : (z + A(3) > A(6) ? A(6) : z + A(3));
  return z * r / A(6);
}

// d hardswish / dz (PyTorch's convention: 0 below -3, 1 above 3, (2z + 3) / 6 between).
template <typename A>
PVF_HOST_DEVICE A hardswish_grad(A z) {
  if (z < A(-3)) return A(0);
  if (z > A(3)) return A(1);
  return (A(2) * z + A(3)) / A(6);
}

}  // namespace mvf
}  // namespace pvf
