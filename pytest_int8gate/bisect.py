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
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

from .choices import CALIBRATORS
from .choices import STRATEGIES as STRATEGIES  # the names; this path stays importable
from .equalize import EqualizationPair, fp32_difference
from .evaluate import Comparison
from .gate import MetricResult
from .graph import COMPUTE_OPS, Layer
from .ladder import (
    CALIBRATOR_ORDER,
    CalibratorRung,
    RepairLadder,
    Rung,
    equalization_candidates,
    plan_with,
    rung_of,
)
from .placement import model_macs
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
from .repair import FP32_TOLERANCE

# the report types live in results.py; these paths stay importable
from .results import BisectionReport as BisectionReport
from .results import LayerSensitivity as LayerSensitivity
from .results import OffendingLayer as OffendingLayer
from .results import RepairAction
from .results import VerifiedFix as VerifiedFix
from .sensitivity import SensitivityTable, sensitivity_table
from .sensitivity import isolated_layer_model as isolated_layer_model  # this path stays importable

if TYPE_CHECKING:
    from .context import GateContext, PlanEvaluator

#: A longer prefix must beat a shorter one by more than this margin to count as non-monotonic.
MONOTONIC_TOLERANCE = 0.01
#: How the search walks a list of layers (the adaptive strategy walks it in sensitivity order with binary).
SEARCH_WALKS = ("binary", "linear")
#: The options that raise the search's limits (named where a limit stopped it).
MAX_EVALS_OPTION = "--int8-bisect-max-evals"
MAX_SECONDS_OPTION = "--int8-bisect-max-seconds"
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
#: The search starts from another calibrator for the whole model only when that calibrator closes more
#: than this share of the spec's plan's gap to the budget (margins are negative when failing).
SWITCH_SHARE = 0.5


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
        scale = max(abs(r.limit), 1e-6) if r.name in ("sqnr_db", "max_abs_error") else 1.0
        if r.name == "cosine":
            output = comparison.output(r.output) if r.output else comparison.primary
            cosines = output.per_sample_cosine
            if cosines.size > 1:
                errors.append(float(np.std(cosines, ddof=1)) / math.sqrt(cosines.size) / scale)
        elif r.ci95 is not None:
            errors.append((r.ci95[1] - r.ci95[0]) / (2 * 1.96) / scale)
    return max(errors)


def margin_of(results: Sequence[MetricResult]) -> float:
    """The tightest normalised slack of a judged budget: >= 0 when every metric passes."""
    slacks = []
    for r in results:
        observed = r.observed
        if r.strict_ci and r.ci95 is not None:  # a strict gate judges the interval's far bound
            observed = r.ci95[1] if r.upper else r.ci95[0]
        slack = (r.limit - observed) if r.upper else (observed - r.limit)
        scale = max(abs(r.limit), 1e-6) if r.name in ("sqnr_db", "max_abs_error") else 1.0
        slacks.append(slack / scale)
    return min(slacks) if slacks else 0.0


# ---- the search, on an abstract oracle ----------------------------------------------------------

#: What a repair of one layer is, to the search: any value the oracle understands (a ladder rung).
RepairT = TypeVar("RepairT")
#: (accepted layers, trial layers, repairs by layer) -> probe; the oracle quantizes exactly those.
Oracle = Callable[[Sequence[int], Sequence[int], dict[int, RepairT]], Probe]


@dataclass
class SearchState(Generic[RepairT]):
    """Mutable bookkeeping of one search."""

    accepted: list[int] = field(default_factory=list)
    overrides: dict[int, RepairT] = field(default_factory=dict)
    offenders: list[int] = field(default_factory=list)
    repaired: dict[int, RepairT] = field(default_factory=dict)
    offender_probes: dict[int, Probe] = field(default_factory=dict)
    search_evaluations: int = 0
    repair_evaluations: int = 0
    notes: list[str] = field(default_factory=list)
    capped: bool = False
    #: The option that raises the limit that stopped the search ("" when no limit stopped it).
    stopped_by: str = ""
    #: Layers kept in float at once when the error was found spread thin (see ``spread_after``).
    floated_rest: int = 0


def find_offenders(
    n_layers: int,
    oracle: Oracle[RepairT],
    *,
    strategy: str = "binary",
    repair: Callable[[int, SearchState[RepairT]], RepairT | None] | None = None,
    max_evaluations: int = 10_000,
    spent: int = 0,
    first: Probe | None = None,
    search_limit: int | None = None,
    time_left: Callable[[], bool] | None = None,
    max_seconds: float | None = None,
    spread_after: int | None = None,
) -> SearchState[RepairT]:
    """Run the culprit search over layer positions ``0..n_layers-1`` with ``oracle``.

    ``spent`` evaluations made before the search count towards ``max_evaluations``. The search itself
    never makes more than ``search_limit`` evaluations (default ``n_layers + 1``, what a linear scan
    costs); when that limit stops it, the layers not yet searched are left undecided (not accepted).
    ``time_left`` (with ``max_seconds``, for the note) stops it when the wall-time budget is spent.

    ``first`` is the already-measured probe of every layer quantized (binary strategy only): the
    evaluation that showed the failure is counted once and not repeated.

    ``spread_after`` (binary only): once that many offenders are settled, the error is taken to be spread
    thin: the shortest failing prefix of the undecided layers is found once more and every layer from its
    end on is kept in float at once (``floated_rest`` of them), instead of one search per offender.
    """
    if strategy not in SEARCH_WALKS:
        raise ValueError(f"unknown bisection strategy {strategy!r}; choose one of {', '.join(SEARCH_WALKS)}.")
    limit = n_layers + 1 if search_limit is None else search_limit
    state: SearchState[RepairT] = SearchState()

    def probe(trial: Sequence[int]) -> Probe:
        state.search_evaluations += 1
        return oracle(state.accepted, trial, state.overrides)

    def settle(offender: int, failing: Probe) -> None:
        state.offender_probes[offender] = failing
        calibrator = repair(offender, state) if repair is not None else None
        if calibrator is None:
            state.offenders.append(offender)
        else:
            state.repaired[offender] = calibrator
            state.overrides[offender] = calibrator
            state.accepted.append(offender)

    def stop(note: str, option: str) -> bool:
        if not state.capped:
            state.notes.append(note)
            state.stopped_by = option
        state.capped = True
        return False

    def budget_left() -> bool:
        if spent + state.search_evaluations + state.repair_evaluations >= max_evaluations:
            return stop(
                f"stopped at the cap of {max_evaluations} evaluations (--int8-bisect-max-evals); "
                "the search is incomplete",
                MAX_EVALS_OPTION,
            )
        if state.search_evaluations >= limit:
            return stop(
                f"stopped after {limit} search evaluations, what a linear scan of the {n_layers} layers "
                "costs; the search is incomplete",
                "",
            )
        if time_left is not None and not time_left():
            return stop(
                f"stopped at the wall-time budget of {max_seconds:g} s ({MAX_SECONDS_OPTION}); "
                "the search is incomplete",
                MAX_SECONDS_OPTION,
            )
        return True

    if strategy == "linear":
        for i in range(n_layers):
            if not budget_left():
                break
            result = probe([i])
            if result.passed:
                state.accepted.append(i)
            else:
                settle(i, result)
        return state

    position = 0
    while position < n_layers and budget_left():
        rest = list(range(position, n_layers))
        if position == 0 and first is not None:
            state.search_evaluations += 1  # measured before: counted here, not repeated
            whole = first
        else:
            whole = probe(rest)
        if whole.passed:
            state.accepted.extend(rest)
            break
        offender, probes = _first_failing_prefix(position, n_layers, whole, probe, budget_left)
        if offender is None:
            break
        if spread_after is not None and len(state.offenders) + len(state.repaired) >= spread_after:
            state.accepted.extend(range(position, offender))
            failing = probes.get(offender, whole)
            for index in range(offender, n_layers):
                state.offender_probes[index] = failing
                state.offenders.append(index)
            state.floated_rest = n_layers - offender
            break
        ambiguous = _non_monotonic_interval(probes)
        if ambiguous is not None:
            short_end, long_end = ambiguous
            # the prefix up to short_end passed: the scan starts after it
            state.notes.append(
                f"bisection assumption broke between positions {short_end} and {long_end} (a longer "
                f"quantized prefix scored better); scanned positions {short_end + 1}..{offender} linearly"
            )
            for i in range(short_end + 1, offender):
                if not budget_left():
                    return state
                result = probe(list(range(position, i + 1)))
                probes[i] = result
                if not result.passed:
                    offender = i
                    break
        state.accepted.extend(range(position, offender))
        settle(offender, probes.get(offender, whole))
        position = offender + 1
    return state


def _first_failing_prefix(
    start: int,
    stop: int,
    whole: Probe,
    probe: Callable[[Sequence[int]], Probe],
    budget_left: Callable[[], bool],
) -> tuple[int | None, dict[int, Probe]]:
    """Smallest j in [start, stop) with prefix start..j failing, given that start..stop-1 fails."""
    probes: dict[int, Probe] = {stop - 1: whole}
    lo, hi = start - 1, stop - 1  # prefix ending at lo passes (or is empty), ending at hi fails
    while hi - lo > 1:
        if not budget_left():
            return None, probes
        mid = (lo + hi) // 2
        result = probe(list(range(start, mid + 1)))
        probes[mid] = result
        if result.passed:
            lo = mid
        else:
            hi = mid
    return hi, probes


def _non_monotonic_interval(probes: dict[int, Probe]) -> tuple[int, int] | None:
    """Two passing probes where the longer prefix scored clearly better than the shorter one.

    Only passing prefixes matter: a clear gain from quantizing more layers means a prefix in between
    may fail although both ends pass, which bisection would never see. How badly failing prefixes
    fail does not change where the first failure is.
    """
    ordered = sorted(probes.items())
    for i, (short_end, short) in enumerate(ordered):
        for long_end, long in ordered[i + 1 :]:
            if long.passed and long.margin > short.margin + MONOTONIC_TOLERANCE:
                return short_end, long_end
    return None


# ---- the search on a real model -----------------------------------------------------------------


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
        current = [_current_sqnr(table, context.plan, base, layer.name) for layer in candidates]
        walk = choose_walk(current)
        walk_mode = walk.mode
        notes.append(walk.note)
        oracle.reorder(walk.order)
        strategy = "binary"
        # The repairs the sensitivity table predicts, a calibrator for the model and a few overrides,
        # each set evaluated in one go (at most two sets when error is spread thin, one otherwise).
        spread = None
        if walk.mode == "spread" and len(candidates) > SPREAD_MIN_LAYERS:
            spread = _spread_walk(
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
            if spread.fix is not None:
                notes.extend(verifier.generalisation_notes(spread.fix))
            return report(
                search_evaluations=spread.search_evaluations,
                offenders=spread.offenders,
                fix=spread.fix,
                notes=tuple(notes),
                verification_evaluations=verifier.evaluations,
                global_evaluations=global_evaluations,
                pruning_evaluations=spread.pruning_evaluations,
                pruned=spread.pruned,
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
                    f"on the {oracle.subset_size} search samples ({_metrics_text(probe)})"
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
        # the whole-plan probe the walk starts from is counted as its first evaluation
        reuse_first = strategy == "binary"
        if reuse_first:
            if base == context.plan:
                baseline_evaluations -= 1
            else:
                global_evaluations -= 1
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
        back = {name for kind, name, _ in pruning.dropped_entries if kind == "exclude"}
        by_name = {layer.name: layer for layer in candidates}
        offenders = [
            ladder.offender(by_name[o.name], o.metrics, pruning.rungs[o.name])
            if o.name in pruning.rungs
            else o
            for o in offenders
            if not (o.action is RepairAction.FLOAT and o.name in back and o.name not in pruning.rungs)
        ]
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


def _spread_walk(
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
    own = {name: _current_sqnr(table, context.plan, base, name) for name in names}
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


def _current_sqnr(table: SensitivityTable, spec: QuantPlan, base: QuantPlan, name: str) -> float:
    """A layer's own SQNR under the plan the search starts from."""
    if base.calibrator_for(name) == spec.calibrator_for(name):
        for row in table.layers:
            if row.name == name:
                return row.sqnr_db
    return table.sqnr(name, base.calibrator_for(name))


class Pruning:
    """After a fix passes: drop each entry it does not need (float layers first, then INT8 repairs, then
    the calibrator for the whole model), each drop measured on the search samples, the pruned fix
    verified like any fix."""

    def __init__(
        self,
        context: GateContext,
        oracle: SubsetOracle,
        verifier: Verifier,
        clock: SearchClock,
        *,
        order: Sequence[str] = (),
        ladder: RepairLadder | None = None,
    ) -> None:
        """``order``: the order float layers are tried back in INT8 (default: topological); ``ladder``: the
        INT8-preserving rungs tried on a layer in float that cannot come back as it is."""
        self.context = context
        self.oracle = oracle
        self.verifier = verifier
        self.clock = clock
        self.order = list(order)
        self.ladder = ladder
        #: layer -> the rung that brought it back from float
        self.rungs: dict[str, Rung] = {}
        self.evaluations = 0
        self.dropped: list[str] = []
        #: (kind, layer, label) of each entry dropped
        self.dropped_entries: list[tuple[str, str, str]] = []
        self.notes: list[str] = []

    def measure(self, candidate: QuantPlan, label: str) -> Probe | None:
        """``candidate`` on the subset (remembered plans cost nothing); None when a limit stops pruning."""
        known = self.oracle.measured.get(self.oracle.key(candidate))
        if known is not None:
            return known
        if not self.clock.can_evaluate():
            self.notes.append(
                f"pruning stopped at {self.clock.limit_text()} ({self.clock.stopped_by}); "
                "the fix may hold entries it does not need"
            )
            return None
        self.context.progress("bisect", f"pruning: trying the fix without {label}")
        self.evaluations += 1
        self.clock.spent += 1
        return self.oracle.measure(candidate)

    def entries(self, plan: QuantPlan) -> list[tuple[str, str, str]]:
        """(kind, layer, what the entry is) for each entry of ``plan`` beyond the spec's, in the order they
        are tried: float layers first (the costliest), then INT8 repairs, then the model's calibrator."""
        spec = self.context.plan
        order = {layer.name: i for i, layer in enumerate(self.context.model.info.layers)}

        def ordered(names: Iterable[str]) -> list[str]:
            return sorted(names, key=lambda n: order.get(n, 0))

        first = {name: i for i, name in enumerate(self.order)}
        floated = sorted(
            plan.exclude - spec.exclude, key=lambda n: (first.get(n, len(first)), order.get(n, 0))
        )
        found = [("exclude", n, f"{n} in float") for n in floated]
        found += [
            ("override", n, f"{n} with calibrator {plan.overrides[n]}")
            for n in ordered(plan.overrides)
            if spec.overrides.get(n) != plan.overrides[n]
        ]
        found += [("equalize", n, f"{n} equalized") for n in ordered(plan.equalize - spec.equalize)]
        found += [
            ("bias_correction", n, f"{n} bias-corrected")
            for n in ordered(plan.bias_correction - spec.bias_correction)
        ]
        found += [
            ("smoothquant", n, f"{n} smoothed")
            for n in ordered(set(plan.smoothquant) - set(spec.smoothquant))
        ]
        if plan.calibrator != spec.calibrator:
            found.append(("calibrator", "", f"calibrator {plan.calibrator} for the whole model"))
        return found

    def without(self, plan: QuantPlan, kind: str, name: str) -> QuantPlan:
        """``plan`` with one entry dropped (back to the spec's setting)."""
        spec = self.context.plan
        if kind == "exclude":
            return replace(plan, exclude=plan.exclude - {name})
        if kind == "override":
            kept = {k: v for k, v in plan.overrides.items() if k != name}
            if name in spec.overrides:
                kept[name] = spec.overrides[name]
            return replace(plan, overrides=kept)
        if kind == "equalize":
            return replace(plan, equalize=plan.equalize - {name})
        if kind == "bias_correction":
            return replace(plan, bias_correction=plan.bias_correction - {name})
        if kind == "smoothquant":
            return replace(plan, smoothquant={k: v for k, v in plan.smoothquant.items() if k != name})
        return replace(plan, calibrator=spec.calibrator)

    def prune(self, plan: QuantPlan, fix: VerifiedFix | None) -> VerifiedFix:
        """``plan`` without the entries it does not need, verified; ``fix`` is ``plan`` verified (None: not
        yet, and verified only when the smaller fix is not one)."""
        entries = self.entries(plan)
        if len(entries) < 1:
            return self.verifier.verify(plan) if fix is None else fix
        current = plan
        for kind, name, label in entries:
            outcome = self.measure(self.without(current, kind, name), label)
            if outcome is None:
                break
            if outcome.passed:
                current = self.without(current, kind, name)
                self.dropped.append(label)
                self.dropped_entries.append((kind, name, label))
                continue
            if kind != "exclude" or self.ladder is None:
                continue
            # a layer in float the rest cannot take back as it is: its INT8-preserving rungs, in this context
            back = self.without(current, kind, name)
            stopped = False

            def attempt(
                rung: Rung, back: QuantPlan = back, name: str = name, label: str = label
            ) -> bool | None:
                nonlocal stopped
                result = self.measure(rung.apply(back, name), f"{label}, {name} with {rung.text} instead")
                stopped = result is None
                return None if result is None else result.passed

            rung = self.ladder.climb(name, attempt)
            if rung is not None:
                current = rung.apply(back, name)
                self.dropped.append(f"{label} (kept in INT8 with {rung.text})")
                self.dropped_entries.append((kind, name, label))
                self.rungs[name] = rung
            if stopped:
                break
        if not self.dropped:
            return self.verifier.verify(plan) if fix is None else fix
        pruned = self.verifier.verify(current)
        if pruned.passed:
            self.notes.append(
                f"pruned {len(self.dropped)} of {len(entries)} entries the fix does not need "
                f"({'; '.join(self.dropped)}): the smaller fix is verified"
            )
            return pruned
        self.notes.append(
            f"without {'; '.join(self.dropped)} the fix met the budget on the {self.oracle.subset_size} "
            f"search samples but not {self.verifier.where_failed(pruned)}; those entries are kept"
        )
        self.dropped = []
        self.dropped_entries = []
        self.rungs = {}
        return self.verifier.verify(plan) if fix is None else fix


def _metrics_text(probe: Probe) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in probe.metrics)


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
            rungs.tried.append(f"{calibrator} {_metrics_text(probe)}")
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
        f"({in_float} kept in float), {_metrics_text(probe)} on the {oracle.subset_size} search samples; "
        f"{advice}"
    )
    return verifier.verify(plan), plan


def _candidate_layers(context: GateContext) -> list[Layer]:
    """The layers the spec's plan actually quantizes, in topological order."""
    quantized = set(context.default_quantized.quantized_layers)
    return [layer for layer in context.model.info.layers if layer.name in quantized]
