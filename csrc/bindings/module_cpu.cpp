// pyvision_fast._C: the CPU kernels. Every function checks its arguments (pointcloud_args.h) before
// running a kernel, and releases the GIL while the kernel runs.
#include <pybind11/pybind11.h>

#include <climits>
#include <cmath>
#include <cstring>

#include "bindings/deform_conv_args.h"
#include "bindings/mvf_args.h"
#include "bindings/pointcloud_args.h"
#include "bindings/scale_space_args.h"
#include "bindings/sphere_args.h"
#include "bindings/stylegan2_args.h"
#include "bindings/vector_quantize_args.h"
#include "bindings/py_tensor.h"
#include "common/dispatch.h"
#include "common/parallel.h"
#include "deform_conv/deform_conv.h"
#include "mvf/mvf.h"
#include "pointcloud/pointcloud.h"
#include "scale_space/scale_space.h"
#include "sphere/sphere.h"
#include "stylegan2/stylegan2.h"
#include "vector_quantize/vector_quantize.h"

namespace py = pybind11;
using namespace pvf;
namespace pa = pvf::pointcloud_args;
namespace pc = pvf::pointcloud;

namespace {

const pa::Device& cpu() {
  static const pa::Device dev{DeviceType::CPU, -1,
                              [](const TensorView& v) {
                                const int64_t* p = v.ptr<int64_t>();
                                return std::vector<int64_t>(p, p + v.numel());
                              },
                              {DType::Float32, DType::Float64}};
  return dev;
}

void check_indices(const Checker& ck, const TensorView& idx, int64_t hi, const char* what) {
  const int64_t bad = pc::find_index_out_of_range_cpu(idx.ptr<int64_t>(), idx.numel(), 0, hi);
  if (bad >= 0)
    ck.value_error(str("idx[", bad, "] = ", idx.ptr<int64_t>()[bad], " is out of range for ", what, " (", hi, ")"));
}

void fps(py::handle points, py::handle lengths, py::handle start, int64_t K, py::handle idx, py::handle workspace) {
  auto a = pa::fps(cpu(), points, lengths, start, K, idx, workspace);
  Checker ck("sample_farthest_points");
  ck.same_dtype(a.workspace, "workspace", a.points, "points");
  pa::check_workspace_size(ck, a.workspace, a.B * (a.D + 1) * a.N);
  py::gil_scoped_release nogil;
  dispatch_floating(a.points.dtype, "sample_farthest_points", [&](auto tag) {
    using T = typename decltype(tag)::type;
    pc::sample_farthest_points_cpu<T>(a.points.ptr<T>(), a.B, a.N, a.D, a.lengths.ptr<int64_t>(),
                                      a.start.ptr<int64_t>(), a.K, a.idx.ptr<int64_t>(), a.workspace.ptr<T>());
  });
}

void knn(py::handle p1, py::handle p2, py::handle lengths1, py::handle lengths2, int64_t K, py::handle dists,
         py::handle idx, py::handle workspace, py::handle index_workspace) {
  const char* op = "knn_points";
  auto a = pa::query(cpu(), op, p1, p2, lengths1, lengths2, K, dists, idx);
  Checker ck(op);
  TensorView ws = pa::output(ck, cpu(), workspace, op, "workspace");
  ck.same_dtype(ws, "workspace", a.c.p1, "p1");
  pa::check_workspace_size(ck, ws, a.c.B * a.c.D * a.c.P2);
  TensorView iws = pa::output(ck, cpu(), index_workspace, op, "index_workspace");
  ck.dtype(iws, "index_workspace", {DType::Int64});
  pa::check_workspace_size(ck, iws, a.c.B * pc::knn_index_workspace(a.c.P2));
  py::gil_scoped_release nogil;
  dispatch_floating(a.c.p1.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pc::knn_cpu<T>(a.c.p1.ptr<T>(), a.c.p2.ptr<T>(), a.c.B, a.c.P1, a.c.P2, a.c.D, a.c.lengths1.ptr<int64_t>(),
                   a.c.lengths2.ptr<int64_t>(), a.K, a.dists.ptr<T>(), a.idx.ptr<int64_t>(), ws.ptr<T>(),
                   iws.ptr<int64_t>());
  });
}

void ball_query(py::handle p1, py::handle p2, py::handle lengths1, py::handle lengths2, int64_t K, double radius,
                py::handle dists, py::handle idx, py::handle workspace) {
  const char* op = "ball_query";
  Checker ck(op);
  if (!(radius > 0) || !std::isfinite(radius)) ck.value_error(str("radius must be a positive number, got ", radius));
  auto a = pa::query(cpu(), op, p1, p2, lengths1, lengths2, K, dists, idx);
  TensorView ws = pa::output(ck, cpu(), workspace, op, "workspace");
  ck.same_dtype(ws, "workspace", a.c.p1, "p1");
  pa::check_workspace_size(ck, ws, a.c.B * a.c.D * a.c.P2);
  py::gil_scoped_release nogil;
  dispatch_floating(a.c.p1.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pc::ball_query_cpu<T>(a.c.p1.ptr<T>(), a.c.p2.ptr<T>(), a.c.B, a.c.P1, a.c.P2, a.c.D,
                          a.c.lengths1.ptr<int64_t>(), a.c.lengths2.ptr<int64_t>(), a.K, radius, a.dists.ptr<T>(),
                          a.idx.ptr<int64_t>(), ws.ptr<T>());
  });
}

void gather_columns(py::handle features, py::handle idx, py::handle out) {
  const char* op = "gather_points";
  auto a = pa::gather(cpu(), op, features, idx, out, false);
  check_indices(Checker(op), a.idx, a.N, "the number of points N");
  py::gil_scoped_release nogil;
  dispatch_floating(a.features.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pc::gather_columns_cpu<T>(a.features.ptr<T>(), a.B, a.C, a.N, a.idx.ptr<int64_t>(), a.M, a.out.ptr<T>());
  });
}

void gather_columns_backward(py::handle grad_out, py::handle idx, py::handle grad_features) {
  const char* op = "gather_points_backward";
  auto a = pa::gather(cpu(), op, grad_features, idx, grad_out, true);
  check_indices(Checker(op), a.idx, a.N, "the number of points N");
  py::gil_scoped_release nogil;
  dispatch_floating(a.out.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pc::gather_columns_backward_cpu<T>(a.out.ptr<T>(), a.B, a.C, a.N, a.idx.ptr<int64_t>(), a.M,
                                       a.features.ptr<T>());
  });
}

void three_interpolate(py::handle features, py::handle idx, py::handle weight, py::handle out) {
  const char* op = "three_interpolate";
  auto a = pa::interpolate(cpu(), op, features, idx, weight, out);
  check_indices(Checker(op), a.idx, a.M, "the number of known points M");
  py::gil_scoped_release nogil;
  dispatch_floating(a.features.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pc::three_interpolate_cpu<T>(a.features.ptr<T>(), a.B, a.C, a.M, a.idx.ptr<int64_t>(), a.weight.ptr<T>(), a.N,
                                 a.out.ptr<T>());
  });
}

void three_interpolate_backward(py::handle grad_out, py::handle features, py::handle idx, py::handle weight,
                                py::handle grad_features, py::handle grad_weight) {
  const char* op = "three_interpolate_backward";
  auto g = pa::interpolate_backward(cpu(), op, grad_out, features, idx, weight, grad_features, grad_weight);
  const auto& a = g.a;
  check_indices(Checker(op), a.idx, a.M, "the number of known points M");
  py::gil_scoped_release nogil;
  dispatch_floating(a.features.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pc::three_interpolate_backward_cpu<T>(g.grad_out.ptr<T>(), a.features.ptr<T>(), a.B, a.C, a.M,
                                          a.idx.ptr<int64_t>(), a.weight.ptr<T>(), a.N, g.grad_features.ptr<T>(),
                                          g.grad_weight.ptr<T>());
  });
}

void mvf_forward(py::handle x, py::handle wt, py::handle wh, py::handle ww, py::handle scale, py::handle shift,
                 bool hardswish, int64_t fused, py::handle out) {
  const char* op = "multi_view_fusion";
  auto a = pvf::mvf_args::parse(cpu(), op, x, wt, wh, ww, scale, shift, fused, out, true);
  py::gil_scoped_release nogil;
  dispatch_floating(a.x.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pvf::mvf::mvf_forward_cpu<T>(a.g, a.x.ptr<T>(), a.wt.ptr<T>(), a.wh.ptr<T>(), a.ww.ptr<T>(), a.scale.ptr<T>(),
                                 a.shift.ptr<T>(), hardswish, a.out.ptr<T>());
  });
}

void mvf_backward(py::handle x, py::handle grad_out, py::handle wt, py::handle wh, py::handle ww, py::handle scale,
                  py::handle shift, bool hardswish, int64_t fused, py::handle grad_x, py::handle gwt, py::handle gwh,
                  py::handle gww, py::handle workspace, bool workspace_holds_grad) {
  const char* op = "multi_view_fusion_backward";
  auto a = pvf::mvf_args::parse(cpu(), op, x, wt, wh, ww, scale, shift, fused, grad_out, false);
  // The CPU kernel reads the workspace only when it holds the fused channels' gradient.
  auto r = pvf::mvf_args::parse_grads(cpu(), op, a, grad_x, gwt, gwh, gww, workspace, a.x.dtype, a.x.dtype,
                                      workspace_holds_grad);
  py::gil_scoped_release nogil;
  dispatch_floating(a.x.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pvf::mvf::mvf_backward_cpu<T>(a.g, a.x.ptr<T>(), a.out.ptr<T>(), a.wt.ptr<T>(), a.wh.ptr<T>(), a.ww.ptr<T>(),
                                  a.scale.ptr<T>(), a.shift.ptr<T>(), hardswish, r.gx.ptr<T>(), r.gwt.ptr<T>(),
                                  r.gwh.ptr<T>(), r.gww.ptr<T>(), r.gy.ptr<T>(), workspace_holds_grad);
  });
}

void mvf_forward_bn_train(py::handle x, py::handle wt, py::handle wh, py::handle ww, py::handle gamma,
                          py::handle beta, double eps, bool hardswish, int64_t fused, py::handle out, py::handle mean,
                          py::handle var) {
  const char* op = "multi_view_fusion_batchnorm";
  auto a = pvf::mvf_args::parse(cpu(), op, x, wt, wh, ww, gamma, beta, fused, out, true, "bn_weight", "bn_bias");
  pvf::mvf_args::require_epilogue(op, a);
  pvf::mvf_args::check_eps(op, eps);
  auto m = pvf::mvf_args::channel_vector(cpu(), op, mean, "mean", a, true);
  auto v = pvf::mvf_args::channel_vector(cpu(), op, var, "var", a, true);
  py::gil_scoped_release nogil;
  dispatch_floating(a.x.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pvf::mvf::mvf_forward_bn_train_cpu<T>(a.g, a.x.ptr<T>(), a.wt.ptr<T>(), a.wh.ptr<T>(), a.ww.ptr<T>(),
                                          a.scale.ptr<T>(), a.shift.ptr<T>(), eps, hardswish, a.out.ptr<T>(),
                                          m.ptr<T>(), v.ptr<T>());
  });
}

void mvf_backward_bn_train(py::handle x, py::handle grad_out, py::handle wt, py::handle wh, py::handle ww,
                           py::handle gamma, py::handle beta, py::handle mean, py::handle var, double eps,
                           bool hardswish, int64_t fused, py::handle grad_x, py::handle gwt, py::handle gwh,
                           py::handle gww, py::handle grad_gamma, py::handle grad_beta) {
  const char* op = "multi_view_fusion_batchnorm_backward";
  auto a = pvf::mvf_args::parse(cpu(), op, x, wt, wh, ww, gamma, beta, fused, grad_out, false, "bn_weight", "bn_bias");
  pvf::mvf_args::require_epilogue(op, a);
  pvf::mvf_args::check_eps(op, eps);
  auto m = pvf::mvf_args::channel_vector(cpu(), op, mean, "mean", a, false);
  auto v = pvf::mvf_args::channel_vector(cpu(), op, var, "var", a, false);
  auto gg = pvf::mvf_args::channel_vector(cpu(), op, grad_gamma, "grad_bn_weight", a, true);
  auto gb = pvf::mvf_args::channel_vector(cpu(), op, grad_beta, "grad_bn_bias", a, true);
  auto r = pvf::mvf_args::parse_grads(cpu(), op, a, grad_x, gwt, gwh, gww, py::none(), a.x.dtype, a.x.dtype,
                                       /*needs_workspace=*/false);
  py::gil_scoped_release nogil;
  dispatch_floating(a.x.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pvf::mvf::mvf_backward_bn_train_cpu<T>(a.g, a.x.ptr<T>(), a.out.ptr<T>(), a.wt.ptr<T>(), a.wh.ptr<T>(),
                                           a.ww.ptr<T>(), a.scale.ptr<T>(), a.shift.ptr<T>(), m.ptr<T>(),
                                           v.ptr<T>(), eps, hardswish, r.gx.ptr<T>(), r.gwt.ptr<T>(), r.gwh.ptr<T>(),
                                           r.gww.ptr<T>(), gg.ptr<T>(), gb.ptr<T>());
  });
}

namespace ss = pvf::scale_space;
namespace ssa = pvf::scale_space_args;
constexpr int64_t kAnyNumberOfScales = INT64_MAX;

void filter_bank_forward(py::handle x, py::handle kernels, const std::vector<int64_t>& radii, int64_t boundary,
                         py::handle out) {
  const char* op = "gaussian_scale_space";
  auto a = ssa::parse_bank(cpu(), op, x, kernels, radii, boundary, out, true, kAnyNumberOfScales);
  py::gil_scoped_release nogil;
  dispatch_floating(a.x.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    ss::filter_bank_forward_cpu<T>(a.g, a.x.ptr<T>(), a.kernels.ptr<T>(), a.y.ptr<T>());
  });
}

void filter_bank_backward(py::handle x, py::handle grad_out, py::handle kernels, const std::vector<int64_t>& radii,
                          int64_t boundary, py::handle grad_x, py::handle grad_kernels) {
  const char* op = "gaussian_scale_space_backward";
  auto a = ssa::parse_bank(cpu(), op, x, kernels, radii, boundary, grad_out, false, kAnyNumberOfScales);
  Checker ck(op);
  TensorView gx = pa::output(ck, cpu(), grad_x, op, "grad_x");
  pa::shape_is(ck, gx, "grad_x", {a.g.B, a.g.C, a.g.H, a.g.W});
  ck.same_dtype(gx, "grad_x", a.x, "x");
  TensorView gk = pa::output(ck, cpu(), grad_kernels, op, "grad_kernels");
  pa::shape_is(ck, gk, "grad_kernels", {a.g.S, 2 * a.g.R + 1});
  ck.same_dtype(gk, "grad_kernels", a.x, "x");
  py::gil_scoped_release nogil;
  dispatch_floating(a.x.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    ss::filter_bank_backward_cpu<T>(a.g, a.x.ptr<T>(), a.y.ptr<T>(), a.kernels.ptr<T>(), gx.ptr<T>(), gk.ptr<T>());
  });
}

void scale_attention_forward(py::handle y, py::handle gain, py::handle out) {
  const char* op = "scale_attention";
  auto a = ssa::parse_attention(cpu(), op, y, gain, out, true, kAnyNumberOfScales);
  py::gil_scoped_release nogil;
  dispatch_floating(a.y.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    ss::scale_attention_forward_cpu<T>(a.B, a.S, a.P, a.y.ptr<T>(), a.gain.ptr<T>(), a.out.ptr<T>());
  });
}

void scale_attention_backward(py::handle y, py::handle gain, py::handle grad_out, py::handle grad_y,
                              py::handle grad_gain) {
  const char* op = "scale_attention_backward";
  auto a = ssa::parse_attention(cpu(), op, y, gain, grad_out, false, kAnyNumberOfScales);
  Checker ck(op);
  TensorView gy = pa::output(ck, cpu(), grad_y, op, "grad_y");
  pa::shape_is(ck, gy, "grad_y", {a.B, a.S, a.P});
  ck.same_dtype(gy, "grad_y", a.y, "y");
  TensorView gg = pa::output(ck, cpu(), grad_gain, op, "grad_gain");
  pa::shape_is(ck, gg, "grad_gain", {a.S});
  ck.same_dtype(gg, "grad_gain", a.y, "y");
  py::gil_scoped_release nogil;
  dispatch_floating(a.y.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    ss::scale_attention_backward_cpu<T>(a.B, a.S, a.P, a.y.ptr<T>(), a.gain.ptr<T>(), a.out.ptr<T>(), gy.ptr<T>(),
                                        gg.ptr<T>());
  });
}

namespace dc = pvf::deform_conv;
namespace dca = pvf::deform_conv_args;

void deform_im2col(py::handle input, py::handle offset, py::handle mask, const py::tuple& conv, py::handle columns) {
  const char* op = "deform_conv2d";
  auto a = dca::parse(cpu(), op, input, offset, mask, conv);
  Checker ck(op);
  TensorView cols = dca::columns(ck, cpu(), a, columns, op, "columns", true);
  py::gil_scoped_release nogil;
  dispatch_floating(a.input.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dc::im2col_cpu<T>(a.g, a.input.ptr<T>(), a.offset.ptr<T>(), a.mask.ptr<T>(), cols.ptr<T>());
  });
}

void deform_col2im(py::handle input, py::handle offset, py::handle mask, const py::tuple& conv,
                   py::handle grad_columns, py::handle grad_input, py::handle grad_offset, py::handle grad_mask) {
  const char* op = "deform_conv2d_backward";
  auto a = dca::parse(cpu(), op, input, offset, mask, conv);
  Checker ck(op);
  TensorView gc = dca::columns(ck, cpu(), a, grad_columns, op, "grad_columns", false);
  TensorView gi = pa::output(ck, cpu(), grad_input, op, "grad_input");
  pa::shape_is(ck, gi, "grad_input", {a.g.B, a.g.C, a.g.H, a.g.W});
  ck.same_dtype(gi, "grad_input", a.input, "input");
  TensorView go = pa::output(ck, cpu(), grad_offset, op, "grad_offset");
  pa::shape_is(ck, go, "grad_offset", {a.g.B, 2 * a.g.OG * a.g.K(), a.g.Ho, a.g.Wo});
  ck.same_dtype(go, "grad_offset", a.input, "input");
  OptionalTensor gm = optional_tensor_from_py(grad_mask, op, "grad_mask", true);
  if (gm.has_value != a.mask.has_value) ck.value_error("grad_mask must be given exactly when mask is");
  if (gm.has_value) {
    ck.contiguous(gm.view, "grad_mask");
    pa::shape_is(ck, gm.view, "grad_mask", {a.g.B, a.g.OG * a.g.K(), a.g.Ho, a.g.Wo});
    ck.same_dtype(gm.view, "grad_mask", a.input, "input");
  }
  py::gil_scoped_release nogil;
  dispatch_floating(a.input.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dc::col2im_cpu<T>(a.g, a.input.ptr<T>(), a.offset.ptr<T>(), a.mask.ptr<T>(), gc.ptr<T>(), gi.ptr<T>(),
                      go.ptr<T>(), gm.ptr<T>());
  });
}

namespace sa = pvf::sphere_args;

void sphere_im2col(py::handle input, py::handle index, py::handle weight, int64_t r0, int64_t r1,
                   py::handle columns) {
  const char* op = "sphere_conv2d";
  Checker ck(op);
  TensorView in = sa::image_input(ck, cpu(), input, op);
  ck.dtype(in, "input", cpu().float_dtypes);
  auto a = sa::parse(cpu(), op, in, "input", in.dtype, index, weight, r0, r1);
  TensorView cols = sa::columns(ck, cpu(), a, in.dtype, columns, op, "columns", true, r1 - r0);
  py::gil_scoped_release nogil;
  dispatch_floating(in.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pvf::sphere::table_im2col_cpu<T>(a.g, in.ptr<T>(), a.index.ptr<int32_t>(), a.weight.ptr<T>(), r0, r1,
                                     cols.ptr<T>());
  });
}

void sphere_col2im(py::handle grad_columns, py::handle index, py::handle weight, int64_t r0, int64_t r1,
                   py::handle grad_input) {
  const char* op = "sphere_conv2d_backward";
  Checker ck(op);
  TensorView gi = pa::output(ck, cpu(), grad_input, op, "grad_input");
  ck.dtype(gi, "grad_input", cpu().float_dtypes);
  auto a = sa::parse(cpu(), op, gi, "grad_input", gi.dtype, index, weight, r0, r1);
  TensorView gc = sa::columns(ck, cpu(), a, gi.dtype, grad_columns, op, "grad_columns", false, r1 - r0);
  py::gil_scoped_release nogil;
  dispatch_floating(gi.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pvf::sphere::table_col2im_cpu<T>(a.g, gc.ptr<T>(), a.index.ptr<int32_t>(), a.weight.ptr<T>(), r0, r1,
                                     gi.ptr<T>());
  });
}

void vector_quantize_fwd(py::handle z, py::handle codebook, py::handle z_q, py::handle indices, py::handle workspace) {
  const char* op = "vector_quantize";
  auto a = pvf::vector_quantize_args::parse(cpu(), op, z, codebook, z_q, indices);
  Checker ck(op);
  TensorView ws = pa::output(ck, cpu(), workspace, op, "workspace");
  ck.same_dtype(ws, "workspace", a.z, "z");
  pa::check_workspace_size(ck, ws, pvf::vector_quantize::workspace_size_cpu(a.K, a.D));
  py::gil_scoped_release nogil;
  dispatch_floating(a.z.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pvf::vector_quantize::vector_quantize_cpu<T>(a.z.ptr<T>(), a.codebook.ptr<T>(), a.N, a.K, a.D, a.z_q.ptr<T>(),
                                                 a.indices.ptr<int64_t>(), ws.ptr<T>());
  });
}

// ---------------------------------------------------------------- stylegan2 (upfirdn2d, bias_act)
namespace sg = pvf::stylegan2;
namespace sga = pvf::stylegan2_args;

void upfirdn2d_fwd(py::handle x, py::handle f, const std::vector<int64_t>& up, const std::vector<int64_t>& down,
                   const std::vector<int64_t>& padding, py::handle out, py::handle workspace) {
  const char* op = "upfirdn2d";
  auto a = sga::parse_upfirdn2d(cpu(), op, x, f, up, down, padding, out, false);
  Checker ck(op);
  TensorView ws = pa::output(ck, cpu(), workspace, op, "workspace");
  ck.same_dtype(ws, "workspace", a.x, "x");
  const int64_t slot = sg::upfirdn2d_slot_size_cpu(a.g);
  pa::check_workspace_size(ck, ws, slot);
  const int64_t slots = slot > 0 ? ws.numel() / slot : INT64_MAX;
  py::gil_scoped_release nogil;
  dispatch_floating(a.x.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* taps = a.taps.ptr<T>();
    sg::upfirdn2d_cpu<T>(a.g, a.x.ptr<T>(), taps, taps, taps, a.out.ptr<T>(), ws.ptr<T>(), slots);
  });
}

// Elements of x's dtype one thread's workspace slot needs (the op allocates threads * this).
int64_t upfirdn2d_workspace(int64_t H, int64_t W, int64_t out_w, int64_t up_x, int64_t down_x, bool separable) {
  sg::Upfirdn2dGeometry g;
  g.separable = separable;
  g.x = sg::Axis{W, out_w, up_x < 1 ? 1 : up_x, down_x < 1 ? 1 : down_x, 0, 1};
  g.y = sg::Axis{H, 0, 1, 1, 0, 1};
  return sg::upfirdn2d_slot_size_cpu(g);
}

void bias_act_fwd(py::handle x, py::handle b, int64_t dim, int64_t act, double alpha, double gain, double clamp,
                  py::handle y) {
  const char* op = "bias_act";
  auto a = sga::parse_bias_act(cpu(), op, x, b, dim, act, alpha, gain, clamp, y, "y");
  py::gil_scoped_release nogil;
  dispatch_floating(a.x.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    sg::bias_act_cpu<T>(a.x.ptr<T>(), a.b.ptr<T>(), a.outer, a.C, a.inner, a.act, alpha, gain, clamp, a.out.ptr<T>());
  });
}

void bias_act_bwd(py::handle dy, py::handle x, py::handle b, int64_t dim, int64_t act, double alpha, double gain,
                  double clamp, py::handle dx) {
  const char* op = "bias_act_backward";
  auto a = sga::parse_bias_act(cpu(), op, x, b, dim, act, alpha, gain, clamp, dx, "dx");
  TensorView g = sga::parse_like_x(cpu(), op, dy, "dy", a.x);
  py::gil_scoped_release nogil;
  dispatch_floating(a.x.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    sg::bias_act_backward_cpu<T>(g.ptr<T>(), a.x.ptr<T>(), a.b.ptr<T>(), a.outer, a.C, a.inner, a.act, alpha, gain,
                                 clamp, a.out.ptr<T>());
  });
}

}  // namespace

// ---------------------------------------------------------------- mesh_raster (rasterize_triangles)
#include "bindings/mesh_raster_args.h"
#include "mesh_raster/mesh_raster.h"

namespace {

void rasterize_triangles_fwd(py::handle verts, py::handle faces, int64_t H, int64_t W, bool cull_backfaces,
                             py::handle rast, py::handle vertex_workspace) {
  auto a = pvf::mesh_raster_args::parse(cpu(), verts, faces, H, W, rast, vertex_workspace);
  py::gil_scoped_release nogil;
  dispatch_floating(a.verts.dtype, "rasterize_triangles", [&](auto tag) {
    using T = typename decltype(tag)::type;
    pvf::mesh_raster::rasterize_cpu<T>(a.verts.ptr<T>(), a.faces.ptr<int64_t>(), a.B, a.V, a.F, a.H, a.W,
                                       cull_backfaces, a.rast.ptr<T>(), a.vertex_ws.ptr<T>());
  });
}

}  // namespace

// CMake builds this file once per instruction-set variant (_C, _C_avx2, _C_avx512, _C_native).
#ifndef PVF_CPU_MODULE
#define PVF_CPU_MODULE _C
#define PVF_CPU_CAPABILITY_NAME "default"
#endif

namespace {

// What the CPU (and the OS, which must save the wider registers) supports, for choosing a variant to load. Only
// the baseline _C is asked: it runs everywhere.
py::dict cpu_features() {
  py::dict d;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12  // the micro-architecture levels by name
  d["avx2"] = bool(__builtin_cpu_supports("x86-64-v3"));
  d["avx512"] = bool(__builtin_cpu_supports("x86-64-v4"));
#else  // the levels' defining features (every CPU with them has the rest: F16C, LZCNT, MOVBE)
  d["avx2"] = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
              __builtin_cpu_supports("bmi2");
  d["avx512"] = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                __builtin_cpu_supports("avx512vl");
#endif
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(PVF_CPU_MODULE, m) {
  m.doc() = "pyvision_fast CPU kernels (raw-pointer kernels behind argument checks; see csrc/)";
  register_exception_translators();
  m.attr("cpu_capability") = PVF_CPU_CAPABILITY_NAME;
  m.def("cpu_features", &cpu_features,
        "{'avx2': bool, 'avx512': bool}: the instruction sets of the _C_avx2 / _C_avx512 variants this CPU runs.");
  m.def("set_num_threads", &pvf::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &pvf::num_threads);
#ifdef _OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
  m.def("sample_farthest_points", &fps, py::arg("points"), py::arg("lengths"), py::arg("start"), py::arg("K"),
        py::arg("idx"), py::arg("workspace"),
        "Farthest point sampling into idx (B, K); workspace needs B*(D+1)*N elements of the points dtype.");
  m.def("knn_points", &knn, py::arg("p1"), py::arg("p2"), py::arg("lengths1"), py::arg("lengths2"), py::arg("K"),
        py::arg("dists"), py::arg("idx"), py::arg("workspace"), py::arg("index_workspace"),
        "K nearest neighbours (squared distances, ascending); workspace needs B*D*P2 elements of the points'\n"
        "dtype, index_workspace B * knn_index_workspace(P2) int64.");
  m.def("knn_index_workspace", &pc::knn_index_workspace, py::arg("P2"));
  m.def("ball_query", &ball_query, py::arg("p1"), py::arg("p2"), py::arg("lengths1"), py::arg("lengths2"),
        py::arg("K"), py::arg("radius"), py::arg("dists"), py::arg("idx"), py::arg("workspace"),
        "First K points within radius, in index order; workspace needs B*D*P2 elements.");
  m.def("gather_columns", &gather_columns, py::arg("features"), py::arg("idx"), py::arg("out"));
  m.def("gather_columns_backward", &gather_columns_backward, py::arg("grad_out"), py::arg("idx"),
        py::arg("grad_features"));
  m.def("three_interpolate", &three_interpolate, py::arg("features"), py::arg("idx"), py::arg("weight"),
        py::arg("out"));
  m.def("three_interpolate_backward", &three_interpolate_backward, py::arg("grad_out"), py::arg("features"),
        py::arg("idx"), py::arg("weight"), py::arg("grad_features"), py::arg("grad_weight"));
  m.def("mvf_forward", &mvf_forward, py::arg("x"), py::arg("weight_t"), py::arg("weight_h"), py::arg("weight_w"),
        py::arg("bn_scale"), py::arg("bn_shift"), py::arg("hardswish"), py::arg("fused_channels"), py::arg("out"),
        "Multi-view fusion of x (N, C, T, H, W) into out (same sizes, any strides with W stride 1).");
  m.def("mvf_backward", &mvf_backward, py::arg("x"), py::arg("grad_out"), py::arg("weight_t"), py::arg("weight_h"),
        py::arg("weight_w"), py::arg("bn_scale"), py::arg("bn_shift"), py::arg("hardswish"),
        py::arg("fused_channels"), py::arg("grad_x"), py::arg("grad_weight_t"), py::arg("grad_weight_h"),
        py::arg("grad_weight_w"), py::arg("workspace"), py::arg("workspace_holds_grad"),
        "workspace_holds_grad: the workspace already holds the fused channels' gradient before the epilogue.");
  m.def("mvf_forward_bn_train", &mvf_forward_bn_train, py::arg("x"), py::arg("weight_t"), py::arg("weight_h"),
        py::arg("weight_w"), py::arg("bn_weight"), py::arg("bn_bias"), py::arg("eps"), py::arg("hardswish"),
        py::arg("fused_channels"), py::arg("out"), py::arg("mean"), py::arg("var"),
        "Multi-view fusion with training-mode BatchNorm (batch statistics) on the fused channels; writes the "
        "batch mean and biased variance.");
  m.def("mvf_backward_bn_train", &mvf_backward_bn_train, py::arg("x"), py::arg("grad_out"), py::arg("weight_t"),
        py::arg("weight_h"), py::arg("weight_w"), py::arg("bn_weight"), py::arg("bn_bias"), py::arg("mean"),
        py::arg("var"), py::arg("eps"), py::arg("hardswish"), py::arg("fused_channels"), py::arg("grad_x"),
        py::arg("grad_weight_t"), py::arg("grad_weight_h"), py::arg("grad_weight_w"), py::arg("grad_bn_weight"),
        py::arg("grad_bn_bias"));
  m.def("filter_bank_forward", &filter_bank_forward, py::arg("x"), py::arg("kernels"), py::arg("radii"),
        py::arg("boundary"), py::arg("out"),
        "Separable filtering of x (B, C, H, W) at S scales into out (B, S, C, H, W); see scale_space.h.");
  m.def("filter_bank_backward", &filter_bank_backward, py::arg("x"), py::arg("grad_out"), py::arg("kernels"),
        py::arg("radii"), py::arg("boundary"), py::arg("grad_x"), py::arg("grad_kernels"));
  m.def("scale_attention_forward", &scale_attention_forward, py::arg("y"), py::arg("gain"), py::arg("out"),
        "Softmax re-weighting of y (B, S, P) across its S scale groups; see scale_space.h.");
  m.def("scale_attention_backward", &scale_attention_backward, py::arg("y"), py::arg("gain"), py::arg("grad_out"),
        py::arg("grad_y"), py::arg("grad_gain"));
  m.def("deform_im2col", &deform_im2col, py::arg("input"), py::arg("offset"), py::arg("mask"), py::arg("conv"),
        py::arg("columns"), "Deformable-convolution columns (B, C*kh*kw, Ho*Wo); see deform_conv.h.");
  m.def("deform_col2im", &deform_col2im, py::arg("input"), py::arg("offset"), py::arg("mask"), py::arg("conv"),
        py::arg("grad_columns"), py::arg("grad_input"), py::arg("grad_offset"), py::arg("grad_mask"));
  m.def("sphere_im2col", &sphere_im2col, py::arg("input"), py::arg("table_index"), py::arg("table_weight"),
        py::arg("r0"), py::arg("r1"), py::arg("columns"),
        "Channels-last columns (r1 - r0, K, C) of a sampling-table convolution; see sphere.h.");
  m.def("sphere_col2im", &sphere_col2im, py::arg("grad_columns"), py::arg("table_index"), py::arg("table_weight"),
        py::arg("r0"), py::arg("r1"), py::arg("grad_input"));
  m.def("vector_quantize", &vector_quantize_fwd, py::arg("z"), py::arg("codebook"), py::arg("z_q"), py::arg("indices"),
        py::arg("workspace"),
        "Nearest codebook rows (squared L2, lowest index on ties): z (..., D), codebook (K, D) -> z_q like z,\n"
        "indices z.shape[:-1] int64; workspace needs vector_quantize_workspace(K, D) elements of z's dtype.");
  m.def("vector_quantize_workspace", &pvf::vector_quantize::workspace_size_cpu, py::arg("K"), py::arg("D"));
  // stylegan2
  m.def("upfirdn2d", &upfirdn2d_fwd, py::arg("x"), py::arg("f"), py::arg("up"), py::arg("down"), py::arg("padding"),
        py::arg("out"), py::arg("workspace"),
        "Upsample (zero insertion), pad, correlate with the taps f ((fh, fw), or (f,) separable), downsample:\n"
        "x (N, C, H, W) -> out; up/down (x, y), padding (x0, x1, y0, y1). See stylegan2.h.");
  m.def("upfirdn2d_workspace", &upfirdn2d_workspace, py::arg("H"), py::arg("W"), py::arg("out_w"), py::arg("up_x"),
        py::arg("down_x"), py::arg("separable"));
  m.def("bias_act", &bias_act_fwd, py::arg("x"), py::arg("b"), py::arg("dim"), py::arg("act"), py::arg("alpha"),
        py::arg("gain"), py::arg("clamp"), py::arg("y"),
        "y = clamp(act(x + b) * gain) (clamp < 0: none); act codes as pvf::stylegan2::Act.");
  m.def("bias_act_backward", &bias_act_bwd, py::arg("dy"), py::arg("x"), py::arg("b"), py::arg("dim"), py::arg("act"),
        py::arg("alpha"), py::arg("gain"), py::arg("clamp"), py::arg("dx"));
  // mesh_raster
  m.def("rasterize_triangles", &rasterize_triangles_fwd, py::arg("verts_clip"), py::arg("faces"), py::arg("H"),
        py::arg("W"), py::arg("cull_backfaces"), py::arg("rast"), py::arg("vertex_workspace"),
        "Triangle rasterization with a z-buffer: verts_clip (B, V, 4), faces (F, 3) int64 -> rast (B, H, W, 4)\n"
        "(u, v, z/w, id + 1); vertex_workspace needs mesh_raster_workspace(B, V) elements. See mesh_raster.h.");
  m.def("mesh_raster_workspace", &pvf::mesh_raster::vertex_workspace_size, py::arg("B"), py::arg("V"));
}
