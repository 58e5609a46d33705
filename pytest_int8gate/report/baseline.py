"""Compare a run's gates with a stored JSON report (e.g. from ``main``): the change of every budget metric.

A gate is matched by name (and node id when the baseline holds the name twice). The metrics compared are
the budget metrics of either run, recomputed from the measured values where possible so that a budget
changed between the two runs still compares like with like. With a tolerance for a metric, a change for the
worse by more than that is a *regression*; without one the change is only reported.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..budget import BUDGET_METRICS, Budget
from ..errors import BudgetError
from ..results import GateVerdict
from .codec import encode_gate_baseline
from .decode import decode_record, read_report
from .records import GateBaseline, GateRecord, MetricChange


def parse_tolerances(items: Iterable[str], *, source: str = "--int8-baseline-tolerance") -> dict[str, float]:
    """``["top1_drop=0.005", "cosine=0.001"]``: how much worse than the baseline each metric may get."""
    tolerances = dict(Budget.parse(items, source=source).limits)
    for key, value in tolerances.items():
        if not value >= 0:
            raise BudgetError(
                f"{source}: tolerance {key}={value:g} must be >= 0 (how much worse it may get)."
            )
    return tolerances


def _record(record: Mapping[str, Any] | GateRecord) -> GateRecord:
    return record if isinstance(record, GateRecord) else decode_record(record)


def metric_value(record: Mapping[str, Any] | GateRecord, metric: str) -> float | None:
    """The number a budget on ``metric`` compares (the drop for ``*_drop``), from what the gate measured."""
    verdict = _record(record).outcome
    if not isinstance(verdict, GateVerdict):
        return None
    spec = BUDGET_METRICS.get(metric)
    if spec is not None:
        int8, fp32 = verdict.int8.get(spec.measure), verdict.fp32.get(spec.measure)
        if not spec.drop and int8 is not None:
            return int8
        if spec.drop and int8 is not None and fp32 is not None:
            return fp32 - int8
    result = next((r for r in verdict.results if r.name == metric), None)
    return None if result is None else result.observed


def _lower_is_better(record: GateRecord, metric: str) -> bool:
    spec = BUDGET_METRICS.get(metric)
    if spec is not None:
        return spec.upper
    results = record.outcome.results if isinstance(record.outcome, GateVerdict) else ()
    return any(r.name == metric and r.upper for r in results)


def _budget_keys(record: GateRecord) -> list[str]:
    if not isinstance(record.outcome, GateVerdict):
        return []
    return [*record.outcome.budget.limits, *(r.name for r in record.outcome.results)]


class Baseline:
    """A stored JSON report's gates, to compare a run with."""

    def __init__(self, records: Sequence[Mapping[str, Any]], *, path: str, created: str | None) -> None:
        self.records = list(records)
        self.path = path
        self.created = created
        self._by_name: dict[str, list[tuple[Mapping[str, Any], GateRecord]]] = {}
        for record in self.records:
            self._by_name.setdefault(str(record.get("name")), []).append((record, decode_record(record)))

    def _find(self, record: GateRecord) -> tuple[Mapping[str, Any], GateRecord] | None:
        candidates = self._by_name.get(record.name, [])
        if len(candidates) > 1:
            same_node = [c for c in candidates if c[1].nodeid == record.nodeid]
            candidates = same_node or candidates
        return candidates[0] if candidates else None

    def find(self, record: Mapping[str, Any]) -> Mapping[str, Any] | None:
        found = self._find(_record(record))
        return None if found is None else found[0]

    def changes(
        self, record: Mapping[str, Any] | GateRecord, tolerances: Mapping[str, float]
    ) -> list[MetricChange] | None:
        """The change of every budget metric of either run; None when the baseline lacks the gate."""
        current_record = _record(record)
        found = self._find(current_record)
        if found is None:
            return None
        old = found[1]
        changes = []
        for metric in dict.fromkeys([*_budget_keys(current_record), *_budget_keys(old)]):
            current, before = metric_value(current_record, metric), metric_value(old, metric)
            if current is None or before is None or math.isnan(current) or math.isnan(before):
                continue
            changes.append(
                MetricChange(
                    metric, before, current, _lower_is_better(current_record, metric), tolerances.get(metric)
                )
            )
        return changes

    def gate_baseline(
        self, record: Mapping[str, Any] | GateRecord, tolerances: Mapping[str, float]
    ) -> GateBaseline:
        current = _record(record)
        changes = self.changes(current, tolerances)
        found = self._find(current)
        if changes is None or found is None:
            return GateBaseline("new")
        return GateBaseline("compared", found[1].declared or found[1].status, tuple(changes))

    def comparison(self, record: Mapping[str, Any], tolerances: Mapping[str, float]) -> dict[str, Any]:
        """The ``baseline`` field of a gate record (see docs/report-schema.md)."""
        return encode_gate_baseline(self.gate_baseline(record, tolerances))

    def missing(self, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """Names of baseline gates that this run did not produce."""
        names = {str(r.get("name")) for r in records}
        return sorted(name for name in self._by_name if name not in names)

    def summary(
        self, records: Sequence[Mapping[str, Any]], tolerances: Mapping[str, float]
    ) -> dict[str, Any]:
        """The report's top-level ``baseline`` field."""
        regressions = 0
        for record in records:
            baseline = _record(record).baseline
            regressions += 0 if baseline is None else sum(c.regressed for c in baseline.changes)
        return {
            "path": self.path,
            "created": self.created,
            "tolerance": dict(tolerances),
            "missing": self.missing(records),
            "regressions": regressions,
        }


def load_baseline(path: str | os.PathLike[str]) -> Baseline:
    """Read a report written by ``--int8-report-json``; anything else is a DataError naming the file."""
    stored = read_report(path)
    return Baseline(stored.gates, path=stored.path, created=stored.created)
