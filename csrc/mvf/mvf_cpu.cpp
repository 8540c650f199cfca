// CPU multi-view fusion. Planes (n, c, t) whose rows are packed (row stride W, true of the (N, C, T, H, W) and
// frame layouts) are processed as one flat vector of H*W elements: all seven taps in one vector pass over a
// zero-padded copy of the plane, the W-edges masked; other strides go row by row. The pass-through channels are
// copied with streaming stores when the output exceeds the cache.
// The training-mode BatchNorm kernels work one fused channel at a time (BatchNorm's unit of statistics): the
// channel's planes are gathered into buffers with zero gaps (channel_planes.h), which stay in the core's cache
// between the statistics and the normalisation (forward) and between the BatchNorm backward and the views'
// backward, and whose loops have no scalar tails or per-plane sums. While a channel's first pass computes, it
// prefetches the next channel's planes (spread over the pass, one cache line per vector); a later pass prefetches
// the output planes it is about to write.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/parallel.h"
#include "common/simd.h"
#include "common/stream_copy.h"
#include "mvf/channel_planes.h"
#include "mvf/mvf.h"
#include "mvf/mvf_math.h"

namespace pvf {
namespace mvf {
namespace {

// Plane p of a (N, channels, T) range of planes, T fastest.
struct Plane {
  int64_t n, c, t;
};
inline Plane plane_of(int64_t p, int64_t channels, int64_t T) { return {p / (T * channels), (p / T) % channels, p % T}; }

// The first element of plane (n, c, t) of a tensor with strides s (n, c, t, h).
template <typename T>
inline T* plane_at(T* base, const int64_t* s, int64_t n, int64_t c, int64_t t) {
  return base + n * s[0] + c * s[1] + t * s[2];
}

// Per-plane constants of the packed paths: 1 where a flat index has a left / right neighbour in its row, and a
// zero plane that stands in for the missing neighbour planes at the T edges.
template <typename T>
struct EdgeMasks {
  std::vector<T> has_left, has_right, zeros;
  EdgeMasks(int64_t H, int64_t W) : has_left(H * W), has_right(H * W), zeros(H * W, T(0)) {
    for (int64_t i = 0; i < H * W; ++i) {
      has_left[i] = T(i % W != 0);
      has_right[i] = T(i % W != W - 1);
    }
  }
};

// A copy of a packed plane of n elements with W + (vector lanes) zeros on both sides: every tap of every element
// is then a plain load (the row above the first and the row below the last read zeros, as zero padding does).
// One buffer per thread, reused.
template <typename T>
const T* zero_padded(const T* plane, int64_t n, int64_t W) {
  thread_local std::vector<T> buffer;
  const int64_t pad = W + simd::Vec<T>::lanes;
  if (static_cast<int64_t>(buffer.size()) < n + 2 * pad) buffer.resize(n + 2 * pad);
  T* b = buffer.data();
  std::fill(b, b + pad, T(0));
  std::memcpy(b + pad, plane, sizeof(T) * n);
  std::fill(b + pad + n, b + n + 2 * pad, T(0));
  return b + pad;
}

// The three views' sum on one plane: o = wT*(x_prev, x, x_next) + wH*(up, x, down) + wW*(left, x, right), zero
// outside. x_prev / x_next are null at the T edges. Rows of x are sh apart, rows of o out_row apart.
template <typename T>
void stencil_plane(const T* x_prev, const T* x_cur, const T* x_next, int64_t H, int64_t W, int64_t sh,
                   const T* wt, const T* wh, const T* ww, T* out, int64_t out_row, const EdgeMasks<T>& m) {
  const T center = wt[1] + wh[1] + ww[1];
  if (sh == W && out_row == W) {
    using V = typename simd::Vec<T>::type;
    constexpr int L = simd::Vec<T>::lanes;
    const int64_t n = H * W;
    const T* x = zero_padded(x_cur, n, W);
    const T* tp = x_prev ? x_prev : m.zeros.data();
    const T* tn = x_next ? x_next : m.zeros.data();
    const T* ml = m.has_left.data();
    const T* mr = m.has_right.data();
    const T t0 = wt[0], t2 = wt[2], h0 = wh[0], h2 = wh[2], w0 = ww[0], w2 = ww[2];
    // All seven taps per vector; the products across a row edge are formed, then dropped by the masks.
    const V cv = V{} + center, t0v = V{} + t0, t2v = V{} + t2, h0v = V{} + h0, h2v = V{} + h2, w0v = V{} + w0,
            w2v = V{} + w2;
    int64_t i = 0;
    for (; i + L <= n; i += L) {
      V v = cv * simd::load(x + i) + t0v * simd::load(tp + i) + t2v * simd::load(tn + i) +
            h0v * simd::load(x + i - W) + h2v * simd::load(x + i + W);
      const V l = w0v * simd::load(x + i - 1), r = w2v * simd::load(x + i + 1);
      v += simd::load(ml + i) != V{} ? l : V{};
      v += simd::load(mr + i) != V{} ? r : V{};
      simd::store(out + i, v);
    }
    for (; i < n; ++i) {
      const T l = w0 * x[i - 1], r = w2 * x[i + 1];
      out[i] = center * x[i] + t0 * tp[i] + t2 * tn[i] + h0 * x[i - W] + h2 * x[i + W] + (ml[i] != T(0) ? l : T(0)) +
               (mr[i] != T(0) ? r : T(0));
    }
    return;
  }
  for (int64_t h = 0; h < H; ++h) {
    const T* row = x_cur + h * sh;
    const T* up = h > 0 ? row - sh : nullptr;
    const T* down = h + 1 < H ? row + sh : nullptr;
    const T* tp = x_prev ? x_prev + h * sh : nullptr;
    const T* tn = x_next ? x_next + h * sh : nullptr;
    T* o = out + h * out_row;
#pragma omp simd
    for (int64_t w = 0; w < W; ++w) o[w] = center * row[w];
    if (tp) {
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) o[w] += wt[0] * tp[w];
    }
    if (tn) {
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) o[w] += wt[2] * tn[w];
    }
    if (up) {
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) o[w] += wh[0] * up[w];
    }
    if (down) {
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) o[w] += wh[2] * down[w];
    }
#pragma omp simd
    for (int64_t w = 1; w < W; ++w) o[w] += ww[0] * row[w - 1];
#pragma omp simd
    for (int64_t w = 0; w < W - 1; ++w) o[w] += ww[2] * row[w + 1];
  }
}

using simd::dot;

// Adds one plane's share of the kernel gradients: acc[0..2] taps along T, [3..5] along H, [6..8] along W.
// gy is a packed plane; x rows are sh apart; x_prev / x_next are null at the T edges.
template <typename T>
void kernel_grads_plane(const T* gy, const T* x_prev, const T* x, const T* x_next, int64_t H, int64_t W, int64_t sh,
                        const EdgeMasks<T>& m, double* acc) {
  T s_c = 0, s_tp = 0, s_tn = 0, s_hu = 0, s_hd = 0, s_wl = 0, s_wr = 0;
  if (sh == W) {
    using V = typename simd::Vec<T>::type;
    constexpr int L = simd::Vec<T>::lanes;
    const int64_t n = H * W;
    const T* xz = zero_padded(x, n, W);
    const T* tp = x_prev ? x_prev : m.zeros.data();
    const T* tn = x_next ? x_next : m.zeros.data();
    const T* ml = m.has_left.data();
    const T* mr = m.has_right.data();
    V vc = V{}, vtp = V{}, vtn = V{}, vhu = V{}, vhd = V{}, vwl = V{}, vwr = V{};
    int64_t i = 0;
    for (; i + L <= n; i += L) {
      const V gv = simd::load(gy + i);
      vc += gv * simd::load(xz + i);
      vtp += gv * simd::load(tp + i);
      vtn += gv * simd::load(tn + i);
      vhu += gv * simd::load(xz + i - W);  // gy[h] * x[h - 1]
      vhd += gv * simd::load(xz + i + W);  // gy[h] * x[h + 1]
      const V l = gv * simd::load(xz + i - 1), r = gv * simd::load(xz + i + 1);
      vwl += simd::load(ml + i) != V{} ? l : V{};  // gy[w] * x[w - 1]
      vwr += simd::load(mr + i) != V{} ? r : V{};  // gy[w] * x[w + 1]
    }
    s_c = simd::horizontal_sum<T>(vc);
    s_tp = simd::horizontal_sum<T>(vtp);
    s_tn = simd::horizontal_sum<T>(vtn);
    s_hu = simd::horizontal_sum<T>(vhu);
    s_hd = simd::horizontal_sum<T>(vhd);
    s_wl = simd::horizontal_sum<T>(vwl);
    s_wr = simd::horizontal_sum<T>(vwr);
    for (; i < n; ++i) {
      const T gv = gy[i];
      s_c += gv * xz[i];
      s_tp += gv * tp[i];
      s_tn += gv * tn[i];
      s_hu += gv * xz[i - W];
      s_hd += gv * xz[i + W];
      s_wl += ml[i] != T(0) ? gv * xz[i - 1] : T(0);
      s_wr += mr[i] != T(0) ? gv * xz[i + 1] : T(0);
    }
  } else {
    for (int64_t h = 0; h < H; ++h) {
      const T* gr = gy + h * W;
      const T* row = x + h * sh;
      s_c += dot(gr, row, W);
      if (x_prev) s_tp += dot(gr, x_prev + h * sh, W);
      if (x_next) s_tn += dot(gr, x_next + h * sh, W);
      if (h > 0) s_hu += dot(gr, row - sh, W);
      if (h + 1 < H) s_hd += dot(gr, row + sh, W);
      if (W > 1) {
        s_wl += dot(gr + 1, row, W - 1);
        s_wr += dot(gr, row + 1, W - 1);
      }
    }
  }
  acc[0] += s_tp; acc[1] += s_c; acc[2] += s_tn;
  acc[3] += s_hu; acc[4] += s_c; acc[5] += s_hd;
  acc[6] += s_wl; acc[7] += s_c; acc[8] += s_wr;
}

// The copy of channels F..C-1 of src (strides ss) to dst (strides sd), in pieces that threads can share: the
// largest contiguous runs both layouts allow (one per n when those channels' (C-F, T, H, W) block is dense, the
// (N, C, T, H, W) layout; one per (n, t) when their (C-F, H, W) slab is, the frame layout), cut into pieces of
// about 256 KiB; else one plane per piece, row by row. Runs of at least a page are streamed when the whole copy
// exceeds half the last-level cache (each piece then ends with a fence).
template <typename T>
class PassthroughCopy {
 public:
  PassthroughCopy(const Geometry& g, const T* src, const int64_t* ss, T* dst, const int64_t* sd)
      : g_(g), src_(src), ss_(ss), dst_(dst), sd_(sd), pc_(g.C - g.F) {
    if (pc_ <= 0 || g.N * g.T * g.H * g.W == 0) return;
    const int64_t HW = g.H * g.W;
    const bool rows_packed = ss[3] == g.W && sd[3] == g.W;
    const bool slabs = rows_packed && ss[1] == HW && sd[1] == HW;
    blocks_ = rows_packed && ss[2] == HW && sd[2] == HW && ss[1] == g.T * HW && sd[1] == g.T * HW;
    runs_mode_ = blocks_ || slabs;
    run_ = blocks_ ? pc_ * g.T * HW : slabs ? pc_ * HW : g.W;
    streaming_ = static_cast<size_t>(g.N * g.T * pc_ * HW) * sizeof(T) >= streaming_threshold_bytes() &&
                 run_ * static_cast<int64_t>(sizeof(T)) >= 4096;
    piece_ = std::max<int64_t>(1, (256 << 10) / static_cast<int64_t>(sizeof(T)));
    per_run_ = (run_ + piece_ - 1) / piece_;
    pieces_ = runs_mode_ ? (blocks_ ? g.N : g.N * g.T) * per_run_ : g.N * pc_ * g.T;
  }
  int64_t pieces() const { return pieces_; }
  void piece(int64_t q) const {
    if (runs_mode_) {
      const int64_t r = q / per_run_, k = q % per_run_;
      const int64_t n = blocks_ ? r : r / g_.T, t = blocks_ ? 0 : r % g_.T;
      const int64_t off = k * piece_, len = std::min(piece_, run_ - off);
      T* d = dst_ + n * sd_[0] + g_.F * sd_[1] + t * sd_[2] + off;
      const T* s = src_ + n * ss_[0] + g_.F * ss_[1] + t * ss_[2] + off;
      if (streaming_) {
        stream_copy(d, s, sizeof(T) * len);
        stream_fence();
      } else {
        std::memcpy(d, s, sizeof(T) * len);
      }
      return;
    }
    const Plane p = plane_of(q, pc_, g_.T);
    const T* sp = src_ + p.n * ss_[0] + (g_.F + p.c) * ss_[1] + p.t * ss_[2];
    T* dp = dst_ + p.n * sd_[0] + (g_.F + p.c) * sd_[1] + p.t * sd_[2];
    for (int64_t h = 0; h < g_.H; ++h) std::memcpy(dp + h * sd_[3], sp + h * ss_[3], sizeof(T) * g_.W);
  }

 private:
  const Geometry& g_;
  const T* src_;
  const int64_t* ss_;
  T* dst_;
  const int64_t* sd_;
  int64_t pc_, run_ = 0, piece_ = 1, per_run_ = 1, pieces_ = 0;
  bool blocks_ = false, runs_mode_ = false, streaming_ = false;
};

template <typename T>
void copy_passthrough(const Geometry& g, const T* src, const int64_t* ss, T* dst, const int64_t* sd) {
  const PassthroughCopy<T> copy(g, src, ss, dst, sd);
  parallel_for(0, copy.pieces(), 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) copy.piece(q);
  });
}

// Per-thread channel buffers of a training-mode BatchNorm kernel: `count` buffers of one channel's planes.
template <typename T>
struct ChannelBuffers {
  std::vector<typename ChannelPlanes<T>::Buffer> owned;
  T* ptr[3] = {nullptr, nullptr, nullptr};
  ChannelBuffers(const ChannelPlanes<T>& lay, int count) {
    owned.reserve(count);
    for (int i = 0; i < count; ++i) owned.push_back(lay.buffer());
    for (int i = 0; i < count; ++i) ptr[i] = owned[i].data();  // heap storage: stays put when this is moved
  }
};

inline bool copy_beside_channels() {
  const char* v = std::getenv("PVF_MVF_OVERLAP");
  return !(v && v[0] == '0');
}

// The pass-through copy and the fused channels of a training-mode BatchNorm kernel. channel(c, buffers, next)
// does channel c in its thread's `buffers`, prefetching channel `next` (or none when -1). The copy's pieces and
// the channels run side by side (parallel_two_lists: with two threads, one streams the copy, bound by memory,
// while the other computes channels); PVF_MVF_OVERLAP=0 runs the copy first, then the channels in contiguous
// ranges, one range per thread.
template <typename T, typename Channel>
void run_channels_beside_copy(const Geometry& g, const T* src, const int64_t* ss, T* dst, const int64_t* sd,
                              const ChannelPlanes<T>& lay, const Channel& channel, int buffers) {
  if (copy_beside_channels()) {
    const PassthroughCopy<T> copy(g, src, ss, dst, sd);
    parallel_two_lists(copy.pieces(), g.F, [&](int64_t q) { copy.piece(q); }, [&] {
      return [&, b = ChannelBuffers<T>(lay, buffers)](int64_t c) { channel(c, b.ptr, c + 1 < g.F ? c + 1 : -1); };
    });
    return;
  }
  copy_passthrough(g, src, ss, dst, sd);
  parallel_for(0, g.F, 1, [&](int64_t c0, int64_t c1) {
    const ChannelBuffers<T> b(lay, buffers);
    for (int64_t c = c0; c < c1; ++c) channel(c, b.ptr, c + 1 < c1 ? c + 1 : -1);
  });
}

// f(row pointer, length) over the rows of a plane; a plane with packed rows is one row of H*W elements.
template <typename T, typename Fn>
inline void for_rows(T* p, int64_t H, int64_t W, int64_t row_stride, const Fn& f) {
  if (row_stride == W) {
    f(p, H * W);
    return;
  }
  for (int64_t h = 0; h < H; ++h) f(p + h * row_stride, W);
}

template <typename T>
inline T epilogue(T y, const T* scale, const T* shift, int64_t c, bool hs) {
  T z = scale ? scale[c] * y + shift[c] : y;
  return hs ? hardswish(z) : z;
}

}  // namespace

template <typename T>
void mvf_forward_cpu(const Geometry& g, const T* x, const T* wt, const T* wh, const T* ww, const T* scale,
                     const T* shift, bool hardswish, T* out) {
  copy_passthrough(g, x, g.sx, out, g.so);
  const EdgeMasks<T> masks(g.H, g.W);
  parallel_for(0, g.N * g.F * g.T, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const auto [n, c, t] = plane_of(p, g.F, g.T);
      const T* xp = x + n * g.sx[0] + c * g.sx[1] + t * g.sx[2];
      T* op = out + n * g.so[0] + c * g.so[1] + t * g.so[2];
      stencil_plane(t > 0 ? xp - g.sx[2] : nullptr, xp, t + 1 < g.T ? xp + g.sx[2] : nullptr, g.H, g.W, g.sx[3],
                    wt + 3 * c, wh + 3 * c, ww + 3 * c, op, g.so[3], masks);
      if (scale || hardswish) {
        for_rows(op, g.H, g.W, g.so[3], [&](T* o, int64_t len) {
          for (int64_t i = 0; i < len; ++i) o[i] = epilogue(o[i], scale, shift, c, hardswish);
        });
      }
    }
  });
}

// The views' backward on one fused channel c from its packed gradient planes gy (N*T planes, (n, t) order,
// plane p at gy + p*HW): grad_x planes (the stencil with mirrored taps) and the nine kernel-gradient sums.
template <typename T>
void views_backward_channel(const Geometry& g, int64_t c, const T* x, const T* gy_channel, const T* wt,
                            const T* wh, const T* ww, T* grad_x, const EdgeMasks<T>& masks, double* acc) {
  const int64_t HW = g.H * g.W;
  const T mt[3] = {wt[3 * c + 2], wt[3 * c + 1], wt[3 * c]};
  const T mh[3] = {wh[3 * c + 2], wh[3 * c + 1], wh[3 * c]};
  const T mw[3] = {ww[3 * c + 2], ww[3 * c + 1], ww[3 * c]};
  for (int64_t n = 0; n < g.N; ++n) {
    for (int64_t t = 0; t < g.T; ++t) {
      const T* gyp = gy_channel + (n * g.T + t) * HW;
      stencil_plane(t > 0 ? gyp - HW : nullptr, gyp, t + 1 < g.T ? gyp + HW : nullptr, g.H, g.W, g.W, mt, mh, mw,
                    grad_x + n * g.sg[0] + c * g.sg[1] + t * g.sg[2], g.sg[3], masks);
      const T* xp = x + n * g.sx[0] + c * g.sx[1] + t * g.sx[2];
      kernel_grads_plane(gyp, t > 0 ? xp - g.sx[2] : nullptr, xp, t + 1 < g.T ? xp + g.sx[2] : nullptr, g.H, g.W,
                         g.sx[3], masks, acc);
    }
  }
}

template <typename T>
void store_kernel_grads(const double* acc, int64_t c, T* grad_wt, T* grad_wh, T* grad_ww) {
  for (int k = 0; k < 3; ++k) {
    grad_wt[3 * c + k] = static_cast<T>(acc[k]);
    grad_wh[3 * c + k] = static_cast<T>(acc[3 + k]);
    grad_ww[3 * c + k] = static_cast<T>(acc[6 + k]);
  }
}

template <typename T>
void mvf_backward_cpu(const Geometry& g, const T* x, const T* grad_out, const T* wt, const T* wh, const T* ww,
                      const T* scale, const T* shift, bool hardswish, T* grad_x, T* grad_wt, T* grad_wh, T* grad_ww,
                      T* gy, bool gy_given) {
  const int64_t HW = g.H * g.W;
  copy_passthrough(g, grad_out, g.so, grad_x, g.sg);
  const EdgeMasks<T> masks(g.H, g.W);
  // One fused channel per task: the gradient before the epilogue of its planes (computed, or gathered from the
  // workspace when given), then the views' backward while they are in the cache.
  parallel_for(0, g.F, 1, [&](int64_t c0, int64_t c1) {
    std::vector<T> channel(g.N * g.T * HW);
    for (int64_t c = c0; c < c1; ++c) {
      if (gy_given) {
        // The workspace is (N, F, T, H, W): gather the channel's planes into the packed (n, t) order.
        for (int64_t n = 0; n < g.N; ++n)
          std::memcpy(channel.data() + n * g.T * HW, gy + (n * g.F + c) * g.T * HW, sizeof(T) * g.T * HW);
      } else {
        for (int64_t n = 0; n < g.N; ++n) {
          for (int64_t t = 0; t < g.T; ++t) {
            const T* gp = grad_out + n * g.so[0] + c * g.so[1] + t * g.so[2];
            T* gyp = channel.data() + (n * g.T + t) * HW;
            if (!scale && !hardswish) {
              for (int64_t h = 0; h < g.H; ++h) std::memcpy(gyp + h * g.W, gp + h * g.so[3], sizeof(T) * g.W);
              continue;
            }
            // Recompute the pre-activation to differentiate the epilogue.
            const T* xp = x + n * g.sx[0] + c * g.sx[1] + t * g.sx[2];
            stencil_plane(t > 0 ? xp - g.sx[2] : nullptr, xp, t + 1 < g.T ? xp + g.sx[2] : nullptr, g.H, g.W,
                          g.sx[3], wt + 3 * c, wh + 3 * c, ww + 3 * c, gyp, g.W, masks);
            const T s = scale ? scale[c] : T(1);
            const T b = scale ? shift[c] : T(0);
            for (int64_t h = 0; h < g.H; ++h) {
              for (int64_t w = 0; w < g.W; ++w) {
                const T z = s * gyp[h * g.W + w] + b;
                const T d = hardswish ? hardswish_grad(z) : T(1);
                gyp[h * g.W + w] = gp[h * g.so[3] + w] * d * s;
              }
            }
          }
        }
      }
      double acc[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
      views_backward_channel(g, c, x, channel.data(), wt, wh, ww, grad_x, masks, acc);
      store_kernel_grads(acc, c, grad_wt, grad_wh, grad_ww);
    }
  });
}

namespace {

// Vector forms of mvf_math.h's HardSwish and its derivative, on simd::Vec lanes.
template <typename T>
inline typename simd::Vec<T>::type hardswish_vec(typename simd::Vec<T>::type z) {
  using V = typename simd::Vec<T>::type;
  const V r = z + T(3);
  return z * (r < T(0) ? V{} : (r > T(6) ? V{} + T(6) : r)) * (T(1) / T(6));
}

// g * HardSwish'(z) (0 where g is 0).
template <typename T>
inline typename simd::Vec<T>::type hardswish_grad_times(typename simd::Vec<T>::type z,
                                                        typename simd::Vec<T>::type g) {
  using V = typename simd::Vec<T>::type;
  return z < T(-3) ? V{} : (z > T(3) ? g : g * ((z + z + T(3)) * (T(1) / T(6))));
}

}  // namespace

template <typename T>
void mvf_forward_bn_train_cpu(const Geometry& g, const T* x, const T* wt, const T* wh, const T* ww, const T* gamma,
                              const T* beta, double eps, bool hardswish, T* out, T* mean, T* var) {
  using V = typename simd::Vec<T>::type;
  constexpr int L = simd::Vec<T>::lanes;
  using simd::load;
  using simd::store;
  if (g.N * g.T * g.H * g.W == 0) {  // an empty batch: no views, and the statistics of no values are zero
    std::fill(mean, mean + g.F, T(0));
    std::fill(var, var + g.F, T(0));
    return;
  }
  const ChannelPlanes<T> lay(g.N, g.T, g.H, g.W);
  using Fetch = typename ChannelPlanes<T>::template Fetch<false>;
  using WriteFetch = typename ChannelPlanes<T>::template Fetch<true>;
  const int64_t count = g.N * g.T * g.H * g.W, S = lay.stride;
  const T* valid = lay.valid();
  // One fused channel, in buffers xs and ys; `next`: the channel whose planes to prefetch meanwhile (or -1).
  const auto channel = [&](int64_t c, T* xs, T* ys, int64_t next) {
    lay.for_planes(
        [&](int64_t o, int64_t n, int64_t t) { lay.load_plane(xs + o, plane_at(x, g.sx, n, c, t), g.sx[3]); });
    // The views (zero on the gaps), their mean, then their centred sum of squares: vector sums per clip,
    // combined in double.
    const ChannelStencil<T> k(wt + 3 * c, wh + 3 * c, ww + 3 * c, lay, false);
    double sum = 0;
    for (int64_t n = 0; n < g.N; ++n) {
      V s{};
      for (int64_t t = 0, o = lay.at(n, 0); t < g.T; ++t, o += S) {
        const Fetch next_x(next >= 0 ? plane_at(x, g.sx, n, next, t) : nullptr, lay);
        for (int64_t i = 0; i < S; i += L) {
          next_x(i / L);
          const V y = k(xs + o, i) * load(valid + i);
          store(ys + o + i, y);
          s += y;
        }
      }
      sum += simd::horizontal_sum<T>(s);
    }
    const T mu = count > 0 ? static_cast<T>(sum / count) : T(0);
    const V muv = V{} + mu;
    double m2 = 0;
    for (int64_t n = 0; n < g.N; ++n) {
      V s{};
      for (int64_t t = 0, o = lay.at(n, 0); t < g.T; ++t, o += S) {
        const WriteFetch out_plane(plane_at(out, g.so, n, c, t), lay);
        for (int64_t i = 0; i < S; i += L) {
          out_plane(i / L);
          const V d = (load(ys + o + i) - muv) * load(valid + i);
          s += d * d;
        }
      }
      m2 += simd::horizontal_sum<T>(s);
    }
    const double v = count > 0 ? m2 / count : 0.0;
    const double invstd = 1.0 / std::sqrt(v + eps);
    const V a = V{} + static_cast<T>(gamma[c] * invstd);
    const V b = V{} + static_cast<T>(beta[c] - mu * (gamma[c] * invstd));
    lay.for_planes([&](int64_t o, int64_t n, int64_t t) {
      lay.store_plane(plane_at(out, g.so, n, c, t), g.so[3], [&](int64_t i) {
        const V z = a * load(ys + o + i) + b;
        return hardswish ? hardswish_vec<T>(z) : z;
      });
    });
    mean[c] = mu;
    var[c] = static_cast<T>(v);
  };
  run_channels_beside_copy(
      g, x, g.sx, out, g.so, lay, [&](int64_t c, T* const* b, int64_t next) { channel(c, b[0], b[1], next); }, 2);
}


template <typename T>
void mvf_backward_bn_train_cpu(const Geometry& g, const T* x, const T* grad_out, const T* wt, const T* wh,
                               const T* ww, const T* gamma, const T* beta, const T* mean, const T* var, double eps,
                               bool hardswish, T* grad_x, T* grad_wt, T* grad_wh, T* grad_ww, T* grad_gamma,
                               T* grad_beta) {
  using V = typename simd::Vec<T>::type;
  constexpr int L = simd::Vec<T>::lanes;
  using simd::load;
  using simd::store;
  if (g.N * g.T * g.H * g.W == 0) {  // an empty batch: nothing to differentiate, the parameters' gradients are zero
    for (T* p : {grad_wt, grad_wh, grad_ww}) std::fill(p, p + 3 * g.F, T(0));
    std::fill(grad_gamma, grad_gamma + g.F, T(0));
    std::fill(grad_beta, grad_beta + g.F, T(0));
    return;
  }
  const ChannelPlanes<T> lay(g.N, g.T, g.H, g.W);
  using Fetch = typename ChannelPlanes<T>::template Fetch<false>;
  using WriteFetch = typename ChannelPlanes<T>::template Fetch<true>;
  const int64_t count = g.N * g.T * g.H * g.W, S = lay.stride, R = lay.W;
  const T* valid = lay.valid();
  const T* has_left = lay.has_left();
  const T* has_right = lay.has_right();
  // One fused channel. xs: the input; gs: the incoming gradient, then gz, then d loss / d y; ys: the views.
  // `next`: the channel whose planes to prefetch meanwhile (or -1).
  const auto channel = [&](int64_t c, T* xs, T* gs, T* ys, int64_t next) {
    lay.for_planes([&](int64_t o, int64_t n, int64_t t) {
      lay.load_plane(xs + o, plane_at(x, g.sx, n, c, t), g.sx[3]);
      lay.load_plane(gs + o, plane_at(grad_out, g.so, n, c, t), g.so[3]);
    });
    const double invstd = 1.0 / std::sqrt(static_cast<double>(var[c]) + eps);
    const T mu = mean[c];
    const V muv = V{} + mu;
    const V a = V{} + static_cast<T>(gamma[c] * invstd);
    // gz = grad * HardSwish'(z) (zero on the gaps, where grad is) and the sums of gz and gz * (y - mean).
    double sum_gz = 0, sum_gz_centred = 0;
    {
      const ChannelStencil<T> k(wt + 3 * c, wh + 3 * c, ww + 3 * c, lay, false);
      const V b = V{} + static_cast<T>(beta[c] - mu * (gamma[c] * invstd));
      for (int64_t n = 0; n < g.N; ++n) {
        V s{}, sc{};
        for (int64_t t = 0, o = lay.at(n, 0); t < g.T; ++t, o += S) {
          const Fetch next_x(next >= 0 ? plane_at(x, g.sx, n, next, t) : nullptr, lay);
          const Fetch next_grad(next >= 0 ? plane_at(grad_out, g.so, n, next, t) : nullptr, lay);
          for (int64_t i = 0; i < S; i += L) {
            next_x(i / L);
            next_grad(i / L);
            const V y = k(xs + o, i);
            const V gz = hardswish ? hardswish_grad_times<T>(a * y + b, load(gs + o + i)) : load(gs + o + i);
            store(gs + o + i, gz);
            store(ys + o + i, y);
            s += gz;
            sc += gz * (y - muv);
          }
        }
        sum_gz += simd::horizontal_sum<T>(s);
        sum_gz_centred += simd::horizontal_sum<T>(sc);
      }
    }
    grad_beta[c] = static_cast<T>(sum_gz);
    grad_gamma[c] = static_cast<T>(sum_gz_centred * invstd);
    // d loss / d y = gamma * invstd * (gz - mean(gz) - y_hat * mean(gz * y_hat)) (zero on the gaps), and the
    // kernel-gradient sums: d loss / d y times the input at each tap's offset.
    const V k_mean = V{} + (count > 0 ? static_cast<T>(sum_gz / count) : T(0));
    const V k_centred = V{} + (count > 0 ? static_cast<T>(sum_gz_centred / count * invstd * invstd) : T(0));
    double acc[7] = {0, 0, 0, 0, 0, 0, 0};
    for (int64_t n = 0; n < g.N; ++n) {
      V s_c{}, s_tp{}, s_tn{}, s_up{}, s_down{}, s_left{}, s_right{};
      for (int64_t t = 0, o = lay.at(n, 0); t < g.T; ++t, o += S) {
        const WriteFetch grad_x_plane(plane_at(grad_x, g.sg, n, c, t), lay);
        for (int64_t i = 0; i < S; i += L) {
          grad_x_plane(i / L);
          const V dy = a * (load(gs + o + i) - k_mean - (load(ys + o + i) - muv) * k_centred) * load(valid + i);
          store(gs + o + i, dy);
          const T* xi = xs + o + i;
          s_c += dy * load(xi);
          s_tp += dy * load(xi - S);
          s_tn += dy * load(xi + S);
          s_up += dy * load(xi - R);
          s_down += dy * load(xi + R);
          s_left += dy * load(has_left + i) * load(xi - 1);
          s_right += dy * load(has_right + i) * load(xi + 1);
        }
      }
      const V sums[7] = {s_tp, s_c, s_tn, s_up, s_down, s_left, s_right};
      for (int q = 0; q < 7; ++q) acc[q] += simd::horizontal_sum<T>(sums[q]);
    }
    const double kernel_grads[9] = {acc[0], acc[1], acc[2], acc[3], acc[1], acc[4], acc[5], acc[1], acc[6]};
    store_kernel_grads(kernel_grads, c, grad_wt, grad_wh, grad_ww);
    // grad_x: the stencil of d loss / d y with mirrored taps.
    const ChannelStencil<T> mirrored(wt + 3 * c, wh + 3 * c, ww + 3 * c, lay, true);
    lay.for_planes([&](int64_t o, int64_t n, int64_t t) {
      lay.store_plane(plane_at(grad_x, g.sg, n, c, t), g.sg[3],
                      [&](int64_t i) { return mirrored(gs + o, i); });
    });
  };
  run_channels_beside_copy(
      g, grad_out, g.so, grad_x, g.sg, lay,
      [&](int64_t c, T* const* b, int64_t next) { channel(c, b[0], b[1], b[2], next); }, 3);
}

#define PVF_MVF_INSTANTIATE(T)                                                                                     \
  template void mvf_forward_cpu<T>(const Geometry&, const T*, const T*, const T*, const T*, const T*, const T*,  \
                                   bool, T*);                                                                    \
  template void mvf_backward_cpu<T>(const Geometry&, const T*, const T*, const T*, const T*, const T*, const T*, \
                                    const T*, bool, T*, T*, T*, T*, T*, bool);                                   \
  template void mvf_forward_bn_train_cpu<T>(const Geometry&, const T*, const T*, const T*, const T*, const T*,   \
                                            const T*, double, bool, T*, T*, T*);                                 \
  template void mvf_backward_bn_train_cpu<T>(const Geometry&, const T*, const T*, const T*, const T*, const T*,  \
                                             const T*, const T*, const T*, const T*, double, bool, T*, T*, T*,   \
                                             T*, T*, T*);
PVF_MVF_INSTANTIATE(float)
PVF_MVF_INSTANTIATE(double)
#undef PVF_MVF_INSTANTIATE

}  // namespace mvf
}  // namespace pvf
