// One fused channel's planes (all clips) in a buffer, for the training-mode BatchNorm kernels: a channel is the
// unit of BatchNorm's statistics, and its planes stay in the core's cache between the passes that need them.
//
// Planes keep their packed H*W rows and are `stride` elements apart (H*W + W rounded up to whole vectors); the
// gap after each plane is zero, and so is a whole plane before each clip and after the last. Every tap of the
// views is then a vector load at a fixed offset (the zeros stand for the zero padding along H and T); the W
// edges, where the flat neighbour belongs to the next or previous row, are masked by per-position weights. A
// plane is whole vectors long, so the loops over a clip have no scalar tails and keep their sums in vector
// accumulators across planes. Values computed on the gaps are zeroed (`valid`) where a later pass reads them.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/simd.h"

namespace pvf {
namespace mvf {

template <typename T>
class ChannelPlanes {
 public:
  using V = typename simd::Vec<T>::type;
  static constexpr int L = simd::Vec<T>::lanes;

  int64_t N, frames, H, W, HW, stride;

  // Sizes at least 1 (the kernels return before building one for an empty batch).
  ChannelPlanes(int64_t clips, int64_t frames_per_clip, int64_t height, int64_t width)
      : N(clips), frames(frames_per_clip), H(height), W(width), HW(height * width),
        stride((height * width + width + L - 1) / L * L), valid_(stride, T(0)), left_(stride, T(0)),
        right_(stride, T(0)) {
    for (int64_t i = 0; i < HW; ++i) {
      valid_[i] = T(1);
      left_[i] = T(i % W != 0);
      right_[i] = T(i % W != W - 1);
    }
  }

  // Offset of plane (n, t) in a buffer.
  int64_t at(int64_t n, int64_t t) const { return (n * (frames + 1) + t + 1) * stride; }
  // Elements of a buffer.
  int64_t size() const { return (N * (frames + 1) + 1) * stride; }
  // Per position of a plane: 1 on its H*W values, 0 on the gap; 1 where the value has a left / right neighbour.
  const T* valid() const { return valid_.data(); }
  const T* has_left() const { return left_.data(); }
  const T* has_right() const { return right_.data(); }

  // f(offset of plane (n, t), n, t) over the clips' planes in order.
  template <typename Fn>
  void for_planes(const Fn& f) const {
    for (int64_t n = 0; n < N; ++n)
      for (int64_t t = 0; t < frames; ++t) f(at(n, t), n, t);
  }

  // buffer plane at `dst` <- tensor plane at `src` (rows `row_stride` apart), leaving the gap zero.
  void load_plane(T* dst, const T* src, int64_t row_stride) const {
    if (row_stride != W) {
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) dst[h * W + w] = src[h * row_stride + w];
    } else if (HW >= L) {
      copy_packed(dst, src);
    } else {
      simd::store(dst, simd::load_first(src, HW));  // the lanes past H*W are zeros, written on the gap
    }
  }

  // tensor plane at `dst` (rows `row_stride` apart) <- f(i), the vector of positions i..i+L-1 of the plane, for
  // whole vectors over its H*W values (the last one overlapping the one before it, computed twice).
  template <typename Fn>
  void store_plane(T* dst, int64_t row_stride, const Fn& f) const {
    if (row_stride == W && HW >= L) {
      for (int64_t i0 = 0; i0 < HW; i0 += L) {
        const int64_t i = std::min(i0, HW - L);
        simd::store(dst + i, f(i));
      }
      return;
    }
    for (int64_t i0 = 0; i0 < HW; i0 += L) {
      const V v = f(i0);
      for (int64_t k = 0; k < L && i0 + k < HW; ++k) dst[(i0 + k) / W * row_stride + (i0 + k) % W] = v[k];
    }
  }

  // A hint that the tensor plane at `p` (packed rows) will be read, or written (`write`), soon: fetch(j) asks for
  // its j-th cache line. The loops over a plane's vectors fetch one line per vector (a plane spans no more lines
  // than its loop has vectors), so the next channel's memory traffic overlaps this channel's arithmetic instead
  // of following it. A null plane fetches nothing.
  template <bool write = false>
  class Fetch {
   public:
    Fetch(const T* p, const ChannelPlanes& lay)
        : p_(reinterpret_cast<const char*>(p)), lines_((lay.HW * static_cast<int64_t>(sizeof(T)) + 63) / 64 + 1) {}
    void operator()(int64_t j) const {
      if (p_ != nullptr && j < lines_) __builtin_prefetch(p_ + 64 * j, write, 3);
    }

   private:
    const char* p_;
    int64_t lines_;
  };

  // A 64-byte-aligned zeroed buffer of size() elements.
  class Buffer {
   public:
    explicit Buffer(int64_t n) : storage_(n + 64 / sizeof(T), T(0)) {
      const auto address = reinterpret_cast<uintptr_t>(storage_.data());
      data_ = storage_.data() + ((64 - address % 64) % 64) / sizeof(T);
    }
    T* data() { return data_; }

   private:
    std::vector<T> storage_;
    T* data_;
  };
  Buffer buffer() const { return Buffer(size()); }

 private:
  void copy_packed(T* dst, const T* src) const {
    int64_t i = 0;
    for (; i + L <= HW; i += L) simd::store(dst + i, simd::load(src + i));
    if (i < HW) simd::store(dst + HW - L, simd::load(src + HW - L));
  }

  std::vector<T> valid_, left_, right_;
};

// A channel's views as one stencil over its buffer: y = centre*x + t0*x[t-1] + t2*x[t+1] + h0*x[h-1] +
// h2*x[h+1] + left[i]*x[w-1] + right[i]*x[w+1], the W taps pre-multiplied by the edge masks. `mirrored` swaps
// the outer taps (the transposed stencil of the backward pass).
template <typename T>
class ChannelStencil {
 public:
  using V = typename simd::Vec<T>::type;

  ChannelStencil(const T* wt, const T* wh, const T* ww, const ChannelPlanes<T>& lay, bool mirrored)
      : plane_(lay.stride), row_(lay.W), left_(lay.stride), right_(lay.stride) {
    const int a = mirrored ? 2 : 0, b = 2 - a;
    centre_ = V{} + (wt[1] + wh[1] + ww[1]);
    t0_ = V{} + wt[a], t2_ = V{} + wt[b], h0_ = V{} + wh[a], h2_ = V{} + wh[b];
    for (int64_t i = 0; i < lay.stride; ++i) {
      left_[i] = ww[a] * lay.has_left()[i];
      right_[i] = ww[b] * lay.has_right()[i];
    }
  }

  // The stencil at position i of the plane at x (x points at the plane's start).
  V operator()(const T* x, int64_t i) const {
    using simd::load;
    const T* p = x + i;
    return centre_ * load(p) + t0_ * load(p - plane_) + t2_ * load(p + plane_) + h0_ * load(p - row_) +
           h2_ * load(p + row_) + load(left_.data() + i) * load(p - 1) + load(right_.data() + i) * load(p + 1);
  }

 private:
  int64_t plane_, row_;
  V centre_, t0_, t2_, h0_, h2_;
  std::vector<T> left_, right_;
};

}  // namespace mvf
}  // namespace pvf
