"""The baseline comparison's former home; it lives in ``report.baseline`` now (import from there)."""

from __future__ import annotations

from .report.baseline import Baseline, load_baseline, metric_value, parse_tolerances
from .report.records import NOISE, MetricChange
from .report.text import baseline_lines

__all__ = [
    "NOISE",
    "Baseline",
    "MetricChange",
    "baseline_lines",
    "load_baseline",
    "metric_value",
    "parse_tolerances",
]
