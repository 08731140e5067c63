// Monotone integer keys of |x|: for non-negative IEEE floats the order of the float32 bit
// patterns equals the numeric order, so exact selection becomes radix select on integers.
// Half types widen to float32 exactly; NaN keys are above kInfKey. Shared by CPU and CUDA code.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <utility>

namespace nasbench_ext {

constexpr uint32_t kAbsMask = 0x7FFFFFFFu;
constexpr uint32_t kInfKey = 0x7F800000u;

C10_HOST_DEVICE inline uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__float_as_uint(f));
#else
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

C10_HOST_DEVICE inline uint32_t abs_key(float x) { return float_bits(x) & kAbsMask; }
C10_HOST_DEVICE inline uint32_t abs_key(c10::Half x) { return abs_key(static_cast<float>(x)); }
C10_HOST_DEVICE inline uint32_t abs_key(c10::BFloat16 x) {
  return (static_cast<uint32_t>(x.x) << 16) & kAbsMask;
}

// Keep rule of the fused threshold-to-mask op: ties at flat index <= cut are pruned.
C10_HOST_DEVICE inline bool keep_weight(uint32_t key, uint32_t tkey, int64_t index, int64_t cut) {
  return key > tkey || (key == tkey && index > cut);
}

// Host side of radix select, shared by the CPU and CUDA passes: the key window
// [lo, lo + width) histogrammed in `bins` bins of 2^shift keys each (clamped to the key range).
struct Window {
  uint32_t lo;
  uint64_t width;
  int shift;
  Window(uint32_t lo_, uint64_t width_, int64_t bins)
      : lo(lo_), width(std::min<uint64_t>(width_, (uint64_t{1} << 32) - lo_)), shift(0) {
    while (((width - 1) >> shift) >= static_cast<uint64_t>(bins)) ++shift;
  }
};

// Bin holding the k-th (1-based) element, and k's rank inside that bin; {-1, 0} if k > total.
inline std::pair<int64_t, int64_t> select_bin(const int64_t* hist, int64_t bins, int64_t k) {
  int64_t before = 0;
  for (int64_t b = 0; b < bins; ++b) {
    if (before + hist[b] >= k) return {b, k - before};
    before += hist[b];
  }
  return {-1, 0};
}

}  // namespace nasbench_ext
