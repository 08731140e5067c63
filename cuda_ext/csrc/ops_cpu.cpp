// CPU kernels of cuda_ext, parallel with at::parallel_for. Semantics mirror cuda_ext/_torch_ops.py.
//
// Selection: radix select over the |w| keys. Each pass histograms a window of keys (16384 bins,
// one histogram per thread) and narrows the window to the bin holding rank k; a small sample
// picks the first window, so two passes usually suffice. Extra memory is a few hundred KiB
// whatever the number of weights.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <limits>
#include <vector>

#include "keys.h"
#include "mos_mix.h"

namespace nasbench_ext {
namespace {

constexpr int64_t kGrain = 1 << 16;
constexpr int64_t kChunk = 1 << 18;      // elements per work item of a parallel pass
constexpr int64_t kBins = 1 << 14;       // histogram bins per radix pass (128 KiB per thread)
constexpr int64_t kSample = 1 << 16;     // strata (one key each) of the sample guiding the first window
// Keys per block of a window pass's vectorised scan: short blocks for the sampled window
// (~1% of keys inside, so long blocks would nearly all need the scatter), long ones once the
// window is a single bin and blocks touching it are rare.
constexpr int64_t kShortBlock = 32;
constexpr int64_t kLongBlock = 512;

void check_cpu(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), what, " must be on the CPU");
  TORCH_CHECK(t.is_contiguous(), what, " must be contiguous");
}

#define NB_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Runs f(i, begin, end) over element ranges of every tensor in ONE parallel region, as if the
// tensors were concatenated, so a pass over many tensors costs a single fork/join. Threads take
// kChunk-element chunks from a shared counter instead of a fixed half each: on a busy machine a
// descheduled thread then delays the pass by at most one chunk.
template <typename F>
void parallel_over(const std::vector<at::Tensor>& tensors, const F& f) {
  std::vector<int64_t> off(tensors.size() + 1, 0);
  for (size_t i = 0; i < tensors.size(); ++i) off[i + 1] = off[i] + tensors[i].numel();
  const int64_t total = off.back();
  const int64_t chunks = (total + kChunk - 1) / kChunk;
  std::atomic<int64_t> next{0};
  auto worker = [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      const int64_t begin = c * kChunk;
      const int64_t end = std::min(total, begin + kChunk);
      size_t i = std::upper_bound(off.begin(), off.end(), begin) - off.begin() - 1;
      for (; i < tensors.size() && off[i] < end; ++i) {
        const int64_t b = std::max(begin, off[i]) - off[i];
        const int64_t e = std::min(end, off[i + 1]) - off[i];
        if (b < e) f(i, b, e);
      }
    }
  };
  if (chunks <= 1) {
    worker(0, 1);
  } else {
    at::parallel_for(0, std::min<int64_t>(chunks, at::get_num_threads()), 1, worker);
  }
}

// One block of counters per thread, summed at the end.
struct ThreadCounts {
  int64_t width;
  std::vector<int64_t> counts;
  explicit ThreadCounts(int64_t w) : width(w), counts(w * at::get_num_threads(), 0) {}
  int64_t* mine() {
    const int64_t t = at::get_thread_num();
    TORCH_CHECK(t < static_cast<int64_t>(counts.size()) / width, "unexpected thread id");
    return counts.data() + t * width;
  }
  std::vector<int64_t> total() const {
    std::vector<int64_t> out(width, 0);
    for (size_t i = 0; i < counts.size(); ++i) out[i % width] += counts[i];
    return out;
  }
};

// Lowest index i whose tensor holds a NaN, shared by the threads of one pass.
struct FirstNaN {
  std::atomic<int64_t> index{std::numeric_limits<int64_t>::max()};
  void report(int64_t i) {
    int64_t cur = index.load();
    while (i < cur && !index.compare_exchange_weak(cur, i)) {
    }
  }
  bool found() const { return index.load() != std::numeric_limits<int64_t>::max(); }
};

void check_all(const std::vector<at::Tensor>& tensors) {
  for (const auto& t : tensors) check_cpu(t, "tensor");
}

// What one radix pass returns: the count of keys below its window and the window's histogram.
struct PassResult {
  int64_t below;
  std::vector<int64_t> hist;
};

// Scan of one contiguous range for a window pass (see window_pass). Keys are compared in
// uint32 arithmetic (`key - lo` wraps high when key < lo) so the block scan vectorises.
struct ScanResult {
  int64_t below = 0;
  uint32_t worst = 0;
};

template <typename scalar_t>
inline ScanResult window_scan(const scalar_t* p, int64_t n, uint32_t lo, uint32_t last, int shift,
                              int64_t block, int64_t* h) {
  ScanResult r;
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t b1 = std::min(n, b0 + block);
    uint32_t below = 0, inside = 0, worst = r.worst;
    for (int64_t j = b0; j < b1; ++j) {
      const uint32_t key = abs_key(p[j]);
      worst = std::max(worst, key);
      below += key < lo;
      inside |= static_cast<uint32_t>(key - lo) <= last;
    }
    r.worst = worst;
    r.below += below;
    if (inside == 0) continue;
    for (int64_t j = b0; j < b1; ++j) {
      const uint32_t d = abs_key(p[j]) - lo;
      if (d <= last) ++h[d >> shift];
    }
  }
  return r;
}

// fp32 is the common case: built for AVX2 too, picked at load time where the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
ScanResult window_scan_f32(const float* p, int64_t n, uint32_t lo, uint32_t last, int shift,
                           int64_t block, int64_t* h) {
  return window_scan<float>(p, n, lo, last, shift, block, h);
}

// One radix pass: counts keys below the window and histograms the keys inside it. Blocks of
// `block` keys get a branch-free scan that also flags whether any key is in the window; only
// flagged blocks pay for the histogram scatter, and the sampled window holds ~1% of the keys.
// The first pass also finds the lowest tensor index holding a NaN (a key above kInfKey).
PassResult window_pass(const std::vector<at::Tensor>& tensors, const Window& w, int64_t block,
                       FirstNaN* nan) {
  ThreadCounts counts(kBins + 1);  // [bins..., below]
  const uint32_t lo = w.lo;
  const uint32_t last = static_cast<uint32_t>(w.width - 1);
  const int shift = w.shift;
  parallel_over(tensors, [&](size_t i, int64_t begin, int64_t end) {
    int64_t* h = counts.mine();
    ScanResult r;
    if (tensors[i].scalar_type() == at::kFloat) {
      r = window_scan_f32(tensors[i].data_ptr<float>() + begin, end - begin, lo, last, shift,
                          block, h);
    } else {
      NB_DISPATCH(tensors[i].scalar_type(), "window_pass", [&] {
        r = window_scan(tensors[i].data_ptr<scalar_t>() + begin, end - begin, lo, last, shift,
                        block, h);
      });
    }
    h[kBins] += r.below;
    if (nan != nullptr && r.worst > kInfKey) nan->report(static_cast<int64_t>(i));
  });
  auto total = counts.total();
  const int64_t below = total[kBins];
  total.pop_back();
  return {below, std::move(total)};
}

// Key window around the k-th smallest guessed from a stratified sample (one key per stratum):
// its bounds are the sample's order statistics 5 standard deviations of the rank estimate
// either side of rank k, so the window holds ~1% of the keys and misses rank k with
// probability ~1e-6; a miss costs one more pass, never a wrong answer.
std::pair<uint32_t, uint64_t> sampled_window(const std::vector<at::Tensor>& tensors, int64_t total,
                                             int64_t k) {
  const int64_t n = std::min<int64_t>(kSample, total / 4);
  if (n < 256) return {0, uint64_t{1} << 32};
  std::vector<int64_t> off(tensors.size() + 1, 0);
  for (size_t i = 0; i < tensors.size(); ++i) off[i + 1] = off[i] + tensors[i].numel();
  std::vector<uint32_t> sample(n);
  at::parallel_for(0, n, 1 << 12, [&](int64_t r0, int64_t r1) {
    size_t i = 0;
    for (int64_t r = r0; r < r1; ++r) {
      uint64_t state = (static_cast<uint64_t>(r) + 1) * 0x9E3779B97F4A7C15ull;  // fixed, cheap
      state ^= state >> 31;
      state *= 0xBF58476D1CE4E5B9ull;
      state ^= state >> 29;
      const int64_t begin = r * total / n, width = (r + 1) * total / n - begin;
      const int64_t pos = begin + static_cast<int64_t>(state % static_cast<uint64_t>(width));
      if (pos < off[i] || pos >= off[i + 1]) {
        i = std::upper_bound(off.begin(), off.end(), pos) - off.begin() - 1;
      }
      const auto& t = tensors[i];
      if (t.scalar_type() == at::kFloat) {  // skip the dispatch switch in the common case
        sample[r] = abs_key(static_cast<const float*>(t.const_data_ptr())[pos - off[i]]);
      } else {
        NB_DISPATCH(t.scalar_type(), "sample", [&] {
          sample[r] = abs_key(t.const_data_ptr<scalar_t>()[pos - off[i]]);
        });
      }
    }
  });
  const double q = static_cast<double>(k) / static_cast<double>(total);
  const double margin = 5.0 * std::sqrt(static_cast<double>(n) * q * (1.0 - q)) + 16.0;
  const double centre = q * static_cast<double>(n);
  const int64_t a = static_cast<int64_t>(centre - margin);
  const int64_t b = static_cast<int64_t>(centre + margin);
  uint32_t lo = 0;
  uint64_t hi = uint64_t{1} << 32;
  if (a > 0) {
    std::nth_element(sample.begin(), sample.begin() + a, sample.end());
    lo = sample[a];
  }
  if (b < n) {
    std::nth_element(sample.begin() + std::max<int64_t>(a, 0), sample.begin() + b, sample.end());
    hi = sample[b];
  }
  return {lo, hi - lo + 1};  // Window clamps the width to the key range
}

// Returns the key of the k-th smallest |w|, or -(i + 1) when tensor i holds a NaN.
// `guess_lo`/`guess_width` replace the sampled first window when guess_width > 0 (for tests).
// Radix select: each pass histograms a key window and narrows it to the bin holding rank k,
// until bins are single keys. The first window comes from a sample; if rank k falls outside
// it, the next pass starts over from the full key range.
int64_t kth_key(const std::vector<at::Tensor>& tensors, int64_t k, int64_t guess_lo,
                int64_t guess_width) {
  check_all(tensors);
  int64_t total = 0;
  for (const auto& t : tensors) total += t.numel();
  TORCH_CHECK(1 <= k && k <= total, "k out of range");
  auto [lo, width] = sampled_window(tensors, total, k);
  if (guess_width > 0) {
    lo = static_cast<uint32_t>(guess_lo);
    width = static_cast<uint64_t>(guess_width);
  }
  FirstNaN nan;
  bool first = true;
  while (true) {
    const Window w(lo, width, kBins);
    const auto pass = window_pass(tensors, w, first ? kShortBlock : kLongBlock,
                                  first ? &nan : nullptr);
    if (first && nan.found()) return -nan.index.load() - 1;
    first = false;
    const auto [bin, rank] = k > pass.below ? select_bin(pass.hist.data(), kBins, k - pass.below)
                                            : std::pair<int64_t, int64_t>{-1, 0};
    if (bin < 0) {  // rank k lies outside the sampled window
      TORCH_CHECK(w.lo != 0 || w.width != (uint64_t{1} << 32), "radix select lost rank k");
      lo = 0;
      width = uint64_t{1} << 32;
      continue;
    }
    lo = w.lo + static_cast<uint32_t>(bin << w.shift);
    width = std::min<uint64_t>(uint64_t{1} << w.shift, w.width - (uint64_t(bin) << w.shift));
    if (width == 1) return lo;
  }
}

// Keys below `tk`, keys equal to it and the largest key of one contiguous range; counted in
// uint32 per block of kLongBlock keys so the loop vectorises.
struct TieCount {
  int64_t below = 0;
  int64_t ties = 0;
  uint32_t worst = 0;
};

template <typename scalar_t>
inline TieCount count_range(const scalar_t* p, int64_t n, uint32_t tk) {
  TieCount r;
  for (int64_t b0 = 0; b0 < n; b0 += kLongBlock) {
    const int64_t b1 = std::min(n, b0 + kLongBlock);
    uint32_t below = 0, ties = 0, worst = r.worst;
    for (int64_t j = b0; j < b1; ++j) {
      const uint32_t key = abs_key(p[j]);
      worst = std::max(worst, key);
      below += key < tk;
      ties += key == tk;
    }
    r.below += below;
    r.ties += ties;
    r.worst = worst;
  }
  return r;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
TieCount count_range_f32(const float* p, int64_t n, uint32_t tk) {
  return count_range<float>(p, n, tk);
}

// [below, nan tensor index or -1, ties of tensor 0, ties of tensor 1, ...]
at::Tensor count_below_and_ties(const std::vector<at::Tensor>& tensors, int64_t tkey) {
  check_all(tensors);
  const int64_t n = static_cast<int64_t>(tensors.size());
  const uint32_t tk = static_cast<uint32_t>(tkey);
  ThreadCounts counts(n + 1);  // [ties per tensor..., below]
  FirstNaN nan;
  parallel_over(tensors, [&](size_t i, int64_t begin, int64_t end) {
    TieCount r;
    if (tensors[i].scalar_type() == at::kFloat) {
      r = count_range_f32(tensors[i].data_ptr<float>() + begin, end - begin, tk);
    } else {
      NB_DISPATCH(tensors[i].scalar_type(), "count_below_and_ties", [&] {
        r = count_range(tensors[i].data_ptr<scalar_t>() + begin, end - begin, tk);
      });
    }
    int64_t* c = counts.mine();
    c[i] += r.ties;
    c[n] += r.below;
    if (r.worst > kInfKey) nan.report(static_cast<int64_t>(i));
  });
  const auto total = counts.total();
  auto out = at::empty({n + 2}, at::kLong);
  auto* o = out.data_ptr<int64_t>();
  o[0] = total[n];
  o[1] = nan.found() ? nan.index.load() : -1;
  std::copy(total.begin(), total.begin() + n, o + 2);
  return out;
}

// Flat index of the r-th (1-based) tie in t.
template <typename scalar_t>
int64_t nth_tie(const at::Tensor& t, uint32_t tk, int64_t r) {
  const scalar_t* p = t.data_ptr<scalar_t>();
  for (int64_t j = 0; j < t.numel(); ++j) {
    if (abs_key(p[j]) == tk && --r == 0) return j;
  }
  TORCH_CHECK(false, "fewer ties than requested");
}

// m = |w| > threshold (ties pruned) or |w| >= threshold (ties kept) over one fp32 range.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void mask_range_f32(const float* p, int64_t n, uint32_t tk, bool ties_pruned, bool* m) {
  if (ties_pruned) {
    for (int64_t j = 0; j < n; ++j) m[j] = abs_key(p[j]) > tk;
  } else {
    for (int64_t j = 0; j < n; ++j) m[j] = abs_key(p[j]) >= tk;
  }
}

// Keep-masks pruning |w| < threshold plus the first `ties_to_prune` ties in list/flat order.
std::vector<at::Tensor> masks_from_threshold(const std::vector<at::Tensor>& tensors, int64_t tkey,
                                             int64_t ties_to_prune, const std::vector<int64_t>& ties) {
  check_all(tensors);
  TORCH_CHECK(ties.size() == tensors.size(), "one tie count per tensor");
  const uint32_t tk = static_cast<uint32_t>(tkey);
  std::vector<at::Tensor> masks;
  std::vector<int64_t> cuts;  // ties at flat index <= cut are pruned
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    masks.push_back(at::empty(t.sizes(), t.options().dtype(at::kBool)));
    int64_t cut = -1;
    if (ties_to_prune >= ties[i]) {
      cut = t.numel();
      ties_to_prune -= ties[i];
    } else if (ties_to_prune > 0) {
      NB_DISPATCH(t.scalar_type(), "nth_tie", [&] { cut = nth_tie<scalar_t>(t, tk, ties_to_prune); });
      ties_to_prune = 0;
    }
    cuts.push_back(cut);
  }
  parallel_over(tensors, [&](size_t i, int64_t begin, int64_t end) {
    bool* m = masks[i].data_ptr<bool>() + begin;
    // Ranges wholly before or after the tie cut keep by one comparison (vectorised for fp32).
    const int64_t cut = cuts[i];
    const int mode = cut >= end - 1 ? 1 : (cut < begin ? 0 : 2);  // 1: ties pruned, 0: kept
    if (mode < 2 && tensors[i].scalar_type() == at::kFloat) {
      mask_range_f32(tensors[i].data_ptr<float>() + begin, end - begin, tk, mode == 1, m);
      return;
    }
    NB_DISPATCH(tensors[i].scalar_type(), "masks_from_threshold", [&] {
      const scalar_t* p = tensors[i].data_ptr<scalar_t>();
      for (int64_t j = begin; j < end; ++j) m[j - begin] = keep_weight(abs_key(p[j]), tk, j, cut);
    });
  });
  return masks;
}

void check_pair(const at::Tensor& w, const at::Tensor& other, const char* what) {
  check_cpu(w, "tensor");
  check_cpu(other, what);
  TORCH_CHECK(w.numel() == other.numel(), what, " must match its tensor's size");
}

// w *= m for every pair, in one parallel pass over all tensors.
void apply_masks_(const std::vector<at::Tensor>& tensors, const std::vector<at::Tensor>& masks) {
  TORCH_CHECK(tensors.size() == masks.size(), "one mask per tensor");
  for (size_t i = 0; i < tensors.size(); ++i) {
    check_pair(tensors[i], masks[i], "mask");
    TORCH_CHECK(masks[i].scalar_type() == at::kBool, "masks must be bool");
  }
  parallel_over(tensors, [&](size_t i, int64_t begin, int64_t end) {
    NB_DISPATCH(tensors[i].scalar_type(), "apply_masks_", [&] {
      scalar_t* p = tensors[i].data_ptr<scalar_t>();
      const bool* m = masks[i].data_ptr<bool>();
      for (int64_t j = begin; j < end; ++j) p[j] = p[j] * static_cast<scalar_t>(m[j]);
    });
  });
}

// w <- w0 * m for every triple (w and w0 share a dtype), in one parallel pass.
void rewind_(const std::vector<at::Tensor>& tensors, const std::vector<at::Tensor>& initial,
             const std::vector<at::Tensor>& masks) {
  TORCH_CHECK(tensors.size() == masks.size() && tensors.size() == initial.size(),
              "one initial tensor and one mask per tensor");
  for (size_t i = 0; i < tensors.size(); ++i) {
    check_pair(tensors[i], masks[i], "mask");
    check_pair(tensors[i], initial[i], "initial");
    TORCH_CHECK(masks[i].scalar_type() == at::kBool, "masks must be bool");
    TORCH_CHECK(initial[i].scalar_type() == tensors[i].scalar_type(), "initial must share the dtype");
  }
  parallel_over(tensors, [&](size_t i, int64_t begin, int64_t end) {
    NB_DISPATCH(tensors[i].scalar_type(), "rewind_", [&] {
      scalar_t* p = tensors[i].data_ptr<scalar_t>();
      const scalar_t* p0 = initial[i].data_ptr<scalar_t>();
      const bool* m = masks[i].data_ptr<bool>();
      for (int64_t j = begin; j < end; ++j) p[j] = p0[j] * static_cast<scalar_t>(m[j]);
    });
  });
}

// LAMP scores w^2 / sum of w^2 over the weights at or above it in ascending |w| order.
// Sorting (key << 32 | index) gives the ascending order with ties by index; the square of a
// float is exact in double, and the suffix sum runs in that same order as the reference.
at::Tensor lamp_scores(const at::Tensor& t) {
  check_cpu(t, "tensor");
  const int64_t n = t.numel();
  TORCH_CHECK(n < (int64_t{1} << 32), "LAMP scores support layers below 2^32 weights");
  std::vector<uint64_t> order(n);
  std::vector<double> sq(n);
  NB_DISPATCH(t.scalar_type(), "lamp_scores", [&] {
    const scalar_t* p = t.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const double v = static_cast<double>(static_cast<float>(p[j]));
        sq[j] = v * v;
        order[j] = (static_cast<uint64_t>(abs_key(p[j])) << 32) | static_cast<uint64_t>(j);
      }
    });
  });
  std::sort(order.begin(), order.end());
  auto out = at::empty(t.sizes(), t.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  double suffix = 0.0;
  for (int64_t r = n - 1; r >= 0; --r) {
    const int64_t j = static_cast<int64_t>(order[r] & 0xFFFFFFFFu);
    suffix += sq[j];
    o[j] = suffix > 0 ? static_cast<float>(sq[j] / suffix) : 0.0f;
  }
  return out;
}

}  // namespace
}  // namespace nasbench_ext

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("kth_key", &nasbench_ext::kth_key, "key of the k-th smallest |w|, or -(i+1) for NaN in i",
        py::arg("tensors"), py::arg("k"), py::arg("guess_lo") = 0, py::arg("guess_width") = 0);
  m.def("count_below_and_ties", &nasbench_ext::count_below_and_ties);
  m.def("masks_from_threshold", &nasbench_ext::masks_from_threshold);
  m.def("apply_masks_", &nasbench_ext::apply_masks_);
  m.def("rewind_", &nasbench_ext::rewind_);
  m.def("lamp_scores", &nasbench_ext::lamp_scores);
  m.def("mos_mix", &nasbench_ext::mos_mix);
}
