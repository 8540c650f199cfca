// A small SIMT emulation of the CUDA built-ins used by csrc/pointcloud/pointcloud_next_*.cuh, so that those
// kernels run unchanged on a CPU (tests/test_pointcloud_simt.py). One host thread per CUDA thread; blocks run
// one after another; __syncthreads is a real barrier over the block and every *_sync warp collective a real
// exchange among the warp's 32 threads (full masks only: the kernels use nothing else). A barrier or
// collective that not every thread reaches is reported as a deadlock (abort) instead of hanging.
//
// What it checks: indexing, the uniformity of barriers and collectives, shared-memory hand-offs between
// threads (a missing barrier can show up as a wrong value), semantics. What it cannot: GPU memory-model
// subtleties beyond barriers, performance, half types.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <math.h>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#define PVF_SIMT_EMULATION 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

typedef void* cudaStream_t;

namespace simt {

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};

inline int max_dynamic_smem = 227 * 1024;  // what the kernels' launch plans see; tests lower it

// A reusable barrier for `count` threads that aborts after a timeout.
class Barrier {
 public:
  void reset(int count) {
    count_ = count;
    waiting_ = 0;
    generation_ = 0;
  }
  void wait(const char* what) {
    std::unique_lock<std::mutex> lock(mutex_);
    const long gen = generation_;
    if (++waiting_ == count_) {
      waiting_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(60), [&] { return generation_ != gen; })) {
      std::fprintf(stderr, "simt: deadlock in %s (%d of %d threads arrived)\n", what, waiting_, count_);
      std::abort();
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_ = 0, waiting_ = 0;
  long generation_ = 0;
};

struct Warp {
  Barrier barrier;
  uint64_t slots[32];
};

struct Block {
  Barrier barrier;
  std::vector<Warp> warps;
  std::vector<unsigned char> dynamic_smem;
};

inline Block* g_block = nullptr;
inline dim3 g_block_dim, g_grid_dim;
inline thread_local uint3 t_thread_idx, t_block_idx;

inline int lane_id() { return static_cast<int>(t_thread_idx.x & 31); }
inline Warp& my_warp() { return g_block->warps[t_thread_idx.x >> 5]; }

inline void check_mask(unsigned mask, const char* what) {
  if (mask != 0xffffffffu) {
    std::fprintf(stderr, "simt: %s with a partial mask %08x is not emulated\n", what, mask);
    std::abort();
  }
}

// Every lane deposits 8 bytes; f(slots) computes this lane's result once all have.
template <typename R, typename F>
R collective(uint64_t mine, const char* what, F f) {
  Warp& w = my_warp();
  w.slots[lane_id()] = mine;
  w.barrier.wait(what);
  R r = f(w.slots);
  w.barrier.wait(what);
  return r;
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "8 bytes at most");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, Args... args) {
  if (block.x == 0 || block.x > 1024 || block.y != 1 || block.z != 1 || block.x % 32 != 0) {
    std::fprintf(stderr, "simt: block (%u, %u, %u) not emulated (1-D, a multiple of 32 threads)\n", block.x,
                 block.y, block.z);
    std::abort();
  }
  if (static_cast<long>(smem) > max_dynamic_smem) {
    std::fprintf(stderr, "simt: %zu bytes of dynamic shared memory exceed the limit %d\n", smem, max_dynamic_smem);
    std::abort();
  }
  g_block_dim = block;
  g_grid_dim = grid;
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      Block blk;
      blk.barrier.reset(static_cast<int>(block.x));
      blk.warps = std::vector<Warp>(block.x / 32);
      for (auto& w : blk.warps) w.barrier.reset(32);
      blk.dynamic_smem.assign(smem + 64, 0xA5);  // garbage, as on a GPU
      g_block = &blk;
      std::vector<std::thread> threads;
      threads.reserve(block.x);
      for (unsigned t = 0; t < block.x; ++t)
        threads.emplace_back([=] {
          t_thread_idx.x = t;
          t_block_idx.x = bx;
          t_block_idx.y = by;
          kernel(args...);
        });
      for (auto& th : threads) th.join();
      g_block = nullptr;
    }
}

// PVF_LAUNCH(kernel, grid, block, smem, stream)(args...)
template <typename Kernel>
struct Launcher {
  Kernel kernel;
  dim3 grid, block;
  size_t smem;
  template <typename... Args>
  void operator()(Args... args) const {
    launch(kernel, grid, block, smem, args...);
  }
};
template <typename Kernel>
Launcher<Kernel> make_launcher(Kernel k, dim3 grid, dim3 block, size_t smem) {
  return Launcher<Kernel>{k, grid, block, smem};
}

}  // namespace simt

using simt::dim3;
#define threadIdx (::simt::t_thread_idx)
#define blockIdx (::simt::t_block_idx)
#define blockDim (::simt::g_block_dim)
#define gridDim (::simt::g_grid_dim)

#define PVF_LAUNCH(kernel, grid, block, smem, stream) ::simt::make_launcher(kernel, grid, block, smem)
#define PVF_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(::simt::g_block->dynamic_smem.data())

inline void __syncthreads() { simt::g_block->barrier.wait("__syncthreads"); }

inline unsigned __ballot_sync(unsigned mask, int pred) {
  simt::check_mask(mask, "__ballot_sync");
  return simt::collective<unsigned>(pred ? 1 : 0, "__ballot_sync", [](const uint64_t* s) {
    unsigned r = 0;
    for (int l = 0; l < 32; ++l) r |= static_cast<unsigned>(s[l] & 1u) << l;
    return r;
  });
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == 0xffffffffu; }

inline unsigned __reduce_max_sync(unsigned mask, unsigned v) {
  simt::check_mask(mask, "__reduce_max_sync");
  return simt::collective<unsigned>(v, "__reduce_max_sync", [](const uint64_t* s) {
    unsigned r = 0;
    for (int l = 0; l < 32; ++l) r = std::max(r, static_cast<unsigned>(s[l]));
    return r;
  });
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) {
  simt::check_mask(mask, "__reduce_min_sync");
  return simt::collective<unsigned>(v, "__reduce_min_sync", [](const uint64_t* s) {
    unsigned r = 0xffffffffu;
    for (int l = 0; l < 32; ++l) r = std::min(r, static_cast<unsigned>(s[l]));
    return r;
  });
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  simt::check_mask(mask, "__shfl_xor_sync");
  const int src = simt::lane_id() ^ lane_mask;
  return simt::collective<T>(simt::to_bits(v), "__shfl_xor_sync",
                             [src](const uint64_t* s) { return simt::from_bits<T>(s[src & 31]); });
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src) {
  simt::check_mask(mask, "__shfl_sync");
  return simt::collective<T>(simt::to_bits(v), "__shfl_sync",
                             [src](const uint64_t* s) { return simt::from_bits<T>(s[src & 31]); });
}

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(unsigned v) { return __builtin_ffs(static_cast<int>(v)); }

inline unsigned __float_as_uint(float f) { return simt::from_bits<unsigned>(simt::to_bits(f)); }
inline float __uint_as_float(unsigned u) { return simt::from_bits<float>(u); }
inline long long __double_as_longlong(double d) { return simt::from_bits<long long>(simt::to_bits(d)); }
inline double __longlong_as_double(long long v) { return simt::from_bits<double>(static_cast<uint64_t>(v)); }

template <typename T>
T atomicAdd(T* address, T v) {
  return std::atomic_ref<T>(*address).fetch_add(v);
}

// cuda_utils.cuh's conversions, for float and double (half types are not emulated).
namespace pvf {
template <typename T>
using acc_t = T;
template <typename T>
inline T to_acc(T v) {
  return v;
}
template <typename T>
inline T from_acc(T v) {
  return v;
}
template <typename T>
inline T acc_infinity() {
  return std::numeric_limits<T>::infinity();
}
}  // namespace pvf
