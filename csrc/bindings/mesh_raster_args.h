// Argument checks of mesh_raster (rasterize_triangles), shared by the CPU (_C) and CUDA (_C_cuda) bindings:
// ranks and shapes of verts (B, V, 4) and faces (F, 3), dtypes, devices, contiguity, image size, face indices
// in [0, V) (read where the device can), output and workspace shapes; all before a kernel runs.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/pointcloud_args.h"
#include "bindings/py_tensor.h"
#include "common/checks.h"
#include "mesh_raster/mesh_raster.h"

namespace pvf {
namespace mesh_raster_args {

namespace py = pybind11;
using pointcloud_args::Device;

struct Args {
  TensorView verts, faces, rast, vertex_ws;
  int64_t B, V, F, H, W;
};

inline Args parse(const Device& dev, py::handle verts_h, py::handle faces_h, int64_t H, int64_t W,
                  py::handle rast_h, py::handle vertex_ws_h) {
  const char* op = "rasterize_triangles";
  Checker ck(op);
  Args a;
  a.verts = pointcloud_args::input(ck, dev, verts_h, op, "verts_clip");
  a.faces = pointcloud_args::input(ck, dev, faces_h, op, "faces");
  ck.ndim(a.verts, "verts_clip", 3, "(B, V, 4)");
  if (a.verts.size(2) != 4)
    ck.value_error(str("argument 'verts_clip' must have shape (B, V, 4) (clip-space x, y, z, w), got ",
                       a.verts.shape_string()));
  pointcloud_args::floating(ck, dev, a.verts, "verts_clip");
  ck.ndim(a.faces, "faces", 2, "(F, 3)");
  if (a.faces.size(1) != 3)
    ck.value_error(str("argument 'faces' must have shape (F, 3), got ", a.faces.shape_string()));
  ck.dtype(a.faces, "faces", {DType::Int64});
  if (H < 1 || W < 1)
    ck.value_error(str("argument 'image_size' must be positive (H, W), got (", H, ", ", W, ")"));
  a.B = a.verts.size(0);
  a.V = a.verts.size(1);
  a.F = a.faces.size(0);
  a.H = H;
  a.W = W;
  if (dev.read_int64) {
    const std::vector<int64_t> idx = dev.read_int64(a.faces);
    for (size_t k = 0; k < idx.size(); ++k)
      if (idx[k] < 0 || idx[k] >= a.V)
        ck.value_error(str("argument 'faces' has index ", idx[k], " at face ", k / 3,
                           " outside [0, V) = [0, ", a.V, ")"));
  }
  a.rast = pointcloud_args::output(ck, dev, rast_h, op, "rast");
  ck.same_dtype(a.rast, "rast", a.verts, "verts_clip");
  if (a.rast.ndim != 4 || a.rast.size(0) != a.B || a.rast.size(1) != H || a.rast.size(2) != W ||
      a.rast.size(3) != 4)
    ck.value_error(str("argument 'rast' must have shape (B, H, W, 4) = (", a.B, ", ", H, ", ", W,
                       ", 4), got ", a.rast.shape_string()));
  a.vertex_ws = pointcloud_args::output(ck, dev, vertex_ws_h, op, "vertex_workspace");
  ck.same_dtype(a.vertex_ws, "vertex_workspace", a.verts, "verts_clip");
  pointcloud_args::check_workspace_size(ck, a.vertex_ws, mesh_raster::vertex_workspace_size(a.B, a.V));
  return a;
}

}  // namespace mesh_raster_args
}  // namespace pvf
