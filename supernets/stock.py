"""Small containers for extracted subnets; every parameterised leaf is a stock torch layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Residual(nn.Module):
    """`post(body(x) + shortcut(x))`; `shortcut=None` means no skip connection."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None,
                 post: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.post = post if post is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.post(out)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head scaled dot-product attention on (B, N, heads*head_dim) projections."""
    b, n, _ = q.shape
    q, k, v = (t.reshape(b, n, heads, -1).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n, -1)


class Attention(nn.Module):
    """Multi-head self-attention from four nn.Linear layers (q, k, v, proj)."""

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear, proj: nn.Linear, heads: int):
        super().__init__()
        self.q, self.k, self.v, self.proj = q, k, v, proj
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(attend(self.q(x), self.k(x), self.v(x), self.heads))


class SqueezeExcite(nn.Module):
    """x * hardsigmoid(expand(relu(reduce(mean(x))))) with 1x1 nn.Conv2d layers."""

    def __init__(self, reduce: nn.Conv2d, expand: nn.Conv2d):
        super().__init__()
        self.reduce, self.act, self.expand, self.gate = reduce, nn.ReLU(), expand, nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class PatchEmbed(nn.Module):
    """Patchify conv, then prepend the class token and add position embeddings."""

    def __init__(self, proj: nn.Conv2d, cls_token: torch.Tensor, pos_embed: torch.Tensor):
        super().__init__()
        self.proj = proj
        self.cls_token = nn.Parameter(cls_token.detach().clone())
        self.pos_embed = nn.Parameter(pos_embed.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed


class SelectToken(nn.Module):
    """The class token (index 0) of a (B, N, D) sequence."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]
