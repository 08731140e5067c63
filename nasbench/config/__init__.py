"""Configs: bounded YAML (safe_load, see yaml_bounds) plus `--set` overrides, validated by strict pydantic models."""

from nasbench.config.loader import StrictModel, parse_overrides
from nasbench.config.sections import DataConfig, RunConfig

__all__ = ["DataConfig", "RunConfig", "StrictModel", "parse_overrides"]
