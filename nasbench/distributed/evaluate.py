"""Search evaluations on Ray: a pool of actors, each building its objectives (and model) once.

`MetricsPool(make_metrics, ...)` starts `num_actors` actors; each runs `make_metrics()` once, so
a supernet is loaded once per actor, not shipped with every evaluation, and the actors live as
long as the pool (a whole search). `pool.outcomes(archs)` yields each arch's `EvalOutcome` as it
finishes (completion order; `index` says which input it is), with at most one evaluation in
flight per actor. A failed evaluation is retried (on whichever actor is free next) up to
`max_retries` times and then yielded with its error and NaN values; it never stops the others.
An actor that dies mid-evaluation (SIGKILL, OOM, segfault) is replaced by a fresh one and its
arch is retried, so it is measured once. `resources={"latency_node": 0.001}` pins actors to
nodes that advertise that custom resource (`ray start --resources='{"latency_node": 1}'`),
i.e. the target hardware.

Why not `ray.util.ActorPool`: it has no failure handling — a dead actor goes back to its idle
list and is handed the next pending task — and it cannot replace an actor in place.

`evaluate_on_ray` is the one-shot form (input order, pool closed after). `RayBackend` plugs a
pool into `search.Evaluator`, which turns values into table rows exactly as it does in process.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from nasbench_core.errors import RunError

Metrics = dict[str, Callable[[dict], float]]


@dataclass
class EvalOutcome:
    """One arch's result: metric values (NaN when it failed), attempts used, last error."""

    arch: dict
    values: dict[str, float]
    attempts: int
    error: str | None = None
    index: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Pending:
    index: int
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


class _MetricsActor:
    """Holds the metrics (and whatever model they close over) for the actor's lifetime."""

    def __init__(self, make_metrics: Callable[[], Metrics]):
        self.metrics = make_metrics()

    def names(self) -> list[str]:
        return list(self.metrics)

    def evaluate(self, arch: dict) -> dict[str, float]:
        from search.evaluations import details_of

        values = {}
        for name, fn in self.metrics.items():
            values[name] = float(fn(arch))
            values.update(details_of(name, fn, arch))
        return values

    def assigned(self) -> dict[str, Any]:
        """Where this actor runs: its node and the resources Ray gave it."""
        import ray

        context = ray.get_runtime_context()
        return {"node": context.get_node_id(), "resources": context.get_assigned_resources()}


class MetricsPool:
    """Long-lived evaluation actors; see the module doc. Needs `ray.init()` first."""

    def __init__(self, make_metrics: Callable[[], Metrics], *, num_actors: int = 2,
                 max_retries: int = 1, num_cpus: float = 1.0,
                 resources: dict[str, float] | None = None):
        import ray

        if num_actors < 1:
            raise ValueError("num_actors must be >= 1")
        self.max_retries = max_retries
        self._make_metrics = make_metrics
        self._cls = ray.remote(num_cpus=num_cpus, resources=resources or {})(_MetricsActor)
        self._actors = [self._spawn() for _ in range(num_actors)]
        try:
            self.names: list[str] = ray.get(self._actors[0].names.remote())
        except ray.exceptions.RayActorError as exc:
            self.close()
            raise RunError(f"the Ray evaluation workers could not start: {_cause_line(exc)}") from None

    def _spawn(self):
        return self._cls.remote(self._make_metrics)

    @property
    def size(self) -> int:
        return len(self._actors)

    def assigned(self) -> list[dict[str, Any]]:
        """Each actor's node and assigned resources, as Ray reports them."""
        import ray

        return ray.get([actor.assigned.remote() for actor in self._actors])

    def outcomes(self, archs: Sequence[dict]) -> Iterator[EvalOutcome]:
        """Each arch's outcome as soon as it is final (completion order)."""
        import ray

        queue = deque(_Pending(i) for i in range(len(archs)))
        idle = list(range(len(self._actors)))
        in_flight: dict[Any, tuple[int, _Pending]] = {}
        while queue or in_flight:
            while queue and idle:
                slot, job = idle.pop(), queue.popleft()
                job.attempts += 1
                in_flight[self._actors[slot].evaluate.remote(archs[job.index])] = (slot, job)
            done, _ = ray.wait(list(in_flight), num_returns=1)
            slot, job = in_flight.pop(done[0])
            try:
                values = ray.get(done[0])
            except ray.exceptions.RayActorError as exc:
                self._actors[slot] = self._spawn()  # the process died: start a fresh one
                job.errors.append(f"actor died: {_first_line(exc)}")
                values = None
            except ray.exceptions.RayTaskError as exc:
                job.errors.append(_first_line(exc.cause if exc.cause is not None else exc))
                values = None
            idle.append(slot)
            if values is not None:
                yield EvalOutcome(archs[job.index], values, job.attempts, None, job.index)
            elif job.attempts <= self.max_retries:
                queue.append(job)
            else:
                nan = {n: math.nan for n in self.names}
                yield EvalOutcome(archs[job.index], nan, job.attempts, job.errors[-1], job.index)

    def close(self) -> None:
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    def __enter__(self) -> MetricsPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def evaluate_on_ray(
    archs: Sequence[dict],
    make_metrics: Callable[[], Metrics],
    *,
    num_actors: int = 2,
    max_retries: int = 1,
    num_cpus: float = 1.0,
    resources: dict[str, float] | None = None,
    on_result: Callable[[EvalOutcome], None] | None = None,
) -> list[EvalOutcome]:
    """Evaluate `archs` on a fresh pool of at most `num_actors` actors; outcomes in input order
    (`on_result` sees them in completion order)."""
    outcomes: list[EvalOutcome | None] = [None] * len(archs)
    with MetricsPool(make_metrics, num_actors=min(num_actors, max(len(archs), 1)),
                     max_retries=max_retries, num_cpus=num_cpus, resources=resources) as pool:
        for outcome in pool.outcomes(archs):
            outcomes[outcome.index] = outcome
            if on_result is not None:
                on_result(outcome)
    return [o for o in outcomes if o is not None]


class RayBackend:
    """An `Evaluator` backend measuring each batch concurrently on `MetricsPool`s.

    Each pool measures its own metrics (e.g. one pool anywhere, one on the nodes of a device
    label); an arch's values are yielded once every pool has measured it, so the last pool's
    results stream back as they finish and the evaluator journals each at once. An arch that
    failed on every attempt stops the search with one line once the rest of its batch is in:
    the finished rows are durable, and a resume retries only what is missing.
    """

    def __init__(self, pools: Sequence[MetricsPool]):
        if not pools:
            raise ValueError("RayBackend needs at least one pool")
        self.pools = list(pools)

    def describe(self) -> list[dict[str, Any]]:
        """Per pool: the metrics it measures and where its workers run (for the manifest)."""
        return [{"metrics": pool.names, "workers": pool.assigned()} for pool in self.pools]

    def measure(self, archs: Sequence[dict]) -> Iterator[tuple[int, dict[str, float]]]:
        merged: list[dict[str, float]] = [{} for _ in archs]
        failed: list[EvalOutcome] = []
        todo = list(range(len(archs)))
        *first, last = self.pools
        for pool in first:
            for outcome in pool.outcomes([archs[i] for i in todo]):
                if outcome.ok:
                    merged[todo[outcome.index]].update(outcome.values)
                else:
                    failed.append(outcome)
            bad = {todo[o.index] for o in failed}
            todo = [i for i in todo if i not in bad]
        for outcome in last.outcomes([archs[i] for i in todo]):
            index = todo[outcome.index]
            if outcome.ok:
                yield index, {**merged[index], **outcome.values}
            else:
                failed.append(outcome)
        if failed:
            first_failure = failed[0]
            raise RunError(f"{len(failed)} evaluation(s) failed on every attempt "
                           f"({first_failure.attempts} tries); first: {first_failure.error}")


def _first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.strip().splitlines()[0]


def _cause_line(exc: BaseException) -> str:
    """The last non-blank line of a Ray actor error: the original exception, not Ray's frame."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
