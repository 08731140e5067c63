"""Objectives: named callables arch -> float with a direction, a unit and a source.

`Objective` is the value type every optimizer sees. The kind registry maps the column names of
the evaluations table (`top1`, `macs`, `params`, `latency_ms`, ...) to factories that build an
objective from a context (supernet, loaders, device, predictors), so a config can name them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nasbench_core.errors import UserError
from nasbench_core.registry import Registry

Direction = Literal["min", "max"]
Source = Literal["measured", "predicted"]


@dataclass(frozen=True)
class Objective:
    """One thing to optimise; `name` is its column in the evaluations table."""

    name: str
    fn: Callable[[dict], float]
    direction: Direction
    unit: str = ""
    source: Source = "measured"
    batch: Callable[[Sequence[dict]], Sequence[float]] | None = field(default=None, compare=False)
    """The exact values of many archs at once, cheap enough for an optimizer's inner loop (a
    fitted predictor, an analytic count); None when every value is a true evaluation. LINAS
    uses it instead of fitting a surrogate to values it can have exactly."""

    def __post_init__(self) -> None:
        if self.direction not in ("min", "max"):
            raise UserError(f"objective {self.name!r}: direction must be 'min' or 'max'")
        if self.source not in ("measured", "predicted"):
            raise UserError(f"objective {self.name!r}: source must be 'measured' or 'predicted'")

    def __call__(self, arch: dict) -> float:
        return float(self.fn(arch))


@dataclass
class ObjectiveContext:
    """Everything an objective kind may need; kinds take only what they use."""

    supernet: Any = None
    calib_loader: Any = None
    val_loader: Any = None
    device: str = "cpu"
    bn_batches: int = 8
    val_batches: int | None = None
    input_shape: tuple[int, ...] | None = None
    latency: Mapping[str, Any] = field(default_factory=dict)
    predictors: Mapping[str, Any] = field(default_factory=dict)
    cost_cache: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ObjectiveKind:
    name: str
    direction: Direction
    unit: str
    source: Source
    factory: Callable[[ObjectiveContext], Callable[[dict], float]]
    help: str


OBJECTIVES: Registry[ObjectiveKind] = Registry("objective")


def register_objective(
    name: str, *, direction: Direction, unit: str, source: Source, help: str
) -> Callable:
    """Register a factory `ctx -> (arch -> float)` under the table column `name`."""

    def deco(factory: Callable[[ObjectiveContext], Callable[[dict], float]]):
        OBJECTIVES.add(name, ObjectiveKind(name, direction, unit, source, factory, help))
        return factory

    return deco


def list_objectives() -> list[str]:
    return OBJECTIVES.list()


def objective_kind(name: str) -> ObjectiveKind:
    """The kind of a table column; `latency_ms@DEVICE` is the latency kind under that name
    (`search.placement`)."""
    from search.placement import split

    base, placement = split(name)
    kind = OBJECTIVES.get(base)
    return kind if placement is None else dataclasses.replace(kind, name=name)


class Exact:
    """A factory's result when its values are exact and cheap: `fn(arch)` and `batch(archs)`."""

    def __init__(self, fn: Callable[[dict], float],
                 batch: Callable[[Sequence[dict]], Sequence[float]]):
        self.fn, self.batch = fn, batch

    def __call__(self, arch: dict) -> float:
        return self.fn(arch)


def make_objective(name: str, ctx: ObjectiveContext) -> Objective:
    from search.placement import split

    kind = objective_kind(name)
    base, placement = split(name)
    if placement is not None:  # measured on its own device, with its own predictor
        predictors = {base: ctx.predictors[name]} if name in ctx.predictors else {}
        ctx = dataclasses.replace(ctx, device=placement.device, predictors=predictors)
    fn = kind.factory(ctx)
    return Objective(name, fn, kind.direction, kind.unit, kind.source,
                     batch=fn.batch if isinstance(fn, Exact) else None)


def make_objectives(names: list[str], ctx: ObjectiveContext) -> list[Objective]:
    for n in names:
        objective_kind(n)  # fail on a typo before building anything expensive
    if len(set(names)) != len(names):
        raise UserError(f"objectives repeat a name: {names}")
    return [make_objective(n, ctx) for n in names]


def _need(ctx: ObjectiveContext, attr: str, objective: str) -> Any:
    value = getattr(ctx, attr)
    if value is None:
        raise UserError(f"objective {objective!r} needs a {attr.replace('_', ' ')}")
    return value


class SupernetAccuracy:
    """Top-1 of the supernet in `arch` after BN recalibration, cached by arch_id."""

    def __init__(self, ctx: ObjectiveContext):
        self.net = _need(ctx, "supernet", "top1")
        self.calib_loader = _need(ctx, "calib_loader", "top1")
        self.val_loader = _need(ctx, "val_loader", "top1")
        if hasattr(self.val_loader, "__len__") and len(self.val_loader) == 0:
            raise UserError("objective 'top1': the validation loader is empty")
        self.device = ctx.device
        self.bn_batches = ctx.bn_batches
        self.val_batches = ctx.val_batches
        self.cache: dict[str, float] = {}

    def __call__(self, arch: dict) -> float:
        aid = self.net.space.arch_id(arch)
        if aid not in self.cache:
            self.cache[aid] = self._measure(arch)
        return self.cache[aid]

    def _measure(self, arch: dict) -> float:
        from supernets.training import evaluate_arch

        return evaluate_arch(self.net.to(self.device), arch, self.val_loader, device=self.device,
                             recal_loader=self.calib_loader, recal_batches=self.bn_batches,
                             max_batches=self.val_batches)


@register_objective(
    "top1", direction="max", unit="fraction", source="measured",
    help="supernet top-1 accuracy after BN recalibration on a validation subset",
)
def _top1(ctx: ObjectiveContext) -> Callable[[dict], float]:
    return SupernetAccuracy(ctx)


def _cost(ctx: ObjectiveContext, which: str) -> Callable[[dict], float]:
    from search import costs

    net = _need(ctx, "supernet", which)

    def fn(arch: dict) -> float:
        aid = net.space.arch_id(arch)
        if aid not in ctx.cost_cache:  # shared by macs and params: one extraction per arch
            ctx.cost_cache[aid] = costs.subnet_costs(net, arch, input_shape=ctx.input_shape)
        return float(ctx.cost_cache[aid][which])

    return fn


@register_objective(
    "macs", direction="min", unit="MACs", source="measured",
    help="multiply-accumulates of the extracted subnet (torch.utils.flop_counter)",
)
def _macs(ctx: ObjectiveContext) -> Callable[[dict], float]:
    return _cost(ctx, "macs")


@register_objective(
    "params", direction="min", unit="count", source="measured",
    help="parameter count of the extracted subnet",
)
def _params(ctx: ObjectiveContext) -> Callable[[dict], float]:
    net = _need(ctx, "supernet", "params")
    fn = _cost(ctx, "params")
    if not hasattr(net, "count_params"):
        return fn
    return Exact(fn, lambda archs: [float(net.count_params(a)) for a in archs])


@register_objective(
    "nonzero_params", direction="min", unit="count", source="measured",
    help="parameters of the extracted (and, in a joint search, pruned) subnet that are not zero",
)
def _nonzero_params(ctx: ObjectiveContext) -> Callable[[dict], float]:
    net = _need(ctx, "supernet", "nonzero_params")
    return lambda arch: float(sum(int(p.count_nonzero()) for p in net.extract(arch).parameters()))


@register_objective(
    "sparsity", direction="max", unit="fraction", source="measured",
    help="the fraction of weights a joint architecture x sparsity search prunes (search.prune)",
)
def _sparsity(ctx: ObjectiveContext) -> Callable[[dict], float]:
    from search.joint import SPARSITY

    net = _need(ctx, "supernet", "sparsity")
    if SPARSITY not in net.space:
        raise UserError("objective 'sparsity' needs a joint search: set prune.method and "
                        "prune.sparsity")

    def batch(archs: Sequence[dict]) -> list[float]:
        return [float(a[SPARSITY]) for a in archs]

    return Exact(lambda arch: batch([arch])[0], batch)


@register_objective(
    "latency_ms", direction="min", unit="ms", source="measured",
    help="median latency of the extracted subnet measured on this machine",
)
def _latency(ctx: ObjectiveContext) -> Callable[[dict], float]:
    from search import latency

    net = _need(ctx, "supernet", "latency_ms")
    return latency.latency_objective(net, device=ctx.device, input_shape=ctx.input_shape,
                                     **dict(ctx.latency))


def _predicted(ctx: ObjectiveContext, name: str) -> Callable[[dict], float]:
    predictor = ctx.predictors.get(name)
    if predictor is None:
        raise UserError(f"objective {name!r} needs a fitted predictor (predictors.{name})")
    net = _need(ctx, "supernet", name)

    def batch(archs: Sequence[dict]) -> list[float]:
        return [float(v) for v in predictor.predict([net.space.validate(a) for a in archs])]

    return Exact(lambda arch: batch([arch])[0], batch)


@register_objective(
    "latency_ms_pred", direction="min", unit="ms", source="predicted",
    help="latency predicted by a fitted latency predictor",
)
def _latency_pred(ctx: ObjectiveContext) -> Callable[[dict], float]:
    return _predicted(ctx, "latency_ms_pred")


@register_objective(
    "top1_pred", direction="max", unit="fraction", source="predicted",
    help="top-1 predicted by a fitted accuracy predictor",
)
def _top1_pred(ctx: ObjectiveContext) -> Callable[[dict], float]:
    return _predicted(ctx, "top1_pred")


class ZeroCostScore:
    """A zero-cost proxy of the extracted subnet on the first calibration batch (fixed, so an
    arch's score does not depend on what was scored before it), cached by arch_id. The subnet
    keeps the supernet's weights: on an untrained supernet that is the at-init score."""

    def __init__(self, ctx: ObjectiveContext, proxy: str):
        from search.zero_cost import ArchScorer

        name = f"zc_{proxy}"
        self.net = _need(ctx, "supernet", name)
        try:
            self.scorer = ArchScorer.for_supernet(self.net, _need(ctx, "calib_loader", name),
                                                  device=ctx.device)
        except UserError as exc:
            raise UserError(f"objective {name!r}: {exc}") from None
        self.proxy = proxy
        self.cache: dict[str, float] = {}

    def __call__(self, arch: dict) -> float:
        aid = self.net.space.arch_id(arch)
        if aid not in self.cache:
            self.cache[aid] = self.scorer([arch], self.proxy)[0]
        return self.cache[aid]


def _register_zero_cost() -> None:
    from search.zero_cost import list_proxies

    for proxy in list_proxies():
        register_objective(
            f"zc_{proxy}", direction="max", unit="score", source="predicted",
            help=f"zero-cost proxy {proxy} of the extracted subnet on one calibration batch",
        )(lambda ctx, proxy=proxy: ZeroCostScore(ctx, proxy))


_register_zero_cost()
