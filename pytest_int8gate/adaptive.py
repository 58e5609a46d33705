"""The adaptive strategy's reading of the per-layer sensitivity: which walk (few strong culprits or error
spread thin), the calibrator overrides it predicts, and the spread walk (the shortest passing prefix of
ranked entries, ranked.py) with its acceptance margin and group drops."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from .equalize import EqualizationPair
from .graph import Layer
from .ladder import (
    CalibratorRung,
    equalization_candidates,
    plan_with,
)
from .quantize import QuantPlan
from .ranked import (
    CULPRIT_NOISE_SHARE,
    RankedEntry,
    applied,
    culprit_noise_share,
    prefix_plan,
    rank_entries,
    shortest_accepted_prefix,
    spread_budget,
)
from .results import OffendingLayer, RepairAction, VerifiedFix
from .search_oracle import Probe, SearchClock, SubsetOracle
from .sensitivity import SensitivityTable
from .verification import Verifier

if TYPE_CHECKING:
    from .context import GateContext


#: Adaptive: a layer whose own SQNR is this far below the median is a strong culprit candidate (dB).
OUTLIER_DB = 15.0
#: Adaptive: the ladder tries another calibrator on an offender only when it raises the layer's own SQNR
#: by more than this (dB); the repair that would not change the layer's own output is not worth an
#: evaluation.
MIN_GAIN_DB = 1.0
#: Adaptive: models with at most this many quantized layers are walked offender by offender.
SPREAD_MIN_LAYERS = 4
#: Adaptive: a layer is predicted to need another calibrator when that calibrator raises its own SQNR by
#: more than this (dB, one bit): smaller differences do not decide a model's budget on their own.
DEFICIT_DB = 6.0


@dataclass(frozen=True)
class AdaptiveWalk:
    """What the adaptive strategy read from the layers' own SQNR: the walk and the order it takes."""

    mode: str  # "culprits": binary prefix search in sensitivity order; "spread": predicted INT8 repairs first
    order: tuple[int, ...]  # candidate positions, best own SQNR first (the layers the prefix adds last
    # are the likeliest culprits)
    note: str
    outliers: int = 0  # layers far below the median own SQNR


def choose_walk(sqnr: Sequence[float]) -> AdaptiveWalk:
    """Few layers far below the others' own SQNR: strong culprits, found by a binary prefix search that
    adds the worst layers last; otherwise the error is spread thin and the INT8 repairs the sensitivity
    table predicts come first."""
    n = len(sqnr)
    order = tuple(sorted(range(n), key=lambda i: (-_finite(sqnr[i]), i)))
    if n == 0:
        return AdaptiveWalk("culprits", order, "")
    median = float(np.median([_finite(v) for v in sqnr]))
    outliers = [i for i in range(n) if _finite(sqnr[i]) < median - OUTLIER_DB]
    few = max(3, n // 8)
    share = culprit_noise_share(sqnr, outliers)
    if 1 <= len(outliers) <= few and share >= CULPRIT_NOISE_SHARE:
        return AdaptiveWalk(
            "culprits",
            order,
            f"adaptive search: {len(outliers)} of {n} layers' own SQNR is over {OUTLIER_DB:g} dB below the "
            f"median ({median:.1f} dB) and carries {share:.0%} of the predicted INT8 noise: few strong "
            "culprits, binary search adding the worst layers last",
            len(outliers),
        )
    one = len(outliers) == 1
    spread = (
        "no layer stands out"
        if not outliers
        else "1 layer stands out"
        if one
        else f"{len(outliers)} layers stand out"
    )
    spread += f" in own SQNR (median {median:.1f} dB over {n} layers)"
    if 1 <= len(outliers) <= few:
        spread += (
            f" but {'carries' if one else 'carry'} only {share:.0%} of the predicted INT8 noise (keeping "
            f"{'it' if one else 'them'} in float would not close most of the gap)"
        )
    return AdaptiveWalk(
        "spread",
        order,
        f"adaptive search: {spread}: error spread thin, INT8-preserving entries ranked by own SQNR first",
    )


def _finite(value: float) -> float:
    if math.isnan(value) or value == -math.inf:
        return -1e9
    return min(value, 1e9)


@dataclass(frozen=True)
class PredictedRepair:
    """Calibrator overrides for the few layers the sensitivity table says another calibrator serves far
    better (own SQNR) than the plan the search starts from, evaluated together in one go."""

    #: layer -> (its calibrator, own SQNR with the plan's calibrator, own SQNR with its own)
    repairs: dict[str, tuple[str, float, float]]

    def plan(self, base: QuantPlan) -> QuantPlan:
        overrides = {name: CalibratorRung(calibrator) for name, (calibrator, _, _) in self.repairs.items()}
        return plan_with(base, overrides)

    def text(self) -> str:
        return ", ".join(f"{name} {calibrator}" for name, (calibrator, _, _) in self.repairs.items())


def predicted_repairs(
    table: SensitivityTable, names: Sequence[str], base: QuantPlan, limit: int
) -> list[PredictedRepair]:
    """The layers whose own SQNR another calibrator raises by more than :data:`DEFICIT_DB` over ``base``'s,
    when there are between 1 and ``limit`` of them: the worst alone, then all of them (worst first)."""
    deficits = []
    for name in names:
        current = base.calibrator_for(name)
        best = table.best_calibrator(name, current)
        if best is not None and best[1] > DEFICIT_DB:
            own = table.sqnr(name, current)
            deficits.append((best[1], name, best[0], own))
    if not 1 <= len(deficits) <= limit:
        return []
    deficits.sort(key=lambda d: -_finite(d[0]))
    repairs = {name: (best, own, own + gain) for gain, name, best, own in deficits}
    worst = dict(list(repairs.items())[:1])
    return [PredictedRepair(worst)] + ([PredictedRepair(repairs)] if len(repairs) > 1 else [])


def clears_margin(probe: Probe, holdout: float) -> bool:
    """Whether a subset pass is clear enough to accept: its margin is at least ``holdout`` standard errors
    (``holdout`` = sqrt(1 + searched / unseen), the standard error of the subset-unseen difference per unit of
    the subset's own; 0 when nothing is held out)."""
    return probe.passed and probe.margin >= holdout * probe.stderr


@dataclass
class SpreadOutcome:
    """What the spread walk found: the fix (verified), its entries as report rows, and its evaluations."""

    fix: VerifiedFix | None
    offenders: tuple[OffendingLayer, ...]
    search_evaluations: int
    pruning_evaluations: int = 0
    pruned: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    #: the plan of ``fix`` (None until verified)
    plan: QuantPlan | None = None


def spread_walk(
    context: GateContext,
    oracle: SubsetOracle,
    verifier: Verifier,
    table: SensitivityTable,
    base: QuantPlan,
    start: Probe,
    clock: SearchClock,
    candidates: Sequence[Layer],
    holdout: float,
    *,
    spent: int,
) -> SpreadOutcome | None:
    """Error spread thin: the shortest passing prefix of the ranked entries (ranked.py), by bisection,
    accepted only with a margin of ``holdout`` times its standard error on the subset; then whole groups of
    its entries are dropped while the walk's evaluation budget (:func:`spread_budget`, ``spent`` of it gone
    before the walk) has room, and the fix is verified. None when no INT8-preserving entry can be ranked
    (a given Q/DQ model, the calibrator and equalization rungs disabled): the layers' own SQNR alone may not
    see what breaks the budget (a given model's pairs after a layer), and the walk by bisection does.

    The shortest prefix that passes is, among the prefixes near the threshold, the one the subset's
    sampling error flatters most: without that margin it tends to fail on the samples it never saw.
    """
    names = [layer.name for layer in candidates]
    own = {name: current_sqnr(table, context.plan, base, name) for name in names}
    repairs = context.search.repairs
    equalizable: list[str] = []
    pairs = equalization_candidates(context.model) if RepairAction.EQUALIZE.value in repairs else {}
    if pairs:
        equalizable = [
            n for n in names if isinstance(pairs.get(n), EqualizationPair) and n not in base.equalize
        ]
    entries = rank_entries(
        table,
        names,
        base,
        own,
        calibrators=RepairAction.CALIBRATOR.value in repairs,
        equalizable=equalizable,
    )
    if all(e.kind == "exclude" for e in entries):
        return None
    overrides = sum(1 for e in entries if e.kind == "override")
    outcome = SpreadOutcome(None, (), 0)
    notes = outcome.notes
    notes.append(
        f"error spread thin: {overrides} calibrator overrides ranked by own-SQNR gain, then "
        f"{len(equalizable)} layers equalized and the {len(names)} layers in float, each by own SQNR, worst "
        f"first; the shortest passing prefix of these {len(entries)} entries is found by bisection (at most "
        f"{math.ceil(math.log2(max(len(entries), 2)))} evaluations)"
    )
    if holdout > 0:
        notes.append(
            f"a prefix is accepted when it passes on the {oracle.subset_size} search samples with a margin "
            "of at least the standard error of the difference from the samples the search never uses"
        )

    def accept(probe: Probe) -> bool:
        return clears_margin(probe, holdout)

    def measure(length: int) -> Probe | None:
        plan = prefix_plan(base, entries[:length])
        known = oracle.measured.get(oracle.key(plan))
        if known is not None:
            return known
        if not clock.can_evaluate():
            return None
        last = entries[length - 1].text if length else "none"
        context.progress(
            "bisect", f"trying the first {length} of {len(entries)} ranked entries (up to {last})"
        )
        probe = oracle.measure(plan)
        clock.spent += 1
        outcome.search_evaluations += 1
        context.progress("bisect", f"{length} ranked entries: {'pass' if accept(probe) else 'fail'}")
        return probe

    search = shortest_accepted_prefix(len(entries), measure, accept)
    if search.stopped:
        notes.append(
            f"the ranked search stopped at {clock.limit_text()} ({clock.stopped_by}); the shortest prefix "
            f"accepted so far ({search.length} of {len(entries)} entries) is verified"
        )
    if search.length not in search.probes:
        # nothing measured was accepted: the margin asks more than the subset can show (a rate on few
        # samples); the shortest prefix that passed at all is verified, the verification tells
        plain = [length for length, probe in search.probes.items() if probe.passed]
        if plain:
            search.length = min(plain)
            notes.append(
                f"no prefix passed on the {oracle.subset_size} search samples by a standard error; the "
                f"shortest that passed ({search.length} of {len(entries)} entries) is verified"
            )
    chosen = applied(entries[: search.length])
    plan = prefix_plan(base, chosen)
    # Group drops, while the budget leaves room for them and the one verification (two evaluations).
    room = spread_budget(len(names)) - spent - outcome.search_evaluations - 2
    kinds = {e.kind for e in chosen}
    drops: list[tuple[str, list[RankedEntry], QuantPlan]] = []
    if "override" in kinds and len(kinds) > 1:
        rest = [e for e in chosen if e.kind != "override"]
        drops.append(("the calibrator overrides", rest, prefix_plan(base, rest)))
    if base.calibrator != context.plan.calibrator:
        drops.append(
            (
                f"calibrator {base.calibrator} for the whole model",
                chosen,
                prefix_plan(replace(base, calibrator=context.plan.calibrator), chosen),
            )
        )
    unpruned, dropped = plan, []
    for label, rest, candidate in drops:
        if room <= 0:
            break
        known = oracle.measured.get(oracle.key(candidate))
        if known is None:
            if not clock.can_evaluate():
                break
            context.progress("bisect", f"trying the fix without {label}")
            known = oracle.measure(candidate)
            clock.spent += 1
            outcome.pruning_evaluations += 1
            room -= 1
        if accept(known):
            chosen, plan = rest, candidate
            dropped.append(label)
    outcome.fix = verifier.verify(plan)
    if dropped:
        outcome.pruned = tuple(dropped)
        if outcome.fix.passed:
            notes.append(
                f"dropped {' and '.join(dropped)}, which the fix does not need: the smaller fix is verified"
            )
        else:
            notes.append(
                f"without {' and '.join(dropped)} the fix met the budget on the {oracle.subset_size} search "
                f"samples but not {verifier.where_failed(outcome.fix)}; they are kept"
            )
            outcome.pruned = ()
            chosen = applied(entries[: search.length])
            plan = unpruned
            outcome.fix = verifier.verify(plan)
    outcome.plan = plan
    by_name = {layer.name: layer for layer in candidates}
    producers = {n: p.producer for n, p in pairs.items() if isinstance(p, EqualizationPair)}
    rows = []
    for entry in chosen:
        layer = by_name[entry.name]
        if entry.kind == "override":
            why = (
                f"ranked by own SQNR: {entry.before:.1f} dB with {base.calibrator_for(entry.name)}, "
                f"{entry.after:.1f} dB with {entry.calibrator}"
            )
        else:
            why = f"ranked by own SQNR: {entry.before:.1f} dB in INT8"
        action = {
            "override": RepairAction.CALIBRATOR,
            "equalize": RepairAction.EQUALIZE,
            "exclude": RepairAction.FLOAT,
        }[entry.kind]
        rows.append(
            OffendingLayer(
                index=layer.index,
                name=layer.name,
                op_type=layer.op_type,
                metrics=dict(start.metrics),
                action=action,
                calibrator=entry.calibrator,
                producer=producers.get(entry.name) if entry.kind == "equalize" else None,
                attempts=(why,),
            )
        )
    outcome.offenders = tuple(sorted(rows, key=lambda o: o.index))
    return outcome


def current_sqnr(table: SensitivityTable, spec: QuantPlan, base: QuantPlan, name: str) -> float:
    """A layer's own SQNR under the plan the search starts from."""
    if base.calibrator_for(name) == spec.calibrator_for(name):
        for row in table.layers:
            if row.name == name:
                return row.sqnr_db
    return table.sqnr(name, base.calibrator_for(name))
