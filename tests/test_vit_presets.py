"""AutoFormer presets: the S space's extremes are standard ViTs, so timm counts them exactly."""

from __future__ import annotations

import pytest
import timm

import supernets


def _timm_vit_params(embed: int, depth: int, heads: int, mlp_ratio: float) -> int:
    model = timm.create_model("vit_base_patch16_224", pretrained=False, embed_dim=embed, depth=depth,
                              num_heads=heads, mlp_ratio=mlp_ratio, num_classes=1000)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def autoformer_s() -> supernets.Supernet:
    return supernets.create("vit", preset="autoformer_s", num_classes=1000)


@pytest.mark.parametrize(("end", "embed", "depth", "heads", "ratio"),
                         [("smallest", 320, 12, 5, 3.0), ("largest", 448, 14, 7, 4.0)])
def test_autoformer_s_extremes_count_as_timm_vits(autoformer_s, end, embed, depth, heads, ratio):
    arch = getattr(autoformer_s.space, end)()
    assert autoformer_s.count_params(arch) == _timm_vit_params(embed, depth, heads, ratio)
    stock = autoformer_s.extract(arch)
    assert sum(p.numel() for p in stock.parameters()) == _timm_vit_params(embed, depth, heads, ratio)


@pytest.mark.parametrize(("preset", "embeds", "depths", "heads", "ratios"), [
    ("default", [192, 216, 240], [12, 13, 14], [3, 4], [3.5, 4.0]),
    ("autoformer_s", [320, 384, 448], [12, 13, 14], [5, 6, 7], [3.0, 3.5, 4.0]),
    ("autoformer_b", [528, 576, 624], [14, 15, 16], [8, 9, 10], [3.0, 3.5, 4.0]),
])
def test_autoformer_spaces_are_the_papers(preset, embeds, depths, heads, ratios):
    """Table 1 of Chen et al. 2021 (T, S, B); Q-K-V dim is heads x 64 in every space."""
    space = supernets.create("vit", preset=preset, num_classes=10, img_size=32, patch_size=16).space
    assert list(space["embed_dim"].choices) == embeds
    assert list(space["depth"].choices) == depths
    assert list(space["block0.heads"].choices) == heads
    assert list(space["block0.mlp_ratio"].choices) == ratios
