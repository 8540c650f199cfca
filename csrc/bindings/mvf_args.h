// Argument checks of the multi-view fusion kernels, shared by the CPU and CUDA bindings.
#pragma once
#include <pybind11/pybind11.h>

#include <cmath>

#include "bindings/pointcloud_args.h"
#include "bindings/py_tensor.h"
#include "common/checks.h"
#include "mvf/mvf.h"

namespace pvf {
namespace mvf_args {

namespace py = pybind11;
using pointcloud_args::Device;

// A 5-D (N, C, T, H, W) tensor on `dev` whose W stride is 1 (any other strides).
inline TensorView volume(const Checker& ck, const Device& dev, py::handle h, const char* op, const char* name,
                         bool writable) {
  TensorView v = tensor_from_py(h, op, name, writable);
  ck.device(v, name, dev.type, dev.index);
  ck.ndim(v, name, 5, "(N, C, T, H, W)");
  if (v.numel() == 0) return v;  // no element is read or written: any strides will do (an empty batch)
  if (v.sizes[4] > 1 && v.strides[4] != 1) ck.value_error(str("argument '", name, "' must have stride 1 along W"));
  for (int d = 0; d < 4; ++d) {
    if (v.strides[d] < 0) ck.value_error(str("argument '", name, "' has a negative stride"));
    if (writable && v.strides[d] == 0 && v.sizes[d] > 1)
      ck.value_error(str("argument '", name, "' is written to but has overlapping (stride 0) elements"));
  }
  if (v.numel() > 0 && v.data == nullptr) ck.value_error(str("argument '", name, "' has no data"));
  return v;
}

inline void same_sizes(const Checker& ck, const TensorView& a, const char* name, const TensorView& like) {
  for (int d = 0; d < 5; ++d)
    if (a.sizes[d] != like.sizes[d])
      ck.value_error(str("argument '", name, "' has shape ", a.shape_string(), ", expected ", like.shape_string()));
}

struct Args {
  mvf::Geometry g;
  TensorView x, out, wt, wh, ww;
  OptionalTensor scale, shift;
};

inline TensorView kernel_arg(const Checker& ck, const Device& dev, py::handle h, const char* op, const char* name,
                             const TensorView& x, int64_t F) {
  TensorView w = pointcloud_args::input(ck, dev, h, op, name);
  pointcloud_args::shape_is(ck, w, name, {F, 3});
  ck.same_dtype(w, name, x, "x");
  return w;
}

// Parses x, the kernels, the optional epilogue and the output-like tensor `out` (its strides become g.so).
// scale_name / shift_name: what the per-channel pair is called in errors (the training-mode kernels take
// BatchNorm's weight and bias in their place).
inline Args parse(const Device& dev, const char* op, py::handle x, py::handle wt, py::handle wh, py::handle ww,
                  py::handle scale, py::handle shift, int64_t fused, py::handle out, bool out_is_output,
                  const char* scale_name = "bn_scale", const char* shift_name = "bn_shift") {
  Checker ck(op);
  Args a;
  a.x = volume(ck, dev, x, op, "x", false);
  ck.dtype(a.x, "x", dev.float_dtypes);
  const int64_t C = a.x.sizes[1];
  if (fused < 0 || fused > C) ck.value_error(str("fused_channels must be in [0, ", C, "], got ", fused));
  a.wt = kernel_arg(ck, dev, wt, op, "weight_t", a.x, fused);
  a.wh = kernel_arg(ck, dev, wh, op, "weight_h", a.x, fused);
  a.ww = kernel_arg(ck, dev, ww, op, "weight_w", a.x, fused);
  a.scale = optional_tensor_from_py(scale, op, scale_name);
  a.shift = optional_tensor_from_py(shift, op, shift_name);
  if (a.scale.has_value != a.shift.has_value)
    ck.value_error(str("give both ", scale_name, " and ", shift_name, ", or neither"));
  if (a.scale.has_value) {
    for (auto* o : {&a.scale, &a.shift}) {
      const char* name = o == &a.scale ? scale_name : shift_name;
      ck.device(o->view, name, dev.type, dev.index);
      ck.contiguous(o->view, name);
      pointcloud_args::shape_is(ck, o->view, name, {fused});
      ck.same_dtype(o->view, name, a.x, "x");
    }
  }
  a.out = volume(ck, dev, out, op, out_is_output ? "out" : "grad_out", out_is_output);
  same_sizes(ck, a.out, out_is_output ? "out" : "grad_out", a.x);
  ck.same_dtype(a.out, out_is_output ? "out" : "grad_out", a.x, "x");
  a.g.N = a.x.sizes[0];
  a.g.C = C;
  a.g.T = a.x.sizes[2];
  a.g.H = a.x.sizes[3];
  a.g.W = a.x.sizes[4];
  a.g.F = fused;
  for (int d = 0; d < 4; ++d) {
    a.g.sx[d] = a.x.strides[d];
    a.g.so[d] = a.out.strides[d];
    a.g.sg[d] = a.x.strides[d];
  }
  return a;
}

// Backward outputs: grad_x with the strides of x, kernel gradients (F, 3) and, for the kernels that take one,
// the gy workspace.
struct Grads {
  TensorView gx, gwt, gwh, gww, gy;
};

inline Grads parse_grads(const Device& dev, const char* op, Args& a, py::handle gx, py::handle gwt,
                         py::handle gwh, py::handle gww, py::handle gy, DType weight_grad_dtype, DType gy_dtype,
                         bool needs_workspace = true) {
  Checker ck(op);
  Grads r;
  r.gx = volume(ck, dev, gx, op, "grad_x", true);
  same_sizes(ck, r.gx, "grad_x", a.x);
  ck.same_dtype(r.gx, "grad_x", a.x, "x");
  for (int d = 0; d < 4; ++d) a.g.sg[d] = r.gx.strides[d];
  TensorView* outs[3] = {&r.gwt, &r.gwh, &r.gww};
  py::handle hs[3] = {gwt, gwh, gww};
  const char* names[3] = {"grad_weight_t", "grad_weight_h", "grad_weight_w"};
  for (int i = 0; i < 3; ++i) {
    *outs[i] = pointcloud_args::output(ck, dev, hs[i], op, names[i]);
    pointcloud_args::shape_is(ck, *outs[i], names[i], {a.g.F, 3});
    ck.dtype(*outs[i], names[i], {weight_grad_dtype});
  }
  if (!needs_workspace) return r;
  r.gy = pointcloud_args::output(ck, dev, gy, op, "workspace");
  ck.dtype(r.gy, "workspace", {gy_dtype});
  pointcloud_args::check_workspace_size(ck, r.gy, a.g.N * a.g.F * a.g.T * a.g.H * a.g.W);
  return r;
}

// A per-channel (F,) tensor of x's dtype: BatchNorm statistics and parameter gradients of the training kernels.
inline TensorView channel_vector(const Device& dev, const char* op, py::handle h, const char* name,
                                 const Args& a, bool writable) {
  Checker ck(op);
  TensorView v = writable ? pointcloud_args::output(ck, dev, h, op, name) : pointcloud_args::input(ck, dev, h, op, name);
  pointcloud_args::shape_is(ck, v, name, {a.g.F});
  ck.same_dtype(v, name, a.x, "x");
  return v;
}

inline void require_epilogue(const char* op, const Args& a) {
  if (!a.scale.has_value) Checker(op).value_error("bn_weight and bn_bias are required");
}

inline void check_eps(const char* op, double eps) {
  if (!(eps > 0.0) || !std::isfinite(eps)) Checker(op).value_error(str("eps must be a positive number, got ", eps));
}

}  // namespace mvf_args
}  // namespace pvf
