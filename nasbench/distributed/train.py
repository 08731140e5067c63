"""Supernet training on Ray Train: `supernets.train.train_supernet` inside a `TorchTrainer`.

Each worker builds the same supernet and trains its shard of the data under DDP (gloo on CPU,
nccl on GPU). Archs come from (seed, global step), so all workers train the same sandwich.
Rank 0 checkpoints every epoch; the checkpoint goes through `ray.train.report` into the run's
`ray/` storage, which is where a restarted worker group (`FailureConfig.max_failures`) or a
resumed run (same storage path and name) picks it up. When `fit` returns, the latest
checkpoint is copied into `<run>/checkpoints/` and the epoch rows into `metrics.csv`, so the
run looks like an in-process one.

`data.batch_size` is per worker (Ray's convention): 2 workers x 32 = global batch 64.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasbench.distributed.ray_private import (
    LOOPBACK,
    keep_ray_on_loopback,
    local_ray_auth,
    use_local_cluster_token,
)
from nasbench_core.errors import UserError

EpochHook = Callable[[int, int, bool], None]
STORAGE_DIR = "ray"
TRAIN_NAME = "train"
CHECKPOINT_SUFFIXES = (".safetensors", ".optim.safetensors", ".json")


@dataclass(frozen=True)
class RayScaling:
    """How many workers, on what: maps onto `ScalingConfig` and `FailureConfig`."""

    num_workers: int = 2
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = field(default_factory=lambda: {"CPU": 1})
    max_failures: int = 0

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise UserError(f"ray.num_workers: expected an integer >= 1, got {self.num_workers}")
        if self.max_failures < -1:
            raise UserError(f"ray.max_failures: expected -1 (forever) or >= 0, got {self.max_failures}")


@dataclass
class RayTrainOutcome:
    """What `train_on_ray` produced: every epoch row, the run-local checkpoint, and how many
    epochs an earlier attempt had already checkpointed (0 for a fresh run)."""

    history: list[dict[str, Any]]
    checkpoint: Path
    epochs_completed: int
    resumed_epochs: int


def train_on_ray(
    run_path: Path,
    *,
    build_config: dict[str, Any],
    data: dict[str, Any],
    hparams: Any,
    seed: int,
    scaling: RayScaling,
    log_metrics: Callable[[dict[str, Any]], None] | None = None,
    address: str | None = None,
    after_epoch: EpochHook | None = None,
    initial_weights: Path | None = None,
    teacher: Any = None,
) -> RayTrainOutcome:
    """Train the supernet `supernets.create(**build_config)` with Ray Train; see module doc.

    `data` is a `DataConfig` as a dict; `hparams` a `TrainHParams`. `log_metrics(row)` gets
    each epoch row this call trained (not rows restored from an earlier attempt).
    `address`: a Ray cluster (GCS `host:port`); None picks one as `ray_session` says.
    `after_epoch(epoch, world_rank, resumed)` runs in every worker after each report
    (monitoring, fault injection in tests). `initial_weights` (a safetensors file on storage
    every worker reads, e.g. the run dir) starts training from imported weights instead of a
    fresh init; a restored checkpoint still wins. `teacher` (a frozen `nn.Module`, see
    `train_supernet`) is shipped to every worker with the loop config.
    """
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
        TrainingFailedError,
    )
    from ray.train.torch import TorchConfig, TorchTrainer

    run_path = Path(run_path).resolve()
    storage = run_path / STORAGE_DIR
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "build_config": build_config, "data": data, "hparams": hparams.to_dict(),
            "seed": seed, "after_epoch": after_epoch,
            "initial_weights": None if initial_weights is None else str(initial_weights),
            "teacher": teacher,
        },
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
            resources_per_worker=dict(scaling.resources_per_worker),
        ),
        run_config=RunConfig(
            name=TRAIN_NAME, storage_path=str(storage),
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=hparams.keep_checkpoints),
        ),
    )
    with ray_session(address):
        resumed_epochs = _stored_epochs(storage / TRAIN_NAME)
        try:
            result = trainer.fit()
        except TrainingFailedError as exc:
            user_error = user_error_from(exc)
            if user_error is None:
                raise
            raise user_error from None
    if result.checkpoint is None:
        raise UserError(f"Ray training in {run_path} finished without a checkpoint")
    with result.checkpoint.as_directory() as ckpt_dir:
        stem = _copy_latest(Path(ckpt_dir), run_path / "checkpoints")
    from supernets.checkpoint import prune_checkpoints, read_checkpoint_meta

    prune_checkpoints(run_path / "checkpoints", hparams.keep_checkpoints)
    history = list(read_checkpoint_meta(stem)["history"])
    if log_metrics is not None:
        for row in history:
            if row["epoch"] > resumed_epochs:
                log_metrics(row)
    return RayTrainOutcome(history, stem, len(history), resumed_epochs)


# -- driver helpers --------------------------------------------------------------------------
def user_error_from(exc: BaseException) -> UserError | None:
    """The user mistake behind a failed Ray Train run (bad resume, divergence), if any.

    A worker's `UserError` reaches the driver wrapped in Ray's error types; the CLI should
    still print it as one line instead of a traceback.
    """
    failures = getattr(exc, "worker_failures", None) or {}
    for rank, failure in sorted(failures.items()):
        cause = getattr(failure, "cause", None) or failure
        if isinstance(cause, UserError):
            return type(cause)(f"Ray worker {rank}: {str(cause).strip().splitlines()[0]}")
    return None


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Use the Ray this process is connected to, or connect (and later disconnect) ourselves.

    Without `address`: inside a Ray job its cluster ($RAY_ADDRESS), else the cluster from
    `nasbench cluster up` if one runs, else a Ray started in this process (the default).
    A local Ray stays on 127.0.0.1: Ray would otherwise swap loopback for this host's
    outward-facing IP. A `cluster up` head needs its token, so we point Ray at its token file.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        from nasbench.distributed.cluster import nasbench_home, read_state

        state = read_state(nasbench_home())
        address = state.address if state is not None else None
    kwargs: dict[str, Any] = {}
    target = address or os.environ.get("RAY_ADDRESS")  # set inside a Ray job
    if target is None or _is_loopback(target):
        kwargs.update(keep_ray_on_loopback())
    with contextlib.ExitStack() as stack:
        if address is not None:
            use_local_cluster_token(address)
        elif target is None:  # a Ray started here: auth as the environment says now
            stack.enter_context(local_ray_auth())
        ray.init(address=address, **kwargs)
        try:
            yield
        finally:
            ray.shutdown()


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0]
    return host in {LOOPBACK, "localhost", "::1", "[::1]"}


def _stored_epochs(experiment_dir: Path) -> int:
    """Epochs already checkpointed in Ray storage by an earlier attempt (0 for a new run)."""
    from supernets.checkpoint import latest_checkpoint, read_checkpoint_meta

    best = 0
    for ckpt in experiment_dir.glob("checkpoint_*") if experiment_dir.is_dir() else []:
        stem = latest_checkpoint(ckpt)
        if stem is not None:
            best = max(best, int(read_checkpoint_meta(stem)["epoch"]))
    return best


def _copy_latest(src_dir: Path, dst_dir: Path) -> Path:
    """Copy the newest epoch checkpoint (all its files) from `src_dir`; return its new stem."""
    from supernets.checkpoint import latest_checkpoint

    stem = latest_checkpoint(src_dir)
    if stem is None:
        raise UserError(f"no epoch checkpoint in {src_dir}")
    dst_dir.mkdir(parents=True, exist_ok=True)
    for suffix in CHECKPOINT_SUFFIXES:
        source = stem.with_name(stem.name + suffix)
        if source.exists():
            shutil.copy2(source, dst_dir / source.name)
    return dst_dir / stem.name


# -- worker side -----------------------------------------------------------------------------
class _EpochLoader:
    """A sharded loader that reshuffles each pass (`sampler.set_epoch`), as DDP expects."""

    def __init__(self, loader: Any, sampler: Any, first_epoch: int):
        self.loader, self.sampler, self.epoch = loader, sampler, first_epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)


def sharded_loader(
    dataset: Any, batch_size: int, world_size: int, rank: int, seed: int, first_epoch: int = 0,
    num_workers: int = 0,
) -> _EpochLoader:
    """Rank `rank`'s shard: one shared seeded permutation per epoch, strided across ranks.

    Step k of all ranks together covers exactly step k of a single worker with
    `world_size * batch_size`, which is what makes DDP match single-process training.
    """
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
    )
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    return _EpochLoader(loader, sampler, first_epoch)


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: restore, shard, train, report a checkpoint per epoch."""
    import ray.train
    import ray.train.torch

    import supernets
    from nasbench.config.sections import DataConfig
    from nasbench.data import load_dataset
    from nasbench_core.seeding import seed_everything
    from supernets.checkpoint import read_checkpoint_meta
    from supernets.train import TrainHParams, train_supernet

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed = int(config["seed"])
    hparams = TrainHParams.from_dict(config["hparams"])
    seed_everything(seed)
    bundle = load_dataset(DataConfig(**config["data"]), seed=seed)
    net = supernets.create(**config["build_config"])
    if config.get("initial_weights"):
        from safetensors.torch import load_file

        net.load_state_dict(load_file(config["initial_weights"]))

    local_dir = Path(tempfile.mkdtemp(prefix=f"nasbench-train-r{rank}-"))
    restored = ray.train.get_checkpoint()
    first_epoch = 0
    if restored is not None:
        with restored.as_directory() as ckpt_dir:
            stem = _copy_latest(Path(ckpt_dir), local_dir)
        first_epoch = int(read_checkpoint_meta(stem)["epoch"])

    loader = sharded_loader(
        bundle.train_dataset, bundle.batch_size, world, rank, seed, first_epoch,
        bundle.num_workers,
    )
    after_epoch = config.get("after_epoch")

    def report(row: dict[str, Any]) -> None:
        """Rank 0 attaches the epoch checkpoint; every rank must call report (it is a barrier)."""
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        if rank == 0:
            with tempfile.TemporaryDirectory(prefix="nasbench-report-") as staging:
                stem = _copy_latest(local_dir, Path(staging))
                ray.train.report(
                    metrics, checkpoint=ray.train.Checkpoint.from_directory(staging),
                    checkpoint_dir_name=f"checkpoint_{stem.name}",
                )
        else:
            ray.train.report(metrics)
        if after_epoch is not None:
            after_epoch(int(row["epoch"]), rank, restored is not None)

    try:
        train_supernet(
            net,
            loader,
            bundle.val_loader,
            hparams,
            device=ray.train.torch.get_device(),
            checkpoint_dir=local_dir,
            resume=restored is not None,
            on_metrics=report,
            arch_sampler_seed=seed,
            # Smaller subnets leave weights unused in a step; DDP must not wait for them.
            ddp_wrap=lambda module: ray.train.torch.prepare_model(
                module, move_to_device=False,
                parallel_strategy_kwargs={"find_unused_parameters": True},
            ),
            # A fixed, unshuffled slice of the training set: same BN statistics every epoch.
            recal_loader=bundle.loader(bundle.train_dataset, shuffle=False),
            teacher=config.get("teacher"),
        )
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)
