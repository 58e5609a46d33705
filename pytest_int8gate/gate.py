"""Judging: each budget limit against the measured comparison, with the confidence interval where one
exists. The budget itself is declared in budget.py and the result types live in results.py (both
re-exported here for the import paths callers already use).
"""

from __future__ import annotations

# Budget and its table live in budget.py, the result types in results.py; these paths stay importable.
from .budget import BUDGET_METRICS as BUDGET_METRICS
from .budget import DEFAULT_BUDGET as DEFAULT_BUDGET
from .budget import DEFAULT_LABELLED_BUDGET as DEFAULT_LABELLED_BUDGET
from .budget import Budget as Budget
from .budget import MetricSpec as MetricSpec
from .budget import valid_keys_text as valid_keys_text
from .errors import BudgetError
from .results import Comparison
from .results import GateVerdict as GateVerdict
from .results import MetricResult as MetricResult
from .stats import Interval, paired_drop_interval, proportion_interval

_FLOAT_SLACK = 1e-9


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
