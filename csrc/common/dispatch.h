// dtype dispatch: calls f(Tag<T>{}) with T the C++ type of `dtype`, e.g.
//   dispatch_floating(v.dtype, "knn_points", [&](auto tag) { using T = typename decltype(tag)::type; ... });
#pragma once
#include "common/errors.h"
#include "common/tensor_view.h"

namespace pvf {

template <typename T>
struct Tag {
  using type = T;
};

// float32 / float64: the dtypes every backend supports.
template <typename F>
void dispatch_floating(DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case DType::Float32: f(Tag<float>{}); return;
    case DType::Float64: f(Tag<double>{}); return;
    default: throw TypeError(str(op, ": unsupported dtype ", dtype_name(dtype), " (expected float32 or float64)"));
  }
}

}  // namespace pvf
