"""MACs and params via torch.utils.flop_counter, on plain modules and extracted subnets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasbench_core.errors import UserError
from search.costs import count_flops, count_macs, count_params, subnet_input_shape


def _small() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10),
    )


def test_macs_of_conv_and_linear_match_hand_count():
    # conv: 16 out ch x 27 (3x3x3) MACs x 32x32 positions; linear: 16 x 10.
    assert count_macs(_small(), (3, 32, 32)) == 16 * 27 * 32 * 32 + 16 * 10
    assert count_flops(_small(), (3, 32, 32)) == 2 * (16 * 27 * 32 * 32 + 16 * 10)


def test_params_count_each_shared_parameter_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert count_params(model) == 4 * 4 + 4
    assert count_params(_small()) == 16 * 27 + 16 + 16 * 10 + 10


def test_count_macs_keeps_training_mode_and_threads():
    model = _small().train()
    threads = torch.get_num_threads()
    count_macs(model, (3, 8, 8))
    assert model.training
    assert torch.get_num_threads() == threads


class _FixedRes(nn.Module):
    def build_config(self):
        return {"in_chans": 1}


def test_subnet_input_shape_uses_arch_resolution_and_in_chans():
    assert subnet_input_shape(_FixedRes(), {"resolution": 20}) == (1, 20, 20)
    assert subnet_input_shape(_FixedRes(), {"depth": 2}, (1, 28, 28)) == (1, 28, 28)
    with pytest.raises(UserError, match="no 'resolution'"):
        subnet_input_shape(_FixedRes(), {"depth": 2})
