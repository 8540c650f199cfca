// CPU vector quantisation: fused distance + argmin, never forming the (N, K) distance matrix.
//
// Layout. The codebook is first transposed into the workspace as D planes of K_pad codes (vector_quantize.h), so
// that for one channel d the codes of a SIMD group are contiguous; the pad codes repeat code K - 1.
//
// Loop nest. Threads take contiguous ranges of vectors (OpenMP). A thread walks its range in tiles of kTileRows
// vectors; for each tile it scans the codebook block by block (a block of the transposed codebook is ~16 KiB, so
// it stays in L1 while every vector of the tile is compared with it), two vectors at a time. Per group of L codes
// (one SIMD register), the L squared distances of each of the two vectors accumulate over d in registers:
// sum_d (z_d - e_d)^2, the differences first, so no cancellation. A per-lane running minimum (distance, block-local
// code index) is updated with a compare and two selects (strict <: the first code of a lane wins ties, NaN never
// wins). At the end of a block the lanes are merged (lowest index on equal distances) into the vector's running
// (distance, index), blocks in increasing code order: the result is torch.argmin's, lowest index first.
//
// The vectors are the compiler's vector extensions, 64 bytes where AVX-512 is enabled (-march=native), else 32.
// The channel count is a template constant for D <= 4 (VQGAN's codebooks have D = 4 or 256) and a loop otherwise.
#include <algorithm>
#include <cstring>
#include <limits>

#include "common/parallel.h"
#include "vector_quantize/vector_quantize.h"
#include "vector_quantize/vector_quantize_math.h"

namespace pvf {
namespace vector_quantize {
namespace {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(kVectorBytes)));
  typedef int32_t I __attribute__((vector_size(kVectorBytes)));
  using Index = int32_t;
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(kVectorBytes)));
  typedef int64_t I __attribute__((vector_size(kVectorBytes)));
  using Index = int64_t;
};

template <typename T>
constexpr int lanes() {
  return kVectorBytes / static_cast<int>(sizeof(T));
}
static_assert(kCodebookPad % lanes<float>() == 0 && kCodebookPad % lanes<double>() == 0,
              "the codebook pad must be a multiple of the SIMD width");

constexpr int64_t kTileRows = 64;         // vectors that share one pass over the codebook blocks
constexpr int64_t kBlockBytes = 16 << 10;  // transposed codebook block kept in L1

template <typename V, typename T>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Scans codes [j0, j1) of the transposed codebook cbt (D planes of Kp) for vectors a and b (b may equal a), and
// merges each one's block minimum into (best_a, k_a) / (best_b, k_b). DC: D as a constant, 0 = runtime D.
template <typename T, int DC>
inline void scan_block(const T* PVF_RESTRICT a, const T* PVF_RESTRICT b, const T* PVF_RESTRICT cbt, int64_t Kp,
                       int64_t D_runtime, int64_t j0, int64_t j1, T& best_a, int64_t& k_a, T& best_b, int64_t& k_b) {
  using V = typename Simd<T>::V;
  using I = typename Simd<T>::I;
  using Index = typename Simd<T>::Index;
  constexpr int L = lanes<T>();
  const int64_t D = DC > 0 ? DC : D_runtime;
  constexpr T inf = std::numeric_limits<T>::infinity();
  V za[DC > 0 ? DC : 1], zb[DC > 0 ? DC : 1];
  if constexpr (DC > 0)
    for (int d = 0; d < DC; ++d) {
      za[d] = V{} + a[d];
      zb[d] = V{} + b[d];
    }
  V va = V{} + inf, vb = V{} + inf;
  I ia = I{}, ib = I{};
  I cur;
  for (int l = 0; l < L; ++l) cur[l] = static_cast<Index>(l);
  const T* base = cbt + j0;
  for (int64_t j = 0; j < j1 - j0; j += L, cur += static_cast<Index>(L)) {
    V acc_a, acc_b;
    {
      const V e = load<V>(base + j);
      const V da = (DC > 0 ? za[0] : V{} + a[0]) - e, db = (DC > 0 ? zb[0] : V{} + b[0]) - e;
      acc_a = da * da;
      acc_b = db * db;
    }
    for (int64_t d = 1; d < D; ++d) {
      const V e = load<V>(base + d * Kp + j);
      const V da = (DC > 0 ? za[d] : V{} + a[d]) - e, db = (DC > 0 ? zb[d] : V{} + b[d]) - e;
      acc_a += da * da;
      acc_b += db * db;
    }
    const I lt_a = acc_a < va, lt_b = acc_b < vb;
    va = lt_a ? acc_a : va;
    ia = lt_a ? cur : ia;
    vb = lt_b ? acc_b : vb;
    ib = lt_b ? cur : ib;
  }
  for (int l = 0; l < L; ++l) {
    argmin_merge<T>(va[l], j0 + static_cast<int64_t>(ia[l]), best_a, k_a);
    argmin_merge<T>(vb[l], j0 + static_cast<int64_t>(ib[l]), best_b, k_b);
  }
}

template <typename T, int DC>
void quantize_range(const T* z, const T* cbt, int64_t Kp, int64_t D, int64_t i0, int64_t i1, int64_t* indices) {
  constexpr int L = lanes<T>();
  // Codes per block: a multiple of kCodebookPad (so Kp splits into whole SIMD groups), at least one group.
  const int64_t block = std::max<int64_t>(kCodebookPad, kBlockBytes / (D * int64_t(sizeof(T))) / kCodebookPad *
                                                            kCodebookPad);
  static_assert(kCodebookPad % L == 0, "");
  T best[kTileRows];
  int64_t best_k[kTileRows];
  for (int64_t t0 = i0; t0 < i1; t0 += kTileRows) {
    const int64_t rows = std::min(kTileRows, i1 - t0);
    for (int64_t r = 0; r < rows; ++r) {
      best[r] = std::numeric_limits<T>::infinity();
      best_k[r] = 0;
    }
    for (int64_t j0 = 0; j0 < Kp; j0 += block) {
      const int64_t j1 = std::min(Kp, j0 + block);
      int64_t r = 0;
      for (; r + 2 <= rows; r += 2)
        scan_block<T, DC>(z + (t0 + r) * D, z + (t0 + r + 1) * D, cbt, Kp, D, j0, j1, best[r], best_k[r],
                          best[r + 1], best_k[r + 1]);
      if (r < rows) {
        T unused = 0;
        int64_t unused_k = 0;
        scan_block<T, DC>(z + (t0 + r) * D, z + (t0 + r) * D, cbt, Kp, D, j0, j1, best[r], best_k[r], unused,
                          unused_k);
      }
    }
    for (int64_t r = 0; r < rows; ++r) indices[t0 + r] = best_k[r];
  }
}

}  // namespace

template <typename T>
void vector_quantize_cpu(const T* z, const T* codebook, int64_t N, int64_t K, int64_t D, T* z_q, int64_t* indices,
                         T* workspace) {
  if (N <= 0 || K <= 0 || D <= 0) return;
  const int64_t Kp = padded_codebook_size(K);
  for (int64_t d = 0; d < D; ++d) {
    T* plane = workspace + d * Kp;
    for (int64_t k = 0; k < K; ++k) plane[k] = codebook[k * D + d];
    for (int64_t k = K; k < Kp; ++k) plane[k] = codebook[(K - 1) * D + d];
  }
  // A vector costs K * D multiply-adds: even a few of them are worth a thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / (Kp * D + 1));
  parallel_for(0, N, grain, [&](int64_t i0, int64_t i1) {
    switch (D) {
      case 1: quantize_range<T, 1>(z, workspace, Kp, D, i0, i1, indices); break;
      case 2: quantize_range<T, 2>(z, workspace, Kp, D, i0, i1, indices); break;
      case 3: quantize_range<T, 3>(z, workspace, Kp, D, i0, i1, indices); break;
      case 4: quantize_range<T, 4>(z, workspace, Kp, D, i0, i1, indices); break;
      default: quantize_range<T, 0>(z, workspace, Kp, D, i0, i1, indices); break;
    }
    if (z_q != nullptr)
      for (int64_t i = i0; i < i1; ++i) std::memcpy(z_q + i * D, codebook + indices[i] * D, sizeof(T) * D);
  });
}

template void vector_quantize_cpu<float>(const float*, const float*, int64_t, int64_t, int64_t, float*, int64_t*,
                                         float*);
template void vector_quantize_cpu<double>(const double*, const double*, int64_t, int64_t, int64_t, double*,
                                          int64_t*, double*);

}  // namespace vector_quantize
}  // namespace pvf
