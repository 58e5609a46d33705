"""The spread walk of the adaptive search: the fix's candidate entries ranked by what the per-layer
sensitivity predicts (calibrator overrides by own-SQNR gain, then cross-layer equalization and then float
for each layer, worst own SQNR first), and the shortest prefix of that ranking that meets the budget,
found by bisection.

When INT8 error is spread thin over many layers, no single layer is to blame and a walk that settles
offenders one at a time spends an evaluation per layer. Ranked entries turn the question into one
monotone prefix: the more entries applied, the less INT8 error is left. Applying every entry keeps every
layer in float (FP32, which meets any budget the search can resolve), applying none is the plan that
failed, so the shortest passing prefix of M entries costs ``ceil(log2 M)`` evaluations, and the fix is
small by construction: INT8-preserving entries come first, and float only when they cannot do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from .quantize import QuantPlan
from .sensitivity import SensitivityTable

#: An override enters the ranking when it raises the layer's own SQNR by more than this (dB).
RANK_GAIN_DB = 1.0
#: The culprit walk is chosen when keeping the strong culprits in float is predicted to remove at least this
#: share of the INT8 noise (own SQNR noise powers, summed as if independent): "most of the gap".
CULPRIT_NOISE_SHARE = 0.5


@dataclass(frozen=True)
class RankedEntry:
    """One entry of a candidate fix: a layer with another calibrator, equalized with its producer, or kept
    in float."""

    kind: str  # "override", "equalize" or "exclude"
    name: str
    calibrator: str | None  # the override's calibrator (None for the others)
    before: float  # the layer's own SQNR under the plan the search starts from (dB)
    after: float  # its predicted own SQNR with the entry (dB; inf in float, nan when not predicted)

    @property
    def text(self) -> str:
        if self.kind == "exclude":
            return f"{self.name} in float"
        if self.kind == "equalize":
            return f"{self.name} equalized"
        return f"{self.name} with calibrator {self.calibrator}"

    def apply(self, plan: QuantPlan) -> QuantPlan:
        if self.kind == "exclude":
            return replace(plan, exclude=plan.exclude | {self.name})
        if self.kind == "equalize":
            return replace(plan, equalize=plan.equalize | {self.name})
        assert self.calibrator is not None
        return replace(plan, overrides={**plan.overrides, self.name: self.calibrator})


def rank_entries(
    table: SensitivityTable,
    names: Sequence[str],
    base: QuantPlan,
    own: Mapping[str, float],
    *,
    calibrators: bool = True,
    equalizable: Collection[str] = (),
) -> list[RankedEntry]:
    """Every override that raises a layer's own SQNR by more than :data:`RANK_GAIN_DB`, largest gain first
    (when ``calibrators``), then each of the ``equalizable`` layers equalized, then every layer in float;
    those two the lowest own SQNR (with its override, when it has one) first.

    ``own``: each layer's own SQNR under ``base``.
    """
    overrides = []
    for name in names if calibrators else ():
        best = table.best_calibrator(name, base.calibrator_for(name))
        if best is not None and math.isfinite(best[1]) and best[1] > RANK_GAIN_DB:
            overrides.append(RankedEntry("override", name, best[0], own[name], own[name] + best[1]))
    overrides.sort(key=lambda e: (-(e.after - e.before), e.name))
    after = {e.name: e.after for e in overrides}

    def worst_first(entries: list[RankedEntry]) -> list[RankedEntry]:
        return sorted(entries, key=lambda e: (_finite(e.before), names.index(e.name)))

    equalized = worst_first(
        [RankedEntry("equalize", n, None, after.get(n, own[n]), math.nan) for n in names if n in equalizable]
    )
    floats = worst_first([RankedEntry("exclude", n, None, after.get(n, own[n]), math.inf) for n in names])
    return overrides + equalized + floats


def spread_budget(layers: int) -> int:
    """The evaluations the spread walk may spend in all on ``layers`` candidates, global calibrator rungs
    and verification included: two bisections' worth (``2 * ceil(log2 N)``) and four fixed ones. Ranking
    several entries per layer costs about ``ceil(log2 N) + 2`` bisection steps; what is left drops groups
    of entries the fix does not need."""
    return 2 * math.ceil(math.log2(max(layers, 2))) + 4


def prefix_plan(base: QuantPlan, entries: Sequence[RankedEntry]) -> QuantPlan:
    """``base`` with ``entries`` applied (a layer also in float is only in float)."""
    plan = base
    for entry in applied(entries):
        plan = entry.apply(plan)
    return plan


def applied(entries: Sequence[RankedEntry]) -> list[RankedEntry]:
    """The entries of a prefix that shape its plan (an INT8 repair of a layer also in float does not)."""
    floated = {e.name for e in entries if e.kind == "exclude"}
    return [e for e in entries if e.kind == "exclude" or e.name not in floated]


def culprit_noise_share(own: Sequence[float], culprits: Sequence[int]) -> float:
    """The share of the INT8 noise the ``culprits`` account for, from each layer's own SQNR (first order:
    each layer's relative noise power reaches the output unchanged and independently of the others)."""
    powers = [10.0 ** (-_finite(v) / 10.0) for v in own]
    total = sum(powers)
    return sum(powers[i] for i in culprits) / total if total > 0 else 0.0


ProbeT = TypeVar("ProbeT")


@dataclass
class PrefixSearch(Generic[ProbeT]):
    """The bisection over prefix lengths ``0..size``: length 0 is known to fail, ``size`` to pass."""

    size: int
    #: The shortest length accepted (``size`` when none shorter was, or when a limit stopped the search).
    length: int
    probes: dict[int, ProbeT] = field(default_factory=dict)
    stopped: bool = False  # a limit stopped the bisection before it closed


def shortest_accepted_prefix(
    size: int, measure: Callable[[int], ProbeT | None], accept: Callable[[ProbeT], bool]
) -> PrefixSearch[ProbeT]:
    """The shortest prefix length that ``accept`` takes, by bisection (``ceil(log2 size)`` measurements);
    ``measure(length)`` returns None when a limit stops the search."""
    search: PrefixSearch[ProbeT] = PrefixSearch(size, size)
    lo, hi = 0, size  # length lo is not accepted, hi is
    while hi - lo > 1:
        mid = (lo + hi) // 2
        probe = measure(mid)
        if probe is None:
            search.stopped = True
            break
        search.probes[mid] = probe
        if accept(probe):
            hi = mid
        else:
            lo = mid
    search.length = hi
    return search


def _finite(value: float) -> float:
    if math.isnan(value) or value == -math.inf:
        return -1e9
    return min(value, 1e9)
