// Python bindings of the CUDA kernels (ops_cuda.cu); same names and signatures as ops_cpu.cpp.
#include <torch/extension.h>

#include <vector>

#include "mos_mix.h"

namespace nasbench_ext {
int64_t cuda_kth_key(const std::vector<at::Tensor>& tensors, int64_t k, int64_t guess_lo,
                     int64_t guess_width);
at::Tensor cuda_count_below_and_ties(const std::vector<at::Tensor>& tensors, int64_t tkey);
std::vector<at::Tensor> cuda_masks_from_threshold(const std::vector<at::Tensor>& tensors,
                                                  int64_t tkey, int64_t ties_to_prune,
                                                  const std::vector<int64_t>& ties);
void cuda_apply_masks_(const std::vector<at::Tensor>& tensors, const std::vector<at::Tensor>& masks);
void cuda_rewind_(const std::vector<at::Tensor>& tensors, const std::vector<at::Tensor>& initial,
                  const std::vector<at::Tensor>& masks);
at::Tensor cuda_lamp_scores(const at::Tensor& t);
}  // namespace nasbench_ext

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace nasbench_ext;
  m.def("kth_key", &cuda_kth_key, "key of the k-th smallest |w|, or -(i+1) for NaN in i",
        py::arg("tensors"), py::arg("k"), py::arg("guess_lo") = 0, py::arg("guess_width") = 0);
  m.def("count_below_and_ties", &cuda_count_below_and_ties);
  m.def("masks_from_threshold", &cuda_masks_from_threshold);
  m.def("apply_masks_", &cuda_apply_masks_);
  m.def("rewind_", &cuda_rewind_);
  m.def("lamp_scores", &cuda_lamp_scores);
  m.def("mos_mix", &mos_mix);
}
