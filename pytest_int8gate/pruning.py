"""Pruning a fix that passes: each entry it may not need is dropped in turn, measured on the search
samples (remembered plans cost nothing), and the smaller fix verified."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from .ladder import (
    RepairLadder,
    Rung,
)
from .quantize import QuantPlan
from .results import VerifiedFix
from .search_oracle import Probe, SearchClock, SubsetOracle
from .verification import Verifier

if TYPE_CHECKING:
    from .context import GateContext


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
        float_only: bool = False,
        accept: Callable[[Probe], bool] | None = None,
    ) -> None:
        """``order``: the order float layers are tried back in INT8 (default: topological); ``ladder``: the
        INT8-preserving rungs tried on a layer in float that cannot come back as it is; ``float_only``: only
        the layers in float are tried (the fix's INT8 entries were already chosen with care); ``accept``:
        when a smaller fix passes on the search samples (default: it meets the budget there)."""
        self.context = context
        self.oracle = oracle
        self.verifier = verifier
        self.clock = clock
        self.order = list(order)
        self.ladder = ladder
        self.float_only = float_only
        self.accept: Callable[[Probe], bool] = accept or (lambda probe: probe.passed)
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
        if self.float_only:
            return found
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
            if self.accept(outcome):
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
                return None if result is None else self.accept(result)

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
