"""Budgets and verdicts: which KPI limits a gate enforces, and the judgement with every number."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .diagnostics import Finding
from .errors import BudgetError
from .evaluate import Comparison
from .stats import Interval, paired_drop_interval, proportion_interval

if TYPE_CHECKING:  # bisect imports gate; the verdict only carries its report
    from .bisect import BisectionReport


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


_FLOAT_SLACK = 1e-9


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


@dataclass(frozen=True)
class MetricResult:
    """One budget line: the FP32 and INT8 values, the delta, the limit and the outcome."""

    name: str
    fp32: float | None
    int8: float
    delta: float | None
    limit: float
    upper: bool
    passed: bool
    #: 95 % confidence interval of the observed number (accuracy-type metrics only; see stats.py).
    ci95: tuple[float, float] | None = None
    #: True when the pass also required the interval's bound to be within the limit (--int8-strict-ci).
    strict_ci: bool = False

    @property
    def observed(self) -> float:
        """The number compared with the limit (the drop for ``*_drop`` metrics)."""
        return -self.delta if self.delta is not None else self.int8

    def as_dict(self) -> dict[str, object]:
        return {
            "fp32": self.fp32,
            "int8": self.int8,
            "delta": self.delta,
            "limit": self.limit,
            "op": "<=" if self.upper else ">=",
            "passed": self.passed,
        }


def judge(budget: Budget, comparison: Comparison, *, strict_ci: bool = False) -> tuple[MetricResult, ...]:
    """Compare each limit with the measurement; a metric that cannot be measured is a BudgetError.

    With ``strict_ci`` a metric that has a confidence interval passes only when the interval's far bound
    (the upper bound of a drop, the lower bound of an agreement) is within the limit too.
    """
    results = []
    for name, limit in budget.limits.items():
        spec = BUDGET_METRICS[name]
        if spec.measure not in comparison.int8:
            raise BudgetError(_unmeasurable(spec, comparison))
        int8 = comparison.int8[spec.measure]
        fp32 = comparison.fp32.get(spec.measure)
        if spec.drop:
            assert fp32 is not None
            delta: float | None = int8 - fp32
            observed = fp32 - int8
        else:
            delta = None
            observed = int8
        # fractions such as 0.974 - 0.964 carry float noise: a drop of exactly the limit passes
        passed = observed <= limit + _FLOAT_SLACK if spec.upper else observed >= limit - _FLOAT_SLACK
        interval = metric_interval(spec, comparison)
        if strict_ci and interval is not None:
            bound = interval.high if spec.upper else interval.low
            within = bound <= limit + _FLOAT_SLACK if spec.upper else bound >= limit - _FLOAT_SLACK
            passed = passed and within
        results.append(
            MetricResult(
                name,
                fp32,
                int8,
                delta,
                limit,
                spec.upper,
                bool(passed),
                ci95=None if interval is None else interval.as_tuple(),
                strict_ci=strict_ci and interval is not None,
            )
        )
    return tuple(results)


def metric_interval(spec: MetricSpec, comparison: Comparison) -> Interval | None:
    """The 95 % interval of an accuracy-type metric from the per-sample hits (None for other metrics)."""
    hits = comparison.hits
    if spec.drop and f"fp32_{spec.measure}" in hits and f"int8_{spec.measure}" in hits:
        return paired_drop_interval(hits[f"fp32_{spec.measure}"], hits[f"int8_{spec.measure}"])
    if spec.name == "top1_agreement" and "top1_agreement" in hits:
        agree = hits["top1_agreement"]
        return proportion_interval(int(agree.sum()), int(agree.shape[0]))
    return None


def _unmeasurable(spec: MetricSpec, comparison: Comparison) -> str:
    output = comparison.output_name
    if spec.requires in ("labels", "classes") and "top1_agreement" not in comparison.int8:
        return f"budget {spec.name} needs a class-score output [N, classes]; output {output!r} is not one."
    if spec.requires == "labels":
        return f"budget {spec.name} needs labels (--int8-labels or `labels:` in the manifest)."
    if spec.requires == "classes":
        return f"budget {spec.name} needs a class-score output [N, classes]; output {output!r} is not one."
    if spec.requires == "kpi":
        return f"budget {spec.name} needs a KPI function (int8_gate.check(..., kpi=callable))."
    return f"budget {spec.name} could not be measured on output {output!r}."


@dataclass(frozen=True)
class GateVerdict:
    """The judgement of one gated model, with everything needed to explain it."""

    name: str
    model: str
    backend: Mapping[str, object]
    backend_text: str
    calibrator: str
    calibration_samples: int
    eval_samples: int
    output_name: str
    budget: Budget
    results: tuple[MetricResult, ...]
    fp32: Mapping[str, float]
    int8: Mapping[str, float]
    plan: Mapping[str, object]
    quantized_layers: int
    total_layers: int
    evaluations: int
    duration_s: float
    notes: tuple[str, ...] = ()
    cache_hits: tuple[str, ...] = ()
    bisection: BisectionReport | None = None
    #: Findings of the INT8 debugging checks (diagnostics.py); one of severity "failure" fails the gate.
    diagnostics: tuple[Finding, ...] = ()

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results) and not self.failed_diagnostics

    @property
    def failed_diagnostics(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.diagnostics if f.severity == "failure")

    @property
    def failed_metrics(self) -> tuple[MetricResult, ...]:
        return tuple(r for r in self.results if not r.passed)
