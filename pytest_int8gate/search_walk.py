"""The culprit walks on an abstract oracle: ``binary`` (bisection over the quantization prefix) and
``linear`` (the seed method), each offender repaired as it is found (see bisect.py for the meaning)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .search_oracle import MAX_EVALS_OPTION, MAX_SECONDS_OPTION, Probe

#: A longer prefix must beat a shorter one by more than this margin to count as non-monotonic.
MONOTONIC_TOLERANCE = 0.01
#: How the search walks a list of layers (the adaptive strategy walks it in sensitivity order with binary).
SEARCH_WALKS = ("binary", "linear")


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
    #: Whether ``first`` (the probe measured before the walk) is counted in ``search_evaluations``: a walk
    #: that a limit stops before it starts does not count it, and its caller must.
    counted_first: bool = False


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
            state.counted_first = True
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
