"""Budgets as declared: the metric keys a budget may limit, their ranges and meanings, and the validated
:class:`Budget` itself (parsing and merging). Judging a measurement against a budget is gate.py's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import BudgetError


@dataclass(frozen=True)
class MetricSpec:
    """One budget key: what it limits and how."""

    name: str
    measure: str  # key in Comparison.int8 (and .fp32 for drops)
    drop: bool  # limit applies to fp32 - int8
    upper: bool  # True: value <= limit passes; False: value >= limit passes
    low: float
    high: float
    requires: str  # "", "labels", "classes" or "kpi"
    meaning: str


BUDGET_METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec(
            "top1_drop",
            "top1",
            True,
            True,
            0.0,
            1.0,
            "labels",
            "top-1 accuracy lost (fraction, 0.01 = 1 point)",
        ),
        MetricSpec("top5_drop", "top5", True, True, 0.0, 1.0, "labels", "top-5 accuracy lost (fraction)"),
        MetricSpec(
            "top1_agreement",
            "top1_agreement",
            False,
            False,
            0.0,
            1.0,
            "classes",
            "fraction of samples where INT8 and FP32 pick the same class",
        ),
        MetricSpec(
            "cosine", "cosine", False, False, -1.0, 1.0, "", "mean per-sample cosine of INT8 vs FP32 output"
        ),
        MetricSpec("cosine_min", "cosine_min", False, False, -1.0, 1.0, "", "worst per-sample cosine"),
        MetricSpec("sqnr_db", "sqnr_db", False, False, -math.inf, math.inf, "", "output SQNR in dB"),
        MetricSpec(
            "max_abs_error",
            "max_abs_error",
            False,
            True,
            0.0,
            math.inf,
            "",
            "largest absolute output difference",
        ),
        MetricSpec("kpi_drop", "kpi", True, True, -math.inf, math.inf, "kpi", "user KPI lost (fp32 - int8)"),
    )
}

#: Used when no budget is configured anywhere: a gate never runs without a limit.
DEFAULT_BUDGET = {"cosine": 0.98}
DEFAULT_LABELLED_BUDGET = {"top1_drop": 0.01, "cosine": 0.98}


def valid_keys_text() -> str:
    return ", ".join(BUDGET_METRICS)


@dataclass(frozen=True)
class Budget:
    """Validated metric limits, e.g. ``{"top1_drop": 0.01, "cosine": 0.98}``."""

    limits: Mapping[str, float] = field(default_factory=dict)

    @staticmethod
    def from_mapping(values: Mapping[str, object], *, source: str = "budget") -> Budget:
        limits: dict[str, float] = {}
        for key, raw in values.items():
            spec = BUDGET_METRICS.get(str(key))
            if spec is None:
                raise BudgetError(
                    f"{source}: unknown budget key {key!r}; valid keys are {valid_keys_text()}."
                )
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                raise BudgetError(f"{source}: budget {key} must be a number, not {raw!r}.")
            try:
                value = float(raw)
            except ValueError:
                raise BudgetError(f"{source}: budget {key} must be a number, not {raw!r}.") from None
            if math.isnan(value) or not spec.low <= value <= spec.high:
                raise BudgetError(
                    f"{source}: budget {key}={raw} is out of range [{spec.low}, {spec.high}] "
                    f"({spec.meaning})."
                )
            limits[str(key)] = value
        return Budget(limits)

    @staticmethod
    def parse(items: Iterable[str], *, source: str = "--int8-budget") -> Budget:
        """``["top1_drop=0.01", "cosine=0.98"]`` (also accepts comma-separated items)."""
        values: dict[str, object] = {}
        for item in items:
            for part in re.sub(r"\s*=\s*", "=", item).replace(",", " ").split():
                key, sep, value = part.partition("=")
                if not sep or not key or not value:
                    raise BudgetError(f"{source}: {part!r} is not KEY=VALUE (e.g. cosine=0.98).")
                values[key.strip()] = value.strip()
        return Budget.from_mapping(values, source=source)

    def merged(self, override: Budget) -> Budget:
        """This budget with ``override``'s keys replacing or adding to it."""
        return Budget({**self.limits, **override.limits})

    def with_defaults(self, *, has_labels: bool) -> Budget:
        if self.limits:
            return self
        return Budget(dict(DEFAULT_LABELLED_BUDGET if has_labels else DEFAULT_BUDGET))

    def __bool__(self) -> bool:
        return bool(self.limits)

    def text(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.limits.items())
