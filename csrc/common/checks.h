// Precondition checks run by the bindings before any kernel touches memory. Every failure names the
// op, the argument and what was expected, and throws pvf::ValueError or pvf::TypeError.
#pragma once
#include <vector>
#include <string>

#include "common/errors.h"
#include "common/tensor_view.h"

namespace pvf {

class Checker {
 public:
  explicit Checker(const char* op) : op_(op) {}

  [[noreturn]] void value_error(const std::string& msg) const { throw ValueError(str(op_, ": ", msg)); }
  [[noreturn]] void type_error(const std::string& msg) const { throw TypeError(str(op_, ": ", msg)); }

  void require(bool cond, const std::string& msg) const {
    if (!cond) value_error(msg);
  }

  // rank and layout, e.g. ndim(p1, "p1", 3, "(B, P1, D)")
  void ndim(const TensorView& t, const char* name, int expected, const char* layout) const {
    if (t.ndim != expected)
      value_error(str("argument '", name, "' must have ", expected, " dimensions ", layout, ", got shape ",
                      t.shape_string()));
  }
  void dim_size(const TensorView& t, const char* name, int d, int64_t expected, const char* what) const {
    if (t.size(d) != expected)
      value_error(str("argument '", name, "' has size ", t.size(d), " in dimension ", d, " but ", what, " is ",
                      expected, " (shape ", t.shape_string(), ")"));
  }
  void dtype(const TensorView& t, const char* name, const std::vector<DType>& allowed) const {
    for (DType d : allowed)
      if (t.dtype == d) return;
    std::string list;
    for (DType d : allowed) list += std::string(list.empty() ? "" : " or ") + dtype_name(d);
    type_error(str("argument '", name, "' must be ", list, ", got ", dtype_name(t.dtype)));
  }
  void same_dtype(const TensorView& a, const char* name_a, const TensorView& b, const char* name_b) const {
    if (a.dtype != b.dtype)
      type_error(str("arguments '", name_a, "' (", dtype_name(a.dtype), ") and '", name_b, "' (", dtype_name(b.dtype),
                     ") must have the same dtype"));
  }
  void device(const TensorView& t, const char* name, DeviceType dev, int index = -1) const {
    if (t.device != dev || (index >= 0 && t.device_index != index))
      type_error(str("argument '", name, "' is on ", device_name(t.device, t.device_index), " but this call runs on ",
                     device_name(dev, index)));
  }
  void contiguous(const TensorView& t, const char* name) const {
    if (!t.is_contiguous()) value_error(str("argument '", name, "' must be contiguous"));
    if (t.numel() > 0 && t.data == nullptr) value_error(str("argument '", name, "' has no data"));
  }

 private:
  static std::string device_name(DeviceType d, int index) {
    if (d == DeviceType::CPU) return "cpu";
    return index >= 0 ? str("cuda:", index) : std::string("cuda");
  }
  const char* op_;
};

}  // namespace pvf
