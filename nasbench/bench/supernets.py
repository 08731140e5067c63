"""`nasbench bench supernets`: training-step speed vs Once-for-All, extraction, inherited quality.

1. step_speed: one BigNAS sandwich step (largest on labels, smallest + 2 random distilled, one
   SGD step) of our `mbv3` against OFA's `OFAMobileNetV3` (pip `ofa`) with the same space, width,
   batch, resolution, archs and step code, alternated step by step. Goal: ours/OFA >= 1.2.
2. extract_speed: inference time of `net.extract(arch)` against the supernet running the same
   arch, batch 1 and 64. Goal: the extracted subnet is never slower.
3. quality: mbv3-tiny trained on mnist5k with each of `quality_recipes` for `quality_seeds`
   seeds; inherited accuracy (after BN recalibration) of smallest, largest and 6 random archs
   against the same archs trained alone from scratch (once per seed) for the same number of
   steps; mean |gap|, mean signed gap and Kendall tau per recipe and seed (`_supernets_quality`).
4. ofa_extract: our extracted subnet against OFA's `get_active_subnet` for the same arch and
   weights (`_supernets_vs_ofa`). Goal: ours is never slower.
5. ddp: all-reduces per sandwich step and step time of 2 gloo workers vs 1 (`_supernets_ddp`).
   Goal: one all-reduce per step.

OFA runs in channels-last in step_speed, as ours does in training (its best CPU layout).

`--set` params (`SupernetsSettings`): parts=step_speed,extract_speed,quality,ofa_extract,ddp;
batch; resolution (step_speed, ofa_extract); steps; rounds (extract_speed, ofa_extract);
threads; quality_steps; quality_batch; quality_recipes (default,bignas,...); quality_seeds
(<= 5); ofa_families (mbv3,resnet); ofa_archs; ddp_batch
(global, even); ddp_steps; ddp_resolution.
"""

from __future__ import annotations

import statistics
import time
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PositiveInt, field_validator

from nasbench.bench.registry import BenchOptions, BenchSettings, benchmark, names_of

PARTS = ("step_speed", "extract_speed", "quality", "ofa_extract", "ddp")
OFA_FAMILIES = ("mbv3", "resnet")


def _recipe_names() -> list[str]:
    from supernets.training.recipes import RECIPES

    return list(RECIPES)


def _distinct(names: list[str]) -> list[str]:
    if len(set(names)) != len(names):
        raise ValueError("must be distinct")
    return names


class SupernetsSettings(BenchSettings):
    parts: names_of(PARTS, "part") = list(PARTS)
    threads: PositiveInt | None = None  # None: leave torch's thread count alone
    batch: PositiveInt = 32  # step_speed
    resolution: PositiveInt = 128  # step_speed
    steps: PositiveInt = 8  # step_speed, timed
    rounds: PositiveInt = 9  # extract_speed
    quality_steps: PositiveInt = 600
    quality_batch: PositiveInt = 64
    quality_recipes: Annotated[names_of(_recipe_names, "recipe"), AfterValidator(_distinct)] = ["default"]
    quality_seeds: Annotated[PositiveInt, Field(le=5)] = 1  # seeds opts.seed, opts.seed + 1, ...
    ofa_families: names_of(OFA_FAMILIES, "family") = list(OFA_FAMILIES)
    ofa_archs: PositiveInt = 3
    ddp_batch: PositiveInt = 32  # global: each of 2 workers takes half
    ddp_steps: PositiveInt = 6
    ddp_resolution: PositiveInt = 32

    quick_defaults = {"batch": 8, "resolution": 64, "steps": 2, "rounds": 5, "quality_steps": 8,
                      "ofa_families": ["mbv3"], "ofa_archs": 1, "ddp_batch": 8, "ddp_steps": 2,
                      "ddp_resolution": 16}

    @field_validator("ddp_batch")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (2 workers split it)")
        return value


@benchmark(
    "supernets",
    help="mbv3 sandwich step vs OFA; extracted vs active subnet; inherited vs scratch accuracy",
    options=SupernetsSettings,
)
def run(opts: BenchOptions) -> dict[str, Any]:
    import torch

    s = SupernetsSettings.of(opts)
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    figures: dict[str, Any] = {}
    for part in s.parts:
        fn = {"step_speed": step_speed, "extract_speed": extract_speed, "quality": quality,
              "ofa_extract": _ofa_extract, "ddp": _ddp}[part]
        started = time.perf_counter()
        figures[part] = fn(opts)
        figures[part]["wall_s"] = round(time.perf_counter() - started, 1)
    return figures


def _ofa_extract(opts: BenchOptions) -> dict[str, Any]:
    from nasbench.bench._supernets_vs_ofa import ofa_extract

    s = SupernetsSettings.of(opts)
    return ofa_extract(opts, s.ofa_families, s.ofa_archs, s.resolution, s.rounds)


def quality(opts: BenchOptions) -> dict[str, Any]:
    from nasbench.bench._supernets_quality import quality as run_quality

    s = SupernetsSettings.of(opts)
    return run_quality(opts, s.quality_steps, s.quality_batch, s.quality_recipes, s.quality_seeds)


def _ddp(opts: BenchOptions) -> dict[str, Any]:
    from nasbench.bench._supernets_ddp import ddp_speed

    s = SupernetsSettings.of(opts)
    return ddp_speed(opts, s.ddp_batch, s.ddp_steps, s.ddp_resolution)


# -- 1. sandwich step throughput against Once-for-All ----------------------------------------
def _ofa_class():
    """OFA's elastic MobileNetV3; imported lazily (the optional `peers` extra)."""
    try:
        from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3
    except ImportError as exc:
        from nasbench_core.errors import UserError

        raise UserError(
            f"the step_speed peer needs Once-for-All: pip install ofa (the `peers` extra); {exc}"
        ) from None
    return OFAMobileNetV3


def _ofa_adapter(space, num_classes: int, width_mult: float):
    """OFAMobileNetV3 behind our `set_active(arch)`, so both nets run the same step code; in
    channels-last for training, like ours (`training_layout`): OFA's fastest CPU layout too."""
    import torch
    from torch import nn

    from supernets.base import training_layout

    ofa_cls = _ofa_class()
    kernels = sorted({c for d in space for c in d.choices if d.name.endswith(".kernel")})
    expands = sorted({c for d in space for c in d.choices if d.name.endswith(".expand")})
    depths = sorted({c for d in space for c in d.choices if d.name.endswith(".depth")})
    n_blocks = sum(1 for d in space if d.name.endswith(".kernel"))
    n_stages = sum(1 for d in space if d.name.endswith(".depth"))

    class OFAAdapter(nn.Module):
        def __init__(self):
            super().__init__()
            self.space = space
            self.ofa = ofa_cls(
                n_classes=num_classes, dropout_rate=0.0, width_mult=width_mult,
                ks_list=kernels, expand_ratio_list=expands, depth_list=depths,
            ).to(memory_format=torch.channels_last)

        def set_active(self, arch):
            self.ofa.set_active_subnet(
                ks=[arch[f"block{i}.kernel"] for i in range(n_blocks)],
                e=[arch[f"block{i}.expand"] for i in range(n_blocks)],
                d=[arch[f"stage{s}.depth"] for s in range(n_stages)],
            )

        def forward(self, x):
            return self.ofa(training_layout(x))

    return OFAAdapter()


def _step_context(net, device):
    import torch

    from supernets.train import TrainHParams
    from supernets.training.loop import StepContext
    from supernets.training.optim import build_optimizer, build_scheduler

    cfg = TrainHParams(epochs=2, lr=0.01, warmup_epochs=0, num_random=2, grad_clip=1.0)
    optimizer = build_optimizer(net, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=1000)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    return StepContext(net, net, optimizer, scheduler, scaler, cfg, device, use_amp)


def step_speed(opts: BenchOptions) -> dict[str, Any]:
    import torch

    import supernets
    from supernets.train import step_plan
    from supernets.training.loop import train_step

    s = SupernetsSettings.of(opts)
    batch, resolution, steps = s.batch, s.resolution, s.steps
    device = torch.device(opts.device)
    torch.manual_seed(opts.seed)
    ours = supernets.create("mbv3", num_classes=10, in_chans=3, resolutions=[resolution]).to(device)
    ofa = _ofa_adapter(ours.space, 10, 1.0).to(device)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_ofa = sum(p.numel() for p in ofa.parameters())
    contexts = {"nasbench": _step_context(ours, device), "ofa": _step_context(ofa, device)}
    gen = torch.Generator().manual_seed(opts.seed)
    x = torch.randn(batch, 3, resolution, resolution, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    clock = _clock(device)
    times: dict[str, list[float]] = {name: [] for name in contexts}
    for step in range(steps + 1):  # step 0 warms up both and is not timed
        members = step_plan(ours.space, "sandwich", 2, opts.seed, step)
        for name, ctx in contexts.items():
            _sync(device)
            start = clock()
            train_step(ctx, x, y, members)
            _sync(device)
            if step > 0:
                times[name].append(clock() - start)
    ips = {name: batch / statistics.median(t) for name, t in times.items()}
    return {
        "peer": "ofa.OFAMobileNetV3", "peer_layout": "channels_last (as ours in training)",
        "space": "OFA MobileNetV3: kernel {3,5,7}, expand {3,4,6}, depth {2,3,4} x 5 stages",
        "batch": batch, "resolution": resolution, "width_mult": 1.0, "timed_steps": steps,
        "members_per_step": 4, "params_nasbench": n_ours, "params_ofa": n_ofa,
        "clock": "process CPU time" if device.type == "cpu" else "wall time",
        "images_per_s_nasbench": round(ips["nasbench"], 2),
        "images_per_s_ofa": round(ips["ofa"], 2),
        "speedup_vs_ofa": round(ips["nasbench"] / ips["ofa"], 3),
        "goal": ">= 1.2",
    }


# -- 2. extracted subnet against the supernet in that arch -----------------------------------
def extract_speed(opts: BenchOptions) -> dict[str, Any]:
    import torch

    import supernets

    preset = "tiny" if opts.quick else "default"
    rounds = SupernetsSettings.of(opts).rounds
    device = torch.device(opts.device)
    torch.manual_seed(opts.seed)
    net = supernets.create("mbv3", preset=preset, num_classes=10, in_chans=3).to(device).eval()
    space = net.space
    archs = {"smallest": space.smallest(), "random": space.sample(opts.seed),
             "largest": space.largest()}
    rows = []
    for label, arch in archs.items():
        extracted = net.extract(arch).to(device).eval()
        net.set_active(arch)
        res = int(arch["resolution"])
        for batch in (1, 64):
            x = torch.randn(batch, 3, res, res, device=device)
            ms = _interleaved_ms({"supernet": net, "extracted": extracted}, x, rounds, device)
            rows.append({
                "arch": label, "arch_id": space.arch_id(arch), "resolution": res, "batch": batch,
                "supernet_ms": round(ms["supernet"], 3), "extracted_ms": round(ms["extracted"], 3),
                "speedup": round(ms["supernet"] / ms["extracted"], 3),
            })
    return {
        "preset": preset, "rounds": rounds,
        "timing": "median over rounds, modules alternated; "
        + ("process CPU time" if device.type == "cpu" else "wall time"),
        "rows": rows,
        "min_speedup": min(r["speedup"] for r in rows),
        "extracted_never_slower": all(r["speedup"] >= 1.0 for r in rows),
        "goal": "extracted never slower (speedup >= 1.0)",
    }


def _interleaved_ms(modules: dict, x, rounds: int, device,
                    round_s: float = 0.05) -> dict[str, float]:
    """Median ms per call; modules alternate within each round so load drift hits both alike.
    A round times each module for about `round_s` seconds.

    On CPU the clock is this process's CPU time (`_clock`): on a shared machine, wall time
    mostly measures the other tenants.
    """
    import torch

    with torch.inference_mode():
        for module in modules.values():  # warm-up, and size a round to ~50 ms of work
            module(x)
        _sync(device)
        clock = _clock(device)
        start = clock()
        next(iter(modules.values()))(x)
        _sync(device)
        calls = max(1, int(round_s / max(clock() - start, 1e-6)))
        samples: dict[str, list[float]] = {name: [] for name in modules}
        for _ in range(rounds):
            for name, module in modules.items():
                start = clock()
                for _ in range(calls):
                    module(x)
                _sync(device)
                samples[name].append((clock() - start) / calls * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def _clock(device):
    """Process CPU seconds on CPU (robust to other tenants), wall seconds on CUDA."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
