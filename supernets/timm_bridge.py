"""Start NAS from a timm model: a supernet whose largest arch *is* that model (InstaTune-style).

`from_timm("vit_tiny_patch16_224")` reads the timm model's structure, builds the matching
`vit`, `resnet` or `mbv3` supernet (smaller choices around the model's own sizes) and copies the
model's weights into the largest arch. Supported: plain class-token ViTs, ResNets with basic or
bottleneck blocks (no SE, groups or anti-aliasing), and timm's MobileNetV3 small/large.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from nasbench_core.errors import UserError
from supernets.base import Supernet
from supernets.ops import make_divisible
from supernets.registry import create

ModuleMap = list[tuple[str, str]]  # (supernet module prefix, timm module prefix)


def from_timm(
    model: str | nn.Module,
    *,
    pretrained: bool = False,
    num_classes: int | None = None,
    in_chans: int | None = None,
    **overrides: Any,
) -> Supernet:
    """A supernet whose largest arch reproduces the timm `model` (a name or an instance).

    `pretrained=True` loads the weights through timm's own loader (needs the hub or its cache).
    `overrides` replace the derived family options (e.g. `resolutions=[192, 224]`).
    """
    if isinstance(model, str):
        model = create_timm_model(model, pretrained, num_classes, in_chans)
    family, kwargs, module_map = _describe(model)
    kwargs.update(overrides)
    net = create(family, num_classes=_num_classes(model), in_chans=_in_chans(model), **kwargs)
    load_timm_weights(net, model, module_map)
    return net


def create_timm_model(name: str, pretrained: bool, num_classes: int | None,
                      in_chans: int | None) -> nn.Module:
    """A timm model by name; a failed pretrained download is one line naming the fix."""
    import timm

    if not timm.is_model(name):
        raise UserError(f"unknown timm model {name!r}; see timm.list_models()")
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:  # hub/network/cache failures surface as many exception types
        if not pretrained:
            raise
        raise UserError(
            f"could not load pretrained weights for timm model {name!r} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "download them into the timm/Hugging Face cache or use pretrained=False"
        ) from None


def load_timm_weights(net: Supernet, model: nn.Module, module_map: ModuleMap | None = None) -> None:
    """Copy every tensor of the timm `model` into `net`'s largest arch (shapes must match)."""
    if module_map is None:
        module_map = _describe(model)[2]
    ours = net.state_dict()
    theirs = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for our_prefix, their_prefix in module_map:
        for key, value in _tensors(theirs, their_prefix, our_prefix):
            if key not in ours or ours[key].shape != value.shape:
                got = tuple(ours[key].shape) if key in ours else "missing"
                raise UserError(f"timm tensor for {key} has shape {tuple(value.shape)}; "
                                f"supernet has {got}")
            new[key] = value
    left = sorted(k for k in ours if k not in new and "kernel_transforms" not in k)
    if left:
        raise UserError(f"timm model gives no weights for supernet tensors {left[:3]}")
    net.load_state_dict(new, strict=False)
    net.set_active(net.space.largest())


def _tensors(theirs: dict[str, torch.Tensor], their_prefix: str,
             our_prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if their_prefix.endswith(".qkv"):  # timm fuses q, k, v; the supernet keeps them apart
        for part in ("weight", "bias"):
            fused = theirs.get(f"{their_prefix}.{part}")
            if fused is not None:
                for name, chunk in zip("qkv", fused.chunk(3), strict=True):
                    yield f"{our_prefix}.{name}.{part}", chunk
        return
    if their_prefix in theirs:  # a bare parameter such as cls_token
        yield our_prefix, theirs[their_prefix]
        return
    dot = their_prefix + "."
    found = False
    for key, value in theirs.items():
        if key.startswith(dot):
            found = True
            yield our_prefix + "." + key[len(dot):], value
    if not found:
        raise UserError(f"timm model has no tensors under {their_prefix!r}")


def _num_classes(model: nn.Module) -> int:
    return int(model.num_classes)


def _in_chans(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


BN_EPS = 1e-5
"""The BatchNorm eps of the CNN families (torch's default, and timm's for its own ports)."""


def _check_not_a_tf_port(model: nn.Module) -> None:
    """timm's `tf_*` ports pad like TensorFlow ("same": asymmetric, input-dependent) and use BN
    eps 1e-3; the families pad symmetrically with eps 1e-5, so such a model would load without
    error and compute something else (a 0.068 max diff at output scale 0.30). Refuse it."""
    same = next((n for n, m in model.named_modules()
                 if type(m).__name__.startswith("Conv2dSame")
                 or getattr(m, "padding", None) == "same"), None)
    if same is not None:
        raise UserError(f"this timm model pads like TensorFlow ('same' padding in {same}); the "
                        "supernet families pad symmetrically: use the non-tf_ variant")
    eps = sorted({m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)} - {BN_EPS})
    if eps:
        raise UserError(f"this timm model uses BatchNorm eps {eps[0]:g}; the supernet families "
                        f"use {BN_EPS:g}: use the non-tf_ variant")


def _describe(model: nn.Module) -> tuple[str, dict[str, Any], ModuleMap]:
    _check_not_a_tf_port(model)
    kind = type(model).__name__
    if kind == "VisionTransformer":
        return _describe_vit(model)
    if kind == "ResNet":
        return _describe_resnet(model)
    if kind == "MobileNetV3":
        return _describe_mbv3(model)
    raise UserError(f"timm model class {kind} is not supported; use a ViT, ResNet or MobileNetV3")


def _unsupported(what: str, condition: bool) -> None:
    if condition:
        raise UserError(f"this timm model uses {what}, which the supernet families do not support")


def _identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _shrink(value: float, factors: tuple[float, ...] = (0.6, 0.8, 1.0)) -> list[float]:
    return sorted({round(value * f, 4) for f in factors})


def _depths(depth: int) -> list[int]:
    return list(range(max(1, depth - 2), depth + 1))


def _resolutions(size: int) -> list[int]:
    return sorted({r for r in (128, 160, 192) if r < size} | {size})


def _describe_vit(m: nn.Module) -> tuple[str, dict[str, Any], ModuleMap]:
    blocks = list(m.blocks)
    b0 = blocks[0]
    _unsupported("no class token or register tokens",
                 not m.has_class_token or m.num_prefix_tokens != 1 or m.no_embed_class)
    _unsupported(f"global_pool={m.global_pool!r}", m.global_pool != "token")
    _unsupported("extra norms or layer scale", not all(
        _identity(getattr(x, name, None))
        for x in (m, m.patch_embed) for name in ("norm_pre", "fc_norm", "norm")
        if not (x is m and name == "norm")
    ) or any(not _identity(getattr(b, n, None)) for b in blocks for n in ("ls1", "ls2"))
        or any(not _identity(getattr(b.attn, n, None)) for b in blocks
               for n in ("q_norm", "k_norm", "norm")))
    _unsupported("a non-GELU MLP", any(type(b.mlp.act) is not nn.GELU for b in blocks))
    dim, heads, head_dim = m.embed_dim, b0.attn.num_heads, b0.attn.head_dim
    _unsupported("varying block widths", any(
        b.attn.num_heads != heads or b.mlp.fc1.out_features != b0.mlp.fc1.out_features
        for b in blocks))
    ratio = b0.mlp.fc1.out_features / dim
    _unsupported("an MLP width that is not an integer", round(dim * ratio) != dim * ratio)
    kwargs = {
        "img_size": int(m.patch_embed.img_size[0]),
        "patch_size": int(m.patch_embed.patch_size[0]),
        "embed_dims": sorted({make_divisible(dim * f, 8) for f in (0.75, 0.875)} | {dim}),
        "depths": _depths(len(blocks)),
        "heads": sorted({max(1, heads - 1), heads}),
        "mlp_ratios": sorted({ratio - 1.0, ratio - 0.5, ratio}),
        "head_dim": head_dim,
        "qkv_bias": b0.attn.qkv.bias is not None,
        "eps": b0.norm1.eps,
    }
    module_map: ModuleMap = [("patch_embed", "patch_embed.proj"), ("norm", "norm"),
                             ("head", "head")]
    for i in range(len(blocks)):
        module_map += [(f"blocks.{i}.{n}", f"blocks.{i}.{n}") for n in
                       ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2")]
        module_map.append((f"blocks.{i}.attn", f"blocks.{i}.attn.qkv"))
    module_map += [("cls_token", "cls_token"), ("pos_embed", "pos_embed")]
    return "vit", kwargs, module_map


def _describe_resnet(m: nn.Module) -> tuple[str, dict[str, Any], ModuleMap]:
    stem = m.conv1
    _unsupported("a deep stem", not isinstance(stem, nn.Conv2d) or stem.kernel_size != (7, 7)
                 or stem.stride != (2, 2) or not isinstance(m.maxpool, nn.MaxPool2d))
    layers = [m.layer1, m.layer2, m.layer3, m.layer4]
    kinds = {type(b).__name__ for layer in layers for b in layer}
    _unsupported(f"blocks {sorted(kinds)}", len(kinds) != 1 or
                 not kinds <= {"BasicBlock", "Bottleneck"})
    kind = "bottleneck" if kinds == {"Bottleneck"} else "basic"
    blocks = [b for layer in layers for b in layer]
    _unsupported("squeeze-excite, anti-aliasing or drop-block", any(
        getattr(b, "se", None) is not None or not _identity(getattr(b, "aa", None))
        for b in blocks))
    _unsupported("grouped convs", any(b.conv2.groups != 1 for b in blocks))
    _unsupported("an avg-pool downsample", any(
        b.downsample is not None and not isinstance(b.downsample[0], nn.Conv2d) for b in blocks))
    widths = [(layer[0].conv3 if kind == "bottleneck" else layer[0].conv2).out_channels
              for layer in layers]
    strides = [(layer[0].conv2 if kind == "bottleneck" else layer[0].conv1).stride[0]
               for layer in layers]
    expands = []
    for layer, width in zip(layers, widths, strict=True):
        for b in layer:
            ratio = b.conv1.out_channels / width
            _unsupported("mid widths off the 8-channel grid",
                         make_divisible(width * ratio, 8) != b.conv1.out_channels)
            expands.append(_shrink(ratio))
    kwargs = {
        "block": kind, "stem": "imagenet", "stem_width": stem.out_channels, "widths": widths,
        "strides": strides, "depths": [_depths(len(layer)) for layer in layers],
        "expands": expands, "resolutions": _resolutions(224), "divisor": 8,
    }
    module_map: ModuleMap = [("stem.0", "conv1"), ("stem.1", "bn1"), ("fc", "fc")]
    i = 0
    for s, layer in enumerate(layers, start=1):
        for j, b in enumerate(layer):
            names = ["conv1", "bn1", "conv2", "bn2"]
            names += ["conv3", "bn3"] if kind == "bottleneck" else []
            names += ["downsample"] if b.downsample is not None else []
            module_map += [(f"blocks.{i}.{n}", f"layer{s}.{j}.{n}") for n in names]
            i += 1
    return "resnet", kwargs, module_map


def _act_name(act: nn.Module) -> str:
    if isinstance(act, nn.ReLU):
        return "relu"
    if isinstance(act, nn.Hardswish):
        return "hswish"
    raise UserError(f"this timm model uses activation {type(act).__name__}, which mbv3 lacks")


def _describe_mbv3(m: nn.Module) -> tuple[str, dict[str, Any], ModuleMap]:
    stages = list(m.blocks)
    first, last = stages[0], stages[-1]
    names = [type(b).__name__ for st in stages for b in st]
    _unsupported(f"a block layout {names}", len(first) != 1
                 or type(first[0]).__name__ != "DepthwiseSeparableConv"
                 or len(last) != 1 or type(last[0]).__name__ != "ConvBnAct"
                 or any(type(b).__name__ != "InvertedResidual" for st in stages[1:-1] for b in st))
    ds = first[0]
    _unsupported("a norm after the head conv", not _identity(m.norm_head))
    _unsupported("a non-hardswish head", not isinstance(m.act2, nn.Hardswish)
                 or not isinstance(last[0].bn1.act, nn.Hardswish))
    stage_specs = []
    module_map: ModuleMap = [("stem.0", "conv_stem"), ("stem.1", "bn1")]
    first_parts = [("0", "conv_dw"), ("1", "bn1")]
    if not _identity(ds.se):
        first_parts += [("3.reduce", "se.conv_reduce"), ("3.expand", "se.conv_expand")]
    tail = 4 if not _identity(ds.se) else 3
    first_parts += [(str(tail), "conv_pw"), (str(tail + 1), "bn2")]
    module_map += [(f"first.body.{ours}", f"blocks.0.0.{theirs}") for ours, theirs in first_parts]
    i = 0
    for s, st in enumerate(stages[1:-1], start=1):
        acts = {_act_name(b.bn1.act) for b in st}
        ses = {not _identity(b.se) for b in st}
        _unsupported("mixed activations or SE within a stage", len(acts) != 1 or len(ses) != 1)
        kernels, expands = [], []
        for j, b in enumerate(st):
            k = b.conv_dw.kernel_size[0]
            kernels.append(sorted({3, k}))
            ratio = round(b.conv_pw.out_channels / b.conv_pw.in_channels, 4)
            _unsupported("mid widths off the 8-channel grid",
                         make_divisible(b.conv_pw.in_channels * ratio, 8) != b.conv_pw.out_channels)
            expands.append(_shrink(ratio, (0.5, 0.75, 1.0)))
            module_map += [(f"blocks.{i}.{ours}", f"blocks.{s}.{j}.{theirs}") for ours, theirs in
                           (("expand", "conv_pw"), ("expand_bn", "bn1"), ("dw", "conv_dw"),
                            ("dw_bn", "bn2"), ("project", "conv_pwl"), ("project_bn", "bn3"))]
            if not _identity(b.se):
                module_map.append((f"blocks.{i}.se.reduce", f"blocks.{s}.{j}.se.conv_reduce"))
                module_map.append((f"blocks.{i}.se.expand", f"blocks.{s}.{j}.se.conv_expand"))
            i += 1
        stage_specs.append({
            "width": st[0].conv_pwl.out_channels, "stride": st[0].conv_dw.stride[0],
            "act": acts.pop(), "se": ses.pop(), "depths": _depths(len(st)),
            "kernels": kernels, "expands": expands,
        })
    n_last = len(stages) - 1
    module_map += [("final.0", f"blocks.{n_last}.0.conv"), ("final.1", f"blocks.{n_last}.0.bn1"),
                   ("head.1", "conv_head"), ("head.4", "classifier")]
    size = int(m.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    kwargs = {
        "stem_width": m.conv_stem.out_channels, "stem_stride": m.conv_stem.stride[0],
        "stem_act": _act_name(m.bn1.act),
        "first_block": {"width": ds.conv_pw.out_channels, "stride": ds.conv_dw.stride[0],
                        "kernel": ds.conv_dw.kernel_size[0], "act": _act_name(ds.bn1.act),
                        "se": not _identity(ds.se)},
        "stages": stage_specs, "final_width": last[0].conv.out_channels,
        "head_width": m.conv_head.out_channels, "head_bias": m.conv_head.bias is not None,
        "resolutions": _resolutions(size), "divisor": 8,
    }
    return "mbv3", kwargs, module_map


def load_timm_state(model: nn.Module, state: dict[str, torch.Tensor], what: str, name: str) -> None:
    """A saved state dict into timm `model`: its head is first resized to the file's classes
    (the caller replaces it afterwards if the data has others); a mismatch is one line naming
    `what` and torch's last line."""
    from nasbench_core.errors import CheckpointError

    head = state.get(f"{model.pretrained_cfg.get('classifier', 'head')}.weight")
    if head is not None and head.ndim == 2 and head.shape[0] != model.num_classes:
        model.reset_classifier(int(head.shape[0]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"{what} does not fit timm model {name!r}: {lines[-1]}") from None
