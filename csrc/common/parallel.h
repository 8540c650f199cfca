// parallel_for over [begin, end) in contiguous chunks, on at most num_threads() OpenMP threads.
// The Python side sets num_threads from torch.get_num_threads(), so the kernels honour
// torch.set_num_threads. f(chunk_begin, chunk_end) must not throw.
#pragma once
#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pvf {

int num_threads();
void set_num_threads(int n);

template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  const int64_t max_chunks = (n + std::max<int64_t>(grain, 1) - 1) / std::max<int64_t>(grain, 1);
  const int threads = static_cast<int>(std::min<int64_t>(num_threads(), max_chunks));
  if (threads <= 1) {
    f(begin, end);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num();
    const int64_t nt = omp_get_num_threads();
    const int64_t chunk = (n + nt - 1) / nt;
    const int64_t b = begin + t * chunk;
    const int64_t e = std::min(end, b + chunk);
    if (b < e) f(b, e);
  }
#else
  f(begin, end);
#endif
}

// Dynamic schedule: for work items of uneven cost (e.g. queries with different numbers of candidates).
template <typename F>
void parallel_for_dynamic(int64_t begin, int64_t end, int64_t chunk, const F& f) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  chunk = std::max<int64_t>(chunk, 1);
  const int threads = static_cast<int>(std::min<int64_t>(num_threads(), (n + chunk - 1) / chunk));
  if (threads <= 1) {
    f(begin, end);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < (n + chunk - 1) / chunk; ++c) {
    const int64_t b = begin + c * chunk;
    f(b, std::min(end, b + chunk));
  }
#else
  f(begin, end);
#endif
}

}  // namespace pvf
