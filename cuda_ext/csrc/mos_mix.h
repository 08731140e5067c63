// Mixture-of-supernets routing and expert mixing as one autograd node (mos_mix.cpp).
#pragma once

#include <torch/extension.h>

#include <optional>
#include <vector>

namespace nasbench_ext {
// (weight) or (weight, bias) of one arch: the router MLP (w1, b1, w2, b2) maps `features` to
// softmax coefficients over the m experts (per output row when `neuron`), which mix the active
// (out, in) block of `experts` (m, O, I[, 1, 1]) and `biases` (m, O).
std::vector<at::Tensor> mos_mix(const at::Tensor& features, const at::Tensor& w1,
                                const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                                const at::Tensor& experts, const std::optional<at::Tensor>& biases,
                                int64_t out, int64_t in, bool neuron);
}  // namespace nasbench_ext
