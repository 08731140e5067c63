"""`nasbench bench mos`: mixture-of-supernets against the plain supernet, on vit and mbv3 tiny.

1. overhead: one BigNAS sandwich step (largest on labels, smallest + 2 random distilled, one
   optimizer step) of the plain, layer-routed and neuron-routed supernets, alternated step by
   step on the same batch and archs; the median step time of each and the ratio to plain
   (goal <= 1.15; per-thread CPU time when single-threaded on CPU). Training-time parameters
   (experts and routers) against plain.
2. quality (the paper's claim): the same training budget on mnist5k for each variant; the
   inherited accuracy (after BN recalibration) of smallest, largest and N random archs against
   the same archs trained alone from scratch for as many steps (shared by the variants);
   mean |gap| and Kendall tau per variant. Target: MoS gap < plain gap.

`--set` params (`MosSettings`): families=vit,mbv3; parts=overhead,quality; preset (tiny;
`default` for the OFA / AutoFormer-T sized spaces); experts (4); threads (1);
steps (quality training steps, 100); batch (64); archs (random archs besides smallest and
largest, 6); timed_steps (12).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from pydantic import NonNegativeInt, PositiveInt

from nasbench.bench.registry import BenchOptions, BenchSettings, benchmark, names_of

VARIANTS = ("plain", "layer", "neuron")
PARTS = ("overhead", "quality")
# Per-family recipe, as in the example training configs (AdamW for ViT, SGD for MobileNet).
RECIPES: dict[str, dict[str, Any]] = {
    "vit": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05},
    "mbv3": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-5},
}


class MosSettings(BenchSettings):
    families: names_of(tuple(RECIPES), "family") = list(RECIPES)  # a recipe each
    parts: names_of(PARTS, "part") = list(PARTS)
    preset: str = "tiny"  # checked by the family when the first net is built
    experts: PositiveInt = 4
    threads: PositiveInt = 1
    steps: PositiveInt = 100
    batch: PositiveInt = 64
    archs: NonNegativeInt = 6  # random ones, besides smallest and largest
    timed_steps: PositiveInt = 12

    quick_defaults = {"steps": 6, "archs": 2, "timed_steps": 2}


@benchmark("mos", help="mixture-of-supernets vs plain: step time, parameters, inherited-vs-scratch gap",
           options=MosSettings)
def run(opts: BenchOptions) -> dict[str, Any]:
    import torch

    s = MosSettings.of(opts)
    torch.set_num_threads(s.threads)
    figures: dict[str, Any] = {"experts": s.experts,
                               "threads": torch.get_num_threads(), "families": {}}
    for family in s.families:
        out: dict[str, Any] = {}
        for part in s.parts:
            fn = {"overhead": overhead, "quality": quality}[part]
            started = time.perf_counter()
            out[part] = fn(opts, family)
            out[part]["wall_s"] = round(time.perf_counter() - started, 1)
        figures["families"][family] = out
    figures["summary"] = _summary(figures["families"])
    return figures


def _new_net(opts: BenchOptions, family: str, variant: str):
    import torch

    import supernets

    s = MosSettings.of(opts)
    mos = None if variant == "plain" else {"type": variant, "experts": s.experts}
    torch.manual_seed(opts.seed)
    return supernets.create(family, preset=s.preset, num_classes=10, in_chans=1, mos=mos)


def _hparams(family: str, **kw: Any):
    from supernets.train import TrainHParams

    return TrainHParams(num_random=2, grad_clip=1.0, bn_recal_batches=10, **RECIPES[family], **kw)


# -- 1. step time and parameters ---------------------------------------------------------------
def overhead(opts: BenchOptions, family: str) -> dict[str, Any]:
    import torch

    import cuda_ext
    from supernets.mos import mixture_overhead
    from supernets.train import step_plan
    from supernets.training.loop import StepContext, train_step
    from supernets.training.optim import build_optimizer, build_scheduler

    s = MosSettings.of(opts)
    batch, steps = s.batch, s.timed_steps
    device = torch.device(opts.device)
    hp = _hparams(family, epochs=2, warmup_epochs=0)
    contexts, params = {}, {}
    for variant in VARIANTS:
        net = _new_net(opts, family, variant).to(device)
        params[variant] = mixture_overhead(net)
        optimizer = build_optimizer(net, hp)
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        contexts[variant] = StepContext(net, net, optimizer, build_scheduler(optimizer, hp, 1000),
                                         scaler, hp, device, device.type == "cuda")
    space = contexts["plain"].net.space
    res = int(space.largest()["resolution"])
    gen = torch.Generator().manual_seed(opts.seed)
    x = torch.randn(batch, 1, res, res, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    # One CPU thread: its own CPU time, which a busy neighbour on another core does not inflate.
    on_thread = device.type == "cpu" and torch.get_num_threads() == 1
    clock = time.thread_time if on_thread else time.perf_counter
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for step in range(steps + 1):  # step 0 warms every variant up and is not timed
        members = step_plan(space, "sandwich", hp.num_random, opts.seed, step)
        for variant, ctx in contexts.items():
            _sync(device)
            start = clock()
            train_step(ctx, x, y, members)
            _sync(device)
            if step > 0:
                times[variant].append(clock() - start)
    ms = {v: statistics.median(t) * 1e3 for v, t in times.items()}
    plain_params = params["plain"]["total"]
    return {
        "batch": batch, "timed_steps": steps, "members_per_step": 2 + hp.num_random,
        "clock": "thread CPU time" if on_thread else "wall", "mos_backend": cuda_ext.backend(),
        "step_ms": {v: round(ms[v], 2) for v in VARIANTS},
        "step_time_ratio": {v: round(ms[v] / ms["plain"], 3) for v in VARIANTS},
        "step_goal": "<= 1.15",
        "train_params": {v: params[v]["total"] for v in VARIANTS},
        "param_ratio": {v: round(params[v]["total"] / plain_params, 3) for v in VARIANTS},
        "router_params": {v: params[v]["routers"] for v in VARIANTS},
        "extra_expert_params": {v: params[v]["extra_experts"] for v in VARIANTS},
    }


# -- 2. inherited vs from-scratch accuracy -----------------------------------------------------
def quality(opts: BenchOptions, family: str) -> dict[str, Any]:
    import numpy as np
    import torch
    from scipy.stats import kendalltau

    from nasbench.data import load_dataset
    from supernets.train import evaluate_arch, train_supernet
    from supernets.training.standalone import train_standalone

    s = MosSettings.of(opts)
    total_steps, n_random, batch = s.steps, s.archs, s.batch
    device = torch.device(opts.device)
    probe = _new_net(opts, family, "plain")
    space = probe.space
    bundle = load_dataset(name="mnist5k", resolution=int(space.largest()["resolution"]),
                          channels=1, batch_size=batch, seed=opts.seed)
    per_epoch = len(bundle.train_loader)
    epochs = max(1, round(total_steps / per_epoch))
    hp = _hparams(family, epochs=epochs, warmup_epochs=min(1.0, epochs / 4),
                  max_steps_per_epoch=min(per_epoch, -(-total_steps // epochs)))
    recal = bundle.loader(bundle.train_dataset, shuffle=False)

    def accuracy(net, arch) -> float:
        return evaluate_arch(net, arch, bundle.val_loader, device=device, recal_loader=recal,
                             recal_batches=hp.bn_recal_batches)

    rng = np.random.default_rng([opts.seed, 2024])
    archs = [("smallest", space.smallest()), ("largest", space.largest())]
    archs += [(f"random{i}", space.sample(rng)) for i in range(n_random)]

    started = time.perf_counter()
    scratch = {}
    for label, arch in archs:
        alone = _new_net(opts, family, "plain")
        train_standalone(alone, arch, bundle.train_loader, hp, device=device, seed=opts.seed)
        scratch[label] = accuracy(alone, arch)
    scratch_s = time.perf_counter() - started

    variants: dict[str, Any] = {}
    for variant in VARIANTS:
        net = _new_net(opts, family, variant)
        started = time.perf_counter()
        trained = train_supernet(net, bundle.train_loader, None, hp, device=device,
                                 arch_sampler_seed=opts.seed)
        train_s = time.perf_counter() - started
        inherited = {label: accuracy(net, arch) for label, arch in archs}
        inh = np.array([inherited[label] for label, _ in archs])
        ref = np.array([scratch[label] for label, _ in archs])
        tau = kendalltau(inh, ref).statistic
        variants[variant] = {
            **({} if variant == "plain" else {"routing": routing_stats(net, [a for _, a in archs])}),
            "inherited_acc": {k: round(v, 4) for k, v in inherited.items()},
            "mean_inherited_acc": round(float(inh.mean()), 4),
            "mean_abs_gap": round(float(np.abs(inh - ref).mean()), 4),
            "mean_gap_inherited_minus_scratch": round(float((inh - ref).mean()), 4),
            "kendall_tau": None if np.isnan(tau) else round(float(tau), 3),
            "steps": trained.global_step,
            "train_s": round(train_s, 1),
        }
    return {
        "dataset": "mnist5k", "supernet": f"{family} tiny", "batch": batch,
        "recipe": {**RECIPES[family], "sandwich": "largest + smallest + 2 random"},
        "steps": variants["plain"]["steps"],
        "archs": {label: space.arch_id(arch) for label, arch in archs},
        "scratch_acc": {k: round(v, 4) for k, v in scratch.items()},
        "scratch_train_s": round(scratch_s, 1),
        "variants": variants,
        "target": "MoS mean_abs_gap < plain mean_abs_gap",
    }


def routing_stats(net, archs) -> dict[str, float]:
    """How arch-dependent the learned routing is, averaged over MoS layers: α's normalised
    entropy (1 = uniform over experts, 0 = one expert) and the mean total-variation distance
    between two archs' α (0 = every arch mixes the same way; neuron routing compares the
    output rows both archs have)."""
    import math
    from itertools import combinations

    import torch

    from supernets.mos import mos_layers

    per_arch = []
    with torch.no_grad():
        for arch in archs:
            net.set_active(arch)
            per_arch.append([m.mixing_coefficients().reshape(-1, m.num_experts).double()
                             for m in mos_layers(net).values()])
    m = next(iter(mos_layers(net).values())).num_experts
    entropy = [float(-(a * a.clamp_min(1e-12).log()).sum(-1).mean() / math.log(m))
               for alphas in per_arch for a in alphas] if m > 1 else [0.0]
    distance = [float(0.5 * (a[:r] - b[:r]).abs().sum(-1).mean())
                for x, y in combinations(per_arch, 2) for a, b in zip(x, y, strict=True)
                for r in [min(len(a), len(b))]]
    return {"alpha_entropy": round(sum(entropy) / len(entropy), 4),
            "alpha_distance_between_archs": round(sum(distance) / max(1, len(distance)), 4)}


def _summary(families: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for family, parts in families.items():
        row: dict[str, Any] = {}
        if "overhead" in parts:
            ratio = parts["overhead"]["step_time_ratio"]
            row["step_time_ratio"] = {v: ratio[v] for v in ("layer", "neuron")}
            row["step_goal_met"] = all(ratio[v] <= 1.15 for v in ("layer", "neuron"))
        if "quality" in parts:
            q = parts["quality"]["variants"]
            row["mean_abs_gap"] = {v: q[v]["mean_abs_gap"] for v in VARIANTS}
            row["kendall_tau"] = {v: q[v]["kendall_tau"] for v in VARIANTS}
            row["mos_gap_below_plain"] = {
                v: q[v]["mean_abs_gap"] < q["plain"]["mean_abs_gap"] for v in ("layer", "neuron")
            }
        out[family] = row
    return out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
