"""Metrics, thresholds and result tables."""

from .metrics import evaluate_scores, quantile_threshold
from .tables import markdown_table, per_class_table

__all__ = ["evaluate_scores", "markdown_table", "per_class_table", "quantile_threshold"]
