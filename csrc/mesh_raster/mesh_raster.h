// Triangle rasterization with a z-buffer (the forward of a differentiable rasterizer in nvdiffrast's
// convention): clip-space vertices -> per pixel the nearest covering triangle, its perspective-correct
// barycentrics and its depth.
//
// Conventions for every function below (pyvision_fast/ops/mesh_raster.py states them for users):
//  * verts (B, V, 4) contiguous clip-space (x, y, z, w), T = float or double; faces (F, 3) contiguous
//    int64, every entry in [0, V). rast (B, H, W, 4) contiguous T, fully overwritten.
//  * Screen space: sx = (x / w + 1) * (W / 2), sy = (y / w + 1) * (H / 2); pixel (i, j) (row i, column j)
//    has its centre at (j + 0.5, i + 0.5), i.e. NDC x = (2j + 1) / W - 1, y = (2i + 1) / H - 1: row 0 is NDC
//    y = -1 (OpenGL's bottom row, as in nvdiffrast).
//  * Culling: a triangle with a vertex of w <= 0 (no clipping), a non-finite coordinate or zero screen area
//    covers nothing. area = (x1-x0)(y2-y0) - (y1-y0)(x2-x0) > 0 (counter-clockwise with y up) is a front
//    face; back faces (area < 0) are culled when cull_backfaces, else rasterized like front faces.
//  * Coverage: pixel centre p is covered when, for each edge k (opposite vertex k; edges 1->2, 2->0, 0->1
//    of the triangle oriented counter-clockwise), the edge function e_k(p) > 0, or e_k(p) == 0 and the edge
//    owns its centres (it runs toward +y, or toward -x when horizontal). e_k is evaluated from the
//    lexicographically smaller endpoint, so two triangles sharing an edge get exactly opposite values: a
//    centre on a shared edge is covered by exactly one of them.
//  * Per covered pixel: depth = (e0 z0/w0 + e1 z1/w1 + e2 z2/w2) / |area| (z/w, affine in screen space);
//    r_k = e_k / w_k, u = r1 / (r0 + r1 + r2), v = r2 / (r0 + r1 + r2) (perspective-correct, w0 = 1 - u - v).
//    The smallest depth wins; equal depths go to the lower triangle id. rast = (u, v, depth, id + 1); pixels
//    no triangle covers are (0, 0, 0, 0). No depth-range clipping.
//  * The result does not depend on the thread count: every pixel is decided by one thread, and the (depth,
//    id) order is total. The CPU kernel and the plain-PyTorch reference perform the same floating-point
//    operations in the same order (no contraction into FMAs), so they agree bitwise.
//  * Kernels never allocate; workspaces come from the caller. Arguments have been checked by the bindings
//    (csrc/bindings/mesh_raster_args.h). CUDA launchers take the stream as void* and throw pvf::DeviceError
//    if a launch fails.
#pragma once
#include <cstdint>

#include "common/tensor_view.h"

namespace pvf {
namespace mesh_raster {

// Rows per CPU work item (an image's band of rows; every pixel belongs to one band).
constexpr int64_t kRowsPerTile = 8;

// Elements of T in the vertex workspace (CPU and CUDA): (sx, sy, 1/w, z/w) per vertex, 1/w = NaN for a vertex
// that culls its triangles (w <= 0 or a non-finite coordinate).
inline int64_t vertex_workspace_size(int64_t B, int64_t V) { return B * V * 4; }

// ---------------------------------------------------------------- CPU (T = float or double)

// OpenMP over vertices, then over (image, band of rows) work items (bands of at least kRowsPerTile rows, as
// many as keep every thread busy); each band scans the faces in id order over their pixel bounding boxes,
// keeping the z-buffer in rast itself (a later face replaces a pixel only with a strictly smaller depth).
template <typename T>
void rasterize_cpu(const T* verts, const int64_t* faces, int64_t B, int64_t V, int64_t F, int64_t H,
                   int64_t W, bool cull_backfaces, T* rast, T* vertex_ws);

// ---------------------------------------------------------------- CUDA (float32 / float64)

// uint64 elements of the CUDA key workspace: per pixel the smallest depth (as order-preserving bits of T) and
// then the lowest face id at that depth.
inline int64_t key_workspace_size(int64_t B, int64_t H, int64_t W) { return 2 * B * H * W; }

// One thread per vertex (the vertex workspace), then one thread per (image, face) scanning its bounding box
// with atomicMin on the depth bits, a second such pass with atomicMin on the id among the pixels' nearest
// covering faces, and one thread per pixel recomputing the winner's barycentrics and depth in T (the same
// operations as the CPU kernel, without contraction: the results agree bitwise).
void rasterize_cuda(DType dtype, const void* verts, const int64_t* faces, int64_t B, int64_t V, int64_t F,
                    int64_t H, int64_t W, bool cull_backfaces, void* rast, void* vertex_ws, uint64_t* keys,
                    void* stream);

}  // namespace mesh_raster
}  // namespace pvf
