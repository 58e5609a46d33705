"""What one search evaluation is: the probe (margin, standard error), the subset oracle that measures plans
against cached FP32 outputs and remembers them, and the limits every phase of a search shares."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .evaluate import Comparison
from .gate import MetricResult
from .graph import Layer
from .ladder import (
    Rung,
    plan_with,
)
from .quantize import QuantPlan

if TYPE_CHECKING:
    from .context import GateContext, PlanEvaluator

#: The options that raise the search's limits (named where a limit stopped it).
MAX_EVALS_OPTION = "--int8-bisect-max-evals"
MAX_SECONDS_OPTION = "--int8-bisect-max-seconds"


@dataclass(frozen=True)
class Probe:
    """One INT8 evaluation on the search subset."""

    quantized: int  # how many candidate layers were quantized
    margin: float  # >= 0 passes; the budget's tightest normalised slack
    passed: bool
    metrics: tuple[tuple[str, float], ...] = ()  # the budget's metrics as measured (drops as drops)
    #: The standard error of the margin from the samples measured (the largest over the budget's metrics,
    #: in the margin's units); 0 when no metric tells it.
    stderr: float = 0.0


def probe_of(quantized: int, results: Sequence[MetricResult], comparison: Comparison | None = None) -> Probe:
    metrics = tuple((r.key, r.observed) for r in results)
    stderr = 0.0 if comparison is None else standard_error(results, comparison)
    return Probe(quantized, margin_of(results), all(r.passed for r in results), metrics, stderr)


def standard_error(results: Sequence[MetricResult], comparison: Comparison) -> float:
    """The largest standard error among the judged metrics, normalised as :func:`margin_of` normalises the
    slack: per-sample cosines' spread for cosine, the 95 % interval's half-width for the rates and drops
    that have one; the others (errors over the whole set) have none here."""
    errors = [0.0]
    for r in results:
        scale = margin_scale(r)
        if r.name == "cosine":
            output = comparison.output(r.output) if r.output else comparison.primary
            cosines = output.per_sample_cosine
            if cosines.size > 1:
                errors.append(float(np.std(cosines, ddof=1)) / math.sqrt(cosines.size) / scale)
        elif r.ci95 is not None:
            errors.append((r.ci95[1] - r.ci95[0]) / (2 * 1.96) / scale)
    return max(errors)


def margin_scale(r: MetricResult) -> float:
    """What a metric's slack is divided by: its limit for dB and output-unit metrics (relative), else 1."""
    return max(abs(r.limit), 1e-6) if r.name in ("sqnr_db", "max_abs_error") else 1.0


def margin_of(results: Sequence[MetricResult]) -> float:
    """The tightest normalised slack of a judged budget: >= 0 when every metric passes."""
    slacks = []
    for r in results:
        observed = r.observed
        if r.strict_ci and r.ci95 is not None:  # a strict gate judges the interval's far bound
            observed = r.ci95[1] if r.upper else r.ci95[0]
        slack = (r.limit - observed) if r.upper else (observed - r.limit)
        slacks.append(slack / margin_scale(r))
    return min(slacks) if slacks else 0.0


def metrics_text(probe: Probe) -> str:
    """The budget's metrics as a probe measured them ("cosine 0.9812")."""
    return ", ".join(f"{name} {value:.4g}" for name, value in probe.metrics)


class SubsetOracle:
    """Evaluates plans on a fixed subset against cached FP32 outputs, with the cached calibration table."""

    def __init__(
        self, context: GateContext, evaluator: PlanEvaluator, layers: Sequence[Layer], subset: int
    ) -> None:
        self.context = context
        self.layers = list(layers)
        self.evaluator = evaluator.subset(subset)
        self.reference = self.evaluator.reference
        self.subset_size = self.evaluator.size
        self.base_plan = context.plan
        #: The best probe so far with what it quantized and its repairs (see :meth:`record`).
        self.best: tuple[Probe, list[int], dict[int, Rung]] | None = None
        #: Every plan measured on the subset (by :meth:`key`), so that pruning never measures one twice.
        self.measured: dict[tuple[object, ...], Probe] = {}
        self._candidates = frozenset(layer.name for layer in self.layers)

    def reorder(self, order: Sequence[int]) -> None:
        """Walk the layers in ``order`` (positions in the current list); the best plan follows."""
        self.layers = [self.layers[i] for i in order]
        if self.best is not None:
            position = {old: new for new, old in enumerate(order)}
            probe, quantized, overrides = self.best
            self.best = (
                probe,
                [position[i] for i in quantized],
                {position[i]: r for i, r in overrides.items()},
            )

    def key(self, plan: QuantPlan) -> tuple[object, ...]:
        """What decides a plan's Q/DQ model among the candidate layers (plans spelled with ``include``
        or with ``exclude`` compare equal)."""
        quantized = (
            self._candidates if plan.include is None else plan.include & self._candidates
        ) - plan.exclude
        overrides = tuple(
            sorted((n, c) for n, c in plan.overrides.items() if n in quantized and c != plan.calibrator)
        )
        return (
            quantized,
            plan.calibrator,
            overrides,
            plan.equalize,
            plan.bias_correction & quantized,
            tuple(sorted(plan.smoothquant.items())),
            plan.placement,
        )

    def measure(self, plan: QuantPlan) -> Probe:
        """``plan`` judged on the subset (one evaluation), remembered."""
        comparison = self.evaluator.compare(plan)
        results = self.evaluator.parent.judge(comparison)
        key = self.key(plan)
        probe = probe_of(len(key[0]), results, comparison)  # type: ignore[arg-type]
        self.measured[key] = probe
        return probe

    def plan_for(self, quantized: Sequence[int], overrides: dict[int, Rung]) -> QuantPlan:
        """The base plan restricted to ``quantized``, with each layer's ladder rung applied."""
        return self.plan_for_base(self.base_plan, quantized, overrides)

    def plan_for_base(
        self, base: QuantPlan, quantized: Sequence[int], overrides: dict[int, Rung] | None = None
    ) -> QuantPlan:
        names = frozenset(self.layers[i].name for i in quantized)
        repairs = {self.layers[i].name: rung for i, rung in (overrides or {}).items() if i in quantized}
        return plan_with(replace(base, include=names), repairs)

    def deployable(self, quantized: Sequence[int], overrides: dict[int, Rung]) -> QuantPlan:
        """The base plan with the layers not in ``quantized`` kept in float (what a user writes)."""
        kept = set(quantized)
        floated = frozenset(layer.name for i, layer in enumerate(self.layers) if i not in kept)
        repairs = {self.layers[i].name: rung for i, rung in overrides.items() if i in kept}
        return plan_with(replace(self.base_plan, exclude=self.base_plan.exclude | floated), repairs)

    def record(self, probe: Probe, quantized: list[int], overrides: dict[int, Rung]) -> None:
        """Keep the best plan measured: the passing one with most layers in INT8, else the best margin."""

        def rank(p: Probe) -> tuple[bool, int, float]:
            return (p.passed, p.quantized if p.passed else 0, p.margin)

        if self.best is not None and rank(self.best[0]) >= rank(probe):
            return
        self.best = (probe, quantized, {i: r for i, r in overrides.items() if i in quantized})

    def __call__(self, accepted: Sequence[int], trial: Sequence[int], overrides: dict[int, Rung]) -> Probe:
        quantized = [*accepted, *trial]
        plan = self.plan_for(quantized, overrides)
        results = self.evaluator.judge(plan)
        passed = all(r.passed for r in results)
        last = f"up to {self.layers[max(trial)].name}" if trial else "the whole plan" if quantized else "none"
        repairs = [f"{self.layers[i].name} with {overrides[i].text}" for i in trial if i in overrides]
        if repairs:
            last += ", trying " + ", ".join(repairs)
        outcome = "pass" if passed else "fail"
        self.context.progress(
            "bisect", f"{len(quantized)} of {len(self.layers)} layers quantized ({last}): {outcome}"
        )
        probe = probe_of(len(quantized), results)
        self.measured[self.key(plan)] = probe
        self.record(probe, quantized, overrides)
        return probe


@dataclass
class SearchClock:
    """The limits every phase of one search shares: the evaluation cap (global rungs, search, repair and
    pruning count towards it) and the wall-time budget."""

    max_evaluations: int
    max_seconds: float | None
    started: float
    spent: int = 0
    #: The option that raises the limit that stopped a phase ("" while none has).
    stopped_by: str = ""

    def time_left(self) -> bool:
        return self.max_seconds is None or time.perf_counter() - self.started < self.max_seconds

    def can_evaluate(self) -> bool:
        """Whether one more evaluation fits; records which limit stopped it otherwise."""
        if self.spent >= self.max_evaluations:
            self.stopped_by = self.stopped_by or MAX_EVALS_OPTION
            return False
        if not self.time_left():
            self.stopped_by = self.stopped_by or MAX_SECONDS_OPTION
            return False
        return True

    def limit_text(self) -> str:
        """The limit that stopped the search, as the note names it."""
        if self.stopped_by == MAX_SECONDS_OPTION:
            return f"the wall-time budget of {self.max_seconds:g} s"
        return f"the cap of {self.max_evaluations} evaluations"
