// Argument parsing and precondition checks of the point-cloud ops, shared by the CPU (_C) and CUDA (_C_cuda)
// bindings. Each parse_* function converts the Python arguments, checks every precondition (ranks, shape
// relations, dtypes, devices, contiguity, parameter ranges, index/length values) and returns the views
// the kernel will use. Nothing is read or written by a kernel before these checks pass.
#pragma once
#include <pybind11/pybind11.h>

#include <functional>
#include <vector>

#include "bindings/py_tensor.h"
#include "common/checks.h"

namespace pvf {
namespace pointcloud_args {

namespace py = pybind11;

// Where the tensors must live, and how to read small int64 arrays (lengths, start indices) from there.
struct Device {
  DeviceType type;
  int index;  // -1: any (CPU)
  // Empty: values are not read, only shapes and dtypes checked (the candidate CUDA kernels clamp lengths and
  // start indices themselves, so that no call copies device data to the host).
  std::function<std::vector<int64_t>(const TensorView&)> read_int64;
  std::vector<DType> float_dtypes;
  // Scatter-add gradients of half/bfloat16 inputs accumulate in a float32 buffer (CUDA atomics).
  bool half_grads_in_float32 = false;
};

// The dtype a scatter-add gradient buffer must have for inputs of dtype `input`.
inline void grad_buffer(const Checker& ck, const Device& dev, const TensorView& buf, const char* name, DType input) {
  const bool half = input == DType::Float16 || input == DType::BFloat16;
  if (half && dev.half_grads_in_float32) ck.dtype(buf, name, {DType::Float32});
  else if (buf.dtype != input)
    ck.type_error(str("argument '", name, "' must have the dtype of the input (", dtype_name(input), "), got ",
                      dtype_name(buf.dtype)));
}

inline TensorView input(const Checker& ck, const Device& dev, py::handle h, const char* op, const char* name) {
  TensorView v = tensor_from_py(h, op, name);
  ck.device(v, name, dev.type, dev.index);
  ck.contiguous(v, name);
  return v;
}

inline TensorView output(const Checker& ck, const Device& dev, py::handle h, const char* op, const char* name) {
  TensorView v = tensor_from_py(h, op, name, /*writable=*/true);
  ck.device(v, name, dev.type, dev.index);
  ck.contiguous(v, name);
  return v;
}

inline void floating(const Checker& ck, const Device& dev, const TensorView& v, const char* name) {
  ck.dtype(v, name, dev.float_dtypes);
}

// Checks that lengths (B,) int64 has values in [0, P].
inline OptionalTensor lengths_arg(const Checker& ck, const Device& dev, py::handle h, const char* op,
                                  const char* name, int64_t B, int64_t P) {
  OptionalTensor o = optional_tensor_from_py(h, op, name);
  if (!o.has_value) return o;
  ck.device(o.view, name, dev.type, dev.index);
  ck.contiguous(o.view, name);
  ck.dtype(o.view, name, {DType::Int64});
  ck.ndim(o.view, name, 1, "(B,)");
  ck.dim_size(o.view, name, 0, B, "the batch size");
  if (dev.read_int64)
    for (int64_t v : dev.read_int64(o.view))
      if (v < 0 || v > P) ck.value_error(str("argument '", name, "' has a length ", v, " outside [0, ", P, "]"));
  return o;
}

// A point-cloud pair p1 (B, P1, D), p2 (B, P2, D) with matching batch, D and dtype.
struct CloudPair {
  TensorView p1, p2;
  OptionalTensor lengths1, lengths2;
  int64_t B, P1, P2, D;
};

inline CloudPair cloud_pair(const Checker& ck, const Device& dev, const char* op, py::handle p1h, py::handle p2h,
                            py::handle l1h, py::handle l2h) {
  CloudPair c;
  c.p1 = input(ck, dev, p1h, op, "p1");
  c.p2 = input(ck, dev, p2h, op, "p2");
  ck.ndim(c.p1, "p1", 3, "(B, P1, D)");
  ck.ndim(c.p2, "p2", 3, "(B, P2, D)");
  floating(ck, dev, c.p1, "p1");
  ck.same_dtype(c.p1, "p1", c.p2, "p2");
  c.B = c.p1.size(0);
  c.P1 = c.p1.size(1);
  c.P2 = c.p2.size(1);
  c.D = c.p1.size(2);
  ck.dim_size(c.p2, "p2", 0, c.B, "the batch size of p1");
  ck.dim_size(c.p2, "p2", 2, c.D, "the point dimension D of p1");
  if (c.D < 1) ck.value_error("points must have at least one coordinate (D >= 1)");
  c.lengths1 = lengths_arg(ck, dev, l1h, op, "lengths1", c.B, c.P1);
  c.lengths2 = lengths_arg(ck, dev, l2h, op, "lengths2", c.B, c.P2);
  return c;
}

inline void shape_is(const Checker& ck, const TensorView& v, const char* name, std::initializer_list<int64_t> shape) {
  bool ok = v.ndim == static_cast<int>(shape.size());
  int d = 0;
  for (int64_t s : shape) ok = ok && v.sizes[d++] == s;
  if (!ok) {
    std::string want = "(";
    d = 0;
    for (int64_t s : shape) want += std::to_string(s) + (++d < static_cast<int>(shape.size()) ? ", " : "");
    ck.value_error(str("argument '", name, "' must have shape ", want, "), got ", v.shape_string()));
  }
}

struct FpsArgs {
  TensorView points, idx, workspace;
  OptionalTensor lengths, start;
  int64_t B, N, D, K;
};

// The workspace's dtype and size are checked by the caller, which knows what its kernel needs.
inline FpsArgs fps(const Device& dev, py::handle points, py::handle lengths, py::handle start, int64_t K,
                   py::handle idx, py::handle workspace) {
  const char* op = "sample_farthest_points";
  Checker ck(op);
  FpsArgs a;
  a.points = input(ck, dev, points, op, "points");
  ck.ndim(a.points, "points", 3, "(B, N, D)");
  floating(ck, dev, a.points, "points");
  a.B = a.points.size(0);
  a.N = a.points.size(1);
  a.D = a.points.size(2);
  if (a.D < 1) ck.value_error("points must have at least one coordinate (D >= 1)");
  if (K < 1) ck.value_error(str("K must be >= 1, got ", K));
  a.K = K;
  a.lengths = lengths_arg(ck, dev, lengths, op, "lengths", a.B, a.N);
  a.start = optional_tensor_from_py(start, op, "start");
  if (a.start.has_value) {
    ck.device(a.start.view, "start", dev.type, dev.index);
    ck.contiguous(a.start.view, "start");
    ck.dtype(a.start.view, "start", {DType::Int64});
    shape_is(ck, a.start.view, "start", {a.B});
  }
  if (a.start.has_value && dev.read_int64) {
    const std::vector<int64_t> starts = dev.read_int64(a.start.view);
    const std::vector<int64_t> lens =
        a.lengths.has_value ? dev.read_int64(a.lengths.view) : std::vector<int64_t>(a.B, a.N);
    for (int64_t b = 0; b < a.B; ++b)
      if (lens[b] > 0 && (starts[b] < 0 || starts[b] >= lens[b]))
        ck.value_error(str("start index ", starts[b], " of cloud ", b, " is outside [0, ", lens[b], ")"));
  }
  a.idx = output(ck, dev, idx, op, "idx");
  ck.dtype(a.idx, "idx", {DType::Int64});
  shape_is(ck, a.idx, "idx", {a.B, a.K});
  a.workspace = output(ck, dev, workspace, op, "workspace");
  return a;
}

struct QueryArgs {
  CloudPair c;
  TensorView dists, idx;
  int64_t K;
};

inline QueryArgs query(const Device& dev, const char* op, py::handle p1, py::handle p2, py::handle lengths1,
                       py::handle lengths2, int64_t K, py::handle dists, py::handle idx) {
  Checker ck(op);
  QueryArgs a;
  a.c = cloud_pair(ck, dev, op, p1, p2, lengths1, lengths2);
  if (K < 1) ck.value_error(str("K must be >= 1, got ", K));
  a.K = K;
  a.dists = output(ck, dev, dists, op, "dists");
  ck.same_dtype(a.dists, "dists", a.c.p1, "p1");
  shape_is(ck, a.dists, "dists", {a.c.B, a.c.P1, K});
  a.idx = output(ck, dev, idx, op, "idx");
  ck.dtype(a.idx, "idx", {DType::Int64});
  shape_is(ck, a.idx, "idx", {a.c.B, a.c.P1, K});
  return a;
}

inline void check_workspace_size(const Checker& ck, const TensorView& ws, int64_t need) {
  if (ws.numel() < need) ck.value_error(str("workspace has ", ws.numel(), " elements, needs ", need));
}

// features (B, C, N) and idx (B, M) int64 for the column gather.
struct GatherArgs {
  TensorView features, idx, out;
  int64_t B, C, N, M;
};

inline GatherArgs gather(const Device& dev, const char* op, py::handle features, py::handle idx, py::handle out,
                         bool backward) {
  Checker ck(op);
  GatherArgs a;
  const char* fname = backward ? "grad_features" : "features";
  const char* oname = backward ? "grad_out" : "out";
  TensorView f = backward ? output(ck, dev, features, op, fname) : input(ck, dev, features, op, fname);
  TensorView o = backward ? input(ck, dev, out, op, oname) : output(ck, dev, out, op, oname);
  a.idx = input(ck, dev, idx, op, "idx");
  ck.ndim(f, fname, 3, "(B, C, N)");
  if (!backward) floating(ck, dev, f, fname);
  ck.ndim(a.idx, "idx", 2, "(B, M)");
  ck.dtype(a.idx, "idx", {DType::Int64});
  a.B = f.size(0);
  a.C = f.size(1);
  a.N = f.size(2);
  a.M = a.idx.size(1);
  ck.dim_size(a.idx, "idx", 0, a.B, "the batch size of features");
  shape_is(ck, o, oname, {a.B, a.C, a.M});
  if (backward) {
    floating(ck, dev, o, oname);
    grad_buffer(ck, dev, f, fname, o.dtype);
  } else {
    ck.same_dtype(o, oname, f, fname);
  }
  if (a.N == 0 && a.M > 0 && a.B * a.C > 0) ck.value_error("cannot gather from features with N = 0 points");
  a.features = f;
  a.out = o;
  return a;
}

struct InterpArgs {
  TensorView features, idx, weight, out;  // out: set by interpolate()
  int64_t B, C, M, N;
};

inline InterpArgs interpolate_inputs(const Checker& ck, const Device& dev, const char* op, py::handle features,
                                     py::handle idx, py::handle weight) {
  InterpArgs a;
  a.features = input(ck, dev, features, op, "features");
  a.idx = input(ck, dev, idx, op, "idx");
  a.weight = input(ck, dev, weight, op, "weight");
  ck.ndim(a.features, "features", 3, "(B, C, M)");
  floating(ck, dev, a.features, "features");
  a.B = a.features.size(0);
  a.C = a.features.size(1);
  a.M = a.features.size(2);
  ck.ndim(a.idx, "idx", 3, "(B, N, 3)");
  ck.dtype(a.idx, "idx", {DType::Int64});
  ck.dim_size(a.idx, "idx", 0, a.B, "the batch size of features");
  ck.dim_size(a.idx, "idx", 2, 3, "the number of interpolated neighbours");
  a.N = a.idx.size(1);
  shape_is(ck, a.weight, "weight", {a.B, a.N, 3});
  ck.same_dtype(a.weight, "weight", a.features, "features");
  if (a.M == 0 && a.N > 0 && a.B * a.C > 0) ck.value_error("cannot interpolate from features with M = 0 points");
  return a;
}

// three_interpolate: inputs plus the output (B, C, N).
inline InterpArgs interpolate(const Device& dev, const char* op, py::handle features, py::handle idx,
                              py::handle weight, py::handle out) {
  Checker ck(op);
  InterpArgs a = interpolate_inputs(ck, dev, op, features, idx, weight);
  a.out = output(ck, dev, out, op, "out");
  shape_is(ck, a.out, "out", {a.B, a.C, a.N});
  ck.same_dtype(a.out, "out", a.features, "features");
  return a;
}

// three_interpolate_backward: inputs, grad_out (B, C, N), and the optional gradient buffers.
struct InterpGrads {
  InterpArgs a;
  TensorView grad_out;
  OptionalTensor grad_features, grad_weight;
};

inline InterpGrads interpolate_backward(const Device& dev, const char* op, py::handle grad_out, py::handle features,
                                        py::handle idx, py::handle weight, py::handle grad_features,
                                        py::handle grad_weight) {
  Checker ck(op);
  InterpGrads g;
  g.a = interpolate_inputs(ck, dev, op, features, idx, weight);
  g.grad_out = input(ck, dev, grad_out, op, "grad_out");
  shape_is(ck, g.grad_out, "grad_out", {g.a.B, g.a.C, g.a.N});
  ck.same_dtype(g.grad_out, "grad_out", g.a.features, "features");
  g.grad_features = optional_tensor_from_py(grad_features, op, "grad_features", true);
  g.grad_weight = optional_tensor_from_py(grad_weight, op, "grad_weight", true);
  if (g.grad_features.has_value) {
    const TensorView& v = g.grad_features.view;
    ck.device(v, "grad_features", dev.type, dev.index);
    ck.contiguous(v, "grad_features");
    shape_is(ck, v, "grad_features", {g.a.B, g.a.C, g.a.M});
    grad_buffer(ck, dev, v, "grad_features", g.a.features.dtype);
  }
  if (g.grad_weight.has_value) {
    const TensorView& v = g.grad_weight.view;
    ck.device(v, "grad_weight", dev.type, dev.index);
    ck.contiguous(v, "grad_weight");
    shape_is(ck, v, "grad_weight", {g.a.B, g.a.N, 3});
    ck.same_dtype(v, "grad_weight", g.a.features, "features");
  }
  return g;
}

// Gradient of neighbour distances (knn_points / ball_query backward): p1 (B, P1, D), p2 (B, P2, D), optional
// lengths, idx (B, P1, K) int64, grad_dists (B, P1, K) -> grad_p1 (B, P1, D), grad_p2 (B, P2, D) (the
// scatter-add buffer: float32 for half inputs on CUDA).
struct NeighbourGrads {
  CloudPair c;
  TensorView idx, grad, grad_p1, grad_p2;
  int64_t K;
};

inline NeighbourGrads neighbour_backward(const Device& dev, const char* op, py::handle p1, py::handle p2,
                                         py::handle lengths1, py::handle lengths2, py::handle idx, py::handle grad,
                                         py::handle grad_p1, py::handle grad_p2) {
  Checker ck(op);
  NeighbourGrads g;
  g.c = cloud_pair(ck, dev, op, p1, p2, lengths1, lengths2);
  g.idx = input(ck, dev, idx, op, "idx");
  ck.ndim(g.idx, "idx", 3, "(B, P1, K)");
  ck.dtype(g.idx, "idx", {DType::Int64});
  g.K = g.idx.size(2);
  shape_is(ck, g.idx, "idx", {g.c.B, g.c.P1, g.K});
  g.grad = input(ck, dev, grad, op, "grad_dists");
  shape_is(ck, g.grad, "grad_dists", {g.c.B, g.c.P1, g.K});
  ck.same_dtype(g.grad, "grad_dists", g.c.p1, "p1");
  g.grad_p1 = output(ck, dev, grad_p1, op, "grad_p1");
  shape_is(ck, g.grad_p1, "grad_p1", {g.c.B, g.c.P1, g.c.D});
  ck.same_dtype(g.grad_p1, "grad_p1", g.c.p1, "p1");
  g.grad_p2 = output(ck, dev, grad_p2, op, "grad_p2");
  shape_is(ck, g.grad_p2, "grad_p2", {g.c.B, g.c.P2, g.c.D});
  grad_buffer(ck, dev, g.grad_p2, "grad_p2", g.c.p1.dtype);
  return g;
}

}  // namespace pointcloud_args
}  // namespace pvf
