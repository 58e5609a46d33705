"""Find the layers that break an INT8 budget, repair them, and verify the fix.

The meaning is that of NVIDIA's layer analyzer (the "seed" method): walk the quantizable layers in
topological order; a layer is an *offender* when quantizing it, together with the layers before it
that were already accepted, makes the budget fail on the search subset. The seed walks every layer
(N evaluations). ``binary`` finds the same offenders by bisection over the quantization prefix:

1. quantize every not-yet-decided layer from position ``p`` on (one evaluation); if that passes,
   there are no more offenders;
2. otherwise the smallest failing prefix ``p..j`` is found by binary search (``ceil(log2(N - p))``
   evaluations, since the full prefix is known to fail), and layer ``j`` is the next offender.

For k offenders among N layers this costs ``1 + sum(1 + ceil(log2 m_i))`` evaluations, with
``m_i <= N`` the number of layers still undecided when offender i is searched: about
``k * ceil(log2 N)`` instead of N. The extra one per offender is the "does everything after it
pass?" probe, so the worst case is ``k * ceil(log2 N) + k + 1`` (offenders early in the graph);
for one offender that is ``ceil(log2 N) + 2``. Bisection assumes that adding layers to the
quantized prefix never improves the result; the search records each probe's margin and, where a
longer passing prefix scored clearly better than a shorter one, scans the interval linearly and
says so. It can only see what its probes measure: an inversion that falls between two probes
(a layer that fails alone, compensated by a later one before the next probe) goes unseen.

Each offender is first *repaired*, climbing the repair ladder (ladder.py) whose rungs keep it in INT8,
each tried in the same context (the accepted layers quantized) until one meets the budget on the subset:

a. another calibrator ("mixed quantization"): the other calibrators' amax for its activation inputs;
b. cross-layer equalization with the layer producing its input (equalize.py): the FP32 model is
   rewritten (same function), recalibrated and quantized again;
c. bias correction (bias_correction.py): its bias absorbs the mean output error INT8 adds;
d. otherwise it is kept in float ("mixed precision").

The spec's ``repairs`` chooses which of a-c are tried. Plans are evaluated through the gate's
:class:`~pytest_int8gate.context.PlanEvaluator`, which counts them; the search sees the gate only through
its read-only :class:`~pytest_int8gate.context.GateContext`.

Before the per-layer search, the cheap *global rungs*: the spec's plan under each other calibrator for the
whole model (one subset evaluation apiece). One that passes, verified, is the fix (one entry); otherwise the
search starts from the closest calibrator when it closes more than half of the gap, and a fix found there
is retried without that switch (fewest entries).

The resulting plan is then *verified* on the full evaluation set and on the evaluation samples after the
search subset, which the search never saw; a plan that misses the budget on either is reported as such,
never as a fix ("did not generalise" when it fails only on the unseen samples). At the evaluation cap, the
best plan measured so far is verified and reported instead of nothing.
Per-layer sensitivity (SQNR of each layer's own output when only its inputs and weights are
quantized, sensitivity.py) comes from one extra pass over the subset. The ``adaptive`` strategy reads it
(:func:`choose_walk`): a few layers far below the others that carry most of the predicted INT8 noise are
strong culprits, walked by ``binary`` in sensitivity order; otherwise the error is spread thin, and the fix
is the shortest passing prefix of ranked entries (ranked.py), INT8-preserving entries first.

This module owns the search's order of phases (:func:`bisect_failure`); the parts live beside it: the probe,
the subset oracle and the shared limits (search_oracle.py), the culprit walks (search_walk.py), the global
calibrator rungs (global_rungs.py), the adaptive reading of the sensitivity and the spread walk
(adaptive.py, ranked.py), pruning (pruning.py) and verification (verification.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from .adaptive import (
    MIN_GAIN_DB,
    SPREAD_MIN_LAYERS,
    choose_walk,
    current_sqnr,
    predicted_repairs,
    spread_walk,
)
from .adaptive import clears_margin as clears_margin
from .choices import CALIBRATORS
from .choices import STRATEGIES as STRATEGIES  # the names; this path stays importable
from .evaluate import Comparison
from .global_rungs import GlobalRungs
from .graph import Layer
from .ladder import CALIBRATOR_ORDER, RepairLadder, Rung, plan_with, rung_of
from .pruning import Pruning
from .quantize import QuantPlan
from .repair import FP32_TOLERANCE

# the report types live in results.py; these paths stay importable
from .results import BisectionReport as BisectionReport
from .results import LayerSensitivity as LayerSensitivity
from .results import OffendingLayer as OffendingLayer
from .results import RepairAction
from .results import VerifiedFix as VerifiedFix

# the search's parts live in their own modules; these paths stay importable
from .search_oracle import MAX_EVALS_OPTION as MAX_EVALS_OPTION
from .search_oracle import MAX_SECONDS_OPTION as MAX_SECONDS_OPTION
from .search_oracle import Probe as Probe
from .search_oracle import SearchClock as SearchClock
from .search_oracle import SubsetOracle as SubsetOracle
from .search_oracle import margin_of as margin_of
from .search_oracle import metrics_text
from .search_oracle import probe_of as probe_of
from .search_oracle import standard_error as standard_error
from .search_walk import SearchState as SearchState
from .search_walk import find_offenders as find_offenders
from .sensitivity import isolated_layer_model as isolated_layer_model  # this path stays importable
from .sensitivity import sensitivity_table
from .verification import Verifier as Verifier

if TYPE_CHECKING:
    from .context import GateContext, PlanEvaluator


def bisect_failure(context: GateContext, evaluator: PlanEvaluator, failing: Comparison) -> BisectionReport:
    """Search, repair, prune and verify for a gate whose full-set comparison ``failing`` missed the budget."""
    started = time.perf_counter()
    search = context.search
    clock = SearchClock(search.max_evaluations, search.max_seconds, started)
    candidates = _candidate_layers(context)
    notes: list[str] = []
    oracle = SubsetOracle(context, evaluator, candidates, search.subset)
    first = oracle(range(len(candidates)), [], {})
    baseline_evaluations = 1
    if first.passed:
        notes.append(
            f"the failure does not reproduce on the first {oracle.subset_size} evaluation samples; the "
            f"search used all {context.eval_data.num_samples} (raise --int8-bisect-subset to speed it up)"
        )
        oracle = SubsetOracle(context, evaluator, candidates, context.eval_data.num_samples)
        first = probe_of(len(candidates), evaluator.judge(failing))
    unresolvable = False
    if evaluator.strict_ci:
        # A strict interval can be too wide to pass on few samples whatever is quantized, and then every
        # layer would look guilty: the plan with nothing quantized (INT8 equal to FP32) tells.
        empty = oracle([], [], {})
        baseline_evaluations += 1
        if not empty.passed and oracle.subset_size < context.eval_data.num_samples:
            notes.append(
                f"with --int8-strict-ci, {oracle.subset_size} samples cannot show the budget is met even "
                f"with no layer quantized; the search used all {context.eval_data.num_samples}"
            )
            oracle = SubsetOracle(context, evaluator, candidates, context.eval_data.num_samples)
            first = probe_of(len(candidates), evaluator.judge(failing))
            empty = oracle([], [], {})
            baseline_evaluations += 1
        unresolvable = not empty.passed
        if unresolvable:
            notes.append(
                f"with --int8-strict-ci, the {oracle.subset_size} evaluation samples cannot show the budget "
                "is met even with no layer quantized, so no layer was searched: no plan can pass on this "
                "set; evaluate on more samples"
            )
    verifier = Verifier(context, evaluator, oracle.subset_size)
    # the margin a subset pass needs before the walk accepts it: the subset's sampling error against the
    # samples it never sees (one standard error of the difference, per unit of the probe's own error)
    holdout = 0.0 if verifier.unseen is None else math.sqrt(1 + oracle.subset_size / verifier.unseen.size)
    if verifier.unseen is None and not unresolvable:
        notes.append(
            f"nothing held out: the search used all {context.eval_data.num_samples} evaluation samples, so "
            "its fix is verified on samples it was searched on (more evaluation samples than "
            "--int8-bisect-subset leave some unseen)"
        )
    # One FP32 pass: each layer's own SQNR under the spec's plan and under every calibrator.
    context.progress("bisect", "measuring each layer's own SQNR under each calibrator")
    # (under every calibrator only when the search may change calibrators: a given Q/DQ model has none)
    calibrators = [c for c in CALIBRATOR_ORDER if c in CALIBRATORS]
    table = sensitivity_table(
        context,
        oracle.reference,
        candidates,
        calibrators if RepairAction.CALIBRATOR.value in search.repairs else [],
    )

    def report(**fields: object) -> BisectionReport:
        values: dict[str, object] = {
            "strategy": search.strategy,
            "total_layers": len(candidates),
            "subset_size": oracle.subset_size,
            "search_evaluations": 0,
            "repair_evaluations": 0,
            "baseline_evaluations": baseline_evaluations,
            "verification_evaluations": verifier.evaluations,
            "offenders": (),
            "sensitivity": table.layers,
            "fix": None,
            "notes": tuple(notes),
            "duration_s": time.perf_counter() - started,
            "unseen_samples": 0 if verifier.unseen is None else verifier.unseen.size,
            "eval_samples": context.eval_data.num_samples,
        }
        values.update(fields)
        return BisectionReport(**values)  # type: ignore[arg-type]

    # Cheap rungs first: the spec's plan under each other calibrator for the whole model.
    if unresolvable:
        rungs = GlobalRungs(context.plan, first)
    else:
        rungs = GlobalRungs.climb(context, oracle, verifier, first, clock)
    notes.extend(rungs.notes)
    global_evaluations = rungs.evaluations
    if rungs.fix is not None and rungs.fix.passed:
        return report(fix=rungs.fix, global_evaluations=global_evaluations, notes=tuple(notes))
    base = rungs.search_base
    start_probe = rungs.search_probe
    if base != oracle.base_plan:
        oracle.base_plan, oracle.best = base, None
        oracle.record(start_probe, list(range(len(candidates))), {})

    walk_mode = ""
    predicted_evaluations = 0
    strategy = search.strategy
    ladder = RepairLadder(context.model, base, search.repairs)
    if strategy == "adaptive" and not unresolvable:

        def not_promising(name: str, calibrator: str, current: str) -> str:
            own, other = table.sqnr(name, current), table.sqnr(name, calibrator)
            if other > own + MIN_GAIN_DB:
                return ""
            return f"own SQNR {other:.1f} dB with it, {own:.1f} dB with {current}"

        ladder = RepairLadder(context.model, base, search.repairs, not_promising=not_promising)
        current = [current_sqnr(table, context.plan, base, layer.name) for layer in candidates]
        walk = choose_walk(current)
        walk_mode = walk.mode
        notes.append(walk.note)
        oracle.reorder(walk.order)
        strategy = "binary"
        # The repairs the sensitivity table predicts, a calibrator for the model and a few overrides,
        # each set evaluated in one go (at most two sets when error is spread thin, one otherwise).
        spread = None
        if walk.mode == "spread" and len(candidates) > SPREAD_MIN_LAYERS:
            spread = spread_walk(
                context,
                oracle,
                verifier,
                table,
                base,
                start_probe,
                clock,
                candidates,
                holdout,
                spent=baseline_evaluations + global_evaluations,
            )
        if spread is not None:
            notes.extend(spread.notes)
            spread_fix, spread_offenders = spread.fix, list(spread.offenders)
            spread_pruning, spread_pruned = spread.pruning_evaluations, spread.pruned
            if (
                spread_fix is not None
                and spread_fix.passed
                and spread.plan is not None
                and spread.plan.exclude - context.plan.exclude
            ):
                # Layers in float cost the deployment most, and the ranking put them in by own SQNR, which
                # need not follow their effect on the outputs: each is tried back in INT8, as it is or with
                # an INT8-preserving rung, best own SQNR first.
                pruning = Pruning(
                    context,
                    oracle,
                    verifier,
                    clock,
                    order=[layer.name for layer in oracle.layers],
                    ladder=ladder,
                    float_only=True,
                    accept=lambda probe: clears_margin(probe, holdout),
                )
                spread_fix = pruning.prune(spread.plan, spread_fix)
                notes.extend(pruning.notes)
                spread_pruning += pruning.evaluations
                spread_pruned = (*spread_pruned, *pruning.dropped)
                spread_offenders = _after_pruning(spread_offenders, pruning, ladder, candidates)
            if spread_fix is not None:
                notes.extend(verifier.generalisation_notes(spread_fix))
            return report(
                search_evaluations=spread.search_evaluations,
                offenders=tuple(spread_offenders),
                fix=spread_fix,
                notes=tuple(notes),
                verification_evaluations=verifier.evaluations,
                global_evaluations=global_evaluations,
                pruning_evaluations=spread_pruning,
                pruned=spread_pruned,
                walk=walk_mode,
                stopped_by=clock.stopped_by,
                duration_s=time.perf_counter() - started,
            )
        limit = math.ceil(math.log2(max(len(candidates), 2))) + 1
        names = [layer.name for layer in candidates]
        tries = predicted_repairs(table, names, base, limit)[: 2 if walk.mode == "spread" else 1]
        for predicted in tries:
            if not clock.can_evaluate():
                break
            plan = predicted.plan(base)
            context.progress("bisect", f"trying the overrides predicted by own SQNR: {predicted.text()}")
            probe = oracle.measure(replace(plan, include=frozenset(names)))
            predicted_evaluations += 1
            clock.spent += 1
            if not probe.passed:
                notes.append(
                    f"the calibrator overrides predicted by own SQNR ({predicted.text()}) missed the budget "
                    f"on the {oracle.subset_size} search samples ({metrics_text(probe)})"
                )
                continue
            predicted_fix = verifier.verify(plan)
            if not predicted_fix.passed:
                notes.append(
                    f"the calibrator overrides predicted by own SQNR ({predicted.text()}) met the budget on "
                    f"the {oracle.subset_size} search samples but not {verifier.where_failed(predicted_fix)}"
                )
                continue
            by_name = {layer.name: layer for layer in candidates}
            failed_metrics = dict(start_probe.metrics)
            rows = [
                OffendingLayer(
                    index=by_name[name].index,
                    name=name,
                    op_type=by_name[name].op_type,
                    metrics=failed_metrics,
                    action=RepairAction.CALIBRATOR,
                    calibrator=calibrator,
                    attempts=(
                        f"predicted by own SQNR: {before:.1f} dB with {base.calibrator_for(name)}, "
                        f"{after:.1f} dB with {calibrator}",
                    ),
                )
                for name, (calibrator, before, after) in predicted.repairs.items()
            ]
            pruning = Pruning(context, oracle, verifier, clock)
            predicted_fix = pruning.prune(plan, predicted_fix)
            notes.extend(pruning.notes)
            return report(
                search_evaluations=predicted_evaluations,
                offenders=tuple(sorted(rows, key=lambda o: o.index)),
                fix=predicted_fix,
                notes=tuple(notes),
                verification_evaluations=verifier.evaluations,
                global_evaluations=global_evaluations,
                pruning_evaluations=pruning.evaluations,
                pruned=tuple(pruning.dropped),
                walk=walk_mode,
                stopped_by=clock.stopped_by,
                duration_s=time.perf_counter() - started,
            )

    def repair(index: int, state: SearchState[Rung]) -> Rung | None:
        def attempt(rung: Rung) -> bool | None:
            if clock.spent + state.search_evaluations + state.repair_evaluations >= clock.max_evaluations:
                clock.stopped_by = clock.stopped_by or MAX_EVALS_OPTION
                return None
            if not clock.time_left():
                clock.stopped_by = clock.stopped_by or MAX_SECONDS_OPTION
                return None
            state.repair_evaluations += 1
            return oracle(state.accepted, [index], {**state.overrides, index: rung}).passed

        return ladder.climb(oracle.layers[index].name, attempt)

    # Adaptive: spread thin with no INT8 entry to rank, or once the culprit walk meets more offenders than
    # layers stood out (a handful of layers is walked one by one: floating "the rest" saves nothing there).
    spread_after = None
    if walk_mode and len(candidates) > SPREAD_MIN_LAYERS:
        spread_after = 0 if walk_mode == "spread" else 2 * walk.outliers + 1
    n = len(candidates)
    if unresolvable:
        state: SearchState[Rung] = SearchState()
    else:
        # the whole-plan probe the walk starts from is counted as its first evaluation (when the walk starts)
        reuse_first = strategy == "binary"
        state = find_offenders(
            n,
            oracle,
            strategy=strategy,
            repair=repair,
            max_evaluations=clock.max_evaluations,
            spent=clock.spent,
            first=start_probe if reuse_first else None,
            search_limit=n + 1 - predicted_evaluations,
            time_left=clock.time_left,
            max_seconds=clock.max_seconds,
            spread_after=spread_after,
        )
        if state.counted_first:  # the walk's count holds it now: not also the phase that measured it
            if base == context.plan:
                baseline_evaluations -= 1
            else:
                global_evaluations -= 1
        clock.spent += state.search_evaluations + state.repair_evaluations
        if state.stopped_by:
            clock.stopped_by = clock.stopped_by or state.stopped_by
    notes.extend(state.notes)
    if state.floated_rest:
        notes.append(
            f"error spread thin: the {state.floated_rest} layers with the lowest own SQNR that the rest "
            "cannot take in INT8 (the shortest failing prefix, by bisection) are kept in float at once; "
            "pruning then tries each back in INT8"
        )
    offenders: list[OffendingLayer] = []
    for index in state.offenders + list(state.repaired):
        layer = oracle.layers[index]
        offenders.append(
            ladder.offender(layer, dict(state.offender_probes[index].metrics), state.repaired.get(index))
        )
    offenders.sort(key=lambda o: o.index)
    fix = None
    fix_plan: QuantPlan | None = None
    pruning_evaluations = 0
    pruned: tuple[str, ...] = ()
    if state.capped:
        fix, fix_plan = _best_so_far(oracle, verifier, state, notes, clock)
    elif offenders and state.floated_rest:
        # spread thin: the plan with the rest in float passed where it was searched; pruning first, then
        # one verification of the smaller fix (the larger one is verified only if that fails)
        fix_plan = _fix_plan(base, offenders)
    elif offenders:
        fix_plan = _fix_plan(base, offenders)
        fix = verifier.verify(fix_plan)
        repaired = [o.name for o in offenders if o.action != "float"]
        if not fix.passed and repaired:
            in_float = [
                replace(o, action=RepairAction.FLOAT, calibrator=None, producer=None) for o in offenders
            ]
            fallback_plan = _fix_plan(rungs.search_base, in_float)
            fallback = verifier.verify(fallback_plan)
            if fallback.passed:
                notes.append(
                    f"the repair of {', '.join(repaired)} met the budget on the {oracle.subset_size} "
                    f"search samples but not {verifier.where_failed(fix)}; kept in float instead"
                )
                offenders, fix, fix_plan = in_float, fallback, fallback_plan
    elif not unresolvable:
        notes.append(
            "no single layer is to blame: every prefix passes on the search subset, yet the full plan fails"
        )
    if fix_plan is not None and (fix is None or fix.passed):
        # float layers tried back in INT8 in the walk's order (adaptive: best own SQNR first)
        pruning = Pruning(
            context,
            oracle,
            verifier,
            clock,
            order=[layer.name for layer in oracle.layers],
            ladder=ladder if state.floated_rest else None,
        )
        fix = pruning.prune(fix_plan, fix)
        pruning_evaluations = pruning.evaluations
        pruned = tuple(pruning.dropped)
        notes.extend(pruning.notes)
        offenders = _after_pruning(offenders, pruning, ladder, candidates)
    if fix is not None and fix.fp32_max_abs_difference is not None and fix.fp32_reference_max_abs:
        # the fix as finally verified (after pruning): its equalized FP32 model must be the same function
        relative = fix.fp32_max_abs_difference / fix.fp32_reference_max_abs
        if relative > FP32_TOLERANCE:
            notes.append(
                "the equalized FP32 model differs from the original by "
                f"{fix.fp32_max_abs_difference:.3g} "
                f"({relative:.2g} of the largest output), more than float rounding explains"
            )
    if fix is None and rungs.fix is not None:
        fix = rungs.fix  # a calibrator for the model that passed on the subset only: shown as not a fix
    if fix is not None:
        searched_pass = not state.capped or (oracle.best is not None and oracle.best[0].passed)
        notes.extend(verifier.generalisation_notes(fix, passed_where_searched=searched_pass))
    return report(
        search_evaluations=state.search_evaluations + predicted_evaluations,
        repair_evaluations=state.repair_evaluations,
        baseline_evaluations=baseline_evaluations,
        verification_evaluations=verifier.evaluations,
        offenders=tuple(offenders),
        fix=fix,
        notes=tuple(notes),
        duration_s=time.perf_counter() - started,
        global_evaluations=global_evaluations,
        pruning_evaluations=pruning_evaluations,
        pruned=pruned,
        walk=walk_mode,
        stopped_by=clock.stopped_by,
    )



def _after_pruning(
    offenders: Sequence[OffendingLayer], pruning: Pruning, ladder: RepairLadder, candidates: Sequence[Layer]
) -> list[OffendingLayer]:
    """The report's rows after ``pruning``: a layer back in INT8 leaves; one a rung brought back says so."""
    back = {name for kind, name, _ in pruning.dropped_entries if kind == "exclude"}
    by_name = {layer.name: layer for layer in candidates}
    return [
        ladder.offender(by_name[o.name], o.metrics, pruning.rungs[o.name]) if o.name in pruning.rungs else o
        for o in offenders
        if not (o.action is RepairAction.FLOAT and o.name in back and o.name not in pruning.rungs)
    ]


def _fix_plan(base: QuantPlan, offenders: Sequence[OffendingLayer]) -> QuantPlan:
    return plan_with(base, {o.name: rung_of(o) for o in offenders})


def _best_so_far(
    oracle: SubsetOracle, verifier: Verifier, state: SearchState[Rung], notes: list[str], clock: SearchClock
) -> tuple[VerifiedFix | None, QuantPlan | None]:
    """When a limit stopped the search: the best plan it measured (the passing one with most layers in
    INT8, else the one with the best margin), verified, so the report never ends at "no fix"."""
    best = oracle.best
    if best is None:
        return None, None
    probe, quantized, overrides = best
    plan = oracle.deployable(quantized, overrides)
    in_float = len(oracle.layers) - len(quantized)
    option = state.stopped_by or clock.stopped_by
    if option == MAX_SECONDS_OPTION:
        where, advice = (
            f"the wall-time budget of {clock.max_seconds:g} s",
            f"raise {option} to search further",
        )
    elif option:
        where, advice = "the cap", f"raise {option} to search further"
    else:
        where = "the search limit"
        advice = "the layers not yet searched are kept in float"
    notes.append(
        f"best plan found before {where}: {len(quantized)} of {len(oracle.layers)} layers in INT8 "
        f"({in_float} kept in float), {metrics_text(probe)} on the {oracle.subset_size} search samples; "
        f"{advice}"
    )
    return verifier.verify(plan), plan


def _candidate_layers(context: GateContext) -> list[Layer]:
    """The layers the spec's plan actually quantizes, in topological order."""
    quantized = set(context.default_quantized.quantized_layers)
    return [layer for layer in context.model.info.layers if layer.name in quantized]
