// Argument checks of the scale-space kernels (filter bank, scale attention), shared by the CPU and CUDA bindings.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "bindings/pointcloud_args.h"
#include "bindings/py_tensor.h"
#include "common/checks.h"
#include "scale_space/scale_space.h"

namespace pvf {
namespace scale_space_args {

namespace py = pybind11;
using pointcloud_args::Device;
using pointcloud_args::input;
using pointcloud_args::output;
using pointcloud_args::shape_is;

struct Bank {
  scale_space::BankGeometry g;
  std::vector<int64_t> radii;  // g.radii points here: keep the Bank alive while the kernel runs
  TensorView x, kernels, y;    // y: out (forward) or grad_out (backward)
};

// x (B, C, H, W), kernels (S, 2R + 1), radii (S values in [0, R]), boundary 0/1/2 (a.y is left empty).
inline Bank parse_bank_inputs(const Device& dev, const char* op, py::handle x, py::handle kernels,
                              const std::vector<int64_t>& radii, int64_t boundary, int64_t max_scales) {
  Checker ck(op);
  Bank a;
  a.x = input(ck, dev, x, op, "x");
  ck.ndim(a.x, "x", 4, "(B, C, H, W)");
  ck.dtype(a.x, "x", dev.float_dtypes);
  a.kernels = input(ck, dev, kernels, op, "kernels");
  ck.ndim(a.kernels, "kernels", 2, "(S, 2R + 1)");
  ck.same_dtype(a.kernels, "kernels", a.x, "x");
  const int64_t S = a.kernels.size(0), L = a.kernels.size(1);
  if (L % 2 == 0) ck.value_error(str("kernels must have an odd number of taps (2R + 1), got ", L));
  if (S > max_scales) ck.value_error(str("at most ", max_scales, " scales per call on this device, got ", S));
  if (static_cast<int64_t>(radii.size()) != S)
    ck.value_error(str("radii has ", radii.size(), " values but kernels has ", S, " scales"));
  if (boundary < 0 || boundary > 2) ck.value_error(str("boundary must be 0 (zeros), 1 (reflect) or 2 (replicate), got ",
                                                       boundary));
  a.g.B = a.x.size(0);
  a.g.C = a.x.size(1);
  a.g.H = a.x.size(2);
  a.g.W = a.x.size(3);
  a.g.S = S;
  a.g.R = (L - 1) / 2;
  a.g.boundary = static_cast<scale_space::Boundary>(boundary);
  for (int64_t r : radii) {
    if (r < 0 || r > a.g.R) ck.value_error(str("radius ", r, " is outside [0, ", a.g.R, "] (the kernels' half-width)"));
    if (a.g.boundary == scale_space::Boundary::Reflect && a.x.numel() > 0 && (r >= a.g.H || r >= a.g.W))
      ck.value_error(str("reflect padding needs every radius below the image size, got radius ", r, " for ",
                         a.g.H, "x", a.g.W, " (use a smaller truncate or padding_mode='replicate')"));
  }
  a.radii = radii;
  a.g.radii = a.radii.data();
  return a;
}

// parse_bank_inputs, and y (B, S, C, H, W): out (forward) or grad_out (backward).
inline Bank parse_bank(const Device& dev, const char* op, py::handle x, py::handle kernels,
                       const std::vector<int64_t>& radii, int64_t boundary, py::handle y, bool y_is_output,
                       int64_t max_scales) {
  Bank a = parse_bank_inputs(dev, op, x, kernels, radii, boundary, max_scales);
  a.g.radii = a.radii.data();  // the copy's own vector
  Checker ck(op);
  const char* yname = y_is_output ? "out" : "grad_out";
  a.y = y_is_output ? output(ck, dev, y, op, yname) : input(ck, dev, y, op, yname);
  shape_is(ck, a.y, yname, {a.g.B, a.g.S, a.g.C, a.g.H, a.g.W});
  ck.same_dtype(a.y, yname, a.x, "x");
  return a;
}

struct Attention {
  TensorView y, gain, out;
  int64_t B, S, P;
};

// y (B, S, P), gain (S,), out (B, S, P): out is the forward output or grad_out.
inline Attention parse_attention(const Device& dev, const char* op, py::handle y, py::handle gain, py::handle out,
                                 bool out_is_output, int64_t max_scales) {
  Checker ck(op);
  Attention a;
  a.y = input(ck, dev, y, op, "y");
  ck.ndim(a.y, "y", 3, "(B, S, P)");
  ck.dtype(a.y, "y", dev.float_dtypes);
  a.B = a.y.size(0);
  a.S = a.y.size(1);
  a.P = a.y.size(2);
  if (a.S < 1 || a.S > max_scales) ck.value_error(str("the number of scales must be in [1, ", max_scales, "], got ", a.S));
  a.gain = input(ck, dev, gain, op, "gain");
  shape_is(ck, a.gain, "gain", {a.S});
  ck.same_dtype(a.gain, "gain", a.y, "y");
  const char* name = out_is_output ? "out" : "grad_out";
  a.out = out_is_output ? output(ck, dev, out, op, name) : input(ck, dev, out, op, name);
  shape_is(ck, a.out, name, {a.B, a.S, a.P});
  ck.same_dtype(a.out, name, a.y, "y");
  return a;
}

}  // namespace scale_space_args
}  // namespace pvf
