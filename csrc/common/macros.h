// Portability macros shared by the C++ and CUDA code.
#pragma once

#if defined(__CUDACC__)
#define PVF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PVF_HOST_DEVICE inline
#endif

#if defined(__GNUC__)
#define PVF_RESTRICT __restrict__
#else
#define PVF_RESTRICT
#endif
