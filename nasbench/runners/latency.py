"""The latency runners: measure a latency table on this machine, fit and score predictors.

`measure` samples subnets stratified by MACs, times the extracted subnets in interleaved rounds
(noisy ones re-timed) and writes a run with `latency.parquet` (median and IQR per subnet), the
device facts and the machine state (load average, CPU clock) in its manifest and the table's
metadata. `fit` fits a latency predictor (regressor chosen by K-fold CV) on part of the table,
reports held-out RMSE, MAPE, ±10% accuracy and Kendall tau next to the MACs proxy's tau, and
saves the predictor (refitted on every row) as `latency_predictor.{json,parquet}` — unless its
numbers cannot be trusted (`fit_warnings`), then only with `force`. `evaluate` scores a saved
predictor on another latency table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from nasbench.config import RunConfig, StrictModel
from nasbench.config.sections import MAX_BATCH
from nasbench.errors import RunError, UserError
from nasbench.runners.config import config_differences
from nasbench.runs import Run, RunLock

if TYPE_CHECKING:  # both import torch: loaded when a measurement runs, not with the CLI
    from search.latency import LatencySettings
    from supernets.space import Arch, SearchSpace

PREDICTOR = "latency_predictor"


class SupernetSection(StrictModel):
    """The supernet to time: a family and preset, or the supernet of a `nasbench train` run."""

    family: str = "mbv3"
    preset: str = "tiny"
    width_mult: float = Field(default=1.0, gt=0)
    num_classes: int = Field(default=10, ge=1, le=100_000)
    in_chans: int = Field(default=3, ge=1, le=64)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    from_run: Path | None = None


class MeasureSection(StrictModel):
    """How many subnets and how to time them."""

    n: int = Field(default=100, ge=2, le=100_000)
    """Subnets to time; the bound (with `pool_factor`'s) keeps the sampled pool under 1e6."""
    backend: Literal["torch", "onnxruntime"] = "torch"
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """auto, cpu, cuda or cuda:N (the GPU to time on)."""
    batch: int = Field(default=1, ge=1, le=MAX_BATCH)
    threads: int | None = Field(default=None, ge=1, le=1024)
    warmup: int = Field(default=10, ge=0, le=100_000)
    repeats: int = Field(default=50, ge=1, le=100_000)
    compile: bool = False
    clock: Literal["wall", "cpu"] = "wall"
    extract: bool = True
    rounds: int = Field(default=5, ge=1, le=1000)
    """Interleaved rounds: `repeats` split over this many visits per subnet, shuffled order."""
    max_rel_iqr: float = Field(default=0.1, gt=0)
    """A subnet whose IQR/median is above this is re-timed ..."""
    max_retimes: int = Field(default=2, ge=0, le=100)
    """... at most this many times; the table's `latency_ms_noisy` says if it stayed noisy."""
    resolution: int | None = Field(default=None, ge=4, le=1024)
    pool_factor: int = Field(default=3, ge=1, le=10)
    bins: int = Field(default=10, ge=1, le=1000)


class LatencyMeasureConfig(StrictModel):
    run: RunConfig = RunConfig()
    supernet: SupernetSection = SupernetSection()
    latency: MeasureSection = MeasureSection()


def _build_supernet(section: SupernetSection):
    import supernets

    if section.from_run is not None:
        from nasbench.runs import load_run

        run = load_run(section.from_run)
        build = run.manifest.get("supernet")
        if not isinstance(build, dict) or "name" not in build:
            raise RunError(f"run {run.path} records no supernet (is it a `nasbench train` run?)")
        build = dict(build)
        return supernets.create(build.pop("name"), **build)
    return supernets.create(
        section.family, preset=section.preset, width_mult=section.width_mult,
        num_classes=section.num_classes, in_chans=section.in_chans, **section.kwargs,
    )


def _input_shape(net, cfg: MeasureSection) -> tuple[int, ...] | None:
    if cfg.resolution is None:
        return None
    chans = int(net.build_config().get("in_chans", 3))
    return (chans, cfg.resolution, cfg.resolution)


ARCHS = "latency_archs.json"
"""The sampled subnets of a measure run, recorded before any is timed: a resume times these."""


def measure(cfg: LatencyMeasureConfig, *, resume: Path | None = None) -> Run:
    """Sample `cfg.latency.n` subnets stratified by MACs, time each, store the table.

    Every visit is journaled as it finishes (`search.latency.journal`), so `resume` (the run
    directory of a killed measurement with the same config) times only what the journal lacks,
    in the order the uninterrupted run would have, and writes the table it would have written.
    """
    import json
    from dataclasses import asdict

    from nasbench.progress import echo
    from nasbench.runs import start_run
    from nasbench_core.seeding import seed_everything
    from search.costs import count_macs, subnet_input_shape
    from search.latency import LatencySettings, measure_archs, stratified_sample
    from search.latency.journal import VISITS, VisitJournal

    m = cfg.latency
    settings = LatencySettings(
        backend=m.backend, device=m.device, batch=m.batch, threads=m.threads, warmup=m.warmup,
        repeats=m.repeats, compile=m.compile, clock=m.clock, rounds=m.rounds,
        max_rel_iqr=m.max_rel_iqr, max_retimes=m.max_retimes,
    ).resolve()
    seed_everything(cfg.run.seed)
    net = _build_supernet(cfg.supernet).eval()
    shape = _input_shape(net, m)
    info = settings.device_info()
    setup = {"device": info.to_dict(), "settings": asdict(settings), "supernet": net.build_config(),
             "space": net.space.to_dict(), "space_fingerprint": net.space.fingerprint()}
    if resume is not None:
        _check_resumable(Path(resume), cfg, setup, settings, net.space)

    def macs_of(arch: dict) -> float:
        return float(count_macs(net.extract(arch), subnet_input_shape(net, arch, shape)))

    with start_run("latency", cfg.model_dump(mode="json"), cfg.run.seed, root=cfg.run.root,
                   name=cfg.run.name, resume=resume) as run:
        run.update_manifest(**setup)
        echo(f"device {info.key}")
        archs = _recorded_archs(run, net.space, m.n)
        if archs is None:
            archs = stratified_sample(net.space, macs_of, m.n, cfg.run.seed,
                                      pool_factor=m.pool_factor, bins=m.bins)
            run.write_json(ARCHS, {"archs": [net.space.canonical_json(a) for a in archs]})
        with VisitJournal(run.path / VISITS, [net.space.arch_id(a) for a in archs]) as journal:
            done = journal.load(settings)
            journal.cut_torn_tail()
            if resume is not None:
                torn = "; dropped its torn last line" if journal.dropped_tail else ""
                echo(f"resuming: {len(done)} visits journaled in {VISITS}{torn}")
            table = measure_archs(net, archs, settings, extract=m.extract, input_shape=shape,
                                  seed=cfg.run.seed, on_progress=_progress_lines(),
                                  done=done, on_visit=journal.record)
        state = table.attrs["machine_state"]
        run.write_table("latency", table, metadata={
            "device": info.key, "space_fingerprint": net.space.fingerprint(),
            "machine_state": json.dumps(state),
        })
        noisy = int(table["latency_ms_noisy"].sum())
        run.update_manifest(latency_rows=len(table), machine_state=state, latency_noisy_rows=noisy,
                            latency_visits_resumed=len(done))
        echo(f"{len(table)} subnets: latency {table['latency_ms'].min():.3f}-"
             f"{table['latency_ms'].max():.3f} ms (median), MACs {int(table['macs'].min()):,}-"
             f"{int(table['macs'].max()):,} -> {run.path / 'latency.parquet'}")
        echo(f"median IQR/median {(table['latency_ms_iqr'] / table['latency_ms']).median():.3f}; "
             f"{int((table['latency_ms_retimed'] > 0).sum())} re-timed, {noisy} still noisy "
             f"(IQR/median > {m.max_rel_iqr}); load average {_load(state)}")
        return run


def _check_resumable(path: Path, cfg: LatencyMeasureConfig, setup: dict[str, Any],
                     settings: LatencySettings, space: SearchSpace) -> None:
    """Refuse, before anything is written, a resume that would mix timings of two measurements:
    another command's run, a completed one, any change to the stored config, to the resolved
    timing settings (`threads` and `device` default to what the machine has), the device or the
    supernet, or a damaged record of the archs or journal. Each refusal is one line. (The run
    re-reads both under its lock: another process may have appended since.)"""
    import json

    from nasbench.runs import load_run
    from search.latency.journal import VISITS, VisitJournal

    run = load_run(path)
    if run.manifest.get("command") != "latency":
        raise RunError(f"cannot resume {run.path} with `latency measure`: it is a "
                       f"`{run.manifest.get('command')}` run")
    if run.status == "completed":
        raise RunError(f"run {run.path} already completed; nothing to resume")
    stored = {**run.manifest, "config": _settings_of(run.config.model_dump(mode="json"))}
    wanted = json.loads(json.dumps(
        {"config": _settings_of(cfg.model_dump(mode="json")), **setup}, default=str))
    sections = [name for name in ("config", "settings", "supernet", "space", "space_fingerprint",
                                  "device") if name in stored]  # a setting before what it implies
    changed = [d for name in sections for d in config_differences(stored[name], wanted[name], f"{name}.")]
    if changed:
        key, old, new = changed[0]
        raise RunError(f"cannot resume {run.path}: {key.removeprefix('config.')} was {_short(old)}, "
                       f"now {_short(new)}; a resume keeps the run's settings (start a new run to "
                       "change them)")
    archs = _recorded_archs(run, space, cfg.latency.n)
    if archs is not None:
        VisitJournal(run.path / VISITS, [space.arch_id(a) for a in archs]).load(settings)


def _settings_of(config: dict[str, Any]) -> dict[str, Any]:
    """A config without `run.root` and `run.name`: the run resumed is the directory given,
    wherever it has moved; everything else decides what is timed and how."""
    run = {k: v for k, v in config.get("run", {}).items() if k not in ("root", "name")}
    return {**config, "run": run}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _recorded_archs(run: Run, space: SearchSpace, n: int) -> list[Arch] | None:
    """The subnets `ARCHS` records (None before a first measurement recorded them), checked:
    `n` distinct archs of `space`; anything else is a one-line RunError naming the file."""
    from nasbench_core.errors import ArchError
    from nasbench_core.readers import read_json

    target = run.path / ARCHS
    if not target.exists():
        return None
    texts = read_json(target, RunError, required=("archs",))["archs"]
    if not isinstance(texts, list) or len(texts) != n or not all(isinstance(t, str) for t in texts):
        raise RunError(f"{target}: expected a list of {n} archs (truncated or edited by hand?)")
    try:
        archs = [space.parse(text) for text in texts]
    except ArchError as exc:
        raise RunError(f"{target}: {exc}") from None
    if len({space.arch_id(a) for a in archs}) != n:
        raise RunError(f"{target}: an arch is listed twice (edited by hand?)")
    return archs


def _load(state: dict) -> str:
    """The 1-minute load average at the start and end of a measurement, for one line of output."""
    values = [state[k].get("loadavg_1m") for k in ("start", "end")]
    return "unknown" if None in values else f"{values[0]:.2f} -> {values[1]:.2f}"


def _progress_lines():
    """A progress callback printing one line per tenth of the timed visits."""
    from nasbench.progress import echo

    def report(done: int, total: int) -> None:
        if done == total or done * 10 // total != (done - 1) * 10 // total:
            echo(f"timed {done}/{total}")

    return report


def _latency_run(path: Run | str | os.PathLike):
    from nasbench.runs import load_run
    from supernets.space import SearchSpace

    run = path if isinstance(path, Run) else load_run(path)
    table = run.read_table("latency")
    if table.empty or "space" not in run.manifest:
        raise RunError(f"run {run.path} has no latency table: make one with `nasbench latency measure`")
    return run, table, SearchSpace(run.manifest["space"])


MIN_HOLDOUT_ROWS = 20
"""Below this many held-out rows a Kendall tau or MAPE says little (2 rows give tau = +-1)."""
MAX_MAPE = 25.0
"""A predictor whose held-out or cross-validated MAPE is above this (percent) is not trusted."""


class FitRefused(UserError):
    """`latency fit` found its predictor untrustworthy and saved nothing (pass force to save)."""


def fit_warnings(n_test: int, cv_mape: float, holdout: dict[str, float]) -> list[str]:
    """What a user must know before trusting a fitted predictor: too few held-out rows, a MAPE
    over `MAX_MAPE` (held out or cross-validated), or a ranking worse than MACs alone gives on
    the same held-out rows (then the predictor adds nothing but noise). Each is `reason: advice`,
    the reason free of colons and semicolons (the refusal joins the reasons into one line)."""
    out = []
    if n_test < MIN_HOLDOUT_ROWS:
        out.append(f"held-out metrics come from {n_test} rows (fewer than {MIN_HOLDOUT_ROWS}) and "
                   "say little: measure more subnets or raise --holdout")
    mape = max(cv_mape, float(holdout["mape"]))
    if mape > MAX_MAPE:
        out.append(f"MAPE is {mape:.0f}% (held-out {holdout['mape']:.0f}%, cross-validated "
                   f"{cv_mape:.0f}%, over {MAX_MAPE:.0f}%): the timings are too noisy or too few "
                   "for this predictor; re-measure on a quiet machine (more repeats/rounds)")
    tau, macs_tau = holdout["kendall_tau"], holdout.get("macs_kendall_tau")
    if macs_tau is not None and tau < macs_tau:
        out.append(f"held-out Kendall tau {tau:.3f} is below the MACs proxy's {macs_tau:.3f} on "
                   "the same rows: ranking by MACs would be better; try --use-macs or more subnets")
    return out


def trusted_or_refused(what: str, n_test: int, cv_mape: float, holdout: dict[str, float],
                       force: bool) -> list[str]:
    """`fit_warnings`, each printed; unless `force`, any of them refuses the fit in one line
    (nothing is written)."""
    from nasbench.progress import echo

    warnings = fit_warnings(n_test, cv_mape, holdout)
    for warning in warnings:
        echo(f"warning: {warning}")
    if warnings and not force:
        reasons = "; ".join(w.split(": ", 1)[0] for w in warnings)
        raise FitRefused(f"{what} not saved: {reasons}; pass --force (force=True) to save it anyway")
    return warnings


def format_metrics(m: dict[str, float]) -> str:
    """One line: the predictor's held-out numbers with the MACs proxy's tau beside them."""
    line = (f"n={m['n']}  Kendall tau {m['kendall_tau']:.3f}")
    if "macs_kendall_tau" in m:
        line += f" (MACs proxy tau {m['macs_kendall_tau']:.3f})"
    return line + f"  MAPE {m['mape']:.2f}%  within ±10% {100 * m['acc10']:.1f}%  RMSE {m['rmse']:.4f} ms"


@dataclass(frozen=True)
class LatencyFit:
    """What `fit` found: the chosen regressor, its held-out metrics and where it was saved."""

    run: Run
    predictor: Path
    model: str
    params: dict[str, Any]
    cv_mape: float
    holdout: dict[str, float]
    n_train: int
    candidates: list[dict[str, Any]] = field(repr=False)
    warnings: list[str] = field(default_factory=list)
    forced: bool = False


def fit(
    run: Run | str | os.PathLike,
    *,
    holdout: float = 0.25,
    regressors: str | list[str] = "ridge,svr,gbr,mlp",
    encoding: str = "features",
    use_macs: bool = False,
    folds: int = 5,
    seed: int = 0,
    force: bool = False,
) -> LatencyFit:
    """Fit a latency predictor on a measure run's table; print held-out metrics; save it.

    When `fit_warnings` finds a reason not to trust it, nothing is written and `FitRefused`
    says why, unless `force`: then it is saved with the warnings recorded.
    """
    import numpy as np

    from nasbench.progress import echo
    from search.latency import LatencyPredictor

    if not 0 < holdout < 1:
        raise UserError(f"--holdout must be in (0, 1), got {holdout}")
    if folds < 2:
        raise UserError(f"--folds must be at least 2, got {folds}")
    opened, table, space = _latency_run(run)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(table))
    n_test = max(1, round(holdout * len(table)))
    test, train = table.iloc[order[:n_test]], table.iloc[order[n_test:]]
    if len(train) < folds:
        raise UserError(f"only {len(train)} training rows for {folds}-fold CV: measure more subnets")
    names = regressors.split(",") if isinstance(regressors, str) else list(regressors)
    candidates = [c.strip() for c in names if c.strip()]
    predictor = LatencyPredictor(space, encoding=encoding, use_macs=use_macs,
                                 candidates=candidates, folds=folds, seed=seed).fit(train)
    metrics = predictor.evaluate(test)
    sel = predictor.selection
    echo(f"chosen by {folds}-fold CV: {sel.name} {sel.params} (CV MAPE {-100 * sel.cv_score:.2f}%)")
    echo(f"held-out {format_metrics(metrics)}")
    warnings = trusted_or_refused("latency predictor", len(test), -100 * sel.cv_score, metrics, force)
    scores = sel.scores.to_dict("records")
    with RunLock(opened.path):  # one writer per run: a measurement may still be appending
        path = predictor.refit(table).save(opened.path / PREDICTOR)
        report = {"selection": {"name": sel.name, "params": sel.params, "cv_score": sel.cv_score,
                                "candidates": scores},
                  "holdout": metrics, "n_train": len(train), "predictor": path.name,
                  "warnings": warnings, "forced": bool(warnings)}
        opened.write_json("latency_fit.json", report)
        opened.update_manifest(latency_fit={"model": sel.name, **metrics})
    echo(f"predictor (refitted on all {len(table)} rows) -> {path}")
    return LatencyFit(run=opened, predictor=path, model=sel.name, params=dict(sel.params),
                      cv_mape=-100 * sel.cv_score, holdout=dict(metrics), n_train=len(train),
                      candidates=scores, warnings=warnings, forced=bool(warnings))


LUT = "latency_lut.json"


def fit_lut(run: Run | str | os.PathLike, *, holdout: float = 0.25, seed: int = 0,
            force: bool = False) -> LatencyFit:
    """The OFA-style lookup table (`search.latency.LatencyLUT`): every block of the training
    rows' subnets timed alone with the run's settings, plus the median residual as a constant;
    held-out metrics and the trust checks as for `fit`; saved as `latency_lut.json`, usable as
    a search's `predictors: {latency_ms_pred: PATH}`."""
    import numpy as np

    import supernets
    from nasbench.progress import echo
    from search.latency import LatencyLUT, LatencySettings
    from search.predictors.metrics import kendall_tau, regression_metrics

    if not 0 < holdout < 1:
        raise UserError(f"--holdout must be in (0, 1), got {holdout}")
    opened, table, _ = _latency_run(run)
    build = dict(opened.manifest["supernet"])
    net = supernets.create(build.pop("name"), **build).eval()
    config = opened.manifest.get("config", {}).get("latency", {})
    shape = None
    if config.get("resolution") is not None:
        shape = (int(net.build_config().get("in_chans", 3)), config["resolution"], config["resolution"])
    order = np.random.default_rng(seed).permutation(len(table))
    n_test = max(1, round(holdout * len(table)))
    test, train = table.iloc[order[:n_test]], table.iloc[order[n_test:]]
    lut = LatencyLUT(LatencySettings(**opened.manifest["settings"]))
    lut.device = str(table["device"].iloc[0])  # the table's key: refits check it
    lut.fit(net, train, input_shape=shape)
    truth = test["latency_ms"].to_numpy(dtype=float)
    archs = [net.space.parse(text) for text in test["arch"]]
    metrics = regression_metrics(truth, lut.predict(net, archs, input_shape=shape))
    metrics["macs_kendall_tau"] = kendall_tau(truth, test["macs"].to_numpy(dtype=float))
    echo(f"lookup table: {len(lut.entries)} blocks, constant {lut.constant_ms:.3f} ms")
    echo(f"held-out {format_metrics(metrics)}")
    warnings = trusted_or_refused("latency lookup table", len(test), float(metrics["mape"]),
                                  metrics, force)
    with RunLock(opened.path):
        path = lut.save(opened.path / LUT)
        opened.update_manifest(latency_lut={"blocks": len(lut.entries), **metrics,
                                            "warnings": warnings})
    echo(f"lookup table -> {path}")
    return LatencyFit(run=opened, predictor=path, model="lut", params={"blocks": len(lut.entries)},
                      cv_mape=float(metrics["mape"]), holdout=dict(metrics), n_train=len(train),
                      candidates=[], warnings=warnings, forced=bool(warnings))


def evaluate(predictor_run: Run | str | os.PathLike, table_run: Run | str | os.PathLike) -> dict[str, float]:
    """Held-out style metrics of a saved latency predictor on another table (same device, space)."""
    from nasbench.runs import load_run
    from search.latency import LatencyPredictor

    _, table, space = _latency_run(table_run)
    device = str(table["device"].iloc[0])
    source = predictor_run if isinstance(predictor_run, Run) else load_run(predictor_run)
    predictor = LatencyPredictor.load(source.path / PREDICTOR, space, device=device)
    return predictor.evaluate(table)
