// Vector quantisation: the nearest codebook row of every vector (the quantiser of VQ-VAE / VQGAN, taming-
// transformers' VectorQuantizer), fused distance + argmin: the (N, K) distance matrix is never materialised.
//
// Conventions for every function below:
//  * z is N channels-last vectors of D components, contiguous (N, D) row-major (the op flattens (..., D));
//    codebook is (K, D) contiguous, the same dtype. K >= 1, D >= 1, N >= 0 (N == 0 does nothing).
//  * indices (N,) int64: indices[i] = argmin_k sum_d (z[i, d] - codebook[k, d])^2, the squared distance summed
//    directly from the differences (no ||z||^2 + ||e||^2 - 2 z.e expansion, which cancels catastrophically when
//    ||z|| is large compared with the distance between codes). Accumulation in T (float / double) on the CPU,
//    in float for half/bfloat16 on the GPU. Equal distances resolve to the lowest index (torch.argmin's rule).
//    A NaN distance is never selected; a vector whose distances are all NaN (or all +inf) gets index 0.
//  * z_q (N, D) = codebook[indices]: exact copies of codebook rows. Either output pointer may be null.
//  * Kernels never allocate: outputs and workspaces come from the caller. Arguments have been checked by the
//    bindings (csrc/bindings/vector_quantize_args.h) before these functions are called.
//  * CUDA launchers take the element type as a DType and the stream as `void*` (a cudaStream_t); they throw
//    pvf::DeviceError if a launch fails.
#pragma once
#include <cstdint>

#include "common/tensor_view.h"

namespace pvf {
namespace vector_quantize {

// The CPU kernel scans a codebook transposed to (D, K_pad), K_pad = K rounded up to kCodebookPad (a multiple of
// every SIMD width it uses); the pad columns repeat codebook row K - 1, so they never win over it (equal
// distance, higher index) and the vector loop needs no tail.
constexpr int64_t kCodebookPad = 16;
inline int64_t padded_codebook_size(int64_t K) { return (K + kCodebookPad - 1) / kCodebookPad * kCodebookPad; }
// Elements of T the CPU kernel's workspace needs.
inline int64_t workspace_size_cpu(int64_t K, int64_t D) { return D * padded_codebook_size(K); }

// ---------------------------------------------------------------- CPU (T = float or double)

// OpenMP over tiles of vectors; each tile scans the codebook in blocks that stay in L1, each vector keeping one
// running (distance, index) per SIMD lane. workspace: workspace_size_cpu(K, D) elements of T (overwritten).
template <typename T>
void vector_quantize_cpu(const T* z, const T* codebook, int64_t N, int64_t K, int64_t D, T* z_q, int64_t* indices,
                         T* workspace);

// ---------------------------------------------------------------- CUDA (float32/64, float16, bfloat16)

// One thread per vector (two for the small fixed D), codebook tiles staged in shared memory in the accumulation
// type; no workspace.
void vector_quantize_cuda(DType dtype, const void* z, const void* codebook, int64_t N, int64_t K, int64_t D,
                          void* z_q, int64_t* indices, void* stream);

}  // namespace vector_quantize
}  // namespace pvf
