// Argument checks of vector_quantize, shared by the CPU (_C) and CUDA (_C_cuda) bindings. Every precondition
// (ranks, equal D, dtypes, devices, contiguity, K >= 1, output shapes) is checked here, before a kernel runs.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/pointcloud_args.h"
#include "bindings/py_tensor.h"
#include "common/checks.h"

namespace pvf {
namespace vector_quantize_args {

namespace py = pybind11;
using pointcloud_args::Device;

struct Args {
  TensorView z, codebook, z_q, indices;
  int64_t N, K, D;
};

// Inputs z (..., D) (any rank >= 1: N = the product of the leading sizes, may be 0) and codebook (K, D);
// outputs z_q with z's shape and dtype, indices with z's shape without its last dimension, int64.
inline Args parse(const Device& dev, const char* op, py::handle z_h, py::handle codebook_h, py::handle z_q_h,
                  py::handle indices_h) {
  Checker ck(op);
  Args a;
  a.z = pointcloud_args::input(ck, dev, z_h, op, "z");
  a.codebook = pointcloud_args::input(ck, dev, codebook_h, op, "codebook");
  if (a.z.ndim < 1)
    ck.value_error(str("argument 'z' must have at least 1 dimension (..., D), got shape ", a.z.shape_string()));
  ck.ndim(a.codebook, "codebook", 2, "(K, D)");
  pointcloud_args::floating(ck, dev, a.z, "z");
  ck.same_dtype(a.z, "z", a.codebook, "codebook");
  a.D = a.z.size(-1);
  a.K = a.codebook.size(0);
  if (a.codebook.size(1) != a.D)
    ck.value_error(str("the last dimension of 'z' (D = ", a.D, ", shape ", a.z.shape_string(),
                       ") must equal the code size of 'codebook' (", a.codebook.size(1), ", shape ",
                       a.codebook.shape_string(), ")"));
  if (a.D < 1)
    ck.value_error(str("the vectors of argument 'z' must have at least one channel (D >= 1), got shape ",
                       a.z.shape_string()));
  if (a.K < 1) ck.value_error("argument 'codebook' is empty (K = 0): there is no code to choose");
  a.N = a.z.numel() / a.D;

  a.z_q = pointcloud_args::output(ck, dev, z_q_h, op, "z_q");
  a.indices = pointcloud_args::output(ck, dev, indices_h, op, "indices");
  ck.same_dtype(a.z_q, "z_q", a.z, "z");
  ck.dtype(a.indices, "indices", {DType::Int64});
  bool z_q_ok = a.z_q.ndim == a.z.ndim, idx_ok = a.indices.ndim == a.z.ndim - 1;
  for (int d = 0; z_q_ok && d < a.z.ndim; ++d) z_q_ok = a.z_q.sizes[d] == a.z.sizes[d];
  for (int d = 0; idx_ok && d < a.z.ndim - 1; ++d) idx_ok = a.indices.sizes[d] == a.z.sizes[d];
  if (!z_q_ok)
    ck.value_error(str("argument 'z_q' must have the shape of 'z' ", a.z.shape_string(), ", got ",
                       a.z_q.shape_string()));
  if (!idx_ok)
    ck.value_error(str("argument 'indices' must have the shape of 'z' without its last dimension (z is ",
                       a.z.shape_string(), "), got ", a.indices.shape_string()));
  return a;
}

}  // namespace vector_quantize_args
}  // namespace pvf
