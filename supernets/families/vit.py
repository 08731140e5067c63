"""`vit`: an elastic Vision Transformer (AutoFormer-style weight entanglement).

Space: `resolution` (one fixed choice: the image size the position embeddings were made
for), `embed_dim`, `depth`, `block{i}.heads`, `block{i}.mlp_ratio` (head dim is fixed).

Module names (MoS targets): `blocks.{i}.mlp.fc1`, `blocks.{i}.mlp.fc2` and
`blocks.{i}.attn.q/k/v/proj` are `DynamicLinear`s; `patch_embed` is a `DynamicConv2d` and
`head` the classifier `DynamicLinear`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nasbench_core.errors import UserError
from supernets.base import Supernet
from supernets.families._common import (
    Regularization,
    choices,
    depth_gates,
    drop_path,
    nonzero_options,
    per_block,
    preset_kwargs,
)
from supernets.ops import (
    DynamicAttention,
    DynamicConv2d,
    DynamicLayerNorm,
    DynamicLinear,
    channel_tensor,
    importance_order,
    make_divisible,
    permute_,
)
from supernets.registry import register_supernet
from supernets.space import Arch, SearchSpace
from supernets.stock import PatchEmbed, Residual, SelectToken

PRESETS: dict[str, dict[str, Any]] = {
    "default": {  # AutoFormer-T
        "img_size": 224, "patch_size": 16, "embed_dims": [192, 216, 240],
        "depths": [12, 13, 14], "heads": [3, 4], "mlp_ratios": [3.5, 4.0], "head_dim": 64,
        "qkv_bias": True, "eps": 1e-6,
    },
    "autoformer_s": {  # AutoFormer-S (Chen et al. 2021, Table 1)
        "img_size": 224, "patch_size": 16, "embed_dims": [320, 384, 448],
        "depths": [12, 13, 14], "heads": [5, 6, 7], "mlp_ratios": [3.0, 3.5, 4.0],
        "head_dim": 64, "qkv_bias": True, "eps": 1e-6,
    },
    "autoformer_b": {  # AutoFormer-B: Q-K-V dim = heads x 64 (512-640), so not tied to embed
        "img_size": 224, "patch_size": 16, "embed_dims": [528, 576, 624],
        "depths": [14, 15, 16], "heads": [8, 9, 10], "mlp_ratios": [3.0, 3.5, 4.0],
        "head_dim": 64, "qkv_bias": True, "eps": 1e-6,
    },
    "tiny": {
        "img_size": 32, "patch_size": 8, "embed_dims": [32, 48, 64], "depths": [2, 3, 4],
        "heads": [2, 4], "mlp_ratios": [2.0, 3.0, 4.0], "head_dim": 16, "qkv_bias": True,
        "eps": 1e-6,
    },
}


def mlp_hidden(embed_dim: int, ratio: float) -> int:
    return int(round(embed_dim * ratio))


class ElasticMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = DynamicLinear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = DynamicLinear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ElasticViTBlock(nn.Module):
    """Pre-norm transformer block with elastic embed dim, heads and MLP width."""

    def __init__(self, dim: int, heads: int, head_dim: int, max_ratio: float, qkv_bias: bool,
                 eps: float):
        super().__init__()
        self.norm1 = DynamicLayerNorm(dim, eps)
        self.attn = DynamicAttention(dim, heads, head_dim, qkv_bias)
        self.norm2 = DynamicLayerNorm(dim, eps)
        self.mlp = ElasticMlp(dim, mlp_hidden(dim, max_ratio))
        self.drop_path_rate = 0.0

    def set_active(self, dim: int, heads: int, ratio: float) -> None:
        self.norm1.set_active(dim)
        self.norm2.set_active(dim)
        self.attn.set_active(dim, heads)
        hidden = mlp_hidden(dim, ratio)
        self.mlp.fc1.set_active(hidden, dim)
        self.mlp.fc2.set_active(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rate, training = self.drop_path_rate, self.training
        x = x + drop_path(self.attn(self.norm1(x)), rate, training)
        return x + drop_path(self.mlp(self.norm2(x)), rate, training)

    def to_stock(self) -> nn.Module:
        attn = nn.Sequential(self.norm1.to_stock(), self.attn.to_stock())
        mlp = nn.Sequential(self.norm2.to_stock(), self.mlp.fc1.to_stock(), nn.GELU(),
                            self.mlp.fc2.to_stock())
        return nn.Sequential(Residual(attn, nn.Identity()), Residual(mlp, nn.Identity()))

    def count(self, dim: int, heads: int, ratio: float) -> int:
        hidden = mlp_hidden(dim, ratio)
        return (4 * dim + DynamicAttention.count(dim, heads, self.attn.head_dim,
                                                 self.attn.q.bias is not None)
                + DynamicLinear.count(dim, hidden) + DynamicLinear.count(hidden, dim))

    def reorder_channels(self) -> None:
        """Sort MLP hidden units by the L1 norm of their fc2 columns (heads sort themselves)."""
        order = importance_order(channel_tensor(self.mlp.fc2), 1)
        permute_(self.mlp.fc1, order, 0)
        permute_(self.mlp.fc2, order, 1)


@register_supernet("vit")
class ViTSupernet(Regularization, Supernet):
    """Elastic ViT with a class token: embed dim, depth, per-block heads and MLP ratio.

    `dropout` (before the head) and `drop_path` (on both residual branches of every block,
    as AutoFormer does) are training-only regularizers, off by default."""

    def __init__(self, *, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0,
                 preset: str = "default", dropout: float = 0.0, drop_path: float = 0.0,
                 **overrides: Any):
        cfg = preset_kwargs("vit", PRESETS, preset, overrides)
        img, patch = cfg["img_size"], cfg["patch_size"]
        if img % patch:
            raise UserError(f"vit img_size {img} is not a multiple of patch_size {patch}")
        embeds = choices(make_divisible(e * width_mult, 8) for e in cfg["embed_dims"])
        depths = choices(cfg["depths"])
        heads, ratios = per_block(cfg["heads"], depths[-1]), per_block(cfg["mlp_ratios"],
                                                                       depths[-1])
        dims: dict[str, list[Any]] = {"resolution": [img], "embed_dim": embeds, "depth": depths}
        for i in range(depths[-1]):
            dims[f"block{i}.heads"] = heads[i]
            dims[f"block{i}.mlp_ratio"] = ratios[i]
        gates = depth_gates("depth", depths, [[f"block{i}.heads", f"block{i}.mlp_ratio"]
                                              for i in range(depths[-1])])
        super().__init__(SearchSpace(dims, gates), {
            "num_classes": num_classes, "in_chans": in_chans, "width_mult": width_mult,
            "preset": preset, **nonzero_options(dropout=dropout, drop_path=drop_path),
            **overrides})

        dim = embeds[-1]
        num_patches = (img // patch) ** 2
        self.patch_embed = DynamicConv2d(in_chans, dim, patch, patch, bias=True, padding=0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.ModuleList(
            ElasticViTBlock(dim, heads[i][-1], cfg["head_dim"], ratios[i][-1], cfg["qkv_bias"],
                            cfg["eps"])
            for i in range(depths[-1])
        )
        self.norm = DynamicLayerNorm(dim, cfg["eps"])
        self.head = DynamicLinear(dim, num_classes)
        self._init_weights()
        self.set_regularization(dropout, drop_path)
        self._dim = dim
        self._run: list[ElasticViTBlock] = list(self.blocks)
        self.set_active(self.space.largest())

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _configure(self, arch: Arch) -> None:
        dim = arch["embed_dim"]
        self.patch_embed.set_active(dim, self.patch_embed.in_channels)
        self._run = list(self.blocks[: arch["depth"]])
        for i, block in enumerate(self._run):
            block.set_active(dim, arch[f"block{i}.heads"], arch[f"block{i}.mlp_ratio"])
        self.norm.set_active(dim)
        self.head.set_active(self.head.out_features, dim)
        self._dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        d = self._dim
        cls = self.cls_token[:, :, :d].expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed[:, :, :d]
        for block in self._run:
            x = block(x)
        return self.head(self.classifier_dropout(self.norm(x)[:, 0]))

    def residual_branch_ends(self) -> list[nn.Module]:
        """No BN here: the last projection of each residual branch (attention `proj`, MLP
        `fc2`), whose zero init makes every block start as the identity, as gamma = 0 does."""
        return [m for b in self.blocks for m in (b.attn.proj, b.mlp.fc2)]

    def _drop_path_blocks(self) -> list[nn.Module]:
        return list(self.blocks)

    def _extract(self) -> nn.Module:
        d = self._dim
        embed = PatchEmbed(self.patch_embed.to_stock(), self.cls_token[:, :, :d],
                           self.pos_embed[:, :, :d])
        return nn.Sequential(embed, *[b.to_stock() for b in self._run], self.norm.to_stock(),
                             SelectToken(), self.head.to_stock())

    def count_params(self, arch: Mapping[str, Any]) -> int:
        arch = self.space.validate(arch)
        d = arch["embed_dim"]
        n = DynamicConv2d.count(self.patch_embed.in_channels, d, self.patch_embed.max_kernel,
                                bias=True)
        n += d * (1 + self.pos_embed.shape[1]) + 2 * d
        n += DynamicLinear.count(d, self.head.out_features)
        return n + sum(self.blocks[i].count(d, arch[f"block{i}.heads"],
                                            arch[f"block{i}.mlp_ratio"])
                       for i in range(arch["depth"]))
