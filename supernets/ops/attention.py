"""Elastic multi-head self-attention: active heads and embed dim by q/k/v/proj slicing."""

from __future__ import annotations

import torch
from torch import nn

from supernets.ops.channels import channel_tensor, importance_order, permute_
from supernets.ops.linear import DynamicLinear
from supernets.stock import Attention, attend


class DynamicAttention(nn.Module):
    """Self-attention with a fixed head dim; heads and embed dim shrink by leading slices.

    `q`, `k`, `v` map embed -> heads*head_dim and `proj` maps back, so the first h heads and the
    first E embed features are shared by every smaller config (AutoFormer-style entanglement).
    """

    def __init__(self, embed_dim: int, heads: int, head_dim: int, qkv_bias: bool = True):
        super().__init__()
        inner = heads * head_dim
        self.max_heads, self.head_dim = heads, head_dim
        self.q = DynamicLinear(embed_dim, inner, bias=qkv_bias)
        self.k = DynamicLinear(embed_dim, inner, bias=qkv_bias)
        self.v = DynamicLinear(embed_dim, inner, bias=qkv_bias)
        self.proj = DynamicLinear(inner, embed_dim)
        self.active_heads = heads

    def set_active(self, embed_dim: int, heads: int) -> None:
        inner = heads * self.head_dim
        for lin in (self.q, self.k, self.v):
            lin.set_active(inner, embed_dim)
        self.proj.set_active(embed_dim, inner)
        self.active_heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(attend(self.q(x), self.k(x), self.v(x), self.active_heads))

    def to_stock(self) -> Attention:
        return Attention(self.q.to_stock(), self.k.to_stock(), self.v.to_stock(),
                         self.proj.to_stock(), self.active_heads)

    @staticmethod
    def count(embed_dim: int, heads: int, head_dim: int, qkv_bias: bool = True) -> int:
        inner = heads * head_dim
        return 3 * DynamicLinear.count(embed_dim, inner, qkv_bias) + DynamicLinear.count(
            inner, embed_dim)

    def reorder_channels(self) -> None:
        """Sort heads by the L1 norm of their output-projection columns."""
        hd = self.head_dim
        w = channel_tensor(self.proj).reshape(self.proj.out_features, self.max_heads, hd, -1)
        head_order = importance_order(w, 1)
        order = (head_order[:, None] * hd + torch.arange(hd)).reshape(-1)
        for lin in (self.q, self.k, self.v):
            permute_(lin, order, 0)
        permute_(self.proj, order, 1)
