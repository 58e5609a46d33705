"""What diagnostics and the search may read about one gate, and how they evaluate a plan.

:class:`GateContext` is read-only: the gate's settings, model, data and budget as values, and its lazily
built artefacts (Q/DQ models, rewritten FP32 models, the default engines) as functions that build each one
once. :class:`PlanEvaluator` turns a plan into a comparison with FP32 (full evaluation set, or a fixed
subset against FP32 outputs computed once) and counts every evaluation it makes. Neither is the pipeline:
the pipeline makes them, and nothing that receives them can change the gate.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from .backends.base import Backend, Runner
from .budget import Budget
from .data import Dataset
from .evaluate import KpiFunction, ReferenceOutputs, compare
from .gate import judge
from .graph import LoadedModel
from .outputs import EvaluationOutputs, StoredOutputs, reference_from_stored
from .quantize import QuantizedModel, QuantPlan
from .repair import RewrittenModel
from .results import Comparison, MetricResult

#: Progress callback: (stage, message) — the plugin and CLI decide how to show it.
Progress = Callable[[str, str], None]
#: The evaluation's stored FP32 outputs and the spec's plan's INT8 outputs (each None when not kept).
StoredEvaluation = tuple[StoredOutputs | None, StoredOutputs | None]


def _nothing_stored() -> StoredEvaluation:
    return None, None


@dataclass(frozen=True)
class SearchSettings:
    """How the search for offending layers runs."""

    strategy: str
    subset: int  # evaluation samples the search probes on
    max_evaluations: int
    repairs: tuple[str, ...]  # the ladder rungs tried before keeping a layer in float
    max_seconds: float | None = None  # wall-time budget of the search (None: none)


@dataclass(frozen=True)
class GateContext:
    """One gate as diagnostics and the search see it: read-only values and lazily built artefacts."""

    name: str
    model: LoadedModel
    #: The spec's plan, with ``equalize: true`` resolved to the layers that can be equalized.
    plan: QuantPlan
    budget: Budget
    calibration_data: Dataset
    eval_data: Dataset
    #: True when evaluation data was given apart from the calibration data.
    held_out: bool
    labels: np.ndarray | None
    batch_size: int
    threads: int
    output: str | None
    #: Builds runners for probe models (e.g. the sensitivity model); ``backend.name`` says which it is.
    backend: Backend
    ort_mode: str
    min_calib_samples: int
    fp32_reference: str | os.PathLike[str] | None
    check_determinism: bool
    search: SearchSettings
    progress: Progress
    #: The FP32 engine of the spec's model (built once).
    fp32_runner: Callable[[], Runner]
    #: The INT8 engine of the spec's plan (built once).
    int8_runner: Callable[[], Runner]
    #: The Q/DQ model of a plan (the spec's plan is made once).
    quantized: Callable[[QuantPlan], QuantizedModel]
    #: The FP32 model INT8 is made from: the spec's, or with the given layers' pairs equalized.
    fp32_model: Callable[[frozenset[str]], LoadedModel]
    #: The spec's model with the given layers' pairs equalized, as written to the cache.
    rewritten: Callable[[frozenset[str]], RewrittenModel]
    #: The evaluation's outputs over the whole evaluation set, when kept (diagnostics reuse them).
    evaluation_outputs: Callable[[], StoredEvaluation] = field(default=_nothing_stored)

    @property
    def default_quantized(self) -> QuantizedModel:
        """The Q/DQ model of the spec's plan."""
        return self.quantized(self.plan)


class PlanEvaluator:
    """Plan -> comparison with FP32, judged against the budget; ``evaluations`` counts every INT8
    evaluation made through it or its subsets."""

    def __init__(
        self,
        context: GateContext,
        *,
        kpi: KpiFunction | None = None,
        strict_ci: bool = False,
        outputs: EvaluationOutputs | None = None,
    ) -> None:
        self.context = context
        self.kpi = kpi
        self.strict_ci = strict_ci
        #: Stored evaluation outputs (FP32 reference, the spec's plan's INT8), reused when unchanged.
        self.outputs = outputs
        self.evaluations = 0

    def compare(self, plan: QuantPlan | None = None) -> Comparison:
        """INT8 (``plan``, default the spec's) against FP32 on the full evaluation set.

        The spec's plan runs on the gate's INT8 engine (kept); any other plan on an engine built for this
        evaluation and closed after it.
        """
        context = self.context
        if plan is None or plan == context.plan:
            if self.outputs is not None:
                return self._compare_stored(context.int8_runner, context.default_quantized.proto)
            return self._compare_full(context.int8_runner())
        with context.backend.int8_runner(context.quantized(plan).proto) as runner:
            if self.outputs is not None:
                return self._compare_stored(lambda: runner, None)
            return self._compare_full(runner)

    def _compare_stored(self, int8: Callable[[], Runner], model: onnx.ModelProto | None) -> Comparison:
        assert self.outputs is not None
        context = self.context
        context.progress("evaluate", f"evaluating on {context.eval_data.num_samples} samples")
        self.evaluations += 1
        return self.outputs.compare(
            context.fp32_runner, int8, int8_model=model, labels=context.labels, kpi=self.kpi
        )

    def _compare_full(self, int8: Runner) -> Comparison:
        context = self.context
        context.progress("evaluate", f"evaluating on {context.eval_data.num_samples} samples")
        self.evaluations += 1
        return compare(
            context.fp32_runner(),
            int8,
            context.eval_data,
            batch_size=context.batch_size,
            output_name=context.output,
            labels=context.labels,
            kpi=self.kpi,
        )

    def judge(self, comparison: Comparison) -> tuple[MetricResult, ...]:
        """``comparison`` judged against the gate's budget (with the gate's strict-interval setting)."""
        return judge(self.context.budget, comparison, strict_ci=self.strict_ci)

    def subset(self, samples: int) -> SubsetEvaluator:
        """An evaluator on the first ``samples`` evaluation samples, FP32 outputs computed once now."""
        data = self.context.eval_data.head(samples)
        return SubsetEvaluator(self, data, 0)

    def unseen(self, after: int) -> SubsetEvaluator | None:
        """An evaluator on the evaluation samples after the first ``after`` (those a search on
        ``subset(after)`` never saw), FP32 outputs computed once now; None when none are left."""
        data = self.context.eval_data.after(after)
        return None if data is None else SubsetEvaluator(self, data, after)


class SubsetEvaluator:
    """Plans on a fixed subset of the evaluation data against FP32 outputs computed once; each plan's
    engine is closed after its evaluation. Evaluations count on the parent :class:`PlanEvaluator`."""

    def __init__(self, parent: PlanEvaluator, data: Dataset, start: int) -> None:
        """``data``: the evaluation samples from position ``start`` on (where its labels start)."""
        self.parent = parent
        context = parent.context
        labels = context.labels[start : start + data.num_samples] if context.labels is not None else None
        stored = parent.outputs.fp32_values if parent.outputs is not None else None
        if stored is not None:
            assert parent.outputs is not None
            self.reference = reference_from_stored(
                stored,
                context.fp32_runner,
                data,
                start,
                outputs=parent.outputs.outputs,
                batch_size=context.batch_size,
                labels=labels,
            )
        else:
            self.reference = ReferenceOutputs.compute(
                context.fp32_runner(),
                data,
                batch_size=context.batch_size,
                output_name=context.output,
                labels=labels,
            )
        self.size = data.num_samples

    def compare(self, plan: QuantPlan) -> Comparison:
        context = self.parent.context
        model = context.quantized(plan)
        with context.backend.int8_runner(model.proto) as runner:
            self.parent.evaluations += 1
            return self.reference.compare(runner, self.parent.kpi)

    def judge(self, plan: QuantPlan) -> tuple[MetricResult, ...]:
        """``plan`` evaluated on the subset and judged as the gate judges (with its strict-interval setting:
        a search that judged more leniently would blame no layer for a strict failure)."""
        return judge(self.parent.context.budget, self.compare(plan), strict_ci=self.parent.strict_ci)
