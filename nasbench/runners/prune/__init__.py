"""The prune runner: one pipeline for every pruner, on a torchvision/timm model (optionally from
a weights file) or a subnet exported from a search run (`model: {source: export, run, arch_id}`).

The run gets `masks.safetensors`, `sparsity.parquet` (per layer + global, by params and
FLOPs), `metrics.csv` (accuracy before pruning, after, and after fine-tuning),
`pruned.safetensors` (permanent weights) and `pruned.onnx` (verified with onnxruntime).
What a pruner needs besides plain options (calibration data, a train_fn, a directory for its
resumable state...) is declared by its registry entry and supplied here by name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from nasbench.config import DataConfig, RunConfig, StrictModel
from nasbench.config.sections import MAX_EPOCHS
from nasbench.errors import CheckpointError, ConfigError, RunError
from nasbench.runners.config import config_differences
from nasbench.runs import Run


class ModelSection(StrictModel):
    """A model by torchvision or timm name (`weights` loads a .safetensors/.pt state dict), or
    `source: export`: a subnet `nasbench export` wrote from search run `run` for `arch_id`."""

    source: Literal["torchvision", "timm", "export"] = "torchvision"
    name: str = "resnet18"
    weights: Path | None = None
    run: Path | None = None
    arch_id: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    train_epochs: int = Field(default=0, ge=0, le=MAX_EPOCHS)  # train before pruning (e.g. from scratch)

    @model_validator(mode="after")
    def _export_needs_run_and_arch(self) -> ModelSection:
        if self.source == "export" and (self.run is None or not self.arch_id):
            raise ValueError("model.source=export needs model.run and model.arch_id")
        return self


class PruneSection(StrictModel):
    """`kind: structured` removes channels (`pruners.shrink`; `sparsity` is then the fraction
    of channels removed), see `nasbench.runners.prune.structured`."""

    kind: Literal["unstructured", "structured"] = "unstructured"
    method: str = "global_magnitude"
    sparsity: float = Field(default=0.9, ge=0.0, lt=1.0)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class FinetuneSection(StrictModel):
    epochs: int = Field(default=1, ge=0, le=MAX_EPOCHS)
    lr: float = Field(default=1e-3, gt=0, le=100)


class PruneConfig(StrictModel):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelSection = ModelSection()
    prune: PruneSection = PruneSection()
    finetune: FinetuneSection = FinetuneSection()
    onnx: bool = True


def build_model(section: ModelSection, num_classes: int, in_chans: int):
    """A model by name with the dataset's classes (and channels, for timm)."""
    if section.source == "export":
        return _exported_subnet(section, num_classes)
    kwargs = {"num_classes": num_classes, **section.kwargs}
    try:
        if section.source == "timm":
            import timm

            model = timm.create_model(section.name, pretrained=False, in_chans=in_chans, **kwargs)
        else:
            import torchvision

            model = torchvision.models.get_model(section.name, weights=None, **kwargs)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ConfigError(f"model.name={section.name!r} ({section.source}): {exc}") from None
    if section.weights is not None:
        model.load_state_dict(_read_weights(section.weights))
    return model


def _exported_subnet(section: ModelSection, num_classes: int):
    from torch import nn

    from nasbench.runners.export import load_exported_subnet

    model = load_exported_subnet(section.run, section.arch_id)
    classes = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    if classes != num_classes:
        raise ConfigError(f"exported subnet {section.arch_id} predicts {classes} classes, the "
                          f"data has {num_classes}; use the search run's dataset")
    return model


def data_for(cfg: PruneConfig) -> DataConfig:
    """The data section, at an exported subnet's input resolution and channels unless set."""
    if cfg.model.source != "export":
        return cfg.data
    from nasbench.runners.export import exported

    _, chans, res, _ = exported(cfg.model.run, cfg.model.arch_id).input_shape
    return cfg.data.model_copy(update={"resolution": cfg.data.resolution or res,
                                       "channels": cfg.data.channels or chans})


def _read_weights(path: Path, key: str = "model.weights") -> dict:
    import warnings

    import safetensors.torch
    import torch

    from nasbench.tabular.safe_load import torch_load_problem

    if not path.exists():
        raise CheckpointError(f"{key}={str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(str(path))
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": a second line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or pickled-object files come with many error types
        raise CheckpointError(f"{key}={str(path)!r} is not a weights file: "
                              f"{torch_load_problem(path, exc)}") from None


def run(config: PruneConfig, *, resume: Path | None = None) -> Run:
    """Prune `config.model` with `config.prune.method`, fine-tune, report, export to ONNX.
    `resume` continues a killed lottery run in that directory from its last finished level
    (other methods have no state to continue: they are refused, as is a changed config)."""
    import safetensors.torch

    import pruners
    from nasbench.classify import adam_train_fn, evaluate, shuffled_batches
    from nasbench.data import load_dataset
    from nasbench.onnx_export import export_onnx
    from nasbench.progress import echo
    from nasbench.runs import start_run
    from nasbench_core.atomic import atomic_path
    from nasbench_core.seeding import seed_everything, seeded

    cfg = config
    if cfg.prune.kind == "structured":
        from nasbench.runners.prune.structured import run_structured

        return run_structured(cfg, resume=resume)
    options = pruners.validate_prune_options(cfg.prune.method, cfg.prune.kwargs, where="prune.kwargs")
    if resume is not None:
        _check_resumable(cfg, resume)
    seed_everything(cfg.run.seed)
    bundle = load_dataset(data_for(cfg), seed=cfg.run.seed)
    model = build_model(cfg.model, bundle.num_classes, bundle.in_chans)
    pruners.check_prune(model, cfg.prune.method, cfg.prune.sparsity, **options)  # before the run dir
    per_epoch = len(bundle.train_loader)
    train_fn = adam_train_fn(shuffled_batches(bundle.train_dataset, bundle.batch_size, cfg.run.seed,
                                              bundle.num_workers), per_epoch, cfg.finetune.lr)
    example = next(iter(bundle.val_loader))[0][:1]

    with start_run("prune", cfg.model_dump(mode="json"), cfg.run.seed, root=cfg.run.root,
                   name=cfg.run.name, resume=resume, check_resume=_check_lottery_files) as run:
        done = run.metrics
        dense = done[done["stage"] == "dense"] if "stage" in done else done
        logged = set(done["stage"]) if "stage" in done else set()

        def log_once(row: dict[str, Any]) -> None:  # a resume does not repeat a stage's row
            if row["stage"] not in logged:
                run.log_metrics(row)

        continuing = resume is not None and pruners.lottery.resumable(run.path / "lottery")
        if continuing:  # the lottery's own state holds the model from here on
            before = float(dense["val_acc"].iloc[0])
            _log_unlogged_levels(run, model, bundle.val_loader, logged)
        else:
            if cfg.model.train_epochs:
                echo(f"training {cfg.model.name} for {cfg.model.train_epochs} epochs before pruning")
                with seeded(cfg.run.seed):
                    train_fn(model, pruners.Span(0, "it"), pruners.Span(cfg.model.train_epochs, "ep"),
                             lambda it, ep: None)
            before = evaluate(model, bundle.val_loader)
            log_once({"stage": "dense", "val_acc": before, "sparsity": 0.0})
        supplied = _needs(cfg, run, bundle, train_fn, example)
        needs = {name: supplied[name] for name in pruners.pruner_entry(cfg.prune.method).meta["needs"]}
        masks = pruners.prune(model, cfg.prune.method, cfg.prune.sparsity, **options, **needs)
        pruned = sum(int((~m).sum()) for m in masks.values())
        sparsity = pruned / sum(m.numel() for m in masks.values())
        after = evaluate(model, bundle.val_loader)
        log_once({"stage": "pruned", "val_acc": after, "sparsity": sparsity})
        tuned = after
        if cfg.finetune.epochs:
            keep = pruners.MaskKeeper(model)
            with seeded(cfg.run.seed + 1):
                train_fn(model, pruners.Span(0, "it"), pruners.Span(cfg.finetune.epochs, "ep"),
                         lambda it, ep: keep())
            tuned = evaluate(model, bundle.val_loader)
            log_once({"stage": "finetuned", "val_acc": tuned, "sparsity": sparsity})
        pruners.save_masks(run.path / "masks.safetensors", pruners.get_masks(model))
        report = pruners.sparsity_report(model, example)
        run.write_table("sparsity", report.assign(shape=report["shape"].astype(str)))
        pruners.make_permanent(model)
        with atomic_path(run.path / "pruned.safetensors") as tmp:
            safetensors.torch.save_file(
                {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        summary = {"method": cfg.prune.method, "sparsity": sparsity, "pruned": pruned,
                   "acc_dense": before, "acc_pruned": after, "acc_finetuned": tuned,
                   "flop_sparsity": float(report["flop_sparsity"].iloc[-1]),
                   **_control_accuracies(run)}
        if cfg.onnx:
            result = export_onnx(model, tuple(example.shape[1:]), run.path / "pruned.onnx")
            summary["onnx_max_abs_diff"] = result.max_abs_diff
        run.update_manifest(summary=summary)
        run.write_json("summary.json", summary)
        echo(f"{cfg.prune.method} {sparsity:.1%}: acc {before:.3f} -> {after:.3f} -> "
             f"{tuned:.3f} (fine-tuned); FLOPs -{summary['flop_sparsity']:.1%} (theoretical) "
             f"-> {run.path}")
        return run


def _check_resumable(cfg: PruneConfig, path: Path) -> None:
    """Refuse, before anything runs, a resume that could not continue the run as it was: a
    method without per-level state, or a config that differs from the stored one."""
    from nasbench.runs import load_run

    stored_run = load_run(path)
    if stored_run.manifest.get("command") != "prune":
        raise ConfigError(f"cannot resume {path} with `prune`: it is a "
                          f"`{stored_run.manifest.get('command')}` run")
    if cfg.prune.method != "lottery":
        raise ConfigError(f"prune --resume continues lottery runs (they keep per-level state); "
                          f"method {cfg.prune.method!r} has none: start a new run")
    stored = stored_run.config.model_dump(mode="json")
    wanted = cfg.model_dump(mode="json")
    for key, old, new in config_differences(stored, wanted):
        raise ConfigError(f"cannot resume {path}: {key} was {old!r}, now {new!r}; a resume keeps "
                          "the run's settings (start a new run to change them)")


def _check_lottery_files(run: Run) -> None:
    """What a lottery resume reads, checked before the run is reopened: metrics.csv (with the
    dense row a resume past level 0 takes the dense accuracy from), `lottery/state.json` and
    the masks and weights it names."""
    import pruners

    metrics = run.metrics
    if not pruners.lottery.resumable(run.path / "lottery"):
        return
    pruners.lottery.check_resumable(run.path / "lottery")
    if "stage" not in metrics or not (metrics["stage"] == "dense").any():
        raise RunError(f"{run.path / 'metrics.csv'} lacks the dense row the lottery's levels "
                       "follow (cut short or edited by hand?)")


def _control_accuracies(run: Run) -> dict[str, float]:
    """`acc_control_<kind>` for each lottery control the run trained (from metrics.csv)."""
    metrics = run.metrics
    if "stage" not in metrics:
        return {}
    rows = metrics[metrics["stage"].astype(str).str.startswith("control_")]
    return {f"acc_{stage}": float(acc) for stage, acc in zip(rows["stage"], rows["val_acc"], strict=True)}


def _log_unlogged_levels(run: Run, model: Any, val_loader: Any, logged: set[str]) -> None:
    """Metrics rows for the levels and controls `lottery/state.json` records but metrics.csv
    lacks. The lottery saves a level's weights and state before its row is logged, so a kill in
    between loses the row, and the resume (which skips recorded levels) never logs it. The row
    is rebuilt by evaluating the level's saved masks and weights, as the run did."""
    import copy
    import json

    import safetensors.torch

    import pruners
    from nasbench.classify import evaluate

    out = run.path / "lottery"
    try:
        state = json.loads((out / "state.json").read_text())
        entries = [*state["levels"], *state["controls"]]
    except (OSError, ValueError, KeyError, TypeError):
        return  # a damaged state file: the lottery's own resume reports it
    for entry in entries:
        name = f"control_{entry['control']}" if "control" in entry else f"level_{entry['level']}"
        if name in logged:
            continue
        net = copy.deepcopy(model)
        if (out / name / "masks.safetensors").exists():  # level 0 is dense
            pruners.apply_masks(net, pruners.load_masks(out / name / "masks.safetensors"))
        pruners.lottery.load_model_state(net, safetensors.torch.load_file(
            str(out / name / "weights.safetensors")))
        run.log_metrics({"stage": name, "val_acc": evaluate(net, val_loader)})
        logged.add(name)


def _needs(cfg: PruneConfig, run: Run, bundle: Any, train_fn: Callable, example: Any) -> dict[str, Any]:
    """Everything a pruner entry may declare it needs, keyed by the names of `pruners.NEEDS`."""
    import pruners
    from nasbench.classify import evaluate

    done = [0]  # gradual's fine-tunes continue one schedule (and data order) from step to step

    def finetune(model: Any, span: Any, keep_masks: Callable[[], None]) -> None:
        start, done[0] = done[0], done[0] + span.steps(len(bundle.train_loader))
        train_fn(model, pruners.Span(start, "it"), pruners.Span(done[0], "it"),
                 lambda it, ep: keep_masks())

    def on_level(level: int, model: Any, control: str | None = None) -> None:
        stage = f"level_{level}" if control is None else f"control_{control}"
        run.log_metrics({"stage": stage, "val_acc": evaluate(model, bundle.val_loader)})

    from nasbench.progress import Steps

    return {"data": bundle.train_loader, "train_fn": train_fn, "finetune": finetune,
            "out_dir": str(run.path / "lottery"), "example_input": example, "on_level": on_level,
            "on_progress": Steps()}
