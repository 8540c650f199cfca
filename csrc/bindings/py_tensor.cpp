#include "bindings/py_tensor.h"

#include <string>

#include "common/errors.h"

namespace py = pybind11;

namespace pvf {
namespace {

DType dtype_from_code(int code, const char* op, const char* name) {
  if (code < 0 || code > static_cast<int>(DType::UInt8))
    throw TypeError(str(op, ": argument '", name, "' has an unknown dtype code ", code));
  return static_cast<DType>(code);
}

DType dtype_from_typestr(const std::string& s, const char* op, const char* name) {
  // e.g. "<f4"; byte order '|' or native '<' only (x86/ARM/GPU are little-endian).
  if (s.size() >= 3 && (s[0] == '<' || s[0] == '|' || s[0] == '=')) {
    const std::string k = s.substr(1);
    if (k == "f4") return DType::Float32;
    if (k == "f8") return DType::Float64;
    if (k == "f2") return DType::Float16;
    if (k == "i4") return DType::Int32;
    if (k == "i8") return DType::Int64;
    if (k == "b1") return DType::Bool;
    if (k == "u1") return DType::UInt8;
  }
  throw TypeError(str(op, ": argument '", name, "' has unsupported array typestr '", s, "'"));
}

TensorView from_description(const py::tuple& t, const char* op, const char* name) {
  if (t.size() != 6) throw TypeError(str(op, ": argument '", name, "' is a malformed tensor description"));
  TensorView v;
  v.data = reinterpret_cast<void*>(t[0].cast<uintptr_t>());
  v.dtype = dtype_from_code(t[1].cast<int>(), op, name);
  const int dev = t[2].cast<int>();
  if (dev != 0 && dev != 1) throw TypeError(str(op, ": argument '", name, "' is on an unsupported device type"));
  v.device = static_cast<DeviceType>(dev);
  v.device_index = t[3].cast<int>();
  auto sizes = t[4].cast<py::tuple>();
  auto strides = t[5].cast<py::tuple>();
  if (sizes.size() != strides.size() || sizes.size() > static_cast<size_t>(kMaxDims))
    throw ValueError(str(op, ": argument '", name, "' has more than ", kMaxDims, " dimensions"));
  v.ndim = static_cast<int>(sizes.size());
  for (int d = 0; d < v.ndim; ++d) {
    v.sizes[d] = sizes[d].cast<int64_t>();
    v.strides[d] = strides[d].cast<int64_t>();
    if (v.sizes[d] < 0) throw ValueError(str(op, ": argument '", name, "' has a negative size"));
  }
  return v;
}

TensorView from_array_interface(const py::dict& ai, DeviceType device, const char* op, const char* name,
                                bool writable) {
  TensorView v;
  v.device = device;
  v.device_index = 0;
  v.dtype = dtype_from_typestr(ai["typestr"].cast<std::string>(), op, name);
  auto data = ai["data"].cast<py::tuple>();
  v.data = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  if (writable && data[1].cast<bool>())
    throw ValueError(str(op, ": argument '", name, "' is read-only but is written to"));
  auto shape = ai["shape"].cast<py::tuple>();
  if (shape.size() > static_cast<size_t>(kMaxDims))
    throw ValueError(str(op, ": argument '", name, "' has more than ", kMaxDims, " dimensions"));
  v.ndim = static_cast<int>(shape.size());
  for (int d = 0; d < v.ndim; ++d) v.sizes[d] = shape[d].cast<int64_t>();
  const int64_t item = dtype_size(v.dtype);
  if (ai.contains("strides") && !ai["strides"].is_none()) {
    auto strides = ai["strides"].cast<py::tuple>();
    for (int d = 0; d < v.ndim; ++d) {
      const int64_t s = strides[d].cast<int64_t>();
      if (s % item != 0) throw ValueError(str(op, ": argument '", name, "' has strides that are not whole elements"));
      v.strides[d] = s / item;
    }
  } else {
    int64_t s = 1;
    for (int d = v.ndim - 1; d >= 0; --d) {
      v.strides[d] = s;
      s *= v.sizes[d];
    }
  }
  return v;
}

}  // namespace

TensorView tensor_from_py(py::handle obj, const char* op, const char* name, bool writable) {
  try {
    if (py::isinstance<py::tuple>(obj)) return from_description(obj.cast<py::tuple>(), op, name);
    if (py::hasattr(obj, "__cuda_array_interface__"))
      return from_array_interface(obj.attr("__cuda_array_interface__").cast<py::dict>(), DeviceType::CUDA, op, name,
                                  writable);
    if (py::hasattr(obj, "__array_interface__"))
      return from_array_interface(obj.attr("__array_interface__").cast<py::dict>(), DeviceType::CPU, op, name,
                                  writable);
  } catch (const py::cast_error&) {
    throw TypeError(str(op, ": argument '", name, "' is a malformed array description"));
  }
  throw TypeError(str(op, ": argument '", name, "' must be an array (tensor description, NumPy or CuPy array), got ",
                      std::string(py::str(py::type::of(obj).attr("__name__")))));
}

OptionalTensor optional_tensor_from_py(py::handle obj, const char* op, const char* name, bool writable) {
  OptionalTensor o;
  if (obj.is_none()) return o;
  o.has_value = true;
  o.view = tensor_from_py(obj, op, name, writable);
  return o;
}

// Module-local: pybind11 tries a module's own translators before the process-wide list, which every pybind11
// module loaded with the same internals version shares (torch, triton, ...). A translator of ours is then
// never looked for in, nor depends on, what other libraries registered there.
void register_exception_translators() {
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const DeviceError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });
}

}  // namespace pvf
