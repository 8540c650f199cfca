// pyvision_fast._C_cuda: the CUDA kernels. Linked with the static CUDA runtime, so it imports on machines
// without a GPU or driver; every entry point then raises RuntimeError saying no device is available.
// Argument checks are shared with the CPU module (pointcloud_args.h); small int64 arrays that must be
// validated (lengths, start indices) are copied to the host first, index arrays are range-checked on the
// device before the kernel that uses them.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cmath>

#include "bindings/deform_conv_args.h"
#include "bindings/mvf_args.h"
#include "bindings/pointcloud_args.h"
#include "bindings/scale_space_args.h"
#include "bindings/sphere_args.h"
#include "bindings/stylegan2_args.h"
#include "bindings/vector_quantize_args.h"
#include "bindings/py_tensor.h"
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

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw DeviceError(str(what, ": CUDA error ", static_cast<int>(err), " (", cudaGetErrorString(err), ")"));
  }
}

// Returns (count, message); count is 0 with the runtime's reason when no usable device/driver exists.
py::tuple device_status() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return py::make_tuple(0, str("CUDA error ", static_cast<int>(err), " (", cudaGetErrorString(err), ")"));
  }
  return py::make_tuple(n, std::string("ok"));
}

// The device all arguments of one call must share: that of the first tensor argument. Makes it current
// for the call and restores the caller's current device afterwards.
struct CudaCall {
  pa::Device dev;
  int previous_device = -1;
  CudaCall(const CudaCall&) = delete;
  CudaCall& operator=(const CudaCall&) = delete;
  ~CudaCall() {
    if (previous_device >= 0) cudaSetDevice(previous_device);
  }
  explicit CudaCall(py::handle first, const char* op) {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess || n == 0) {
      cudaGetLastError();
      throw DeviceError(str(op, ": no CUDA device is available (", cudaGetErrorString(err), ")"));
    }
    TensorView v = tensor_from_py(first, op, "first argument");
    if (v.device != DeviceType::CUDA) throw TypeError(str(op, ": the CUDA module was called with CPU tensors"));
    int current = 0;
    check_cuda(cudaGetDevice(&current), op);
    if (current != v.device_index) {
      check_cuda(cudaSetDevice(v.device_index), op);
      previous_device = current;
    }
    dev = pa::Device{DeviceType::CUDA, v.device_index,
                     [op](const TensorView& t) {
                       std::vector<int64_t> host(t.numel());
                       if (!host.empty())
                         check_cuda(cudaMemcpy(host.data(), t.data, host.size() * sizeof(int64_t),
                                               cudaMemcpyDeviceToHost),
                                    op);
                       return host;
                     },
                     {DType::Float32, DType::Float64, DType::Float16, DType::BFloat16},
                     /*half_grads_in_float32=*/true};
  }
};

void* stream_ptr(uintptr_t s) { return reinterpret_cast<void*>(s); }

void check_indices(const Checker& ck, const TensorView& idx, int64_t hi, const TensorView& flag, uintptr_t stream,
                   const char* what) {
  ck.dtype(flag, "flag", {DType::Int32});
  if (flag.numel() < 1 || flag.device != DeviceType::CUDA) ck.value_error("flag must be a CUDA int32 tensor");
  pc::index_out_of_range_cuda(idx.ptr<int64_t>(), idx.numel(), 0, hi, flag.ptr<int32_t>(), stream_ptr(stream));
  int32_t host = 0;
  check_cuda(cudaMemcpyAsync(&host, flag.data, sizeof(int32_t), cudaMemcpyDeviceToHost,
                             static_cast<cudaStream_t>(stream_ptr(stream))),
             "index check");
  check_cuda(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_ptr(stream))), "index check");
  if (host) ck.value_error(str("idx has values out of range for ", what, " (", hi, ")"));
}

void fps(py::handle points, py::handle lengths, py::handle start, int64_t K, py::handle idx, py::handle workspace,
         uintptr_t stream) {
  CudaCall call(points, "sample_farthest_points");
  auto a = pa::fps(call.dev, points, lengths, start, K, idx, workspace);
  Checker ck("sample_farthest_points");
  // workspace: B * N accumulators, float64 for float64 points, float32 otherwise (half types included).
  ck.dtype(a.workspace, "workspace", {a.points.dtype == DType::Float64 ? DType::Float64 : DType::Float32});
  pa::check_workspace_size(ck, a.workspace, a.B * a.N);
  pc::sample_farthest_points_cuda(a.points.dtype, a.points.data, a.B, a.N, a.D, a.lengths.ptr<int64_t>(),
                                  a.start.ptr<int64_t>(), a.K, a.idx.ptr<int64_t>(), a.workspace.data,
                                  stream_ptr(stream));
}

void knn(py::handle p1, py::handle p2, py::handle lengths1, py::handle lengths2, int64_t K, py::handle dists,
         py::handle idx, uintptr_t stream) {
  CudaCall call(p1, "knn_points");
  auto a = pa::query(call.dev, "knn_points", p1, p2, lengths1, lengths2, K, dists, idx);
  pc::knn_cuda(a.c.p1.dtype, a.c.p1.data, a.c.p2.data, a.c.B, a.c.P1, a.c.P2, a.c.D, a.c.lengths1.ptr<int64_t>(),
               a.c.lengths2.ptr<int64_t>(), a.K, a.dists.data, a.idx.ptr<int64_t>(), stream_ptr(stream));
}

void ball_query(py::handle p1, py::handle p2, py::handle lengths1, py::handle lengths2, int64_t K, double radius,
                py::handle dists, py::handle idx, uintptr_t stream) {
  CudaCall call(p1, "ball_query");
  Checker ck("ball_query");
  if (!(radius > 0) || !std::isfinite(radius)) ck.value_error(str("radius must be a positive number, got ", radius));
  auto a = pa::query(call.dev, "ball_query", p1, p2, lengths1, lengths2, K, dists, idx);
  pc::ball_query_cuda(a.c.p1.dtype, a.c.p1.data, a.c.p2.data, a.c.B, a.c.P1, a.c.P2, a.c.D,
                      a.c.lengths1.ptr<int64_t>(), a.c.lengths2.ptr<int64_t>(), a.K, radius, a.dists.data,
                      a.idx.ptr<int64_t>(), stream_ptr(stream));
}

void gather_columns(py::handle features, py::handle idx, py::handle out, py::handle flag, uintptr_t stream) {
  CudaCall call(features, "gather_points");
  auto a = pa::gather(call.dev, "gather_points", features, idx, out, false);
  check_indices(Checker("gather_points"), a.idx, a.N, tensor_from_py(flag, "gather_points", "flag", true), stream,
                "the number of points N");
  pc::gather_columns_cuda(a.features.dtype, a.features.data, a.B, a.C, a.N, a.idx.ptr<int64_t>(), a.M, a.out.data,
                          stream_ptr(stream));
}

void gather_columns_backward(py::handle grad_out, py::handle idx, py::handle grad_features, py::handle flag,
                             uintptr_t stream) {
  const char* op = "gather_points_backward";
  CudaCall call(grad_out, op);
  auto a = pa::gather(call.dev, op, grad_features, idx, grad_out, true);
  check_indices(Checker(op), a.idx, a.N, tensor_from_py(flag, op, "flag", true), stream, "the number of points N");
  pc::gather_columns_backward_cuda(a.out.dtype, a.out.data, a.B, a.C, a.N, a.idx.ptr<int64_t>(), a.M,
                                   a.features.data, stream_ptr(stream));
}

void three_interpolate(py::handle features, py::handle idx, py::handle weight, py::handle out, py::handle flag,
                       uintptr_t stream) {
  const char* op = "three_interpolate";
  CudaCall call(features, op);
  auto a = pa::interpolate(call.dev, op, features, idx, weight, out);
  check_indices(Checker(op), a.idx, a.M, tensor_from_py(flag, op, "flag", true), stream,
                "the number of known points M");
  pc::three_interpolate_cuda(a.features.dtype, a.features.data, a.B, a.C, a.M, a.idx.ptr<int64_t>(), a.weight.data,
                             a.N, a.out.data, stream_ptr(stream));
}

void three_interpolate_backward(py::handle grad_out, py::handle features, py::handle idx, py::handle weight,
                                py::handle grad_features, py::handle grad_weight, py::handle flag, uintptr_t stream) {
  const char* op = "three_interpolate_backward";
  CudaCall call(features, op);
  auto g = pa::interpolate_backward(call.dev, op, grad_out, features, idx, weight, grad_features, grad_weight);
  const auto& a = g.a;
  check_indices(Checker(op), a.idx, a.M, tensor_from_py(flag, op, "flag", true), stream,
                "the number of known points M");
  pc::three_interpolate_backward_cuda(a.features.dtype, g.grad_out.data, a.features.data, a.B, a.C, a.M,
                                      a.idx.ptr<int64_t>(), a.weight.data, a.N,
                                      g.grad_features.has_value ? g.grad_features.view.data : nullptr,
                                      g.grad_weight.has_value ? g.grad_weight.view.data : nullptr,
                                      stream_ptr(stream));
}

// ---------------------------------------------------------------- point-cloud candidates ("cuda:next")
// No call reads device data back to the host: lengths and start indices are clamped by the kernels, index
// inputs are not range-checked (an out-of-range index is skipped; see pointcloud.h). Only where the sizes
// exceed the candidates' 32-bit plans do the search ops validate lengths on the host and run the kernels
// above; the gathers then refuse the call.

// The device of `call` without host reads of lengths / start values.
pa::Device without_reads(const pa::Device& dev) {
  pa::Device d = dev;
  d.read_int64 = nullptr;
  return d;
}

void fps_next(py::handle points, py::handle lengths, py::handle start, int64_t K, py::handle idx,
              py::handle workspace, uintptr_t stream) {
  const char* op = "sample_farthest_points";
  CudaCall call(points, op);
  auto a = pa::fps(without_reads(call.dev), points, lengths, start, K, idx, workspace);
  Checker ck(op);
  ck.dtype(a.workspace, "workspace", {a.points.dtype == DType::Float64 ? DType::Float64 : DType::Float32});
  pa::check_workspace_size(ck, a.workspace, a.B * a.N);
  if (pc::sample_farthest_points_cuda_next(a.points.dtype, a.points.data, a.B, a.N, a.D, a.lengths.ptr<int64_t>(),
                                           a.start.ptr<int64_t>(), a.K, a.idx.ptr<int64_t>(), a.workspace.data,
                                           stream_ptr(stream)))
    return;
  pa::fps(call.dev, points, lengths, start, K, idx, workspace);  // validates lengths and start on the host
  pc::sample_farthest_points_cuda(a.points.dtype, a.points.data, a.B, a.N, a.D, a.lengths.ptr<int64_t>(),
                                  a.start.ptr<int64_t>(), a.K, a.idx.ptr<int64_t>(), a.workspace.data,
                                  stream_ptr(stream));
}

void knn_next(py::handle p1, py::handle p2, py::handle lengths1, py::handle lengths2, int64_t K, py::handle dists,
              py::handle idx, uintptr_t stream) {
  const char* op = "knn_points";
  CudaCall call(p1, op);
  auto a = pa::query(without_reads(call.dev), op, p1, p2, lengths1, lengths2, K, dists, idx);
  if (pc::knn_cuda_next(a.c.p1.dtype, a.c.p1.data, a.c.p2.data, a.c.B, a.c.P1, a.c.P2, a.c.D,
                        a.c.lengths1.ptr<int64_t>(), a.c.lengths2.ptr<int64_t>(), a.K, a.dists.data,
                        a.idx.ptr<int64_t>(), stream_ptr(stream)))
    return;
  pa::query(call.dev, op, p1, p2, lengths1, lengths2, K, dists, idx);  // validates lengths on the host
  pc::knn_cuda(a.c.p1.dtype, a.c.p1.data, a.c.p2.data, a.c.B, a.c.P1, a.c.P2, a.c.D, a.c.lengths1.ptr<int64_t>(),
               a.c.lengths2.ptr<int64_t>(), a.K, a.dists.data, a.idx.ptr<int64_t>(), stream_ptr(stream));
}

void ball_query_next(py::handle p1, py::handle p2, py::handle lengths1, py::handle lengths2, int64_t K,
                     double radius, py::handle dists, py::handle idx, uintptr_t stream) {
  const char* op = "ball_query";
  CudaCall call(p1, op);
  Checker ck(op);
  if (!(radius > 0) || !std::isfinite(radius)) ck.value_error(str("radius must be a positive number, got ", radius));
  auto a = pa::query(without_reads(call.dev), op, p1, p2, lengths1, lengths2, K, dists, idx);
  if (pc::ball_query_cuda_next(a.c.p1.dtype, a.c.p1.data, a.c.p2.data, a.c.B, a.c.P1, a.c.P2, a.c.D,
                               a.c.lengths1.ptr<int64_t>(), a.c.lengths2.ptr<int64_t>(), a.K, radius, a.dists.data,
                               a.idx.ptr<int64_t>(), stream_ptr(stream)))
    return;
  pa::query(call.dev, op, p1, p2, lengths1, lengths2, K, dists, idx);  // validates lengths on the host
  pc::ball_query_cuda(a.c.p1.dtype, a.c.p1.data, a.c.p2.data, a.c.B, a.c.P1, a.c.P2, a.c.D,
                      a.c.lengths1.ptr<int64_t>(), a.c.lengths2.ptr<int64_t>(), a.K, radius, a.dists.data,
                      a.idx.ptr<int64_t>(), stream_ptr(stream));
}

void refuse_size(const char* op) {
  Checker(op).value_error("sizes beyond 2^31 values per row or index are not supported by the candidate kernels");
}

void gather_columns_next(py::handle features, py::handle idx, py::handle out, uintptr_t stream) {
  const char* op = "gather_points";
  CudaCall call(features, op);
  auto a = pa::gather(call.dev, op, features, idx, out, false);
  if (!pc::gather_columns_cuda_next(a.features.dtype, a.features.data, a.B, a.C, a.N, a.idx.ptr<int64_t>(), a.M,
                                    a.out.data, stream_ptr(stream)))
    refuse_size(op);
}

void gather_columns_backward_next(py::handle grad_out, py::handle idx, py::handle grad_features, uintptr_t stream) {
  const char* op = "gather_points_backward";
  CudaCall call(grad_out, op);
  auto a = pa::gather(call.dev, op, grad_features, idx, grad_out, true);
  if (!pc::gather_columns_backward_cuda_next(a.out.dtype, a.out.data, a.B, a.C, a.N, a.idx.ptr<int64_t>(), a.M,
                                             a.features.data, stream_ptr(stream)))
    refuse_size(op);
}

void three_interpolate_next(py::handle features, py::handle idx, py::handle weight, py::handle out,
                            uintptr_t stream) {
  const char* op = "three_interpolate";
  CudaCall call(features, op);
  auto a = pa::interpolate(call.dev, op, features, idx, weight, out);
  if (!pc::three_interpolate_cuda_next(a.features.dtype, a.features.data, a.B, a.C, a.M, a.idx.ptr<int64_t>(),
                                       a.weight.data, a.N, a.out.data, stream_ptr(stream)))
    refuse_size(op);
}

void three_interpolate_backward_next(py::handle grad_out, py::handle features, py::handle idx, py::handle weight,
                                     py::handle grad_features, py::handle grad_weight, uintptr_t stream) {
  const char* op = "three_interpolate_backward";
  CudaCall call(features, op);
  auto g = pa::interpolate_backward(call.dev, op, grad_out, features, idx, weight, grad_features, grad_weight);
  const auto& a = g.a;
  if (!pc::three_interpolate_backward_cuda_next(a.features.dtype, g.grad_out.data, a.features.data, a.B, a.C, a.M,
                                                a.idx.ptr<int64_t>(), a.weight.data, a.N,
                                                g.grad_features.has_value ? g.grad_features.view.data : nullptr,
                                                g.grad_weight.has_value ? g.grad_weight.view.data : nullptr,
                                                stream_ptr(stream)))
    refuse_size(op);
}

void neighbour_dists_backward_next(py::handle p1, py::handle p2, py::handle lengths1, py::handle lengths2,
                                   py::handle idx, py::handle grad_dists, py::handle grad_p1, py::handle grad_p2,
                                   uintptr_t stream) {
  const char* op = "knn_points_backward";
  CudaCall call(p1, op);
  auto g = pa::neighbour_backward(without_reads(call.dev), op, p1, p2, lengths1, lengths2, idx, grad_dists, grad_p1,
                                  grad_p2);
  if (!pc::neighbour_dists_backward_cuda_next(g.c.p1.dtype, g.c.p1.data, g.c.p2.data, g.c.B, g.c.P1, g.c.P2, g.c.D,
                                              g.c.lengths1.ptr<int64_t>(), g.c.lengths2.ptr<int64_t>(),
                                              g.idx.ptr<int64_t>(), g.K, g.grad.data, g.grad_p1.data,
                                              g.grad_p2.data, stream_ptr(stream)))
    refuse_size(op);
}

void mvf_forward(py::handle x, py::handle wt, py::handle wh, py::handle ww, py::handle scale, py::handle shift,
                 bool hardswish, int64_t fused, py::handle out, uintptr_t stream) {
  const char* op = "multi_view_fusion";
  CudaCall call(x, op);
  auto a = pvf::mvf_args::parse(call.dev, op, x, wt, wh, ww, scale, shift, fused, out, true);
  pvf::mvf::mvf_forward_cuda(a.x.dtype, a.g, a.x.data, a.wt.data, a.wh.data, a.ww.data,
                             a.scale.has_value ? a.scale.view.data : nullptr,
                             a.shift.has_value ? a.shift.view.data : nullptr, hardswish, a.out.data,
                             stream_ptr(stream));
}

void mvf_backward(py::handle x, py::handle grad_out, py::handle wt, py::handle wh, py::handle ww, py::handle scale,
                  py::handle shift, bool hardswish, int64_t fused, py::handle grad_x, py::handle gwt, py::handle gwh,
                  py::handle gww, py::handle workspace, bool workspace_holds_grad, uintptr_t stream) {
  const char* op = "multi_view_fusion_backward";
  CudaCall call(x, op);
  auto a = pvf::mvf_args::parse(call.dev, op, x, wt, wh, ww, scale, shift, fused, grad_out, false);
  const bool half = a.x.dtype == DType::Float16 || a.x.dtype == DType::BFloat16;
  const DType acc = half ? DType::Float32 : a.x.dtype;
  auto r = pvf::mvf_args::parse_grads(call.dev, op, a, grad_x, gwt, gwh, gww, workspace, acc, acc);
  pvf::mvf::mvf_backward_cuda(a.x.dtype, a.g, a.x.data, a.out.data, a.wt.data, a.wh.data, a.ww.data,
                              a.scale.has_value ? a.scale.view.data : nullptr,
                              a.shift.has_value ? a.shift.view.data : nullptr, hardswish, r.gx.data, r.gwt.data,
                              r.gwh.data, r.gww.data, r.gy.data, workspace_holds_grad, stream_ptr(stream));
}

namespace ss = pvf::scale_space;
namespace ssa = pvf::scale_space_args;

DType accumulation_dtype(DType d) { return d == DType::Float16 || d == DType::BFloat16 ? DType::Float32 : d; }

void filter_bank_forward(py::handle x, py::handle kernels, const std::vector<int64_t>& radii, int64_t boundary,
                         py::handle out, py::handle workspace, uintptr_t stream) {
  const char* op = "gaussian_scale_space";
  CudaCall call(x, op);
  auto a = ssa::parse_bank(call.dev, op, x, kernels, radii, boundary, out, true, ss::kMaxScales);
  Checker ck(op);
  TensorView ws = pa::output(ck, call.dev, workspace, op, "workspace");
  ck.dtype(ws, "workspace", {accumulation_dtype(a.x.dtype)});
  pa::check_workspace_size(ck, ws, a.y.numel());
  ss::filter_bank_forward_cuda(a.x.dtype, a.g, a.x.data, a.kernels.data, a.y.data, ws.data, stream_ptr(stream));
}

// The backward's outputs (grad_x like x, grad_kernels (S, 2R + 1) and the workspace in the accumulation type),
// checked; workspace_items(bank) is what the kernels need.
struct BankBackward {
  ssa::Bank a;
  TensorView gx, gk, ws;
};

template <typename WorkspaceItems>
BankBackward parse_bank_backward(const pa::Device& dev, const char* op, py::handle x, py::handle grad_out,
                                 py::handle kernels, const std::vector<int64_t>& radii, int64_t boundary,
                                 py::handle grad_x, py::handle grad_kernels, py::handle workspace,
                                 WorkspaceItems workspace_items) {
  BankBackward b{ssa::parse_bank(dev, op, x, kernels, radii, boundary, grad_out, false, ss::kMaxScales), {}, {}, {}};
  Checker ck(op);
  const DType acc = accumulation_dtype(b.a.x.dtype);
  b.gx = pa::output(ck, dev, grad_x, op, "grad_x");
  pa::shape_is(ck, b.gx, "grad_x", {b.a.g.B, b.a.g.C, b.a.g.H, b.a.g.W});
  ck.same_dtype(b.gx, "grad_x", b.a.x, "x");
  b.gk = pa::output(ck, dev, grad_kernels, op, "grad_kernels");
  pa::shape_is(ck, b.gk, "grad_kernels", {b.a.g.S, 2 * b.a.g.R + 1});
  ck.dtype(b.gk, "grad_kernels", {acc});
  b.ws = pa::output(ck, dev, workspace, op, "workspace");
  ck.dtype(b.ws, "workspace", {acc});
  pa::check_workspace_size(ck, b.ws, workspace_items(b.a));
  return b;
}

void filter_bank_backward(py::handle x, py::handle grad_out, py::handle kernels, const std::vector<int64_t>& radii,
                          int64_t boundary, py::handle grad_x, py::handle grad_kernels, py::handle workspace,
                          uintptr_t stream) {
  const char* op = "gaussian_scale_space_backward";
  CudaCall call(x, op);
  auto b = parse_bank_backward(call.dev, op, x, grad_out, kernels, radii, boundary, grad_x, grad_kernels, workspace,
                               [](const ssa::Bank& a) { return 2 * a.y.numel(); });
  ss::filter_bank_backward_cuda(b.a.x.dtype, b.a.g, b.a.x.data, b.a.y.data, b.a.kernels.data, b.gx.data, b.gk.data,
                                b.ws.data, stream_ptr(stream));
}

// The tiled filter bank (candidate): the workspace a call needs, then forward and backward.
int64_t filter_bank_next_workspace(py::handle x, py::handle kernels, const std::vector<int64_t>& radii,
                                   int64_t boundary, bool backward) {
  const char* op = backward ? "gaussian_scale_space_backward" : "gaussian_scale_space";
  CudaCall call(x, op);
  auto a = ssa::parse_bank_inputs(call.dev, op, x, kernels, radii, boundary, ss::kMaxScales);
  return ss::filter_bank_next_workspace(a.x.dtype, a.g, backward);
}

void filter_bank_forward_next(py::handle x, py::handle kernels, const std::vector<int64_t>& radii, int64_t boundary,
                              py::handle out, py::handle workspace, uintptr_t stream) {
  const char* op = "gaussian_scale_space";
  CudaCall call(x, op);
  auto a = ssa::parse_bank(call.dev, op, x, kernels, radii, boundary, out, true, ss::kMaxScales);
  Checker ck(op);
  TensorView ws = pa::output(ck, call.dev, workspace, op, "workspace");
  ck.dtype(ws, "workspace", {accumulation_dtype(a.x.dtype)});
  pa::check_workspace_size(ck, ws, ss::filter_bank_next_workspace(a.x.dtype, a.g, false));
  ss::filter_bank_forward_next_cuda(a.x.dtype, a.g, a.x.data, a.kernels.data, a.y.data, ws.data,
                                    stream_ptr(stream));
}

void filter_bank_backward_next(py::handle x, py::handle grad_out, py::handle kernels,
                               const std::vector<int64_t>& radii, int64_t boundary, py::handle grad_x,
                               py::handle grad_kernels, py::handle workspace, uintptr_t stream) {
  const char* op = "gaussian_scale_space_backward";
  CudaCall call(x, op);
  auto b = parse_bank_backward(call.dev, op, x, grad_out, kernels, radii, boundary, grad_x, grad_kernels, workspace,
                               [](const ssa::Bank& a) { return ss::filter_bank_next_workspace(a.x.dtype, a.g, true); });
  ss::filter_bank_backward_next_cuda(b.a.x.dtype, b.a.g, b.a.x.data, b.a.y.data, b.a.kernels.data, b.gx.data,
                                     b.gk.data, b.ws.data, stream_ptr(stream));
}

void scale_attention_forward(py::handle y, py::handle gain, py::handle out, uintptr_t stream) {
  const char* op = "scale_attention";
  CudaCall call(y, op);
  auto a = ssa::parse_attention(call.dev, op, y, gain, out, true, ss::kMaxScales);
  ss::scale_attention_forward_cuda(a.y.dtype, a.B, a.S, a.P, a.y.data, a.gain.data, a.out.data, stream_ptr(stream));
}

void scale_attention_backward(py::handle y, py::handle gain, py::handle grad_out, py::handle grad_y,
                              py::handle grad_gain, uintptr_t stream) {
  const char* op = "scale_attention_backward";
  CudaCall call(y, op);
  auto a = ssa::parse_attention(call.dev, op, y, gain, grad_out, false, ss::kMaxScales);
  Checker ck(op);
  TensorView gy = pa::output(ck, call.dev, grad_y, op, "grad_y");
  pa::shape_is(ck, gy, "grad_y", {a.B, a.S, a.P});
  ck.same_dtype(gy, "grad_y", a.y, "y");
  TensorView gg = pa::output(ck, call.dev, grad_gain, op, "grad_gain");
  pa::shape_is(ck, gg, "grad_gain", {a.S});
  ck.dtype(gg, "grad_gain", {accumulation_dtype(a.y.dtype)});
  ss::scale_attention_backward_cuda(a.y.dtype, a.B, a.S, a.P, a.y.data, a.gain.data, a.out.data, gy.data, gg.data,
                                    stream_ptr(stream));
}

namespace dc = pvf::deform_conv;
namespace dca = pvf::deform_conv_args;

void deform_im2col(py::handle input, py::handle offset, py::handle mask, const py::tuple& conv, py::handle columns,
                   uintptr_t stream) {
  const char* op = "deform_conv2d";
  CudaCall call(input, op);
  auto a = dca::parse(call.dev, op, input, offset, mask, conv);
  Checker ck(op);
  TensorView cols = dca::columns(ck, call.dev, a, columns, op, "columns", true);
  dc::im2col_cuda(a.input.dtype, a.g, a.input.data, a.offset.data, a.mask.has_value ? a.mask.view.data : nullptr,
                  cols.data, stream_ptr(stream));
}

void deform_col2im(py::handle input, py::handle offset, py::handle mask, const py::tuple& conv,
                   py::handle grad_columns, py::handle grad_input, py::handle grad_offset, py::handle grad_mask,
                   uintptr_t stream) {
  const char* op = "deform_conv2d_backward";
  CudaCall call(input, op);
  auto a = dca::parse(call.dev, op, input, offset, mask, conv);
  Checker ck(op);
  TensorView gc = dca::columns(ck, call.dev, a, grad_columns, op, "grad_columns", false);
  TensorView gi = pa::output(ck, call.dev, grad_input, op, "grad_input");
  pa::shape_is(ck, gi, "grad_input", {a.g.B, a.g.C, a.g.H, a.g.W});
  ck.dtype(gi, "grad_input", {accumulation_dtype(a.input.dtype)});
  TensorView go = pa::output(ck, call.dev, grad_offset, op, "grad_offset");
  pa::shape_is(ck, go, "grad_offset", {a.g.B, 2 * a.g.OG * a.g.K(), a.g.Ho, a.g.Wo});
  ck.same_dtype(go, "grad_offset", a.input, "input");
  OptionalTensor gm = optional_tensor_from_py(grad_mask, op, "grad_mask", true);
  if (gm.has_value != a.mask.has_value) ck.value_error("grad_mask must be given exactly when mask is");
  if (gm.has_value) {
    ck.device(gm.view, "grad_mask", call.dev.type, call.dev.index);
    ck.contiguous(gm.view, "grad_mask");
    pa::shape_is(ck, gm.view, "grad_mask", {a.g.B, a.g.OG * a.g.K(), a.g.Ho, a.g.Wo});
    ck.same_dtype(gm.view, "grad_mask", a.input, "input");
  }
  dc::col2im_cuda(a.input.dtype, a.g, a.input.data, a.offset.data, a.mask.has_value ? a.mask.view.data : nullptr,
                  gc.data, gi.data, go.data, gm.has_value ? gm.view.data : nullptr, stream_ptr(stream));
}

namespace sa = pvf::sphere_args;

void sphere_im2col(py::handle input, py::handle index, py::handle weight, int64_t r0, int64_t r1,
                   py::handle columns, uintptr_t stream) {
  const char* op = "sphere_conv2d";
  CudaCall call(input, op);
  Checker ck(op);
  TensorView in = sa::image_input(ck, call.dev, input, op);
  ck.dtype(in, "input", call.dev.float_dtypes);
  auto a = sa::parse(call.dev, op, in, "input", in.dtype, index, weight, r0, r1);
  TensorView cols = sa::columns(ck, call.dev, a, in.dtype, columns, op, "columns", true, r1 - r0);
  pvf::sphere::table_im2col_cuda(in.dtype, a.g, in.data, a.index.ptr<int32_t>(), a.weight.data, r0, r1, cols.data,
                                 stream_ptr(stream));
}

void sphere_col2im(py::handle grad_columns, py::handle index, py::handle weight, int64_t r0, int64_t r1,
                   py::handle grad_input, uintptr_t stream) {
  const char* op = "sphere_conv2d_backward";
  CudaCall call(grad_columns, op);
  Checker ck(op);
  TensorView gc0 = pa::input(ck, call.dev, grad_columns, op, "grad_columns");
  ck.dtype(gc0, "grad_columns", call.dev.float_dtypes);
  TensorView gi = pa::output(ck, call.dev, grad_input, op, "grad_input");
  ck.dtype(gi, "grad_input", {accumulation_dtype(gc0.dtype)});
  auto a = sa::parse(call.dev, op, gi, "grad_input", gc0.dtype, index, weight, r0, r1);
  TensorView gc = sa::columns(ck, call.dev, a, gc0.dtype, grad_columns, op, "grad_columns", false, r1 - r0);
  pvf::sphere::table_col2im_cuda(gc.dtype, a.g, gc.data, a.index.ptr<int32_t>(), a.weight.data, r0, r1, gi.data,
                                 stream_ptr(stream));
}

void vector_quantize_fwd(py::handle z, py::handle codebook, py::handle z_q, py::handle indices, uintptr_t stream) {
  const char* op = "vector_quantize";
  CudaCall call(z, op);
  auto a = pvf::vector_quantize_args::parse(call.dev, op, z, codebook, z_q, indices);
  pvf::vector_quantize::vector_quantize_cuda(a.z.dtype, a.z.data, a.codebook.data, a.N, a.K, a.D, a.z_q.data,
                                             a.indices.ptr<int64_t>(), stream_ptr(stream));
}

// ---------------------------------------------------------------- stylegan2 (upfirdn2d, bias_act)
namespace sg = pvf::stylegan2;
namespace sga = pvf::stylegan2_args;

void upfirdn2d_fwd(py::handle x, py::handle f, const std::vector<int64_t>& up, const std::vector<int64_t>& down,
                   const std::vector<int64_t>& padding, py::handle out, py::handle workspace, uintptr_t stream) {
  const char* op = "upfirdn2d";
  CudaCall call(x, op);
  auto a = sga::parse_upfirdn2d(call.dev, op, x, f, up, down, padding, out, true);
  Checker ck(op);
  void* ws = nullptr;
  if (a.g.separable) {  // the horizontal pass: (planes, H, out_x) in the accumulation type
    TensorView w = pa::output(ck, call.dev, workspace, op, "workspace");
    ck.dtype(w, "workspace", {a.x.dtype == DType::Float64 ? DType::Float64 : DType::Float32});
    pa::check_workspace_size(ck, w, a.g.planes * a.g.y.in * a.g.x.out);
    ws = w.data;
  }
  sg::upfirdn2d_cuda(a.x.dtype, a.g, a.x.data, a.taps.data, a.taps.data, a.taps.data, a.out.data, ws,
                     stream_ptr(stream));
}

void bias_act_fwd(py::handle x, py::handle b, int64_t dim, int64_t act, double alpha, double gain, double clamp,
                  py::handle y, uintptr_t stream) {
  const char* op = "bias_act";
  CudaCall call(x, op);
  auto a = sga::parse_bias_act(call.dev, op, x, b, dim, act, alpha, gain, clamp, y, "y");
  sg::bias_act_cuda(a.x.dtype, a.x.data, a.b.has_value ? a.b.view.data : nullptr, a.outer, a.C, a.inner, a.act, alpha,
                    gain, clamp, a.out.data, stream_ptr(stream));
}

void bias_act_bwd(py::handle dy, py::handle x, py::handle b, int64_t dim, int64_t act, double alpha, double gain,
                  double clamp, py::handle dx, uintptr_t stream) {
  const char* op = "bias_act_backward";
  CudaCall call(x, op);
  auto a = sga::parse_bias_act(call.dev, op, x, b, dim, act, alpha, gain, clamp, dx, "dx");
  TensorView g = sga::parse_like_x(call.dev, op, dy, "dy", a.x);
  sg::bias_act_backward_cuda(a.x.dtype, g.data, a.x.data, a.b.has_value ? a.b.view.data : nullptr, a.outer, a.C,
                             a.inner, a.act, alpha, gain, clamp, a.out.data, stream_ptr(stream));
}

}  // namespace

// ---------------------------------------------------------------- mesh_raster (rasterize_triangles, candidate)
#include "bindings/mesh_raster_args.h"
#include "mesh_raster/mesh_raster.h"

namespace {

void rasterize_triangles_fwd(py::handle verts, py::handle faces, int64_t H, int64_t W, bool cull_backfaces,
                             py::handle rast, py::handle vertex_workspace, py::handle key_workspace,
                             uintptr_t stream) {
  const char* op = "rasterize_triangles";
  CudaCall call(verts, op);
  auto a = pvf::mesh_raster_args::parse(call.dev, verts, faces, H, W, rast, vertex_workspace);
  Checker ck(op);
  TensorView keys = pa::output(ck, call.dev, key_workspace, op, "key_workspace");
  ck.dtype(keys, "key_workspace", {DType::Int64});
  pa::check_workspace_size(ck, keys, pvf::mesh_raster::key_workspace_size(a.B, a.H, a.W));
  pvf::mesh_raster::rasterize_cuda(a.verts.dtype, a.verts.data, a.faces.ptr<int64_t>(), a.B, a.V, a.F, a.H, a.W,
                                   cull_backfaces, a.rast.data, a.vertex_ws.data,
                                   reinterpret_cast<uint64_t*>(keys.data), stream_ptr(stream));
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "pyvision_fast CUDA kernels (static CUDA runtime; raises RuntimeError when no device is available)";
  register_exception_translators();
  m.attr("compiled_archs") = PVF_CUDA_ARCHS_STRING;
  m.attr("runtime_version") = CUDART_VERSION;
  m.def("device_status", &device_status, "(device_count, message) as the CUDA runtime reports them");
  m.def("sample_farthest_points", &fps, py::arg("points"), py::arg("lengths"), py::arg("start"), py::arg("K"),
        py::arg("idx"), py::arg("workspace"), py::arg("stream"));
  m.def("knn_points", &knn, py::arg("p1"), py::arg("p2"), py::arg("lengths1"), py::arg("lengths2"), py::arg("K"),
        py::arg("dists"), py::arg("idx"), py::arg("stream"));
  m.def("ball_query", &ball_query, py::arg("p1"), py::arg("p2"), py::arg("lengths1"), py::arg("lengths2"),
        py::arg("K"), py::arg("radius"), py::arg("dists"), py::arg("idx"), py::arg("stream"));
  m.def("gather_columns", &gather_columns, py::arg("features"), py::arg("idx"), py::arg("out"), py::arg("flag"),
        py::arg("stream"));
  m.def("gather_columns_backward", &gather_columns_backward, py::arg("grad_out"), py::arg("idx"),
        py::arg("grad_features"), py::arg("flag"), py::arg("stream"));
  m.def("three_interpolate", &three_interpolate, py::arg("features"), py::arg("idx"), py::arg("weight"),
        py::arg("out"), py::arg("flag"), py::arg("stream"));
  m.def("three_interpolate_backward", &three_interpolate_backward, py::arg("grad_out"), py::arg("features"),
        py::arg("idx"), py::arg("weight"), py::arg("grad_features"), py::arg("grad_weight"), py::arg("flag"),
        py::arg("stream"));
  m.def("sample_farthest_points_next", &fps_next, py::arg("points"), py::arg("lengths"), py::arg("start"),
        py::arg("K"), py::arg("idx"), py::arg("workspace"), py::arg("stream"));
  m.def("knn_points_next", &knn_next, py::arg("p1"), py::arg("p2"), py::arg("lengths1"), py::arg("lengths2"),
        py::arg("K"), py::arg("dists"), py::arg("idx"), py::arg("stream"));
  m.def("ball_query_next", &ball_query_next, py::arg("p1"), py::arg("p2"), py::arg("lengths1"), py::arg("lengths2"),
        py::arg("K"), py::arg("radius"), py::arg("dists"), py::arg("idx"), py::arg("stream"));
  m.def("gather_columns_next", &gather_columns_next, py::arg("features"), py::arg("idx"), py::arg("out"),
        py::arg("stream"));
  m.def("gather_columns_backward_next", &gather_columns_backward_next, py::arg("grad_out"), py::arg("idx"),
        py::arg("grad_features"), py::arg("stream"));
  m.def("three_interpolate_next", &three_interpolate_next, py::arg("features"), py::arg("idx"), py::arg("weight"),
        py::arg("out"), py::arg("stream"));
  m.def("three_interpolate_backward_next", &three_interpolate_backward_next, py::arg("grad_out"),
        py::arg("features"), py::arg("idx"), py::arg("weight"), py::arg("grad_features"), py::arg("grad_weight"),
        py::arg("stream"));
  m.def("neighbour_dists_backward_next", &neighbour_dists_backward_next, py::arg("p1"), py::arg("p2"),
        py::arg("lengths1"), py::arg("lengths2"), py::arg("idx"), py::arg("grad_dists"), py::arg("grad_p1"),
        py::arg("grad_p2"), py::arg("stream"));
  m.def("mvf_forward", &mvf_forward, py::arg("x"), py::arg("weight_t"), py::arg("weight_h"), py::arg("weight_w"),
        py::arg("bn_scale"), py::arg("bn_shift"), py::arg("hardswish"), py::arg("fused_channels"), py::arg("out"),
        py::arg("stream"));
  m.def("mvf_backward", &mvf_backward, py::arg("x"), py::arg("grad_out"), py::arg("weight_t"), py::arg("weight_h"),
        py::arg("weight_w"), py::arg("bn_scale"), py::arg("bn_shift"), py::arg("hardswish"),
        py::arg("fused_channels"), py::arg("grad_x"), py::arg("grad_weight_t"), py::arg("grad_weight_h"),
        py::arg("grad_weight_w"), py::arg("workspace"), py::arg("workspace_holds_grad"), py::arg("stream"));
  m.def("filter_bank_forward", &filter_bank_forward, py::arg("x"), py::arg("kernels"), py::arg("radii"),
        py::arg("boundary"), py::arg("out"), py::arg("workspace"), py::arg("stream"));
  m.def("filter_bank_backward", &filter_bank_backward, py::arg("x"), py::arg("grad_out"), py::arg("kernels"),
        py::arg("radii"), py::arg("boundary"), py::arg("grad_x"), py::arg("grad_kernels"), py::arg("workspace"),
        py::arg("stream"));
  m.def("filter_bank_next_workspace", &filter_bank_next_workspace, py::arg("x"), py::arg("kernels"),
        py::arg("radii"), py::arg("boundary"), py::arg("backward"));
  m.def("filter_bank_forward_next", &filter_bank_forward_next, py::arg("x"), py::arg("kernels"), py::arg("radii"),
        py::arg("boundary"), py::arg("out"), py::arg("workspace"), py::arg("stream"));
  m.def("filter_bank_backward_next", &filter_bank_backward_next, py::arg("x"), py::arg("grad_out"),
        py::arg("kernels"), py::arg("radii"), py::arg("boundary"), py::arg("grad_x"), py::arg("grad_kernels"),
        py::arg("workspace"), py::arg("stream"));
  m.def("scale_attention_forward", &scale_attention_forward, py::arg("y"), py::arg("gain"), py::arg("out"),
        py::arg("stream"));
  m.def("scale_attention_backward", &scale_attention_backward, py::arg("y"), py::arg("gain"), py::arg("grad_out"),
        py::arg("grad_y"), py::arg("grad_gain"), py::arg("stream"));
  m.def("deform_im2col", &deform_im2col, py::arg("input"), py::arg("offset"), py::arg("mask"), py::arg("conv"),
        py::arg("columns"), py::arg("stream"));
  m.def("deform_col2im", &deform_col2im, py::arg("input"), py::arg("offset"), py::arg("mask"), py::arg("conv"),
        py::arg("grad_columns"), py::arg("grad_input"), py::arg("grad_offset"), py::arg("grad_mask"),
        py::arg("stream"));
  m.def("sphere_im2col", &sphere_im2col, py::arg("input"), py::arg("table_index"), py::arg("table_weight"),
        py::arg("r0"), py::arg("r1"), py::arg("columns"), py::arg("stream"));
  m.def("sphere_col2im", &sphere_col2im, py::arg("grad_columns"), py::arg("table_index"), py::arg("table_weight"),
        py::arg("r0"), py::arg("r1"), py::arg("grad_input"), py::arg("stream"));
  m.def("vector_quantize", &vector_quantize_fwd, py::arg("z"), py::arg("codebook"), py::arg("z_q"), py::arg("indices"),
        py::arg("stream"),
        "Nearest codebook rows (squared L2, lowest index on ties): z (..., D), codebook (K, D) -> z_q like z,\n"
        "indices z.shape[:-1] int64 (float32 accumulation for half/bfloat16). See vector_quantize.h.");
  // stylegan2
  m.def("upfirdn2d", &upfirdn2d_fwd, py::arg("x"), py::arg("f"), py::arg("up"), py::arg("down"), py::arg("padding"),
        py::arg("out"), py::arg("workspace"), py::arg("stream"),
        "See stylegan2.h; f in float32 for half/bfloat16 x; workspace (separable f only): N*C*H*out_w elements of\n"
        "the accumulation type.");
  m.def("bias_act", &bias_act_fwd, py::arg("x"), py::arg("b"), py::arg("dim"), py::arg("act"), py::arg("alpha"),
        py::arg("gain"), py::arg("clamp"), py::arg("y"), py::arg("stream"));
  m.def("bias_act_backward", &bias_act_bwd, py::arg("dy"), py::arg("x"), py::arg("b"), py::arg("dim"), py::arg("act"),
        py::arg("alpha"), py::arg("gain"), py::arg("clamp"), py::arg("dx"), py::arg("stream"));
  // mesh_raster
  m.def("rasterize_triangles", &rasterize_triangles_fwd, py::arg("verts_clip"), py::arg("faces"), py::arg("H"),
        py::arg("W"), py::arg("cull_backfaces"), py::arg("rast"), py::arg("vertex_workspace"),
        py::arg("key_workspace"), py::arg("stream"),
        "See mesh_raster.h; vertex_workspace B*V*4 elements of verts' dtype, key_workspace 2*B*H*W int64.");
}
