"""Judging: each budget limit against the measured comparison, with the confidence interval where one
exists. The budget itself is declared in budget.py and the result types live in results.py (both
re-exported here for the import paths callers already use).
"""

from __future__ import annotations

from dataclasses import replace

# Budget and its table live in budget.py, the result types in results.py; these paths stay importable.
from .budget import BUDGET_METRICS as BUDGET_METRICS
from .budget import Budget as Budget
from .budget import MetricSpec as MetricSpec
from .budget import valid_keys_text as valid_keys_text
from .errors import BudgetError
from .output_kinds import DEFAULT_REASONS, OutputKind, default_limits
from .results import Comparison, OutputComparison
from .results import GateVerdict as GateVerdict
from .results import MetricResult as MetricResult
from .stats import Interval, paired_drop_interval, proportion_interval

_FLOAT_SLACK = 1e-9


def output_limits(budget: Budget, output: OutputComparison) -> dict[str, float]:
    """The limits that judge ``output``: the budget's, or, when none is configured, the defaults of the
    output's kind (output_kinds.py)."""
    if budget.limits:
        return dict(budget.limits)
    kind = output.profile.kind if output.profile is not None else OutputKind.DENSE
    limits = default_limits(kind, has_labels=output.labelled and "top1" in output.fp32)
    if output.profile is not None and output.profile.elements == 1:
        # the cosine of one value per sample is its sign: no default judges by it
        limits.pop("cosine", None)
    return limits


def default_budget_text(comparison: Comparison) -> str:
    """Which default limits judged each output and why (for the header of a gate with no budget)."""
    parts = []
    for output in comparison.outputs:
        kind = output.profile.kind if output.profile is not None else OutputKind.DENSE
        limits = ", ".join(
            f"{key} {'<=' if BUDGET_METRICS[key].upper else '>='} {value:g}"
            for key, value in output_limits(Budget(), output).items()
        )
        parts.append(f"{output.output_name!r}: {limits} ({DEFAULT_REASONS[kind]})")
    return "; ".join(parts)


def judge(budget: Budget, comparison: Comparison, *, strict_ci: bool = False) -> tuple[MetricResult, ...]:
    """Compare each limit with the measurement on every gated output where it can be measured; a limit
    measurable on none of them is a BudgetError. An empty budget judges each output by its kind's defaults.

    With ``strict_ci`` a metric that has a confidence interval passes only when the interval's far bound
    (the upper bound of a drop, the lower bound of an agreement) is within the limit too.
    """
    results = []
    measured: set[str] = set()
    for output in comparison.outputs:
        for name, limit in output_limits(budget, output).items():
            spec = BUDGET_METRICS[name]
            if spec.measure not in output.int8:
                continue
            measured.add(name)
            result = _judge_one(spec, limit, output, strict_ci=strict_ci)
            results.append(replace(result, primary=output is comparison.primary))
    for name in budget.limits:
        if name not in measured:
            raise BudgetError(_unmeasurable(BUDGET_METRICS[name], comparison))
    return tuple(results)


def _judge_one(spec: MetricSpec, limit: float, output: OutputComparison, *, strict_ci: bool) -> MetricResult:
    int8 = output.int8[spec.measure]
    fp32 = output.fp32.get(spec.measure)
    if spec.drop:
        assert fp32 is not None
        delta: float | None = int8 - fp32
        observed = fp32 - int8
    else:
        delta = None
        observed = int8
    # fractions such as 0.974 - 0.964 carry float noise: a drop of exactly the limit passes
    passed = observed <= limit + _FLOAT_SLACK if spec.upper else observed >= limit - _FLOAT_SLACK
    interval = metric_interval(spec, output)
    if strict_ci and interval is not None:
        bound = interval.high if spec.upper else interval.low
        within = bound <= limit + _FLOAT_SLACK if spec.upper else bound >= limit - _FLOAT_SLACK
        passed = passed and within
    return MetricResult(
        spec.name,
        fp32,
        int8,
        delta,
        limit,
        spec.upper,
        bool(passed),
        ci95=None if interval is None else interval.as_tuple(),
        strict_ci=strict_ci and interval is not None,
        output=output.output_name,
    )


def uninformative_metrics(results: tuple[MetricResult, ...], comparison: Comparison) -> tuple[str, ...]:
    """A sentence for each judged metric that says little about its output (cosine on one value per
    sample, or on an output dominated by a common offset), with the decision metrics measured there."""
    notes = []
    for result in results:
        output = comparison.output(result.output) if result.output else comparison.primary
        if output.profile is None:
            continue
        why = output.profile.uninformative(result.name)
        if why is None:
            continue
        also = ", ".join(
            f"{key} {output.int8[key]:.4g}"
            for key in ("top1_agreement", "decision_agreement", "rel_rmse")
            if key in output.int8
        )
        notes.append(f"{result.name} says little here: {why}" + (f"; measured {also}" if also else "") + ".")
    return tuple(dict.fromkeys(notes))


def metric_interval(spec: MetricSpec, comparison: Comparison | OutputComparison) -> Interval | None:
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
    if spec.requires in ("labels", "classes") and not any(
        "top1_agreement" in o.int8 for o in comparison.outputs
    ):
        return f"budget {spec.name} needs a class-score output [N, classes]; output {output!r} is not one."
    if spec.requires == "labels":
        return f"budget {spec.name} needs labels (--int8-labels or `labels:` in the manifest)."
    if spec.requires == "classes":
        return f"budget {spec.name} needs a class-score output [N, classes]; output {output!r} is not one."
    if spec.requires == "kpi":
        return f"budget {spec.name} needs a KPI function (int8_gate.check(..., kpi=callable))."
    names = ", ".join(repr(name) for name in comparison.output_names)
    if spec.requires == "scores":
        return f"budget {spec.name} needs an output of scores in [0, 1]; the gated outputs {names} are not."
    if spec.requires == "integers":
        return f"budget {spec.name} needs an integer output; the gated outputs {names} are not."
    return f"budget {spec.name} could not be measured on output {output!r}."
