"""Elastic weight ops: forward and extraction both read `active_weight()` / `active_bias()`."""

from supernets.ops.attention import DynamicAttention
from supernets.ops.channels import channel_tensor, importance_order, make_divisible, permute_
from supernets.ops.conv import DynamicConv2d
from supernets.ops.linear import DynamicLinear
from supernets.ops.norm import DynamicBatchNorm2d, DynamicLayerNorm
from supernets.ops.se import DynamicSqueezeExcite

__all__ = [
    "DynamicAttention",
    "DynamicBatchNorm2d",
    "DynamicConv2d",
    "DynamicLayerNorm",
    "DynamicLinear",
    "DynamicSqueezeExcite",
    "channel_tensor",
    "importance_order",
    "make_divisible",
    "permute_",
]
