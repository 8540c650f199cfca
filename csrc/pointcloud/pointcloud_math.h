// Math shared by the CPU and CUDA point-cloud kernels.
#pragma once
#include <cstdint>

#include "common/macros.h"

namespace pvf {
namespace pointcloud {

// Inserts (d, j) into the ascending list dists[0..count) of capacity K, keeping the K smallest.
// Equal distances keep their arrival order, so scanning candidates by increasing index makes ties
// resolve to the lowest index. Returns the new count.
template <typename Acc, typename Out>
PVF_HOST_DEVICE int64_t topk_insert(Out* dists, int64_t* idx, int64_t count, int64_t K, Acc d, int64_t j) {
  int64_t pos;
  if (count < K) {
    pos = count++;
  } else {
    if (!(d < static_cast<Acc>(dists[K - 1]))) return count;
    pos = K - 1;
  }
  while (pos > 0 && static_cast<Acc>(dists[pos - 1]) > d) {
    dists[pos] = dists[pos - 1];
    idx[pos] = idx[pos - 1];
    --pos;
  }
  dists[pos] = static_cast<Out>(d);
  idx[pos] = j;
  return count;
}

// As topk_insert, but ordered by (distance, index): the result does not depend on the order in which
// candidates arrive (used by the spatial-grid search, which visits points cell by cell).
template <typename T>
PVF_HOST_DEVICE int64_t topk_insert_lex(T* dists, int64_t* idx, int64_t count, int64_t K, T d, int64_t j) {
  int64_t pos;
  if (count < K) {
    pos = count++;
  } else {
    if (!(d < dists[K - 1] || (d == dists[K - 1] && j < idx[K - 1]))) return count;
    pos = K - 1;
  }
  while (pos > 0 && (dists[pos - 1] > d || (dists[pos - 1] == d && idx[pos - 1] > j))) {
    dists[pos] = dists[pos - 1];
    idx[pos] = idx[pos - 1];
    --pos;
  }
  dists[pos] = d;
  idx[pos] = j;
  return count;
}

// Number of valid points of cloud b.
PVF_HOST_DEVICE int64_t cloud_length(const int64_t* lengths, int64_t b, int64_t full) {
  return lengths ? lengths[b] : full;
}

}  // namespace pointcloud
}  // namespace pvf
