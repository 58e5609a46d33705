"""Verification of a candidate fix on the full evaluation set and on the samples the search never used,
with its cost (layers and share of MACs left in INT8)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from .equalize import fp32_difference
from .gate import MetricResult
from .graph import COMPUTE_OPS
from .placement import model_macs
from .quantize import QuantPlan
from .results import VerifiedFix

if TYPE_CHECKING:
    from .context import GateContext, PlanEvaluator


class Verifier:
    """Judges a candidate fix on the full evaluation set and on the samples the search never used."""

    def __init__(self, context: GateContext, evaluator: PlanEvaluator, searched: int) -> None:
        self.context = context
        self.evaluator = evaluator
        self.searched = searched
        self.unseen = evaluator.unseen(searched) if searched < context.eval_data.num_samples else None
        self.evaluations = 0
        self._macs = model_macs(context.model.proto.graph)
        self._ops = {layer.name: layer.op_type for layer in context.model.info.layers}
        self._quantized = tuple(context.default_quantized.quantized_layers)
        self._total_macs = context.default_quantized.coverage.total_macs

    def cost(self, plan: QuantPlan) -> tuple[int, float | None]:
        """Layers of the spec plan's quantized ones that ``plan`` keeps in INT8, and their share of MACs."""
        kept = [name for name in self._quantized if name not in plan.exclude]
        macs = sum(self._macs.get(name, 0) for name in kept if self._ops.get(name) in COMPUTE_OPS)
        return len(kept), (macs / self._total_macs if self._total_macs > 0 else None)

    def verify(self, plan: QuantPlan, *, calibrator: str | None = None) -> VerifiedFix:
        """``plan`` judged on every evaluation sample and on the unseen ones (when any were held out).

        When the plan equalizes, the rewritten FP32 model is also compared with the original on the
        evaluation set: the fix reports the largest output difference, its path and its hash.
        """
        context = self.context
        if calibrator is None and plan.calibrator != context.plan.calibrator:
            calibrator = plan.calibrator
        overrides = {k: v for k, v in plan.overrides.items() if context.plan.overrides.get(k) != v}
        order = [layer.name for layer in context.model.info.layers]
        exclude = tuple(name for name in order if name in plan.exclude and name not in context.plan.exclude)
        results = self.evaluator.judge(self.evaluator.compare(plan))  # with the gate's strict intervals
        self.evaluations += 1
        passed = all(r.passed for r in results)
        unseen: tuple[MetricResult, ...] = ()
        if self.unseen is not None:  # also when the full set fails: the report says whether it generalised
            context.progress("bisect", f"verifying on the {self.unseen.size} samples the search never used")
            unseen = self.unseen.judge(plan)
            self.evaluations += 1
            passed = passed and all(r.passed for r in unseen)
        fix = VerifiedFix(
            exclude,
            overrides,
            results,
            passed,
            equalize=tuple(sorted(plan.equalize)),
            bias_correction=tuple(sorted(plan.bias_correction)),
            smoothquant=dict(plan.smoothquant),
            calibrator=calibrator,
            unseen_results=unseen,
            unseen_samples=0 if self.unseen is None else self.unseen.size,
            int8_layers=self.cost(plan)[0],
            quantized_layers=len(self._quantized),
            int8_mac_share=self.cost(plan)[1],
        )
        if not plan.equalize:
            return fix
        rewritten = context.rewritten(plan.equalize)
        difference = fp32_difference(
            context.model.proto,
            rewritten.model.proto,
            context.eval_data.batches(context.batch_size),
            threads=context.threads,
        )
        return replace(
            fix,
            fp32_model=None if rewritten.path is None else str(rewritten.path),
            fp32_sha256=rewritten.sha256,
            fp32_max_abs_difference=difference.max_abs,
            fp32_reference_max_abs=difference.reference_max_abs,
        )

    def where_failed(self, fix: VerifiedFix) -> str:
        """Where a failing fix missed the budget: "on all N" or "on the M samples it never used"."""
        if fix.generalised is False:
            return f"on the {fix.unseen_samples} samples the search never used"
        return f"on all {self.context.eval_data.num_samples}"

    def generalisation_notes(self, fix: VerifiedFix, *, passed_where_searched: bool = True) -> list[str]:
        """The "did not generalise" note for a fix that met the budget on the search samples only."""
        if fix.generalised is not False or not passed_where_searched:
            return []
        unseen = ", ".join(f"{r.name} {r.observed:.4g}" for r in fix.unseen_results)
        also = (
            ""
            if all(r.passed for r in fix.results)
            else f" (nor on all {self.context.eval_data.num_samples})"
        )
        return [
            f"did not generalise: the fix met the budget on the {self.searched} samples it was searched on "
            f"but not on the {fix.unseen_samples} samples the search never used ({unseen}){also}; "
            "it is not a fix"
        ]
