"""`nasbench bench cuda_ext`: argument checks, ratios, and one real child measurement."""

from __future__ import annotations

import pytest

from nasbench.bench import cuda_ext as bench


def test_ratios_compare_time_and_agreement():
    rows = {
        "cuda_ext": {"select_s": 0.5, "masks_s": 1.0, "threshold": 0.25, "pruned": 9,
                     "extra_peak_bytes": 10, "weight_bytes": 1000},
        "kthvalue": {"select_s": 5.0, "threshold": 0.25},
        "global_unstructured": {"masks_s": 40.0, "pruned": 9},
    }
    assert bench._ratios(rows) == {
        "speedup_vs_kthvalue": 10.0,
        "same_threshold_as_kthvalue": True,
        "speedup_select_vs_global_unstructured": 80.0,
        "speedup_masks_vs_global_unstructured": 40.0,
        "same_pruned_count_as_global_unstructured": True,
        "extra_peak_pct_of_weights": 1.0,
    }


@pytest.mark.slow
def test_quick_children_agree_with_the_peers():
    spec = {"case": "resnet50", "quick": True, "device": "cpu", "seed": 0, "sparsity": 0.5,
            "reps": 1}
    ours = bench._in_subprocess({**spec, "method": "cuda_ext"})
    peer = bench._in_subprocess({**spec, "method": "global_unstructured"})
    kth = bench._in_subprocess({**spec, "method": "kthvalue"})
    assert ours["pruned"] == peer["pruned"] == ours["k"]
    assert ours["threshold"] == kth["threshold"]
