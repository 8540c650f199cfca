// dtype dispatch for CUDA kernels: float32, float64, float16 and bfloat16 (accumulating in float).
#pragma once
#include "common/cuda_utils.cuh"
#include "common/dispatch.h"

namespace pvf {

template <typename F>
void dispatch_floating_and_half(DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case DType::Float32: f(Tag<float>{}); return;
    case DType::Float64: f(Tag<double>{}); return;
    case DType::Float16: f(Tag<__half>{}); return;
    case DType::BFloat16: f(Tag<__nv_bfloat16>{}); return;
    default:
      throw TypeError(str(op, ": unsupported dtype ", dtype_name(dtype),
                          " (expected float32, float64, float16 or bfloat16)"));
  }
}

}  // namespace pvf
