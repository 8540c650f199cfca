// Argument checks of the deformable-convolution column kernels, shared by the CPU and CUDA bindings.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/pointcloud_args.h"
#include "bindings/py_tensor.h"
#include "common/checks.h"
#include "deform_conv/deform_conv.h"

namespace pvf {
namespace deform_conv_args {

namespace py = pybind11;
using pointcloud_args::Device;
using pointcloud_args::input;
using pointcloud_args::output;
using pointcloud_args::shape_is;

struct Args {
  deform_conv::Geometry g;
  TensorView input, offset;
  OptionalTensor mask;
};

// input (B, C, H, W), offset (B, 2 OG kh kw, Ho, Wo), mask (B, OG kh kw, Ho, Wo) or None; `conv` holds
// (kh, kw, sh, sw, ph, pw, dh, dw).
inline Args parse(const Device& dev, const char* op, py::handle input_h, py::handle offset_h, py::handle mask_h,
                  const py::tuple& conv) {
  Checker ck(op);
  if (conv.size() != 8) ck.value_error("expected (kh, kw, sh, sw, ph, pw, dh, dw)");
  Args a;
  auto& g = a.g;
  g.kh = conv[0].cast<int64_t>();
  g.kw = conv[1].cast<int64_t>();
  g.sh = conv[2].cast<int64_t>();
  g.sw = conv[3].cast<int64_t>();
  g.ph = conv[4].cast<int64_t>();
  g.pw = conv[5].cast<int64_t>();
  g.dh = conv[6].cast<int64_t>();
  g.dw = conv[7].cast<int64_t>();
  if (g.kh < 1 || g.kw < 1) ck.value_error(str("kernel size must be >= 1, got ", g.kh, "x", g.kw));
  if (g.sh < 1 || g.sw < 1) ck.value_error(str("stride must be >= 1, got (", g.sh, ", ", g.sw, ")"));
  if (g.dh < 1 || g.dw < 1) ck.value_error(str("dilation must be >= 1, got (", g.dh, ", ", g.dw, ")"));
  if (g.ph < 0 || g.pw < 0) ck.value_error(str("padding must be >= 0, got (", g.ph, ", ", g.pw, ")"));
  a.input = input(ck, dev, input_h, op, "input");
  ck.ndim(a.input, "input", 4, "(B, C, H, W)");
  ck.dtype(a.input, "input", dev.float_dtypes);
  g.B = a.input.size(0);
  g.C = a.input.size(1);
  g.H = a.input.size(2);
  g.W = a.input.size(3);
  if (g.H * g.W >= (int64_t(1) << 31)) ck.value_error("input planes must hold fewer than 2^31 elements");
  g.Ho = (g.H + 2 * g.ph - (g.dh * (g.kh - 1) + 1)) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - (g.dw * (g.kw - 1) + 1)) / g.sw + 1;
  if (g.Ho < 1 || g.Wo < 1)
    ck.value_error(str("the output would be empty (", g.Ho, "x", g.Wo, ") for a ", g.H, "x", g.W, " input"));
  a.offset = input(ck, dev, offset_h, op, "offset");
  ck.ndim(a.offset, "offset", 4, "(B, 2 * offset_groups * kh * kw, Ho, Wo)");
  ck.same_dtype(a.offset, "offset", a.input, "input");
  const int64_t K = g.K();
  if (a.offset.size(1) == 0 || a.offset.size(1) % (2 * K))
    ck.value_error(str("offset has ", a.offset.size(1), " channels, expected a positive multiple of 2 * kh * kw = ",
                       2 * K));
  g.OG = a.offset.size(1) / (2 * K);
  if (g.C % g.OG) ck.value_error(str("input channels (", g.C, ") must be divisible by offset groups (", g.OG, ")"));
  shape_is(ck, a.offset, "offset", {g.B, 2 * g.OG * K, g.Ho, g.Wo});
  a.mask = optional_tensor_from_py(mask_h, op, "mask");
  if (a.mask.has_value) {
    ck.device(a.mask.view, "mask", dev.type, dev.index);
    ck.contiguous(a.mask.view, "mask");
    ck.same_dtype(a.mask.view, "mask", a.input, "input");
    shape_is(ck, a.mask.view, "mask", {g.B, g.OG * K, g.Ho, g.Wo});
  }
  return a;
}

inline TensorView columns(const Checker& ck, const Device& dev, const Args& a, py::handle h, const char* op,
                          const char* name, bool writable) {
  TensorView v = writable ? output(ck, dev, h, op, name) : input(ck, dev, h, op, name);
  shape_is(ck, v, name, {a.g.B, a.g.C * a.g.K(), a.g.P()});
  ck.same_dtype(v, name, a.input, "input");
  return v;
}

}  // namespace deform_conv_args
}  // namespace pvf
