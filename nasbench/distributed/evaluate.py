"""Search evaluations on Ray: a pool of actors, each building its objectives (and model) once.

`evaluate_on_ray(archs, make_metrics, ...)` sends every arch to an actor whose metrics came
from `make_metrics()` run once in that actor, so a supernet is loaded once per actor, not
shipped with every evaluation. At most `num_actors` evaluations are in flight. A failed
evaluation is retried (on another actor when one is free) up to `max_retries` times and then
recorded with its error and NaN values; it never stops the others. An actor that dies is
replaced. `resources={"latency_node": 0.001}` pins actors to nodes that advertise that
custom resource (`ray start --resources='{"latency_node": 1}'`), i.e. the target hardware.

Outcomes keep input order; `evaluation_rows` turns them into rows of the evaluations table
(`search.evaluations` schema: failed metrics are NaN, never 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Metrics = dict[str, Callable[[dict], float]]


@dataclass
class EvalOutcome:
    """One arch's result: metric values (NaN when it failed), attempts used, last error."""

    arch: dict
    values: dict[str, float]
    attempts: int
    error: str | None = None

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
        return {name: float(fn(arch)) for name, fn in self.metrics.items()}


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
    """Evaluate `archs` on a pool of `num_actors` actors; see module doc. Needs `ray.init()`."""
    import ray

    if num_actors < 1:
        raise ValueError("num_actors must be >= 1")
    actor_cls = ray.remote(num_cpus=num_cpus, resources=resources or {})(_MetricsActor)

    def spawn():
        return actor_cls.remote(make_metrics)

    actors = [spawn() for _ in range(min(num_actors, max(len(archs), 1)))]
    names: list[str] = ray.get(actors[0].names.remote())
    outcomes: list[EvalOutcome | None] = [None] * len(archs)
    queue = [_Pending(i) for i in range(len(archs))]
    idle = list(range(len(actors)))
    in_flight: dict[Any, tuple[int, _Pending]] = {}

    def finish(job: _Pending, values: dict[str, float] | None) -> None:
        error = None if values is not None else job.errors[-1]
        outcome = EvalOutcome(
            archs[job.index], values or {n: math.nan for n in names}, job.attempts, error
        )
        outcomes[job.index] = outcome
        if on_result is not None:
            on_result(outcome)

    while queue or in_flight:
        while queue and idle:
            slot, job = idle.pop(), queue.pop(0)
            job.attempts += 1
            in_flight[actors[slot].evaluate.remote(archs[job.index])] = (slot, job)
        done, _ = ray.wait(list(in_flight), num_returns=1)
        slot, job = in_flight.pop(done[0])
        try:
            values = ray.get(done[0])
        except ray.exceptions.RayActorError as exc:
            actors[slot] = spawn()  # the process died (OOM, segfault): start a fresh one
            job.errors.append(f"actor died: {_first_line(exc)}")
            values = None
        except ray.exceptions.RayTaskError as exc:
            job.errors.append(_first_line(exc.cause if exc.cause is not None else exc))
            values = None
        idle.append(slot)
        if values is not None:
            finish(job, values)
        elif job.attempts <= max_retries:
            queue.append(job)
        else:
            finish(job, None)
    for actor in actors:
        ray.kill(actor)
    return [o for o in outcomes if o is not None]


def evaluation_rows(
    outcomes: Sequence[EvalOutcome],
    space: Any,
    *,
    source: str = "measured",
    device: str = "cpu",
    seed: int = 0,
    generation: int = 0,
):
    """The outcomes as a DataFrame with the evaluations table's columns and dtypes."""
    import pandas as pd

    from search.evaluations import empty_table

    names = list(outcomes[0].values) if outcomes else []
    rows = [
        {
            "arch_id": space.arch_id(o.arch), "arch": space.canonical_json(o.arch), **o.values,
            "source": source, "device": device, "seed": seed, "generation": generation,
            "timestamp": time.time(),
        }
        for o in outcomes
    ]
    table = empty_table(names)
    return pd.DataFrame(rows, columns=table.columns).astype(table.dtypes.to_dict())


def _first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.strip().splitlines()[0]
