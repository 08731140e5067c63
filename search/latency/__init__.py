"""Latency on a real device: measurement, latency tables, lookup-table and learned predictors."""

from search.latency.device import DeviceInfo, machine_state
from search.latency.lut import BlockSpec, LatencyLUT, block_specs, decompose
from search.latency.measure import LatencyResult, LatencySettings, measure_latency, time_robust
from search.latency.predictor import LatencyPredictor
from search.latency.sampling import stratified_indices, stratified_sample, tilted_pool
from search.latency.table import (
    COLUMNS,
    LatencyObjective,
    latency_objective,
    measure_archs,
    measure_latency_table,
)

__all__ = [
    "COLUMNS",
    "BlockSpec",
    "DeviceInfo",
    "LatencyLUT",
    "LatencyObjective",
    "LatencyPredictor",
    "LatencyResult",
    "LatencySettings",
    "block_specs",
    "decompose",
    "latency_objective",
    "machine_state",
    "measure_archs",
    "measure_latency",
    "measure_latency_table",
    "stratified_indices",
    "stratified_sample",
    "tilted_pool",
    "time_robust",
]
