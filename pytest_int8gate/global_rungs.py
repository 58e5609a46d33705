"""The cheap global rungs before a per-layer search: the spec's plan under each other calibrator for the
whole model, one subset evaluation apiece."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .choices import CALIBRATORS
from .ladder import (
    CALIBRATOR_ORDER,
)
from .quantize import QuantPlan
from .results import RepairAction, VerifiedFix
from .search_oracle import Probe, SearchClock, SubsetOracle, metrics_text
from .verification import Verifier

if TYPE_CHECKING:
    from .context import GateContext


#: The search starts from another calibrator for the whole model only when that calibrator closes more
#: than this share of the spec's plan's gap to the budget (margins are negative when failing).
SWITCH_SHARE = 0.5


@dataclass
class GlobalRungs:
    """The spec's plan under each other calibrator for the whole model (one subset evaluation apiece):
    a verified pass is a one-entry fix; otherwise the closest calibrator is where the search starts."""

    search_base: QuantPlan
    search_probe: Probe
    evaluations: int = 0
    fix: VerifiedFix | None = None  # a verified fix, or one that passed on the subset only
    notes: list[str] = field(default_factory=list)
    tried: list[str] = field(default_factory=list)  # "<calibrator> <metrics>" of each failing rung

    @classmethod
    def climb(
        cls, context: GateContext, oracle: SubsetOracle, verifier: Verifier, first: Probe, clock: SearchClock
    ) -> GlobalRungs:
        rungs = cls(context.plan, first)
        if RepairAction.CALIBRATOR.value not in context.search.repairs:
            return rungs
        everything = range(len(oracle.layers))
        for calibrator in CALIBRATOR_ORDER:
            if calibrator == context.plan.calibrator or calibrator not in CALIBRATORS:
                continue
            if not clock.can_evaluate():
                break
            plan = replace(context.plan, calibrator=calibrator)
            context.progress("bisect", f"trying calibrator {calibrator} for the whole model")
            probe = oracle.measure(oracle.plan_for_base(plan, everything))
            rungs.evaluations += 1
            clock.spent += 1
            context.progress(
                "bisect", f"calibrator {calibrator} for the whole model: {'pass' if probe.passed else 'fail'}"
            )
            if probe.passed:
                fix = verifier.verify(plan, calibrator=calibrator)
                if fix.passed:
                    rungs.fix = fix
                    return rungs
                rungs.notes.append(
                    f"calibrator {calibrator} for the whole model met the budget on the {oracle.subset_size} "
                    f"search samples but not {verifier.where_failed(fix)}"
                )
                if rungs.fix is None:
                    rungs.fix = fix
                continue  # passes where the search looks: no base to search from
            rungs.tried.append(f"{calibrator} {metrics_text(probe)}")
            if probe.margin > rungs.search_probe.margin:
                rungs.search_base, rungs.search_probe = plan, probe
        if rungs.tried:
            rungs.notes.append(
                f"calibrators for the whole model that missed the budget on the {oracle.subset_size} "
                f"search samples: {'; '.join(rungs.tried)}"
            )
        if rungs.search_probe.margin <= first.margin * SWITCH_SHARE:
            # Not clearly closer: among broken plans the margins are noise, and a switch costs the fix
            # an entry (the model's calibrator) that the per-layer repairs would not need.
            rungs.search_base, rungs.search_probe = context.plan, first
        return rungs
