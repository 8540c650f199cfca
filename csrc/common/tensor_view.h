// A non-owning description of a strided array: pointer, dtype, device, sizes and strides (in elements).
// Built by the bindings from a torch tensor description, a NumPy array or a CuPy array; kernels only
// ever see raw pointers taken from it after the checks in checks.h have passed.
#pragma once
#include <cstdint>
#include <string>

#include "common/errors.h"

namespace pvf {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3, Int32 = 4, Int64 = 5, Bool = 6, UInt8 = 7 };
enum class DeviceType : int { CPU = 0, CUDA = 1 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::Bool: return "bool";
    case DType::UInt8: return "uint8";
  }
  return "unknown";
}

inline int64_t dtype_size(DType t) {
  switch (t) {
    case DType::Float64: case DType::Int64: return 8;
    case DType::Float32: case DType::Int32: return 4;
    case DType::Float16: case DType::BFloat16: return 2;
    case DType::Bool: case DType::UInt8: return 1;
  }
  return 0;
}

constexpr int kMaxDims = 8;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::Float32;
  DeviceType device = DeviceType::CPU;
  int device_index = 0;
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};

  int64_t size(int d) const { return sizes[d < 0 ? d + ndim : d]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= sizes[d];
    return n;
  }
  bool is_contiguous() const {
    if (numel() == 0) return true;
    int64_t expected = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (sizes[d] != 1 && strides[d] != expected) return false;
      expected *= sizes[d];
    }
    return true;
  }
  std::string shape_string() const {
    std::string s = "(";
    for (int d = 0; d < ndim; ++d) s += std::to_string(sizes[d]) + (d + 1 < ndim ? ", " : "");
    return s + (ndim == 1 ? ",)" : ")");
  }
  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data);
  }
};

}  // namespace pvf
