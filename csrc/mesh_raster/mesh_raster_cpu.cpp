// CPU rasterizer (see mesh_raster.h). Floating-point contraction is off in this translation unit: the edge
// functions and depths must round exactly like the plain-PyTorch reference (one rounding per operation).
#pragma GCC optimize("fp-contract=off")
#include <algorithm>
#include <cstring>

#include "common/parallel.h"
#include "mesh_raster/mesh_raster.h"
#include "mesh_raster/mesh_raster_math.h"

namespace pvf {
namespace mesh_raster {

namespace {

// Rasterizes face f of image b into the rows [r0, r1) of rast (B, H, W, 4); faces arrive in increasing id, so
// a pixel changes hands only for a strictly smaller depth (equal depths stay with the lower id).
template <typename T>
inline void raster_face(const Tri<T>& t, int64_t f, int64_t r0, int64_t r1, int64_t W, T* img) {
  const int64_t i0 = std::max(t.i0, r0), i1 = std::min(t.i1, r1 - 1);
  for (int64_t i = i0; i <= i1; ++i) {
    const T py = T(i) + T(0.5);
    const T a0 = edge_row(t.e[0], py), a1 = edge_row(t.e[1], py), a2 = edge_row(t.e[2], py);
    T* row = img + i * W * 4;
    for (int64_t j = t.j0; j <= t.j1; ++j) {
      const T px = T(j) + T(0.5);
      const T e0 = edge_at(t.e[0], a0, px), e1 = edge_at(t.e[1], a1, px), e2 = edge_at(t.e[2], a2, px);
      // one branch per pixel (the three tests combined without short-circuit)
      if (!(covers(e0, t.e[0].own) & covers(e1, t.e[1].own) & covers(e2, t.e[2].own))) continue;
      const T depth = depth_at(t, e0, e1, e2);
      T* o = row + j * 4;
      if (o[3] == T(0) || depth < o[2]) {
        barycentrics_at(t, e0, e1, e2, o[0], o[1]);
        o[2] = depth;
        o[3] = T(f + 1);
      }
    }
  }
}

}  // namespace

template <typename T>
void rasterize_cpu(const T* verts, const int64_t* faces, int64_t B, int64_t V, int64_t F, int64_t H,
                   int64_t W, bool cull_backfaces, T* rast, T* vertex_ws) {
  if (B == 0 || H == 0 || W == 0) return;
  // Bands: enough work items for every thread (about 4 per thread), none shorter than kRowsPerTile rows. The
  // banding does not change the result: each pixel is decided by the one band holding its row.
  const int64_t max_bands = (H + kRowsPerTile - 1) / kRowsPerTile;
  const int64_t want = (4 * static_cast<int64_t>(num_threads()) + B - 1) / B;
  const int64_t bands = std::max<int64_t>(1, std::min(want, max_bands));
  const int64_t band_h = (H + bands - 1) / bands;
  // With one band per image (batches of >= 4 images per thread) each work item transforms its own image's
  // vertices: one parallel region instead of two (an OpenMP region's end costs spinning threads).
  if (bands > 1) {
    parallel_for(0, B * V, 4096, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; ++k) screen_vertex(verts + k * 4, H, W, vertex_ws + k * 4);
    });
  }
  parallel_for_dynamic(0, B * bands, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t item = lo; item < hi; ++item) {
      const int64_t b = item / bands;
      if (bands == 1)
        for (int64_t k = b * V; k < (b + 1) * V; ++k) screen_vertex(verts + k * 4, H, W, vertex_ws + k * 4);
      const int64_t r0 = (item % bands) * band_h, r1 = std::min(H, r0 + band_h);
      if (r0 >= r1) continue;
      T* img = rast + b * H * W * 4;
      std::memset(img + r0 * W * 4, 0, sizeof(T) * (r1 - r0) * W * 4);
      const T* vs = vertex_ws + b * V * 4;
      Tri<T> t;
      for (int64_t f = 0; f < F; ++f) {
        const int64_t* fc = faces + f * 3;
        if (!setup_triangle(vs + fc[0] * 4, vs + fc[1] * 4, vs + fc[2] * 4, H, W, cull_backfaces, t))
          continue;
        if (t.i1 < r0 || t.i0 >= r1) continue;
        raster_face(t, f, r0, r1, W, img);
      }
    }
  });
}

template void rasterize_cpu<float>(const float*, const int64_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                   bool, float*, float*);
template void rasterize_cpu<double>(const double*, const int64_t*, int64_t, int64_t, int64_t, int64_t,
                                    int64_t, bool, double*, double*);

}  // namespace mesh_raster
}  // namespace pvf
