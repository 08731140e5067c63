// Mixture-of-supernets: route one arch and mix the active block of a layer's experts, as one
// autograd node. Semantics mirror `mos_mix` in cuda_ext/_torch_ops.py.
//
// Per layer and arch the PyTorch path builds about twenty autograd nodes over tiny tensors (the
// router MLP, a softmax, a broadcast product and a sum per weight and bias, two slices each), and
// at small-supernet sizes their per-op cost, not arithmetic, sets the MoS step overhead. Here the
// forward is one node; on the CPU (contiguous float/double) the router, the softmax and the
// mixing run as plain loops, and the backward writes the whole expert gradient in one pass that
// also reduces the coefficient gradient. Other devices and dtypes run the same maths as ATen ops.
#include "mos_mix.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace nasbench_ext {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---- CPU loops ---------------------------------------------------------------------------------
// Shapes: features (d), w1 (H, d), b1 (H), w2 (R, H), b2 (R); coefficients `coef` (m, rows) with
// rows = 1 (layer routing: logits 0..m-1) or rows = out (neuron routing: logit r*m + k).

template <typename T>
__attribute__((target_clones("avx2", "default")))
void route(const T* f, const T* w1, const T* b1, const T* w2, const T* b2, T* hidden, T* coef,
           int64_t d, int64_t H, int64_t m, int64_t rows) {
  for (int64_t j = 0; j < H; ++j) {
    T s = b1[j];
    for (int64_t q = 0; q < d; ++q) s += w1[j * d + q] * f[q];
    hidden[j] = s > 0 ? s : T(0);
  }
  std::vector<T> z(m);
  for (int64_t r = 0; r < rows; ++r) {
    T top = -INFINITY;
    for (int64_t k = 0; k < m; ++k) {
      const int64_t q = r * m + k;
      T s = b2[q];
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < H; ++j) s += w2[q * H + j] * hidden[j];
      z[k] = s;
      top = std::max(top, s);
    }
    T total = 0;
    for (int64_t k = 0; k < m; ++k) total += (z[k] = std::exp(z[k] - top));
    for (int64_t k = 0; k < m; ++k) coef[k * rows + r] = z[k] / total;
  }
}

// Softmax and router-MLP backward; g_w2 and g_b2 are written in full (zero past the used rows).
template <typename T>
__attribute__((target_clones("avx2", "default")))
void route_backward(const T* f, const T* w2, const T* hidden, const T* coef, const T* grad_coef,
                    T* g_w1, T* g_b1, T* g_w2, T* g_b2, int64_t d, int64_t H, int64_t m,
                    int64_t rows, int64_t R) {
  std::fill(g_w2 + rows * m * H, g_w2 + R * H, T(0));
  std::fill(g_b2 + rows * m, g_b2 + R, T(0));
  std::vector<T> g_hidden(H, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    T dot = 0;
    for (int64_t k = 0; k < m; ++k) dot += coef[k * rows + r] * grad_coef[k * rows + r];
    for (int64_t k = 0; k < m; ++k) {
      const int64_t q = r * m + k;
      const T gz = coef[k * rows + r] * (grad_coef[k * rows + r] - dot);
      g_b2[q] = gz;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        g_w2[q * H + j] = gz * hidden[j];
        g_hidden[j] += w2[q * H + j] * gz;
      }
    }
  }
  for (int64_t j = 0; j < H; ++j) {
    const T gh = hidden[j] > 0 ? g_hidden[j] : T(0);
    g_b1[j] = gh;
    for (int64_t q = 0; q < d; ++q) g_w1[j * d + q] = gh * f[q];
  }
}

// Rows of a stack per parallel task: about 32K elements, so small layers stay on one thread.
int64_t row_grain(int64_t row_length) { return std::max<int64_t>(1, (int64_t{1} << 15) / row_length); }

// mixed[r, c] = sum_k coef[k, r] * E[k, r, c] over the active block (r < o, c < i) of a
// contiguous stack E (m, O, I); parallel over output rows.
template <typename T>
__attribute__((target_clones("avx2", "default")))
void mix_rows(const T* E, const T* coef, T* mixed, int64_t m, int64_t O, int64_t I, int64_t o,
              int64_t i, int64_t rows) {
  at::parallel_for(0, o, row_grain(m * i), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* w = mixed + r * i;
      for (int64_t k = 0; k < m; ++k) {
        const T a = coef[k * rows + (rows > 1 ? r : 0)];
        const T* e = E + (k * O + r) * I;
        if (k == 0) {
#pragma omp simd
          for (int64_t c = 0; c < i; ++c) w[c] = a * e[c];
        } else {
#pragma omp simd
          for (int64_t c = 0; c < i; ++c) w[c] += a * e[c];
        }
      }
    }
  });
}

// Backward of mix_rows in one pass over the stack, parallel over its (k, r) rows: the whole
// expert gradient (zero outside the active block), and grad_coef[k, r] += sum_c E[k, r, c] *
// grad[r, c] (summed over r for layer routing, in a fixed order whatever the thread count).
template <typename T>
__attribute__((target_clones("avx2", "default")))
void mix_rows_backward(const T* E, const T* coef, const T* grad, T* grad_E, T* grad_coef,
                       int64_t m, int64_t O, int64_t I, int64_t o, int64_t i, int64_t rows) {
  std::vector<T> dots(m * O, T(0));
  at::parallel_for(0, m * O, row_grain(I), [&](int64_t begin, int64_t end) {
    for (int64_t kr = begin; kr < end; ++kr) {
      const int64_t k = kr / O, r = kr % O;
      T* ge = grad_E + kr * I;
      if (r >= o) {
        std::fill(ge, ge + I, T(0));
        continue;
      }
      const T a = coef[k * rows + (rows > 1 ? r : 0)];
      const T* e = E + kr * I;
      const T* g = grad + r * i;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t c = 0; c < i; ++c) {
        ge[c] = a * g[c];
        acc += e[c] * g[c];
      }
      std::fill(ge + i, ge + I, T(0));
      dots[kr] = acc;
    }
  });
  for (int64_t k = 0; k < m; ++k) {
    for (int64_t r = 0; r < o; ++r) grad_coef[k * rows + (rows > 1 ? r : 0)] += dots[k * O + r];
  }
}

// A stack's (m, O, I) view for the loops: a bias (m, O) has I = i = 1; 1x1 kernels add nothing.
int64_t row_length(const Tensor& stacked) { return stacked.dim() == 2 ? 1 : stacked.size(2); }

std::vector<int64_t> mixed_shape(const Tensor& stacked, int64_t out, int64_t in) {
  std::vector<int64_t> shape(stacked.sizes().begin() + 1, stacked.sizes().end());
  shape[0] = out;
  if (stacked.dim() > 2) shape[1] = in;
  return shape;
}

// ---- ATen path (other devices and dtypes) -----------------------------------------------------
Tensor active_block(const Tensor& stacked, int64_t out, int64_t in) {
  Tensor block = stacked.narrow(1, 0, out);
  return stacked.dim() == 2 ? block : block.narrow(2, 0, in);
}

Tensor expand_coef(const Tensor& coef, int64_t stacked_dim) {
  std::vector<int64_t> shape{coef.size(0), coef.size(1)};
  shape.resize(stacked_dim, 1);
  return coef.reshape(shape);
}

Tensor aten_coefficients(const Tensor& f, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                         const Tensor& b2, int64_t m, int64_t rows, Tensor& hidden) {
  hidden = at::addmv(b1, w1, f).relu_();
  Tensor logits = at::addmv(b2, w2, hidden).narrow(0, 0, rows * m);
  return logits.view({rows, m}).softmax(1).t().contiguous();
}

Tensor aten_mix_backward(const Tensor& stacked, const Tensor& coef, const Tensor& grad,
                         int64_t out, int64_t in, Tensor& grad_coef) {
  Tensor grad_stacked = at::zeros_like(stacked);
  Tensor dst = active_block(grad_stacked, out, in);
  at::mul_out(dst, expand_coef(coef, stacked.dim()), grad.unsqueeze(0));
  Tensor per_row = active_block(stacked, out, in) * grad.unsqueeze(0);
  if (per_row.dim() > 2) per_row = per_row.flatten(2).sum(2);
  grad_coef += coef.size(1) == 1 ? per_row.sum(1, true) : per_row;
  return grad_stacked;
}

bool use_loops(const std::vector<Tensor>& tensors) {
  const auto dtype = tensors[0].scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return false;
  for (const Tensor& t : tensors) {
    if (!t.device().is_cpu() || !t.is_contiguous() || t.scalar_type() != dtype) return false;
  }
  return true;
}

struct MoSMix : public torch::autograd::Function<MoSMix> {
  static variable_list forward(AutogradContext* ctx, const Tensor& features, const Tensor& w1,
                               const Tensor& b1, const Tensor& w2, const Tensor& b2,
                               const Tensor& experts, const Tensor& biases, int64_t out,
                               int64_t in, bool neuron) {
    const int64_t m = experts.size(0), rows = neuron ? out : 1;
    const bool has_bias = biases.numel() > 0;
    const bool loops = use_loops({features, w1, b1, w2, b2, experts, has_bias ? biases : experts});
    Tensor hidden, coef, weight, bias;
    if (loops) {
      hidden = at::empty({w1.size(0)}, w1.options());
      coef = at::empty({m, rows}, w1.options());
      weight = at::empty(mixed_shape(experts, out, in), experts.options());
      if (has_bias) bias = at::empty({out}, biases.options());
      AT_DISPATCH_FLOATING_TYPES(experts.scalar_type(), "mos_mix", [&] {
        route<scalar_t>(features.data_ptr<scalar_t>(), w1.data_ptr<scalar_t>(),
                        b1.data_ptr<scalar_t>(), w2.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(),
                        hidden.data_ptr<scalar_t>(), coef.data_ptr<scalar_t>(), w1.size(1),
                        w1.size(0), m, rows);
        mix_rows<scalar_t>(experts.data_ptr<scalar_t>(), coef.data_ptr<scalar_t>(),
                           weight.data_ptr<scalar_t>(), m, experts.size(1), row_length(experts),
                           out, in, rows);
        if (has_bias) {
          mix_rows<scalar_t>(biases.data_ptr<scalar_t>(), coef.data_ptr<scalar_t>(),
                             bias.data_ptr<scalar_t>(), m, biases.size(1), 1, out, 1, rows);
        }
      });
    } else {
      coef = aten_coefficients(features, w1, b1, w2, b2, m, rows, hidden);
      weight = (active_block(experts, out, in) * expand_coef(coef, experts.dim())).sum(0);
      if (has_bias) bias = (biases.narrow(1, 0, out) * coef).sum(0);
    }
    ctx->save_for_backward({features, hidden, coef, w2, experts, biases});
    ctx->saved_data["out"] = out;
    ctx->saved_data["in"] = in;
    ctx->saved_data["loops"] = loops;
    if (!has_bias) return {weight};
    return {weight, bias};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &features = saved[0], &hidden = saved[1], &coef = saved[2], &w2 = saved[3],
                 &experts = saved[4], &biases = saved[5];
    const int64_t out = ctx->saved_data["out"].toInt(), in = ctx->saved_data["in"].toInt();
    const int64_t m = experts.size(0), rows = coef.size(1);
    const bool has_bias = biases.numel() > 0;
    const Tensor grad_w = grads[0].defined() ? grads[0].contiguous() : grads[0];
    const Tensor grad_b = grads.size() > 1 && grads[1].defined() ? grads[1].contiguous() : Tensor();
    Tensor grad_coef = at::zeros_like(coef);
    Tensor grad_experts, grad_biases;
    Tensor g_w1 = at::empty({hidden.size(0), features.size(0)}, w2.options());
    Tensor g_b1 = at::empty({hidden.size(0)}, w2.options());
    Tensor g_w2 = at::empty_like(w2), g_b2 = at::empty({w2.size(0)}, w2.options());
    if (ctx->saved_data["loops"].toBool()) {
      AT_DISPATCH_FLOATING_TYPES(experts.scalar_type(), "mos_mix_backward", [&] {
        if (grad_w.defined()) {
          grad_experts = at::empty_like(experts);
          mix_rows_backward<scalar_t>(experts.data_ptr<scalar_t>(), coef.data_ptr<scalar_t>(),
                                      grad_w.data_ptr<scalar_t>(),
                                      grad_experts.data_ptr<scalar_t>(),
                                      grad_coef.data_ptr<scalar_t>(), m, experts.size(1),
                                      row_length(experts), out, in, rows);
        }
        if (has_bias && grad_b.defined()) {
          grad_biases = at::empty_like(biases);
          mix_rows_backward<scalar_t>(biases.data_ptr<scalar_t>(), coef.data_ptr<scalar_t>(),
                                      grad_b.data_ptr<scalar_t>(),
                                      grad_biases.data_ptr<scalar_t>(),
                                      grad_coef.data_ptr<scalar_t>(), m, biases.size(1), 1, out,
                                      1, rows);
        }
        route_backward<scalar_t>(features.data_ptr<scalar_t>(), w2.data_ptr<scalar_t>(),
                                 hidden.data_ptr<scalar_t>(), coef.data_ptr<scalar_t>(),
                                 grad_coef.data_ptr<scalar_t>(), g_w1.data_ptr<scalar_t>(),
                                 g_b1.data_ptr<scalar_t>(), g_w2.data_ptr<scalar_t>(),
                                 g_b2.data_ptr<scalar_t>(), features.size(0), hidden.size(0), m,
                                 rows, w2.size(0));
      });
    } else {
      if (grad_w.defined()) grad_experts = aten_mix_backward(experts, coef, grad_w, out, in, grad_coef);
      if (has_bias && grad_b.defined()) {
        grad_biases = aten_mix_backward(biases, coef, grad_b, out, 1, grad_coef);
      }
      Tensor alpha = coef.t(), grad_alpha = grad_coef.t();  // (rows, m)
      Tensor grad_logits = alpha * (grad_alpha - (alpha * grad_alpha).sum(1, true));
      g_b2.zero_().narrow(0, 0, rows * m).copy_(grad_logits.reshape(-1));
      at::outer_out(g_w2, g_b2, hidden);
      Tensor grad_hidden = at::mv(w2.t(), g_b2).mul_(hidden > 0);
      g_b1.copy_(grad_hidden);
      at::outer_out(g_w1, grad_hidden, features);
    }
    return {Tensor(), g_w1, g_b1, g_w2, g_b2, grad_experts, grad_biases,
            Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

std::vector<at::Tensor> mos_mix(const at::Tensor& features, const at::Tensor& w1,
                                const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                                const at::Tensor& experts, const std::optional<at::Tensor>& biases,
                                int64_t out, int64_t in, bool neuron) {
  // An autograd function takes no undefined inputs: an empty tensor stands for "no bias".
  const at::Tensor none = at::empty({0}, experts.options());
  return MoSMix::apply(features, w1, b1, w2, b2, experts, biases.value_or(none), out, in, neuron);
}

}  // namespace nasbench_ext
