"""Start from Once-for-All: OFA's MobileNetV3 and ResNet-50 supernets as ours, tensor for tensor.

`from_ofa(src)` takes an `ofa` supernet (`OFAMobileNetV3`, `OFAResNets`), its state_dict, or a
checkpoint file as OFA publishes them (a torch file holding `{"state_dict": ...}` or a bare
state_dict, read with `weights_only=True` so a file can never run code). It reads OFA's space
(kernel / expand / depth lists, width multipliers, classes) from the module, or from tensor
shapes, builds our `mbv3` or `resnet` supernet with the same space and copies every tensor:
the two nets then compute the same function for every arch. `to_ofa_arch` / `from_ofa_arch`
translate archs to and from OFA's `set_active_subnet` arguments.

The `ofa` package is needed only to pass a module; files and state_dicts load without it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from nasbench_core.errors import CheckpointError, UserError
from supernets.base import Supernet
from supernets.ops import make_divisible
from supernets.registry import create
from supernets.space import Arch

OFAState = dict[str, torch.Tensor]
OFA_DIVISOR = 8  # OFA's MyNetwork.CHANNEL_DIVISIBLE
OFA_BN_EPS = 1e-5
# The published OFA spaces: the defaults for what a state_dict's shapes cannot tell.
MBV3_EXPANDS, MBV3_DEPTHS = (3, 4, 6), (2, 3, 4)
RESNET_EXPANDS, RESNET_DEPTHS, RESNET_WIDTHS = (0.2, 0.25, 0.35), (0, 1, 2), (0.65, 0.8, 1.0)
RESNET_BASE_DEPTHS = (2, 2, 4, 2)  # OFA's ResNets.BASE_DEPTH_LIST; a stage runs base + d blocks
RESNET_STAGE_WIDTHS = (256, 512, 1024, 2048)
_FAMILIES = {"OFAMobileNetV3": "mbv3", "OFAResNets": "resnet"}


def from_ofa(
    source: nn.Module | Mapping[str, torch.Tensor] | str | Path,
    *,
    family: str | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> Supernet:
    """Our supernet computing what OFA's supernet `source` computes, for every arch.

    `family` ("mbv3" or "resnet") is read from `source` when omitted; given, it must match.
    For a state_dict or file, the lists its shapes cannot tell default to OFA's published ones
    and can be set with OFA's names: `ks_list`, `expand_ratio_list`, `depth_list` (mbv3),
    `expand_ratio_list`, `depth_list`, `width_mult_list` (resnet); a published file name such
    as `ofa_mbv3_d234_e346_k357_w1.2` sets them too. `num_classes` different from the
    checkpoint's gives a new, freshly initialised classifier. Other `kwargs` are family options
    (e.g. `resolutions=[160, 224]`).
    """
    space = {k: kwargs.pop(k) for k in list(kwargs) if k in _SPACE_KEYS}
    if isinstance(source, (str, Path)):
        path = Path(source)
        state = load_ofa_checkpoint(path)
        try:
            return _build(state, None, family, num_classes,
                          {**_space_from_name(path.name), **space}, kwargs)
        except CheckpointError:
            raise
        except UserError as exc:
            raise CheckpointError(f"OFA checkpoint {path}: {exc}") from None
    if isinstance(source, nn.Module):
        kind = type(source).__name__
        if kind not in _FAMILIES:
            raise UserError(f"from_ofa takes OFAMobileNetV3 or OFAResNets, not {kind}")
        if space:
            raise UserError(f"{sorted(space)[0]} comes from the {kind} module; do not pass it")
        return _build(_strip(source.state_dict()), source, family, num_classes, space, kwargs)
    if isinstance(source, Mapping):
        return _build(_strip(dict(source)), None, family, num_classes, space, kwargs)
    raise UserError(f"from_ofa takes an OFA module, a state_dict or a path, not "
                    f"{type(source).__name__}")


_SPACE_KEYS = ("ks_list", "expand_ratio_list", "depth_list", "width_mult_list", "width_mult")


def load_ofa_checkpoint(path: str | Path) -> OFAState:
    """The state_dict in an OFA checkpoint file, read without unpickling any object."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"OFA checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled objects, truncation, not a torch file: many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"OFA checkpoint {path} is not a plain torch weights file "
                              f"({first})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"OFA checkpoint {path} holds no state_dict of tensors")
    return _strip(dict(obj))


def _strip(state: Mapping[str, torch.Tensor]) -> OFAState:
    """OFA's keys in one spelling: no DataParallel `module.` prefix, OFA's old
    `mobile_inverted_conv` name, and wrappers of the same name (`conv.conv.`, `bn.bn.`) folded,
    so a dynamic layer's keys read like the static layer's (OFA's own loader accepts both)."""
    out: OFAState = {}
    for key, value in state.items():
        key = key.removeprefix("module.").replace(".mobile_inverted_conv.", ".conv.")
        previous = None
        while previous != key:
            previous = key
            for name in ("conv", "bn", "linear"):
                key = key.replace(f".{name}.{name}.", f".{name}.")
        out[key] = value
    return out


def _space_from_name(name: str) -> dict[str, Any]:
    """OFA's published file names spell the space: `ofa_mbv3_d234_e346_k357_w1.2`,
    `ofa_resnet50_d=0+1+2_e=0.2+0.25+0.35_w=0.65+0.8+1.0`."""
    space: dict[str, Any] = {}
    if m := re.search(r"_d(\d+)_e(\d+)_k(\d+)_w(\d+(?:\.\d+)?)", name):
        space = {"depth_list": [int(c) for c in m[1]], "expand_ratio_list": [int(c) for c in m[2]],
                 "ks_list": [int(c) for c in m[3]], "width_mult": float(m[4])}
    elif m := re.search(r"_d=([\d+]+)_e=([\d.+]+)_w=([\d.+]+)", name):
        space = {"depth_list": [int(v) for v in m[1].split("+")],
                 "expand_ratio_list": [float(v) for v in m[2].split("+")],
                 "width_mult_list": [float(v) for v in m[3].split("+")]}
    return space


def _build(state: OFAState, module: nn.Module | None, family: str | None,
           num_classes: int | None, space: dict[str, Any], overrides: dict[str, Any]
           ) -> Supernet:
    found = _FAMILIES[type(module).__name__] if module is not None else _family_of(state)
    if family is not None and family != found:
        raise UserError(f"this is OFA's {found} supernet, not {family!r}: pass family={found!r}")
    if module is not None:
        eps = sorted({m.eps for m in module.modules() if isinstance(m, nn.BatchNorm2d)}
                     - {OFA_BN_EPS})
        if eps:
            raise UserError(f"this OFA supernet uses BatchNorm eps {eps[0]:g}; ours use "
                            f"{OFA_BN_EPS:g}")
    spec = _SPECS[found]
    try:  # the tensors the space is read from
        kwargs, key_map, head = spec.describe(state, module, space)
        in_chans = int(state[spec.first_conv].shape[1])
        theirs = int(state[head + ".weight"].shape[0])
    except KeyError as exc:
        raise UserError(f"this {found} state_dict lacks OFA tensor {exc.args[0]}") from None
    kwargs.update(overrides)
    keep_head = num_classes is None or num_classes == theirs
    net = create(found, num_classes=theirs if keep_head else num_classes, in_chans=in_chans,
                 **kwargs)
    load_ofa_state(net, state, key_map, skip=() if keep_head else (head + ".",))
    return net


def _family_of(state: OFAState) -> str:
    if "first_conv.conv.weight" in state:
        return "mbv3"
    if "input_stem.0.conv.weight" in state:
        return "resnet"
    raise UserError("this state_dict is neither OFAMobileNetV3's (first_conv.*) nor "
                    "OFAResNets' (input_stem.*)")


KeyMap = Callable[[str], str | None]


def load_ofa_state(net: Supernet, state: OFAState, key_map: KeyMap,
                   skip: tuple[str, ...] = ()) -> None:
    """Copy every OFA tensor to the supernet key `key_map` names; all of ours must be filled
    (BN batch counters may be absent from old files)."""
    ours = net.state_dict()
    new: OFAState = {}
    skipped: set[str | None] = set()
    for key, value in state.items():
        target = key_map(key)
        if key.startswith(skip):
            skipped.add(target)
            continue
        if target is None:
            raise UserError(f"OFA tensor {key} has no place in the {net.family} supernet")
        if target not in ours or ours[target].shape != value.shape:
            got = tuple(ours[target].shape) if target in ours else "missing"
            raise UserError(f"OFA tensor {key} has shape {tuple(value.shape)}; supernet "
                            f"{target} has {got}")
        new[target] = value
    left = sorted(k for k in ours if k not in new and k not in skipped
                  and not k.endswith("num_batches_tracked"))
    if left:
        raise UserError(f"the OFA state_dict gives no tensor for supernet {left[0]}")
    net.load_state_dict(new, strict=False)
    net.set_active(net.space.largest())


def _rules(table: list[tuple[str, str | Callable[[re.Match], str]]]) -> KeyMap:
    """A key map from (regex, replacement) rules; the first full match wins."""
    compiled = [(re.compile(pattern), repl) for pattern, repl in table]

    def key_map(key: str) -> str | None:
        for pattern, repl in compiled:
            if m := pattern.fullmatch(key):
                return repl(m) if callable(repl) else m.expand(repl)
        return None

    return key_map


_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def _defaults(published: tuple, largest: Any) -> list[Any]:
    return sorted({v for v in published if v < largest} | {largest})


# -- mbv3 ------------------------------------------------------------------------------------
_MBV3_STAGES = 5  # OFAMobileNetV3 always has 5 elastic stages of max(depth_list) blocks


def _mbv3_blocks(state: OFAState) -> int:
    return len({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})


def _describe_mbv3(state: OFAState, module: nn.Module | None, space: dict[str, Any]):
    n = _mbv3_blocks(state) - 1
    if n <= 0 or n % _MBV3_STAGES:
        raise UserError(f"an OFAMobileNetV3 state_dict has 1 + 5*depth blocks, this one {n + 1}")
    dw = state["blocks.1.conv.depth_conv.conv.weight"]
    e_max = dw.shape[0] / state["blocks.0.conv.point_linear.conv.weight"].shape[0]
    if module is not None:
        ks, es, ds, wm = (list(module.ks_list), list(module.expand_ratio_list),
                          list(module.depth_list), float(module.width_mult))
    else:  # kernels from the transform matrices (7to5, 5to3); the rest from OFA's defaults
        smaller = [int(m[1]) for k in state
                   if (m := re.fullmatch(r"blocks\.1\.conv\.depth_conv\.conv\.\d+to(\d+)_matrix", k))]
        ks = space.get("ks_list", sorted({int(dw.shape[-1]), *smaller}))
        es = space.get("expand_ratio_list",
                       _defaults(MBV3_EXPANDS, int(e_max) if e_max.is_integer() else e_max))
        ds = space.get("depth_list", _defaults(MBV3_DEPTHS, n // _MBV3_STAGES))
        wm = space.get("width_mult", state["feature_mix_layer.conv.weight"].shape[0] / 1280)
    has_transforms = any(k.endswith("_matrix") for k in state)
    kwargs: dict[str, Any] = {
        "width_mult": wm, "transform_kernel": has_transforms,
        "stages": [{**st, "kernels": sorted(ks), "expands": sorted(es), "depths": sorted(ds)}
                   for st in _mbv3_preset_stages()],
    }
    if wm < 1:  # OFA scales the 1280-wide head down too; our preset keeps it at >= 1280
        kwargs["head_width"] = make_divisible(1280 * wm, OFA_DIVISOR)
    first_se = any(k.startswith("blocks.0.conv.depth_conv.se.") for k in state)
    if first_se:
        kwargs["first_block"] = {**_mbv3_preset()["first_block"], "se": True}
    tail = 4 if first_se else 3
    block = r"blocks\.(\d+)\.conv\."

    def elastic(part: str) -> Callable[[re.Match], str]:
        return lambda m: f"blocks.{int(m[1]) - 1}.{part.format(*m.groups()[1:])}"

    key_map = _rules([
        (r"first_conv\.conv\.weight", "stem.0.weight"),
        (rf"first_conv\.bn\.{_BN}", r"stem.1.\1"),
        (r"blocks\.0\.conv\.depth_conv\.conv\.weight", "first.body.0.weight"),
        (rf"blocks\.0\.conv\.depth_conv\.bn\.{_BN}", r"first.body.1.\1"),
        (r"blocks\.0\.conv\.depth_conv\.se\.fc\.(reduce|expand)\.(weight|bias)",
         r"first.body.3.\1.\2"),
        (r"blocks\.0\.conv\.point_linear\.conv\.weight", f"first.body.{tail}.weight"),
        (rf"blocks\.0\.conv\.point_linear\.bn\.{_BN}", rf"first.body.{tail + 1}.\1"),
        (block + r"inverted_bottleneck\.conv\.weight", elastic("expand.weight")),
        (block + rf"inverted_bottleneck\.bn\.{_BN}", elastic("expand_bn.{0}")),
        (block + r"depth_conv\.conv\.weight", elastic("dw.weight")),
        (block + r"depth_conv\.conv\.(\d+to\d+)_matrix", elastic("dw.kernel_transforms.{0}")),
        (block + rf"depth_conv\.bn\.{_BN}", elastic("dw_bn.{0}")),
        (block + r"depth_conv\.se\.fc\.(reduce|expand)\.(weight|bias)", elastic("se.{0}.{1}")),
        (block + r"point_linear\.conv\.weight", elastic("project.weight")),
        (block + rf"point_linear\.bn\.{_BN}", elastic("project_bn.{0}")),
        (r"final_expand_layer\.conv\.weight", "final.0.weight"),
        (rf"final_expand_layer\.bn\.{_BN}", r"final.1.\1"),
        (r"feature_mix_layer\.conv\.weight", "head.1.weight"),
        (r"classifier\.linear\.(weight|bias)", r"head.4.\1"),
    ])
    return kwargs, key_map, "classifier.linear"


def _mbv3_preset() -> dict[str, Any]:
    from supernets.families.mbv3 import PRESETS

    return PRESETS["default"]


def _mbv3_preset_stages() -> list[dict[str, Any]]:
    return [dict(st) for st in _mbv3_preset()["stages"]]


# -- resnet ----------------------------------------------------------------------------------
def _resnet_stages(state: OFAState) -> list[int]:
    """Blocks per stage: each stage's first block is the one with a projection shortcut."""
    n = len({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})
    firsts = sorted({int(k.split(".")[1]) for k in state
                     if re.fullmatch(r"blocks\.\d+\.downsample\.conv\.weight", k)}) + [n]
    if len(firsts) != len(RESNET_BASE_DEPTHS) + 1 or firsts[0] != 0:
        raise UserError(f"an OFAResNets state_dict has 4 stages led by a projection shortcut; "
                        f"this one has blocks {firsts[:-1]} with one")
    return [b - a for a, b in zip(firsts, firsts[1:], strict=False)]


def _describe_resnet(state: OFAState, module: nn.Module | None, space: dict[str, Any]):
    sizes = _resnet_stages(state)
    extra = [n - base for n, base in zip(sizes, RESNET_BASE_DEPTHS, strict=True)]
    if len(set(extra)) != 1 or extra[0] < 0:
        raise UserError(f"OFAResNets stages hold base {list(RESNET_BASE_DEPTHS)} + "
                        f"max(depth_list) blocks; this one {sizes}")
    if module is not None:
        ds, es, ws = (list(module.depth_list), list(module.expand_ratio_list),
                      list(module.width_mult_list))
    else:
        ds = space.get("depth_list", _defaults(RESNET_DEPTHS, extra[0]))
        es = space.get("expand_ratio_list", list(RESNET_EXPANDS))
        ws = space.get("width_mult_list", list(RESNET_WIDTHS))
    if any(isinstance(e, (list, tuple)) for e in es):
        raise UserError("per-block OFA expand_ratio_list is not supported; give one list")
    kwargs: dict[str, Any] = {
        "preset": "ofa50",
        "depths": [sorted(base + d for d in ds) for base in RESNET_BASE_DEPTHS],
        "expands": sorted(es), "width_mults": sorted(ws),
    }
    if len(kwargs["width_mults"]) == 1:
        raise UserError("a single OFAResNets width multiplier is not supported; ours needs "
                        "an elastic width_mult_list")
    key_map = _rules([
        (r"input_stem\.0\.conv\.weight", "stem.conv1.weight"),
        (rf"input_stem\.0\.bn\.{_BN}", r"stem.bn1.\1"),
        (r"input_stem\.1\.conv\.weight", "stem.conv2.weight"),
        (rf"input_stem\.1\.conv\.bn\.{_BN}", r"stem.bn2.\1"),
        (r"input_stem\.2\.conv\.weight", "stem.conv3.weight"),
        (rf"input_stem\.2\.bn\.{_BN}", r"stem.bn3.\1"),
        (r"blocks\.(\d+)\.conv([123])\.conv\.weight", r"blocks.\1.conv\2.weight"),
        (rf"blocks\.(\d+)\.conv([123])\.bn\.{_BN}", r"blocks.\1.bn\2.\3"),
        (r"blocks\.(\d+)\.downsample\.conv\.weight", r"blocks.\1.downsample.1.weight"),
        (rf"blocks\.(\d+)\.downsample\.bn\.{_BN}", r"blocks.\1.downsample.2.\2"),
        (r"classifier\.linear\.(weight|bias)", r"fc.\1"),
    ])
    return kwargs, key_map, "classifier.linear"


def _resnet_to_ofa(net: Supernet, arch: Arch) -> dict[str, Any]:
    mults = list(net.space["stem.width"].choices)
    top = net.space["stage0.depth"].choices[-1] - RESNET_BASE_DEPTHS[0]
    low = net.space["stage0.depth"].choices[0] - RESNET_BASE_DEPTHS[0]
    d = [top if arch["stem.depth"] == 3 else low]  # OFA skips the stem's middle conv below max
    d += [arch[f"stage{s}.depth"] - base for s, base in enumerate(RESNET_BASE_DEPTHS)]
    w = [mults.index(arch["stem.mid_width"]), mults.index(arch["stem.width"])]
    w += [mults.index(arch[f"stage{s}.width"]) for s in range(len(RESNET_BASE_DEPTHS))]
    return {"d": d, "e": [arch[f"block{i}.expand"] for i in range(len(net.blocks))], "w": w}


def _resnet_from_ofa(net: Supernet, ofa: Mapping[str, Any]) -> Arch:
    mults = list(net.space["stem.width"].choices)
    n_stages = len(RESNET_BASE_DEPTHS)
    d, w = _listed(ofa["d"], n_stages + 1, "d"), _listed(ofa["w"], n_stages + 2, "w")
    if any(not isinstance(v, int) or not 0 <= v < len(mults) for v in w):
        raise UserError(f"OFA arch 'w' holds indices into {mults}; got {w}")
    top = net.space["stage0.depth"].choices[-1] - RESNET_BASE_DEPTHS[0]
    arch: Arch = {"stem.depth": 3 if d[0] == top else 2,
                  "stem.mid_width": mults[w[0]], "stem.width": mults[w[1]]}
    for s, base in enumerate(RESNET_BASE_DEPTHS):
        arch[f"stage{s}.depth"] = base + d[s + 1]
        arch[f"stage{s}.width"] = mults[w[s + 2]]
    for i, e in enumerate(_listed(ofa["e"], len(net.blocks), "e")):
        arch[f"block{i}.expand"] = e
    return arch


# -- arch translation ------------------------------------------------------------------------
def to_ofa_arch(net: Supernet, arch: Mapping[str, Any]) -> dict[str, Any]:
    """OFA's `set_active_subnet` arguments for our `arch` (plus `r`, its resolution)."""
    arch = net.space.validate(arch)
    out = _SPECS[_family(net)].to_ofa(net, arch)
    if "resolution" in arch:
        out["r"] = int(arch["resolution"])
    return out


def from_ofa_arch(net: Supernet, ofa_arch: Mapping[str, Any]) -> Arch:
    """Our arch for OFA's `set_active_subnet` arguments; `r` (an int or OFA's one-item list)
    sets the resolution, else the largest is used."""
    spec = _SPECS[_family(net)]
    arch = spec.from_ofa(net, ofa_arch)
    if "resolution" in net.space:
        r = ofa_arch.get("r", net.space["resolution"].choices[-1])
        arch["resolution"] = int(r[0] if isinstance(r, (list, tuple)) else r)
    return net.space.validate(arch)


def _family(net: Supernet) -> str:
    if net.family not in _SPECS:
        raise UserError(f"OFA archs exist for mbv3 and resnet supernets, not {net.family}")
    return net.family


def _listed(value: Any, n: int, what: str) -> list[Any]:
    """OFA's val2list: one value for all, or exactly `n`."""
    if not isinstance(value, (list, tuple)):
        return [value] * n
    if len(value) != n:
        raise UserError(f"OFA arch {what!r} has {len(value)} entries; this space needs {n}")
    return list(value)


def _mbv3_to_ofa(net: Supernet, arch: Arch) -> dict[str, Any]:
    n_blocks = len(net.blocks)
    return {"ks": [arch[f"block{i}.kernel"] for i in range(n_blocks)],
            "e": [arch[f"block{i}.expand"] for i in range(n_blocks)],
            "d": [arch[f"stage{s}.depth"] for s in range(len(net.stage_blocks))]}


def _mbv3_from_ofa(net: Supernet, ofa: Mapping[str, Any]) -> Arch:
    n_blocks, n_stages = len(net.blocks), len(net.stage_blocks)
    arch: Arch = {}
    for i, (k, e) in enumerate(zip(_listed(ofa["ks"], n_blocks, "ks"),
                                   _listed(ofa["e"], n_blocks, "e"), strict=True)):
        arch[f"block{i}.kernel"], arch[f"block{i}.expand"] = k, e
    for s, d in enumerate(_listed(ofa["d"], n_stages, "d")):
        arch[f"stage{s}.depth"] = d
    return arch


class _Spec(NamedTuple):
    """What the bridge knows of one OFA family."""

    describe: Callable[[OFAState, nn.Module | None, dict[str, Any]], tuple[dict, KeyMap, str]]
    first_conv: str
    to_ofa: Callable[[Supernet, Arch], dict[str, Any]]
    from_ofa: Callable[[Supernet, Mapping[str, Any]], Arch]


_SPECS: dict[str, _Spec] = {
    "mbv3": _Spec(_describe_mbv3, "first_conv.conv.weight", _mbv3_to_ofa, _mbv3_from_ofa),
    "resnet": _Spec(_describe_resnet, "input_stem.0.conv.weight", _resnet_to_ofa,
                    _resnet_from_ofa),
}
