// Conversion of Python array arguments to pvf::TensorView, and exception translation.
//
// Accepted forms:
//  * the tuple built by pyvision_fast._ext.tensor_arg(t): (data_ptr, dtype_code, device_type, device_index,
//    sizes, strides), strides in elements -- the fast path for torch tensors;
//  * any object with __array_interface__ (NumPy) or __cuda_array_interface__ (CuPy, Numba, torch CUDA tensors).
// Malformed descriptions raise TypeError naming the argument.
#pragma once
#include <pybind11/pybind11.h>

#include "common/tensor_view.h"

namespace pvf {

// `writable` rejects read-only array-interface arrays (outputs).
TensorView tensor_from_py(pybind11::handle obj, const char* op, const char* name, bool writable = false);

// None -> has_value false.
struct OptionalTensor {
  bool has_value = false;
  TensorView view;
  template <typename T>
  T* ptr() const {
    return has_value ? view.ptr<T>() : nullptr;
  }
};
OptionalTensor optional_tensor_from_py(pybind11::handle obj, const char* op, const char* name, bool writable = false);

// Registers the translation of pvf::ValueError / TypeError / DeviceError to Python exceptions.
void register_exception_translators();

}  // namespace pvf
