"""Metrics, thresholds and result tables."""

from .metrics import evaluate_scores, quantile_threshold
from .paper import TABLE_1
from .tables import benchmark_table, markdown_table, per_class_table

__all__ = ["TABLE_1", "benchmark_table", "evaluate_scores", "markdown_table", "per_class_table", "quantile_threshold"]
