// Argument checks of the stylegan2 family (upfirdn2d, bias_act), shared by the CPU (_C) and CUDA (_C_cuda)
// bindings. Every precondition (ranks, shapes, dtypes, devices, contiguity, up/down/padding ranges, a non-empty
// output, output and workspace shapes, the activation code, finite scalars) is checked here, before a kernel runs.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "bindings/pointcloud_args.h"
#include "bindings/py_tensor.h"
#include "common/checks.h"
#include "stylegan2/stylegan2.h"

namespace pvf {
namespace stylegan2_args {

namespace py = pybind11;
using pointcloud_args::Device;

// |padding| and up/down bounds: every index product stays far inside int64.
constexpr int64_t kMaxFactor = int64_t(1) << 16;
constexpr int64_t kMaxPad = int64_t(1) << 30;

struct Upfirdn2dArgs {
  TensorView x, taps, out;
  stylegan2::Upfirdn2dGeometry g;
};

inline void check_factor(const Checker& ck, const char* name, const std::vector<int64_t>& v) {
  if (v.size() != 2) ck.value_error(str("argument '", name, "' must have 2 values (x, y), got ", v.size()));
  for (int64_t f : v)
    if (f < 1 || f > kMaxFactor)
      ck.value_error(str("argument '", name, "' must be an integer in [1, ", kMaxFactor, "], got ", f));
}

// x (N, C, H, W); taps (fh, fw) or (f,) (separable); up (x, y), down (x, y), padding (x0, x1, y0, y1);
// taps_dtype: the dtype the taps must have (x's, or float32 for half types on the GPU).
inline Upfirdn2dArgs parse_upfirdn2d(const Device& dev, const char* op, py::handle x_h, py::handle taps_h,
                                     const std::vector<int64_t>& up, const std::vector<int64_t>& down,
                                     const std::vector<int64_t>& padding, py::handle out_h, bool float_taps_for_half) {
  Checker ck(op);
  Upfirdn2dArgs a;
  a.x = pointcloud_args::input(ck, dev, x_h, op, "x");
  a.taps = pointcloud_args::input(ck, dev, taps_h, op, "f");
  ck.ndim(a.x, "x", 4, "(N, C, H, W)");
  pointcloud_args::floating(ck, dev, a.x, "x");
  const bool half = a.x.dtype == DType::Float16 || a.x.dtype == DType::BFloat16;
  if (float_taps_for_half && half) ck.dtype(a.taps, "f", {DType::Float32});
  else ck.same_dtype(a.taps, "f", a.x, "x");
  if (a.taps.ndim != 1 && a.taps.ndim != 2)
    ck.value_error(str("argument 'f' must have 1 dimension (separable) or 2 (fh, fw), got shape ",
                       a.taps.shape_string()));
  for (int d = 0; d < a.taps.ndim; ++d)
    if (a.taps.sizes[d] < 1) ck.value_error(str("argument 'f' must not be empty, got shape ", a.taps.shape_string()));
  check_factor(ck, "up", up);
  check_factor(ck, "down", down);
  if (padding.size() != 4)
    ck.value_error(str("argument 'padding' must have 4 values (x0, x1, y0, y1), got ", padding.size()));
  for (int64_t p : padding)
    if (p < -kMaxPad || p > kMaxPad)
      ck.value_error(str("argument 'padding' must be in [", -kMaxPad, ", ", kMaxPad, "], got ", p));
  auto& g = a.g;
  g.separable = a.taps.ndim == 1;
  g.planes = a.x.size(0) * a.x.size(1);
  const int64_t fw = a.taps.size(-1), fh = g.separable ? fw : a.taps.size(0);
  g.x = stylegan2::Axis{a.x.size(3), 0, up[0], down[0], padding[0], fw};
  g.y = stylegan2::Axis{a.x.size(2), 0, up[1], down[1], padding[2], fh};
  if (a.x.size(2) > kMaxPad || a.x.size(3) > kMaxPad)
    ck.value_error(str("argument 'x' is too large, shape ", a.x.shape_string()));
  const char* axis_name[2] = {"x (width)", "y (height)"};
  stylegan2::Axis* axes[2] = {&g.x, &g.y};
  const int64_t pad1[2] = {padding[1], padding[3]};
  for (int i = 0; i < 2; ++i) {
    stylegan2::Axis& ax = *axes[i];
    const int64_t L = ax.in * ax.up + ax.pad0 + pad1[i];
    if (L < ax.f)
      ck.value_error(str("argument 'padding' leaves no output along ", axis_name[i], ": in * up + pad0 + pad1 = ",
                         ax.in, " * ", ax.up, " + ", ax.pad0, " + ", pad1[i], " = ", L,
                         " is smaller than the filter size ", ax.f));
    ax.out = stylegan2::upfirdn_out_size(ax.in, ax.up, ax.down, ax.pad0, pad1[i], ax.f);
  }
  a.out = pointcloud_args::output(ck, dev, out_h, op, "out");
  ck.same_dtype(a.out, "out", a.x, "x");
  if (a.out.ndim != 4 || a.out.sizes[0] != a.x.sizes[0] || a.out.sizes[1] != a.x.sizes[1] ||
      a.out.sizes[2] != g.y.out || a.out.sizes[3] != g.x.out)
    ck.value_error(str("argument 'out' must have shape (", a.x.sizes[0], ", ", a.x.sizes[1], ", ", g.y.out, ", ",
                       g.x.out, "), got ", a.out.shape_string()));
  return a;
}

struct BiasActArgs {
  TensorView x, out;
  OptionalTensor b;
  int64_t outer = 1, C = 1, inner = 1;
  stylegan2::Act act = stylegan2::Act::Linear;
};

// x (any rank >= 1) contiguous; b None or (x.shape[dim],); out like x (y forward, dx backward); dy like x.
inline BiasActArgs parse_bias_act(const Device& dev, const char* op, py::handle x_h, py::handle b_h, int64_t dim,
                                  int64_t act, double alpha, double gain, double clamp, py::handle out_h,
                                  const char* out_name) {
  Checker ck(op);
  BiasActArgs a;
  a.x = pointcloud_args::input(ck, dev, x_h, op, "x");
  pointcloud_args::floating(ck, dev, a.x, "x");
  if (a.x.ndim < 1) ck.value_error(str("argument 'x' must have at least 1 dimension, got shape ", a.x.shape_string()));
  if (dim < 0 || dim >= a.x.ndim)
    ck.value_error(str("argument 'dim' must be in [0, ", a.x.ndim, ") for x of shape ", a.x.shape_string(), ", got ",
                       dim));
  if (act < 0 || act >= stylegan2::kNumActs)
    ck.value_error(str("argument 'act' must be an activation code in [0, ", stylegan2::kNumActs, "), got ", act));
  a.act = static_cast<stylegan2::Act>(act);
  if (!std::isfinite(alpha)) ck.value_error(str("argument 'alpha' must be finite, got ", alpha));
  if (!std::isfinite(gain)) ck.value_error(str("argument 'gain' must be finite, got ", gain));
  if (std::isnan(clamp)) ck.value_error("argument 'clamp' must not be NaN");
  a.b = optional_tensor_from_py(b_h, op, "b");
  if (a.b.has_value) {
    ck.device(a.b.view, "b", dev.type, dev.index);
    ck.contiguous(a.b.view, "b");
    ck.same_dtype(a.b.view, "b", a.x, "x");
    ck.ndim(a.b.view, "b", 1, "(x.shape[dim],)");
    if (a.b.view.sizes[0] != a.x.size(static_cast<int>(dim)))
      ck.value_error(str("argument 'b' has ", a.b.view.sizes[0], " elements but x.shape[", dim, "] is ",
                         a.x.size(static_cast<int>(dim)), " (x shape ", a.x.shape_string(), ")"));
  }
  for (int d = 0; d < a.x.ndim; ++d) {
    if (d < dim) a.outer *= a.x.sizes[d];
    else if (d > dim) a.inner *= a.x.sizes[d];
  }
  a.C = a.x.size(static_cast<int>(dim));
  a.out = pointcloud_args::output(ck, dev, out_h, op, out_name);
  ck.same_dtype(a.out, out_name, a.x, "x");
  bool same = a.out.ndim == a.x.ndim;
  for (int d = 0; same && d < a.x.ndim; ++d) same = a.out.sizes[d] == a.x.sizes[d];
  if (!same)
    ck.value_error(str("argument '", out_name, "' must have the shape of 'x' ", a.x.shape_string(), ", got ",
                       a.out.shape_string()));
  return a;
}

inline TensorView parse_like_x(const Device& dev, const char* op, py::handle h, const char* name,
                               const TensorView& x) {
  Checker ck(op);
  TensorView v = pointcloud_args::input(ck, dev, h, op, name);
  ck.same_dtype(v, name, x, "x");
  bool same = v.ndim == x.ndim;
  for (int d = 0; same && d < x.ndim; ++d) same = v.sizes[d] == x.sizes[d];
  if (!same)
    ck.value_error(str("argument '", name, "' must have the shape of 'x' ", x.shape_string(), ", got ",
                       v.shape_string()));
  return v;
}

}  // namespace stylegan2_args
}  // namespace pvf
