"""The repair ladder: the rungs tried on an offending layer, in order, each a typed object that says
whether it can apply to a layer and how it changes a plan.

a. :class:`CalibratorRung` — another calibrator's amax for the layer's activation inputs ("mixed
   quantization");
b. :class:`EqualizationRung` — cross-layer equalization with the layer producing its input (equalize.py);
c. :class:`BiasCorrectionRung` — its bias absorbs the mean output error INT8 adds (bias_correction.py);
d. :class:`SmoothQuantRung` — its input's outlier channels migrate into its weight (smoothquant.py), at each
   migration strength of a small grid;
e. :class:`FloatRung` — keep it in float ("mixed precision"), when nothing above meets the budget.

The search (bisect.py) climbs the ladder with an oracle; the rewrites a plan asks for are made by the
pipeline (repair.py joins them to its cache).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from .bias_correction import correction_problem
from .choices import CALIBRATORS, check_repairs
from .equalize import EqualizationCandidate, EqualizationPair, EqualizationRefusal, equalization_pairs
from .graph import Layer, LoadedModel
from .quantize import QuantPlan
from .results import OffendingLayer, RepairAction
from .smoothquant import ALPHAS as SMOOTHQUANT_ALPHAS
from .smoothquant import SmoothRefusal, smoothquant_targets

#: The order in which other calibrators are tried on an offender.
CALIBRATOR_ORDER = ("percentile", "mse", "entropy", "max")
#: How an attempt reads when a rung was skipped as not promising (not as impossible).
NOT_TRIED = "not tried"


@dataclass(frozen=True)
class CalibratorRung:
    """The layer stays INT8 with another calibrator's amax for its activation inputs."""

    calibrator: str
    action: ClassVar[RepairAction] = RepairAction.CALIBRATOR

    @property
    def text(self) -> str:
        return self.calibrator

    def apply(self, plan: QuantPlan, layer: str) -> QuantPlan:
        return replace(plan, overrides={**plan.overrides, layer: self.calibrator})


@dataclass(frozen=True)
class EqualizationRung:
    """The layer stays INT8, equalized with ``producer`` (the layer producing its input)."""

    producer: str | None = None
    action: ClassVar[RepairAction] = RepairAction.EQUALIZE
    text: ClassVar[str] = "equalization"

    def apply(self, plan: QuantPlan, layer: str) -> QuantPlan:
        return replace(plan, equalize=plan.equalize | {layer})


@dataclass(frozen=True)
class BiasCorrectionRung:
    """The layer stays INT8 with its bias corrected for the mean output error INT8 adds."""

    action: ClassVar[RepairAction] = RepairAction.BIAS_CORRECTION
    text: ClassVar[str] = "bias correction"

    def apply(self, plan: QuantPlan, layer: str) -> QuantPlan:
        return replace(plan, bias_correction=plan.bias_correction | {layer})


@dataclass(frozen=True)
class SmoothQuantRung:
    """The layer stays INT8, smoothed (SmoothQuant) at migration strength ``alpha``."""

    alpha: float
    action: ClassVar[RepairAction] = RepairAction.SMOOTHQUANT

    @property
    def text(self) -> str:
        return f"SmoothQuant alpha {self.alpha:g}"

    def apply(self, plan: QuantPlan, layer: str) -> QuantPlan:
        return replace(plan, smoothquant={**plan.smoothquant, layer: self.alpha})


@dataclass(frozen=True)
class FloatRung:
    """The layer is kept in float: the last rung, always possible."""

    action: ClassVar[RepairAction] = RepairAction.FLOAT
    text: ClassVar[str] = "float"

    def apply(self, plan: QuantPlan, layer: str) -> QuantPlan:
        return replace(plan, exclude=plan.exclude | {layer})


Rung = CalibratorRung | EqualizationRung | BiasCorrectionRung | SmoothQuantRung | FloatRung


def plan_with(plan: QuantPlan, repairs: Mapping[str, Rung]) -> QuantPlan:
    """``plan`` with each layer's rung applied."""
    for layer, rung in repairs.items():
        plan = rung.apply(plan, layer)
    return plan


def rung_of(offender: OffendingLayer) -> Rung:
    """The rung a report row says settled its layer."""
    if offender.action is RepairAction.CALIBRATOR:
        assert offender.calibrator is not None, "a calibrator repair names its calibrator"
        return CalibratorRung(offender.calibrator)
    if offender.action is RepairAction.EQUALIZE:
        return EqualizationRung(offender.producer)
    if offender.action is RepairAction.BIAS_CORRECTION:
        return BiasCorrectionRung()
    if offender.action is RepairAction.SMOOTHQUANT:
        return SmoothQuantRung(offender.alpha or SMOOTHQUANT_ALPHAS[0])
    return FloatRung()


def bias_problem(model: LoadedModel, layer: str) -> str:
    """Why bias correction cannot apply to ``layer`` ("" if it can)."""
    graph = model.proto.graph
    initializers = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.name == layer:
            return correction_problem(node, initializers)
    return "no such layer"


def equalization_candidates(model: LoadedModel) -> dict[str, EqualizationCandidate]:
    """Consumer layer name -> its equalization pair, or the refusal and its reason."""
    return {entry.consumer: entry for entry in equalization_pairs(model)}


class RepairLadder:
    """The rungs tried on one offender, in order, and what each attempt found."""

    def __init__(
        self,
        model: LoadedModel,
        base: QuantPlan,
        rungs: Sequence[str],
        *,
        calibrator_order: Mapping[str, Sequence[str]] | None = None,
        not_promising: Callable[[str, str, str], str] | None = None,
    ) -> None:
        """``calibrator_order``: per layer, the calibrators to try first (e.g. by the layer's own SQNR
        under each); the others follow in :data:`CALIBRATOR_ORDER`. ``not_promising(layer, calibrator,
        current)``: why a calibrator is not worth an evaluation on a layer ("" to try it)."""
        self.model = model
        self.base = base
        self.enabled = check_repairs(rungs, "repairs")
        self.calibrators = [c for c in CALIBRATOR_ORDER if c in CALIBRATORS]
        self.calibrator_order = dict(calibrator_order or {})
        self.not_promising = not_promising
        self.attempts: dict[str, list[str]] = {}
        self._pairs = equalization_candidates(model) if RepairAction.EQUALIZE.value in self.enabled else {}
        self._smoothable = (
            smoothquant_targets(model) if RepairAction.SMOOTHQUANT.value in self.enabled else {}
        )

    def climb(self, name: str, attempt: Callable[[Rung], bool | None]) -> Rung | None:
        """The first rung that meets the budget for layer ``name``; None: keep it in float.

        ``attempt(rung)`` evaluates the layer with that rung: True passes, False fails, None means the
        evaluation budget is spent (the climb stops).
        """
        tried = self.attempts.setdefault(name, [])
        for rung, why_not in self.rungs_for(name):
            if why_not.startswith(NOT_TRIED):
                tried.append(f"{rung.text} {why_not}")
                continue
            if why_not:
                tried.append(f"{rung.text} not possible ({why_not})")
                continue
            passed = attempt(rung)
            if passed is None:
                tried.append("stopped at the evaluation cap")
                return None
            if passed:
                return rung
            tried.append(f"{self._describe(rung)} failed")
        return None

    def rungs_for(self, name: str) -> list[tuple[Rung, str]]:
        """(rung, the reason it cannot be tried or "") for each enabled rung, in ladder order."""
        rungs: list[tuple[Rung, str]] = []
        if RepairAction.CALIBRATOR.value in self.enabled:
            current = self.base.calibrator_for(name)
            preferred = [c for c in self.calibrator_order.get(name, ()) if c in self.calibrators]
            ordered = list(dict.fromkeys([*preferred, *self.calibrators]))
            for calibrator in ordered:
                if calibrator == current:
                    continue
                skip = self.not_promising(name, calibrator, current) if self.not_promising else ""
                rungs.append((CalibratorRung(calibrator), f"{NOT_TRIED} ({skip})" if skip else ""))
        if RepairAction.EQUALIZE.value in self.enabled:
            entry = self._pairs.get(name)
            rung = EqualizationRung(self.producer(name))
            if name in self.base.equalize:
                rungs.append((rung, "already equalized by the plan"))
            elif entry is None:
                rungs.append((rung, "not a Conv, ConvTranspose, Gemm or MatMul layer"))
            else:
                rungs.append((rung, entry.reason if isinstance(entry, EqualizationRefusal) else ""))
        if RepairAction.BIAS_CORRECTION.value in self.enabled:
            if name in self.base.bias_correction:
                rungs.append((BiasCorrectionRung(), "already corrected by the plan"))
            else:
                rungs.append((BiasCorrectionRung(), bias_problem(self.model, name)))
        if RepairAction.SMOOTHQUANT.value in self.enabled:
            target = self._smoothable.get(name)
            why = (
                "already smoothed by the plan"
                if name in self.base.smoothquant
                else "not a MatMul or Gemm layer"
                if target is None
                else target.reason
                if isinstance(target, SmoothRefusal)
                else ""
            )
            alphas = SMOOTHQUANT_ALPHAS if not why else SMOOTHQUANT_ALPHAS[:1]
            rungs.extend((SmoothQuantRung(alpha), why) for alpha in alphas)
        return rungs

    @staticmethod
    def _describe(rung: Rung) -> str:
        if isinstance(rung, EqualizationRung):
            return f"equalization with {rung.producer}"
        return rung.text

    def producer(self, name: str) -> str | None:
        """The layer ``name`` would be equalized with (None when it cannot be)."""
        entry = self._pairs.get(name)
        return entry.producer if isinstance(entry, EqualizationPair) else None

    def offender(self, layer: Layer, metrics: dict[str, float], rung: Rung | None) -> OffendingLayer:
        """The report row of an offender that ``rung`` settled (None: kept in float)."""
        settled = FloatRung() if rung is None else rung
        return OffendingLayer(
            index=layer.index,
            name=layer.name,
            op_type=layer.op_type,
            metrics=metrics,
            action=settled.action,
            calibrator=settled.calibrator if isinstance(settled, CalibratorRung) else None,
            producer=settled.producer if isinstance(settled, EqualizationRung) else None,
            attempts=tuple(self.attempts.get(layer.name, ())),
            alpha=settled.alpha if isinstance(settled, SmoothQuantRung) else None,
        )
