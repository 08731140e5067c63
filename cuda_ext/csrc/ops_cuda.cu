// CUDA kernels of cuda_ext. Same semantics and host-side algorithm as ops_cpu.cpp (reviewed
// line by line against it; this machine has no GPU to run them): radix select over |w| keys with
// windowed histograms, counts for exact tie handling, threshold-to-mask, apply/rewind, LAMP.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/types.h>

#include <algorithm>
#include <vector>

#include "keys.h"

namespace nasbench_ext {
namespace {

constexpr int kBins = 8192;  // shared-memory bins per pass (32 KiB of uint32 per block)
constexpr int kThreads = 256;

#define NB_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

int blocks_for(int64_t n) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, sms * 8)));
}

void check_cuda(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_cuda(), what, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), what, " must be contiguous");
}

// Histogram of keys in [lo, lo + width) in bins of 2^shift, count of keys below lo, and the
// largest key (to detect NaN) of one tensor. Accumulates into global counters.
template <typename scalar_t>
__global__ void window_pass_kernel(const scalar_t* __restrict__ p, int64_t n, uint32_t lo,
                                   unsigned long long width, int shift,
                                   unsigned long long* __restrict__ hist,
                                   unsigned long long* __restrict__ below_out,
                                   unsigned int* __restrict__ worst_out) {
  __shared__ unsigned int h[kBins];
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) h[b] = 0;
  __syncthreads();
  unsigned long long below = 0;
  unsigned int worst = 0;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t key = abs_key(p[j]);
    worst = max(worst, key);
    below += key < lo;
    const unsigned long long d = static_cast<unsigned long long>(key) - lo;
    if (d < width) atomicAdd(&h[d >> shift], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) {
    if (h[b]) atomicAdd(&hist[b], static_cast<unsigned long long>(h[b]));
  }
  atomicAdd(below_out, below);
  atomicMax(worst_out, worst);
}

// Returns the key of the k-th smallest |w|, or -(i + 1) when tensor i holds a NaN.
// Radix select over windows starting from the full key range (no sampling: passes are cheap).
int64_t kth_key(const std::vector<at::Tensor>& tensors, int64_t k, int64_t guess_lo,
                int64_t guess_width) {
  TORCH_CHECK(!tensors.empty(), "no tensors");
  for (const auto& t : tensors) check_cuda(t, "tensor");
  const at::cuda::CUDAGuard guard(tensors[0].device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto opts = tensors[0].options().dtype(at::kLong);
  const int64_t n = static_cast<int64_t>(tensors.size());
  uint32_t lo = 0;
  uint64_t width = uint64_t{1} << 32;
  if (guess_width > 0) {
    lo = static_cast<uint32_t>(guess_lo);
    width = static_cast<uint64_t>(guess_width);
  }
  bool first = true;
  while (true) {
    const Window w(lo, width, kBins);
    auto counts = at::zeros({kBins + 1}, opts);  // [bins..., below]
    auto worst = at::zeros({n}, opts.dtype(at::kInt));
    auto* hist = reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>());
    for (int64_t i = 0; i < n; ++i) {
      const auto& t = tensors[i];
      if (t.numel() == 0) continue;
      NB_DISPATCH(t.scalar_type(), "window_pass", [&] {
        window_pass_kernel<scalar_t><<<blocks_for(t.numel()), kThreads, 0, stream>>>(
            t.data_ptr<scalar_t>(), t.numel(), w.lo, w.width, w.shift, hist, hist + kBins,
            reinterpret_cast<unsigned int*>(worst.data_ptr<int>()) + i);
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (first) {
      const auto worst_cpu = worst.cpu();
      const int* wp = worst_cpu.data_ptr<int>();
      for (int64_t i = 0; i < n; ++i) {
        if (static_cast<uint32_t>(wp[i]) > kInfKey) return -i - 1;
      }
      first = false;
    }
    const auto c = counts.cpu();
    const int64_t* h = c.data_ptr<int64_t>();
    const int64_t below = h[kBins];
    const auto [bin, rank] = k > below ? select_bin(h, kBins, k - below) : std::pair<int64_t, int64_t>{-1, 0};
    if (bin < 0) {
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

template <typename scalar_t>
__global__ void count_kernel(const scalar_t* __restrict__ p, int64_t n, uint32_t tk,
                             unsigned long long* __restrict__ below_out,
                             unsigned long long* __restrict__ ties_out,
                             unsigned int* __restrict__ worst_out) {
  unsigned long long below = 0, ties = 0;
  unsigned int worst = 0;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t key = abs_key(p[j]);
    worst = max(worst, key);
    below += key < tk;
    ties += key == tk;
  }
  atomicAdd(below_out, below);
  atomicAdd(ties_out, ties);
  atomicMax(worst_out, worst);
}

// [below, nan tensor index or -1, ties of tensor 0, ties of tensor 1, ...] (on the CPU)
at::Tensor count_below_and_ties(const std::vector<at::Tensor>& tensors, int64_t tkey) {
  const int64_t n = static_cast<int64_t>(tensors.size());
  auto out = at::zeros({n + 2}, at::kLong);
  out[1] = -1;
  if (n == 0) return out;
  for (const auto& t : tensors) check_cuda(t, "tensor");
  const at::cuda::CUDAGuard guard(tensors[0].device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto opts = tensors[0].options().dtype(at::kLong);
  auto counts = at::zeros({n + 1}, opts);  // [ties per tensor..., below]
  auto worst = at::zeros({n}, opts.dtype(at::kInt));
  auto* c = reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>());
  for (int64_t i = 0; i < n; ++i) {
    const auto& t = tensors[i];
    if (t.numel() == 0) continue;
    NB_DISPATCH(t.scalar_type(), "count_below_and_ties", [&] {
      count_kernel<scalar_t><<<blocks_for(t.numel()), kThreads, 0, stream>>>(
          t.data_ptr<scalar_t>(), t.numel(), static_cast<uint32_t>(tkey), c + n, c + i,
          reinterpret_cast<unsigned int*>(worst.data_ptr<int>()) + i);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const auto cc = counts.cpu();
  const auto wc = worst.cpu();
  auto* o = out.data_ptr<int64_t>();
  o[0] = cc.data_ptr<int64_t>()[n];
  for (int64_t i = 0; i < n; ++i) {
    o[2 + i] = cc.data_ptr<int64_t>()[i];
    if (o[1] < 0 && static_cast<uint32_t>(wc.data_ptr<int>()[i]) > kInfKey) o[1] = i;
  }
  return out;
}

template <typename scalar_t>
__global__ void mask_kernel(const scalar_t* __restrict__ p, int64_t n, uint32_t tk, int64_t cut,
                            bool* __restrict__ m) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    m[j] = keep_weight(abs_key(p[j]), tk, j, cut);
  }
}

// Keep-masks pruning |w| < threshold plus the first `ties_to_prune` ties in list/flat order.
std::vector<at::Tensor> masks_from_threshold(const std::vector<at::Tensor>& tensors, int64_t tkey,
                                             int64_t ties_to_prune, const std::vector<int64_t>& ties) {
  TORCH_CHECK(ties.size() == tensors.size(), "one tie count per tensor");
  const uint32_t tk = static_cast<uint32_t>(tkey);
  uint32_t tk_copy = tk;
  float threshold;
  __builtin_memcpy(&threshold, &tk_copy, sizeof(threshold));
  std::vector<at::Tensor> masks;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    check_cuda(t, "tensor");
    const at::cuda::CUDAGuard guard(t.device());
    auto mask = at::empty(t.sizes(), t.options().dtype(at::kBool));
    int64_t cut = -1;  // ties at flat index <= cut are pruned
    if (ties_to_prune >= ties[i]) {
      cut = t.numel();
      ties_to_prune -= ties[i];
    } else if (ties_to_prune > 0) {
      // |w| compared in float32 equals key equality for non-NaN values (NaN is checked before).
      const auto where = at::nonzero(t.reshape(-1).to(at::kFloat).abs() == threshold);
      cut = where[ties_to_prune - 1][0].item<int64_t>();
      ties_to_prune = 0;
    }
    if (t.numel() > 0) {
      NB_DISPATCH(t.scalar_type(), "masks_from_threshold", [&] {
        mask_kernel<scalar_t><<<blocks_for(t.numel()), kThreads, 0,
                                at::cuda::getCurrentCUDAStream()>>>(
            t.data_ptr<scalar_t>(), t.numel(), tk, cut, mask.data_ptr<bool>());
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    masks.push_back(mask);
  }
  return masks;
}

template <typename scalar_t>
__global__ void masked_copy_kernel(scalar_t* w, const scalar_t* src, const bool* __restrict__ m,
                                   int64_t n) {  // src may alias w (apply_masks_)
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    w[j] = src[j] * static_cast<scalar_t>(m[j]);
  }
}

// w <- src * m for every triple; src is w itself for apply_masks_, w0 for rewind_.
void masked_copy(const std::vector<at::Tensor>& tensors, const std::vector<at::Tensor>& sources,
                 const std::vector<at::Tensor>& masks) {
  TORCH_CHECK(tensors.size() == masks.size() && tensors.size() == sources.size(),
              "one source and one mask per tensor");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& w = tensors[i];
    check_cuda(w, "tensor");
    check_cuda(sources[i], "initial");
    check_cuda(masks[i], "mask");
    TORCH_CHECK(masks[i].scalar_type() == at::kBool, "masks must be bool");
    TORCH_CHECK(sources[i].scalar_type() == w.scalar_type(), "initial must share the dtype");
    TORCH_CHECK(w.numel() == masks[i].numel() && w.numel() == sources[i].numel(), "size mismatch");
    if (w.numel() == 0) continue;
    const at::cuda::CUDAGuard guard(w.device());
    NB_DISPATCH(w.scalar_type(), "masked_copy", [&] {
      masked_copy_kernel<scalar_t><<<blocks_for(w.numel()), kThreads, 0,
                                     at::cuda::getCurrentCUDAStream()>>>(
          w.data_ptr<scalar_t>(), sources[i].data_ptr<scalar_t>(), masks[i].data_ptr<bool>(),
          w.numel());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

int64_t cuda_kth_key(const std::vector<at::Tensor>& tensors, int64_t k, int64_t guess_lo,
                     int64_t guess_width) {
  return kth_key(tensors, k, guess_lo, guess_width);
}

at::Tensor cuda_count_below_and_ties(const std::vector<at::Tensor>& tensors, int64_t tkey) {
  return count_below_and_ties(tensors, tkey);
}

std::vector<at::Tensor> cuda_masks_from_threshold(const std::vector<at::Tensor>& tensors,
                                                  int64_t tkey, int64_t ties_to_prune,
                                                  const std::vector<int64_t>& ties) {
  return masks_from_threshold(tensors, tkey, ties_to_prune, ties);
}

void cuda_apply_masks_(const std::vector<at::Tensor>& tensors, const std::vector<at::Tensor>& masks) {
  masked_copy(tensors, tensors, masks);
}

void cuda_rewind_(const std::vector<at::Tensor>& tensors, const std::vector<at::Tensor>& initial,
                  const std::vector<at::Tensor>& masks) {
  masked_copy(tensors, initial, masks);
}

// LAMP on the GPU with ATen's stable sort and scan, in float64 like the CPU kernel.
at::Tensor cuda_lamp_scores(const at::Tensor& t) {
  check_cuda(t, "tensor");
  const at::cuda::CUDAGuard guard(t.device());
  const auto sq = t.reshape(-1).to(at::kFloat).to(at::kDouble).square();
  const auto sorted = at::sort(sq, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const auto& s = std::get<0>(sorted);
  const auto suffix = at::flip(at::cumsum(at::flip(s, {0}), 0), {0});
  const auto ratio = at::where(suffix > 0, s / suffix, at::zeros_like(s));
  auto out = at::empty_like(ratio);
  out.index_put_({std::get<1>(sorted)}, ratio);
  return out.to(at::kFloat).view(t.sizes());
}

}  // namespace nasbench_ext
