"""Compare a run's gates with a stored JSON report (e.g. from ``main``): the change of every budget metric.

A gate is matched by name (and node id when the baseline holds the name twice). The metrics compared are
the budget metrics of either run, recomputed from the measured values where possible so that a budget
changed between the two runs still compares like with like. With a tolerance for a metric, a change for the
worse by more than that is a *regression*; without one the change is only reported.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .budget import BUDGET_METRICS, Budget
from .errors import BudgetError, DataError
from .report import REPORT_SCHEMA, REPORT_SCHEMA_VERSION
from .report_formats import as_float, fmt, fmt_change

#: Changes smaller than this are float noise, neither better nor worse.
NOISE = 1e-9


def parse_tolerances(items: Iterable[str], *, source: str = "--int8-baseline-tolerance") -> dict[str, float]:
    """``["top1_drop=0.005", "cosine=0.001"]``: how much worse than the baseline each metric may get."""
    tolerances = dict(Budget.parse(items, source=source).limits)
    for key, value in tolerances.items():
        if not value >= 0:
            raise BudgetError(
                f"{source}: tolerance {key}={value:g} must be >= 0 (how much worse it may get)."
            )
    return tolerances


@dataclass(frozen=True)
class MetricChange:
    """One metric of one gate: baseline and current value, and whether it got worse."""

    metric: str
    baseline: float
    current: float
    lower_is_better: bool
    tolerance: float | None = None

    @property
    def change(self) -> float:
        if self.current == self.baseline:  # also inf == inf
            return 0.0
        return self.current - self.baseline

    @property
    def worsening(self) -> float:
        """How much worse (> 0) or better (< 0) the metric got."""
        return self.change if self.lower_is_better else -self.change

    @property
    def worse(self) -> bool:
        return self.worsening > NOISE

    @property
    def better(self) -> bool:
        return self.worsening < -NOISE

    @property
    def regressed(self) -> bool:
        return self.tolerance is not None and self.worsening > self.tolerance + NOISE

    def as_dict(self) -> dict[str, object]:
        return {
            "baseline": _json_number(self.baseline),
            "current": _json_number(self.current),
            "change": _json_number(self.change),
            "lower_is_better": self.lower_is_better,
            "worse": self.worse,
            "better": self.better,
            "tolerance": self.tolerance,
            "regressed": self.regressed,
        }


def _json_number(value: float) -> float | str | None:
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def metric_value(record: Mapping[str, Any], metric: str) -> float | None:
    """The number a budget on ``metric`` compares (the drop for ``*_drop``), from what the gate measured."""
    spec = BUDGET_METRICS.get(metric)
    measured = record.get("measured")
    if spec is not None and isinstance(measured, Mapping):
        int8 = as_float((measured.get("int8") or {}).get(spec.measure))
        if not spec.drop and int8 is not None:
            return int8
        fp32 = as_float((measured.get("fp32") or {}).get(spec.measure))
        if spec.drop and int8 is not None and fp32 is not None:
            return fp32 - int8
    values = (record.get("metrics") or {}).get(metric)
    if isinstance(values, Mapping):
        delta = as_float(values.get("delta"))
        return -delta if delta is not None else as_float(values.get("int8"))
    return None


def _lower_is_better(record: Mapping[str, Any], metric: str) -> bool:
    spec = BUDGET_METRICS.get(metric)
    if spec is not None:
        return spec.upper
    values = (record.get("metrics") or {}).get(metric) or {}
    return values.get("op") == "<="


def _budget_keys(record: Mapping[str, Any]) -> list[str]:
    return [*(record.get("budget") or {}), *(record.get("metrics") or {})]


class Baseline:
    """A stored JSON report's gates, to compare a run with."""

    def __init__(self, records: Sequence[Mapping[str, Any]], *, path: str, created: str | None) -> None:
        self.records = list(records)
        self.path = path
        self.created = created
        self._by_name: dict[str, list[Mapping[str, Any]]] = {}
        for record in self.records:
            self._by_name.setdefault(str(record.get("name")), []).append(record)

    def find(self, record: Mapping[str, Any]) -> Mapping[str, Any] | None:
        candidates = self._by_name.get(str(record.get("name")), [])
        if len(candidates) > 1:
            same_node = [c for c in candidates if c.get("nodeid") == record.get("nodeid")]
            candidates = same_node or candidates
        return candidates[0] if candidates else None

    def changes(
        self, record: Mapping[str, Any], tolerances: Mapping[str, float]
    ) -> list[MetricChange] | None:
        """The change of every budget metric of either run; None when the baseline lacks the gate."""
        old = self.find(record)
        if old is None:
            return None
        changes = []
        for metric in dict.fromkeys([*_budget_keys(record), *_budget_keys(old)]):
            current, before = metric_value(record, metric), metric_value(old, metric)
            if current is None or before is None or math.isnan(current) or math.isnan(before):
                continue
            changes.append(
                MetricChange(
                    metric, before, current, _lower_is_better(record, metric), tolerances.get(metric)
                )
            )
        return changes

    def comparison(self, record: Mapping[str, Any], tolerances: Mapping[str, float]) -> dict[str, Any]:
        """The ``baseline`` field of a gate record (see docs/report-schema.md)."""
        changes = self.changes(record, tolerances)
        if changes is None:
            return {"status": "new", "verdict": None, "metrics": {}, "regressed": False}
        old = self.find(record)
        return {
            "status": "compared",
            "verdict": None if old is None else old.get("verdict"),
            "metrics": {c.metric: c.as_dict() for c in changes},
            "regressed": any(c.regressed for c in changes),
        }

    def missing(self, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """Names of baseline gates that this run did not produce."""
        names = {str(r.get("name")) for r in records}
        return sorted(name for name in self._by_name if name not in names)

    def summary(
        self, records: Sequence[Mapping[str, Any]], tolerances: Mapping[str, float]
    ) -> dict[str, Any]:
        """The report's top-level ``baseline`` field."""
        return {
            "path": self.path,
            "created": self.created,
            "tolerance": dict(tolerances),
            "missing": self.missing(records),
            "regressions": sum(
                1
                for r in records
                for change in (r.get("baseline") or {}).get("metrics", {}).values()
                if change.get("regressed")
            ),
        }


def load_baseline(path: str | os.PathLike[str]) -> Baseline:
    """Read a report written by ``--int8-report-json``; anything else is a DataError naming the file."""
    source = Path(path)
    try:
        payload = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{source}: baseline report not found.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{source}: not a readable JSON report ({exc}).") from None
    if not isinstance(payload, Mapping) or not isinstance(payload.get("gates"), list):
        raise DataError(f"{source}: not a pytest-int8gate JSON report (no list of 'gates').")
    schema = payload.get("schema")
    if schema is not None and schema != REPORT_SCHEMA:
        raise DataError(f"{source}: schema {schema!r} is not {REPORT_SCHEMA!r}.")
    version = payload.get("version")
    if schema is not None and (not isinstance(version, int) or version > REPORT_SCHEMA_VERSION):
        raise DataError(
            f"{source}: report schema version {version!r} is newer than this pytest-int8gate reads "
            f"({REPORT_SCHEMA_VERSION})."
        )
    gates = [g for g in payload["gates"] if isinstance(g, Mapping) and "name" in g]
    if len(gates) != len(payload["gates"]):
        raise DataError(f"{source}: every entry of 'gates' must be an object with a 'name'.")
    created = payload.get("created")
    return Baseline(gates, path=str(source), created=str(created) if created else None)


def baseline_lines(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> list[str]:
    """The terminal summary's lines about the baseline: per gate the change of each metric."""
    created = f" ({summary['created']})" if summary.get("created") else ""
    lines = [f"int8gate: against baseline {summary.get('path')}{created}:"]
    compared = [r for r in records if isinstance(r.get("baseline"), Mapping)]
    width = max((len(str(r.get("name"))) for r in compared), default=0) + 2
    for record in compared:
        baseline = record["baseline"]
        if baseline.get("status") == "new":
            parts = ["new gate, not in the baseline"]
        else:
            parts = []
            for metric, change in baseline.get("metrics", {}).items():
                word = (
                    "REGRESSED"
                    if change.get("regressed")
                    else "worse"
                    if change.get("worse")
                    else "better"
                    if change.get("better")
                    else "same"
                )
                parts.append(
                    f"{metric} {fmt(change.get('baseline'))} -> {fmt(change.get('current'))} "
                    f"({fmt_change(as_float(change.get('change')))} {word})"
                )
        lines.append(f"  {record.get('name')!s:<{width}}{'; '.join(parts) or 'nothing to compare'}")
    if summary.get("missing"):
        lines.append(f"  in the baseline but not in this run: {', '.join(summary['missing'])}")
    regressions = int(summary.get("regressions") or 0)
    if regressions:
        lines.append(
            f"int8gate: FAILED: {regressions} metric{'s' if regressions != 1 else ''} regressed against the "
            "baseline by more than the tolerance (--int8-baseline-tolerance)"
        )
    return lines
