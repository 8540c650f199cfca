// Host emulator of the tiled filter-bank kernels (csrc/scale_space/filter_bank_tiled.h): every block runs its
// threads as OS threads that meet at a real barrier wherever the CUDA code calls __syncthreads(), with shared
// memory filled with NaN before each block (a read of a value no thread wrote shows up in the results).
// Built by tests/test_gaussian_scale_space.py with the host compiler and called through ctypes; float32 and
// float64 only (the half types differ only in the loads and stores).
#include <barrier>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "scale_space/filter_bank_tiled.h"

namespace t = pvf::scale_space::tiled;
using pvf::scale_space::BankGeometry;
using pvf::scale_space::Boundary;

namespace {

struct HostCtx {
  int t, n;
  int64_t b;
  std::barrier<>* bar;
  unsigned char* smem;
  int tid() const { return t; }
  int nthreads() const { return n; }
  int64_t block() const { return b; }
  void sync() const { bar->arrive_and_wait(); }
  template <typename A>
  A* shared() const {
    return reinterpret_cast<A*>(smem);
  }
};

// Runs body(ctx) for every block of a grid with `threads` threads each; smem_bytes of shared memory.
template <typename A, typename Body>
void launch(int64_t blocks, int threads, int64_t smem_bytes, Body body) {
  std::vector<A> smem(static_cast<size_t>(smem_bytes / sizeof(A) + 1));
  std::barrier<> bar(threads);
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i)
    pool.emplace_back([&, i] {
      for (int64_t b = 0; b < blocks; ++b) {
        if (i == 0) std::fill(smem.begin(), smem.end(), std::numeric_limits<A>::quiet_NaN());
        bar.arrive_and_wait();
        body(HostCtx{i, threads, b, &bar, reinterpret_cast<unsigned char*>(smem.data())});
        bar.arrive_and_wait();
      }
    });
  for (auto& th : pool) th.join();
}

BankGeometry geometry(int64_t B, int64_t C, int64_t H, int64_t W, int64_t S, int64_t R, const int64_t* radii,
                      int boundary) {
  BankGeometry g{B, C, H, W, S, R, radii, static_cast<Boundary>(boundary)};
  return g;
}

template <typename T>
void forward(const BankGeometry& bg, const T* x, const T* k, T* out, int threads) {
  const t::Geometry g = t::make_geometry(bg);
  launch<T>(g.blocks, threads, t::layout(g, false).total * sizeof(T),
            [&](const HostCtx& ctx) { t::forward_block<T, T>(ctx, g, x, k, out); });
}

template <typename T>
void backward(const BankGeometry& bg, const T* x, const T* go, const T* k, T* gx, T* gk, int threads) {
  const t::Geometry g = t::make_geometry(bg);
  std::vector<T> partial(static_cast<size_t>(t::backward_workspace(g)), std::numeric_limits<T>::quiet_NaN());
  launch<T>(g.blocks, threads, t::layout(g, true).total * sizeof(T),
            [&](const HostCtx& ctx) { t::backward_block<T, T>(ctx, g, x, go, k, gx, partial.data()); });
  launch<double>(int64_t(g.S) * g.L, t::kReduceThreads, t::kReduceThreads * sizeof(double),
                 [&](const HostCtx& ctx) {
                   t::reduce_block<T>(ctx, g.blocks, partial.data(), gk, ctx.template shared<double>());
                 });
}

}  // namespace

extern "C" {

// dtype 0: float32, 1: float64. Returns the shared-memory bytes of a block (forward or backward).
int64_t pvf_emul_smem(int dtype, int64_t B, int64_t C, int64_t H, int64_t W, int64_t S, int64_t R,
                      const int64_t* radii, int boundary, int backward) {
  const t::Geometry g = t::make_geometry(geometry(B, C, H, W, S, R, radii, boundary));
  return t::layout(g, backward != 0).total * (dtype == 1 ? 8 : 4);
}

void pvf_emul_forward(int dtype, int64_t B, int64_t C, int64_t H, int64_t W, int64_t S, int64_t R,
                      const int64_t* radii, int boundary, const void* x, const void* k, void* out, int threads) {
  const BankGeometry g = geometry(B, C, H, W, S, R, radii, boundary);
  if (dtype == 1)
    forward(g, static_cast<const double*>(x), static_cast<const double*>(k), static_cast<double*>(out), threads);
  else
    forward(g, static_cast<const float*>(x), static_cast<const float*>(k), static_cast<float*>(out), threads);
}

void pvf_emul_backward(int dtype, int64_t B, int64_t C, int64_t H, int64_t W, int64_t S, int64_t R,
                       const int64_t* radii, int boundary, const void* x, const void* go, const void* k, void* gx,
                       void* gk, int threads) {
  const BankGeometry g = geometry(B, C, H, W, S, R, radii, boundary);
  if (dtype == 1)
    backward(g, static_cast<const double*>(x), static_cast<const double*>(go), static_cast<const double*>(k),
             static_cast<double*>(gx), static_cast<double*>(gk), threads);
  else
    backward(g, static_cast<const float*>(x), static_cast<const float*>(go), static_cast<const float*>(k),
             static_cast<float*>(gx), static_cast<float*>(gk), threads);
}

}  // extern "C"
