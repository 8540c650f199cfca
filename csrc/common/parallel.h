// parallel_for over [begin, end) in contiguous chunks of at least `grain` items, on at most num_threads() OpenMP
// threads. The Python side sets num_threads from torch.get_num_threads(), so the kernels honour
// torch.set_num_threads. f(chunk_begin, chunk_end) must not throw, and its results must not depend on how the
// range is cut (every kernel writes per-item results).
//
// Chunks are handed out from a shared counter, kChunksPerThread per thread, instead of one equal share per thread:
// a thread that the OS deschedules (a busy neighbour process, data-loader workers) delays only the chunk it holds,
// while the others take the rest. The same call on an idle machine costs one atomic increment per chunk.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pvf {

int num_threads();
void set_num_threads(int n);

constexpr int64_t kChunksPerThread = 4;

template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_chunks = (n + grain - 1) / grain;
  const int threads = static_cast<int>(std::min<int64_t>(num_threads(), max_chunks));
  if (threads <= 1) {
    f(begin, end);
    return;
  }
#ifdef _OPENMP
  const int64_t chunks = std::min<int64_t>(max_chunks, threads * kChunksPerThread);
  const int64_t size = (n + chunks - 1) / chunks;
  std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(threads)
  for (;;) {
    const int64_t b = begin + next.fetch_add(1, std::memory_order_relaxed) * size;
    if (b >= end) break;
    f(b, std::min(end, b + size));
  }
#else
  f(begin, end);
#endif
}

// Partial sums of a small vector (a kernel's or a gain's gradient), one per parallel_for chunk, keyed by the
// chunk's first item and added up in that order: the total does not depend on which thread finished first, so a
// backward pass gives the same bits on every call with the same thread count.
class ChunkPartials {
 public:
  explicit ChunkPartials(int64_t size) : size_(size) {}
  void add(int64_t chunk_begin, std::vector<double> partial) {
    std::lock_guard<std::mutex> lock(mutex_);
    parts_.emplace(chunk_begin, std::move(partial));
  }
  std::vector<double> sum() const {
    std::vector<double> total(size_, 0.0);
    for (const auto& part : parts_)
      for (int64_t i = 0; i < size_; ++i) total[i] += part.second[i];
    return total;
  }

 private:
  int64_t size_;
  std::mutex mutex_;
  std::map<int64_t, std::vector<double>> parts_;
};

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

// Two lists of work on the same threads: items [0, na) done by a(i) and [0, nb) by b(i), each list handed out one
// item at a time from its own shared counter. Even-numbered threads start on list a, odd ones on list b, and each
// turns to the other list when its own is empty: with two threads, a memory-bound list (a copy) runs beside a
// compute-bound one instead of before it. make_b() runs once per thread and returns that thread's b (which may
// own buffers). a and b must not throw.
template <typename A, typename MakeB>
void parallel_two_lists(int64_t na, int64_t nb, const A& a, const MakeB& make_b) {
  std::atomic<int64_t> next_a{0}, next_b{0};
  const auto work = [&](bool b_first) {
    auto b = make_b();
    const auto take = [](std::atomic<int64_t>& next, int64_t n) {
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      return i < n ? i : int64_t(-1);
    };
    for (;;) {
      int64_t i;
      if (b_first && (i = take(next_b, nb)) >= 0) {
        b(i);
      } else if ((i = take(next_a, na)) >= 0) {
        a(i);
      } else if ((i = take(next_b, nb)) >= 0) {
        b(i);
      } else {
        break;
      }
    }
  };
  const int threads = static_cast<int>(std::min<int64_t>(num_threads(), std::max<int64_t>(na + nb, 1)));
  if (threads <= 1) {
    work(false);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  work(omp_get_thread_num() % 2 == 1);
#else
  work(false);
#endif
}

}  // namespace pvf
