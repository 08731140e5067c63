"""`nasbench bench supernets --set parts=quality`: inherited against from-scratch accuracy on mnist5k.

For each seed, mbv3-tiny is trained once per recipe (`quality_recipes`, names from
supernets.training.recipes) for the same `quality_steps` sandwich steps. The smallest, largest
and 6 random archs (drawn once from the base seed, so every recipe and seed scores the same
archs) are scored by inherited accuracy after BN recalibration, against the same archs trained
alone for the same steps. The scratch baselines use the default recipe and are trained once per
seed, then shared by every recipe of that seed: the recipes differ only in the supernet.

Per recipe and seed: mean |gap|, mean signed gap (inherited - scratch), Kendall tau and the
inherited accuracies; `summary` gives each recipe's per-seed figures and their mean and spread
(max - min over seeds), the yardstick a recipe difference has to clear.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

N_RANDOM_ARCHS = 6


def quality(opts, steps: int, batch: int, recipes: list[str], seeds: int) -> dict[str, Any]:
    import numpy as np
    import torch

    import supernets
    from nasbench.data import load_dataset
    from supernets.train import TrainHParams

    device = torch.device(opts.device)
    seed_list = [opts.seed + i for i in range(seeds)]

    def new_net(seed: int):
        torch.manual_seed(seed)
        return supernets.create("mbv3", preset="tiny", num_classes=10, in_chans=1)

    space = new_net(opts.seed).space
    rng = np.random.default_rng([opts.seed, 2024])
    archs = [("smallest", space.smallest()), ("largest", space.largest())]
    archs += [(f"random{i}", space.sample(rng)) for i in range(N_RANDOM_ARCHS)]
    resolution = int(space.largest()["resolution"])

    scratch_runs, runs = [], []
    for seed in seed_list:
        bundle = load_dataset(name="mnist5k", resolution=resolution, channels=1, batch_size=batch,
                              seed=seed)
        per_epoch = len(bundle.train_loader)
        epochs = max(1, round(steps / per_epoch))
        shared = {"epochs": epochs, "max_steps_per_epoch": min(per_epoch, -(-steps // epochs)),
                  "lr": 0.1, "warmup_epochs": min(1.0, epochs / 4), "num_random": 2,
                  "bn_recal_batches": 10}
        recal = bundle.loader(bundle.train_dataset, shuffle=False)

        accuracy = partial(_accuracy, val_loader=bundle.val_loader, recal_loader=recal,
                           device=device)
        scratch = _scratch(archs, new_net, seed, bundle, TrainHParams.from_recipe("default", **shared),
                           accuracy, device)
        scratch_runs.append(scratch)
        for name in recipes:
            hp = TrainHParams.from_recipe(name, **shared)
            runs.append({"recipe": name, **_inherited(archs, new_net, seed, bundle, hp, accuracy,
                                                      device, scratch)})
    return {
        "dataset": "mnist5k", "supernet": "mbv3 tiny", "steps": runs[0]["steps"], "batch": batch,
        "recipes": recipes, "seeds": seed_list,
        "archs": [{"arch": label, "arch_id": space.arch_id(arch)} for label, arch in archs],
        "scratch": scratch_runs, "runs": runs, "summary": _summary(runs, recipes),
    }


def _accuracy(net, arch, hp, *, val_loader, recal_loader, device) -> float:
    from supernets.train import evaluate_arch

    return evaluate_arch(net, arch, val_loader, device=device, recal_loader=recal_loader,
                         recal_batches=hp.bn_recal_batches)


def _scratch(archs, new_net, seed, bundle, hp, accuracy, device) -> dict[str, Any]:
    """Each arch trained alone (default recipe) for the supernet's steps: the seed's baseline."""
    from supernets.training.standalone import train_standalone

    started = time.perf_counter()
    accs = []
    for _, arch in archs:
        alone = new_net(seed)
        train_standalone(alone, arch, bundle.train_loader, hp, device=device, seed=seed)
        accs.append(round(accuracy(alone, arch, hp), 4))
    return {"seed": seed, "scratch_acc": accs, "train_s": round(time.perf_counter() - started, 1)}


def _inherited(archs, new_net, seed, bundle, hp, accuracy, device, scratch) -> dict[str, Any]:
    """One recipe's supernet for `seed`, scored against that seed's scratch baseline."""
    import numpy as np
    import torch
    from scipy.stats import kendalltau

    from supernets.train import train_supernet
    from supernets.training.recipes import recipe

    started, cpu_started = time.perf_counter(), time.process_time()
    supernet = new_net(seed)
    trained = train_supernet(supernet, bundle.train_loader, None, hp, device=device,
                             arch_sampler_seed=seed)
    train_s, train_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    with torch.no_grad():  # a fingerprint of the trained weights: recipes that train alike match
        param_norm = float(torch.sqrt(sum(p.double().pow(2).sum() for p in supernet.parameters())))
    inherited = np.array([round(accuracy(supernet, arch, hp), 4) for _, arch in archs])
    alone = np.array(scratch["scratch_acc"])
    tau = kendalltau(inherited, alone).statistic
    return {
        "seed": seed, "steps": trained.global_step,
        "recipe_settings": {key: getattr(hp, key) for key in recipe(hp.recipe).defaults},
        "inherited_acc": inherited.tolist(),
        "mean_abs_gap": round(float(np.abs(inherited - alone).mean()), 4),
        "mean_signed_gap": round(float((inherited - alone).mean()), 4),
        "kendall_tau": None if np.isnan(tau) else round(float(tau), 3),
        "param_norm": round(param_norm, 6),
        "supernet_train_s": round(train_s, 1), "supernet_train_cpu_s": round(train_cpu_s, 1),
    }


def _summary(runs: list[dict[str, Any]], recipes: list[str]) -> dict[str, Any]:
    """Per recipe: the per-seed figures, their mean and their spread (max - min over seeds)."""
    out: dict[str, Any] = {}
    for name in recipes:
        mine = [r for r in runs if r["recipe"] == name]
        entry: dict[str, Any] = {}
        for key in ("mean_abs_gap", "mean_signed_gap", "kendall_tau"):
            values = [r[key] for r in mine if r[key] is not None]
            entry[key] = {"per_seed": [r[key] for r in mine],
                          "mean": round(sum(values) / len(values), 4) if values else None,
                          "spread": round(max(values) - min(values), 4) if values else None}
        out[name] = entry
    return out
