// Argument checks of the spherical-convolution table kernels, shared by the CPU and CUDA bindings. The table's
// index values are not read here (see parse): the kernels clamp them into the image.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/pointcloud_args.h"
#include "bindings/py_tensor.h"
#include "common/checks.h"
#include "sphere/sphere.h"

namespace pvf {
namespace sphere_args {

namespace py = pybind11;
using pointcloud_args::Device;
using pointcloud_args::input;
using pointcloud_args::output;
using pointcloud_args::shape_is;

// The forward input (B, H, W, C): any non-negative strides whose (H, W) pixels flatten (stride_h = W stride_w).
inline TensorView image_input(const Checker& ck, const Device& dev, py::handle h, const char* op) {
  TensorView v = tensor_from_py(h, op, "input");
  ck.device(v, "input", dev.type, dev.index);
  ck.ndim(v, "input", 4, "(B, H, W, C)");
  for (int d = 0; d < 4; ++d)
    if (v.strides[d] < 0) ck.value_error("argument 'input' has a negative stride");
  if (v.sizes[1] > 1 && v.strides[1] != v.sizes[2] * v.strides[2])
    ck.value_error("argument 'input' must have flattenable pixels (stride_h == W * stride_w)");
  if (v.numel() > 0 && v.data == nullptr) ck.value_error("argument 'input' has no data");
  return v;
}


struct Args {
  sphere::Geometry g;
  TensorView index, weight;
};

// image (B, H, W, C): the input (forward) or grad_input (backward), checked by the caller for dtype; `dtype` is
// the dtype of the columns and of the table weights; index (P, K, 4) int32; weight (P, K, 4); rows [r0, r1) of
// the B * P output rows. The index values are not read here (that would synchronise a CUDA caller on every call):
// the kernels clamp them into the image, and the Python side validates each table once.
inline Args parse(const Device& dev, const char* op, const TensorView& image, const char* image_name, DType dtype,
                  py::handle index_h, py::handle weight_h, int64_t r0, int64_t r1) {
  Checker ck(op);
  Args a;
  ck.ndim(image, image_name, 4, "(B, H, W, C) (channels last)");
  a.index = input(ck, dev, index_h, op, "table_index");
  ck.dtype(a.index, "table_index", {DType::Int32});
  ck.ndim(a.index, "table_index", 3, "(P, K, 4)");
  if (a.index.size(2) != 4) ck.value_error(str("table_index must be (P, K, 4), got ", a.index.shape_string()));
  a.weight = input(ck, dev, weight_h, op, "table_weight");
  shape_is(ck, a.weight, "table_weight", {a.index.size(0), a.index.size(1), 4});
  ck.dtype(a.weight, "table_weight", {dtype});
  const int64_t H = image.size(1), W = image.size(2);
  a.g = {image.size(0), H * W, image.size(3), a.index.size(0), a.index.size(1), image.strides[0], image.strides[2],
         image.strides[3]};
  if (a.g.HW >= (int64_t(1) << 31)) ck.value_error("input planes must hold fewer than 2^31 elements");
  if (a.g.HW == 0 && a.g.B * a.g.P * a.g.K > 0) ck.value_error("the image has no pixels to sample");
  if (r0 < 0 || r0 > r1 || r1 > a.g.B * a.g.P)
    ck.value_error(str("rows [", r0, ", ", r1, ") are outside the ", a.g.B * a.g.P, " output rows"));
  return a;
}

inline TensorView columns(const Checker& ck, const Device& dev, const Args& a, DType dtype, py::handle h,
                          const char* op, const char* name, bool writable, int64_t rows) {
  TensorView v = writable ? output(ck, dev, h, op, name) : input(ck, dev, h, op, name);
  shape_is(ck, v, name, {rows, a.g.K, a.g.C});
  ck.dtype(v, name, {dtype});
  return v;
}

}  // namespace sphere_args
}  // namespace pvf
