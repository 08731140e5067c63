"""Hardware-aware multi-objective search: objectives, optimizers, Pareto utilities."""

from search import costs, latency, optimizers, predictors, zero_cost
from search.costs import count_flops, count_macs, count_params, subnet_costs
from search.evaluations import Evaluator, read_table, with_pareto, write_table
from search.latency import (
    LatencyLUT,
    LatencyPredictor,
    LatencySettings,
    latency_objective,
    measure_latency,
    measure_latency_table,
)
from search.objectives import (
    Objective,
    ObjectiveContext,
    list_objectives,
    make_objective,
    make_objectives,
    register_objective,
)
from search.optimizers import create as create_optimizer
from search.optimizers import list_optimizers
from search.pareto import hypervolume, pareto_mask, plot_front
from search.predictors import AccuracyPredictor, ArchPredictor, kendall_tau, regression_metrics
from search.problem import Constraint, SearchProblem, feasible_mask, parse_constraint

__all__ = [
    "AccuracyPredictor",
    "ArchPredictor",
    "Constraint",
    "Evaluator",
    "LatencyLUT",
    "LatencyPredictor",
    "LatencySettings",
    "Objective",
    "ObjectiveContext",
    "SearchProblem",
    "costs",
    "count_flops",
    "count_macs",
    "count_params",
    "create_optimizer",
    "feasible_mask",
    "hypervolume",
    "kendall_tau",
    "latency",
    "latency_objective",
    "list_objectives",
    "list_optimizers",
    "make_objective",
    "make_objectives",
    "measure_latency",
    "measure_latency_table",
    "optimizers",
    "pareto_mask",
    "parse_constraint",
    "plot_front",
    "predictors",
    "read_table",
    "register_objective",
    "regression_metrics",
    "subnet_costs",
    "with_pareto",
    "write_table",
    "zero_cost",
]
