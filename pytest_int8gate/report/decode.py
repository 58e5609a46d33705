"""The one JSON codec of gate results, reading side: report records back as typed results, and a stored
report file with its schema and version checked. A field of the wrong type is one DataError naming the file,
the gate and the field.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..budget import BUDGET_METRICS, Budget
from ..errors import DataError, bounded_repr, bounded_text
from ..results import (
    SEVERITIES,
    BisectionReport,
    Finding,
    GateVerdict,
    LayerSensitivity,
    MetricResult,
    OffendingLayer,
    RepairAction,
    VerifiedFix,
)
from .codec import REPORT_SCHEMA, REPORT_SCHEMA_VERSION, backend_text, decode_number
from .records import GateBaseline, GateError, GateRecord, MetricChange

#: Versions the baseline reader understands (1: non-finite numbers not yet written alike everywhere).
READABLE_VERSIONS = (1, 2)


class _Fields:
    """Typed access to one JSON object of a record; a wrong type is a DataError naming the field."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, Mapping):
            raise DataError(f"{where}: must be a JSON object, not {type(data).__name__}.")
        self.data = data
        self.where = where

    def _wrong(self, key: str, what: str) -> DataError:
        return DataError(f"{self.where}: field {key!r} must be {what}, not {self.data.get(key)!r:.60}.")

    def text(self, key: str, default: str = "") -> str:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self._wrong(key, "a string")
        return value

    def optional_text(self, key: str) -> str | None:
        return self.text(key) if self.data.get(key) is not None else None

    def number(self, key: str, default: float = math.nan) -> float:
        value = self.optional_number(key)
        return default if value is None else value

    def optional_number(self, key: str) -> float | None:
        value = self.data.get(key)
        number = decode_number(value)
        if number is None and value is not None:
            raise self._wrong(key, 'a number, "inf", "-inf" or "nan"')
        return number

    def integer(self, key: str, default: int = 0) -> int:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer")
        return value

    def flag(self, key: str) -> bool:
        value = self.data.get(key, False)
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false")
        return value

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self._wrong(key, "an object")
        return value

    def items(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._wrong(key, "an array")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        return tuple(str(v) for v in self.items(key))

    def numbers(self, key: str) -> dict[str, float]:
        inner = _Fields(self.mapping(key), f"{self.where}.{key}")
        return {str(name): inner.number(name) for name in inner.data}

    def child(self, key: str) -> _Fields:
        return _Fields(self.mapping(key), f"{self.where}.{key}")


def decode_metric(key: str, data: object, where: str = "metric") -> MetricResult:
    """A metric line; ``key`` is ``name`` or ``name@output`` (a line on a non-primary output)."""
    fields = _Fields(data, f"{where}.{key}")
    name, _, other_output = key.partition("@")
    op = fields.text("op")
    spec = BUDGET_METRICS.get(name)
    upper = op == "<=" if op in ("<=", ">=") else (spec.upper if spec is not None else True)
    return MetricResult(
        output=fields.text("output") or other_output,
        primary=not other_output,
        name=name,
        fp32=fields.optional_number("fp32"),
        int8=fields.number("int8"),
        delta=fields.optional_number("delta"),
        limit=fields.number("limit"),
        upper=upper,
        passed=fields.flag("passed"),
        ci95=_interval(fields.items("ci95")),
        strict_ci=fields.flag("strict_ci"),
    )


def _interval(values: list[Any]) -> tuple[float, float] | None:
    bounds = [decode_number(v) for v in values]
    if len(bounds) != 2 or bounds[0] is None or bounds[1] is None:
        return None
    return bounds[0], bounds[1]


def _metrics(fields: _Fields, key: str = "metrics") -> tuple[MetricResult, ...]:
    where = f"{fields.where}.{key}"
    return tuple(decode_metric(str(n), v, where) for n, v in fields.mapping(key).items())


def decode_finding(data: object, where: str = "finding") -> Finding:
    fields = _Fields(data, where)
    severity = fields.text("severity", "warning")
    if severity not in SEVERITIES:
        raise DataError(f"{where}: severity {severity!r} is not one of {', '.join(SEVERITIES)}.")
    return Finding(
        code=fields.text("code"),
        severity=severity,  # narrowed by the check against SEVERITIES
        message=fields.text("message"),
        fix=fields.text("fix"),
        details=dict(fields.mapping("details")),
    )


def decode_offender(data: object, where: str = "offending layer") -> OffendingLayer:
    fields = _Fields(data, where)
    return OffendingLayer(
        index=fields.integer("index", -1),
        name=fields.text("name"),
        op_type=fields.text("op"),
        metrics=fields.numbers("metrics"),
        action=_action(fields),
        calibrator=fields.optional_text("calibrator"),
        producer=fields.optional_text("producer"),
        attempts=fields.texts("attempts"),
        alpha=fields.optional_number("alpha"),
    )


def _action(fields: _Fields) -> RepairAction:
    text = fields.text("action", RepairAction.FLOAT.value)
    try:
        return RepairAction(text)
    except ValueError:
        known = ", ".join(a.value for a in RepairAction)
        raise DataError(f"{fields.where}: action {text!r} is not one of {known}.") from None


def decode_fix(data: object, where: str = "fix") -> VerifiedFix:
    fields = _Fields(data, where)
    return VerifiedFix(
        exclude=fields.texts("exclude"),
        overrides={str(k): str(v) for k, v in fields.mapping("calibrator_overrides").items()},
        results=_metrics(fields),
        passed=fields.flag("passed"),
        equalize=fields.texts("equalize"),
        bias_correction=fields.texts("bias_correction"),
        smoothquant=fields.numbers("smoothquant"),
        fp32_model=fields.optional_text("fp32_model"),
        fp32_sha256=fields.optional_text("fp32_sha256"),
        fp32_max_abs_difference=fields.optional_number("fp32_max_abs_difference"),
        fp32_reference_max_abs=fields.optional_number("fp32_reference_max_abs"),
        calibrator=fields.optional_text("calibrator"),
        unseen_results=_metrics(fields, "unseen_metrics"),
        unseen_samples=fields.integer("unseen_samples"),
        int8_layers=fields.integer("int8_layers"),
        quantized_layers=fields.integer("quantized_layers"),
        int8_mac_share=fields.optional_number("int8_mac_share"),
    )


def decode_bisection(data: object, where: str = "bisection") -> BisectionReport:
    fields = _Fields(data, where)
    sensitivity = []
    for i, point in enumerate(fields.items("sensitivity")):
        inner = _Fields(point, f"{where}.sensitivity[{i}]")
        sensitivity.append(
            LayerSensitivity(
                name=inner.text("name"),
                op_type=inner.text("op"),
                sqnr_db=inner.number("sqnr_db"),  # null (version 1: not finite) reads as nan
                index=inner.integer("index", -1),
            )
        )
    fix = fields.data.get("fix")
    return BisectionReport(
        strategy=fields.text("strategy"),
        total_layers=fields.integer("total_layers"),
        subset_size=fields.integer("subset_size"),
        search_evaluations=fields.integer("search_evaluations"),
        repair_evaluations=fields.integer("repair_evaluations"),
        baseline_evaluations=fields.integer("baseline_evaluations"),
        verification_evaluations=fields.integer("verification_evaluations"),
        offenders=tuple(
            decode_offender(o, f"{where}.offending_layers[{i}]")
            for i, o in enumerate(fields.items("offending_layers"))
        ),
        sensitivity=tuple(sensitivity),
        fix=None if fix is None else decode_fix(fix, f"{where}.fix"),
        notes=fields.texts("notes"),
        duration_s=fields.number("duration_s", 0.0),
        global_evaluations=fields.integer("global_evaluations"),
        pruning_evaluations=fields.integer("pruning_evaluations"),
        pruned=fields.texts("pruned"),
        walk=fields.text("walk"),
        stopped_by=fields.text("stopped_by"),
        unseen_samples=fields.integer("unseen_samples"),
        eval_samples=fields.integer("eval_samples"),
    )


def _findings(fields: _Fields) -> tuple[Finding, ...]:
    return tuple(
        decode_finding(f, f"{fields.where}.diagnostics[{i}]")
        for i, f in enumerate(fields.items("diagnostics"))
    )


def decode_verdict(data: object, where: str = "gate") -> GateVerdict:
    fields = _Fields(data, where)
    samples, layers, measured = fields.child("samples"), fields.child("layers"), fields.child("measured")
    backend = dict(fields.mapping("backend"))
    bisection = fields.data.get("bisection")
    return GateVerdict(
        name=fields.text("name"),
        model=fields.text("model"),
        backend=backend,
        backend_text=backend_text(backend),
        calibrator=fields.text("calibrator"),
        calibration_samples=samples.integer("calibration"),
        eval_samples=samples.integer("evaluation"),
        output_name=fields.text("output"),
        budget=Budget(
            fields.numbers("configured_budget" if "configured_budget" in fields.data else "budget"),
            {str(k): str(v) for k, v in fields.mapping("budget_sources").items()},
        ),
        default_budget=fields.text("default_budget"),
        outputs=tuple(dict(o) for o in fields.items("outputs") if isinstance(o, Mapping)),
        coverage=dict(fields.mapping("coverage")),
        results=_metrics(fields),
        fp32=measured.numbers("fp32"),
        int8=measured.numbers("int8"),
        plan=dict(fields.mapping("plan")),
        quantized_layers=layers.integer("quantized"),
        total_layers=layers.integer("quantizable"),
        evaluations=fields.integer("evaluations"),
        duration_s=fields.number("duration_s", 0.0),
        notes=fields.texts("notes"),
        cache_hits=fields.texts("cache_hits"),
        bisection=None if bisection is None else decode_bisection(bisection, f"{where}.bisection"),
        diagnostics=_findings(fields),
        timings=fields.numbers("timings"),
    )


def decode_error(data: object, where: str = "gate") -> GateError:
    fields = _Fields(data, where)
    return GateError(
        name=fields.text("name"),
        model=fields.text("model"),
        message=fields.text("error"),
        backend=str(fields.mapping("backend").get("backend") or ""),
        calibrator=fields.text("calibrator"),
        diagnostics=_findings(fields),
        duration_s=fields.number("duration_s", 0.0),
    )


def decode_gate_baseline(data: object, where: str = "baseline") -> GateBaseline:
    fields = _Fields(data, where)
    changes = []
    for metric, change in fields.mapping("metrics").items():
        inner = _Fields(change, f"{where}.metrics.{metric}")
        changes.append(
            MetricChange(
                metric=str(metric),
                baseline=inner.number("baseline"),
                current=inner.number("current"),
                lower_is_better=inner.flag("lower_is_better"),
                tolerance=inner.optional_number("tolerance"),
            )
        )
    return GateBaseline(
        status=fields.text("status", "compared"),
        verdict=fields.optional_text("verdict"),
        changes=tuple(changes),
    )


def decode_record(data: object, where: str = "gate") -> GateRecord:
    """A report record back as typed results; a field of the wrong type is a DataError naming it."""
    fields = _Fields(data, where)
    declared = fields.text("verdict")
    if declared not in ("", "pass", "fail", "error"):
        raise DataError(f"{where}: verdict {declared!r} is not pass, fail or error.")
    where = f"{where} {fields.text('name')!r}" if fields.data.get("name") else where
    outcome: GateVerdict | GateError
    outcome = decode_error(data, where) if declared == "error" else decode_verdict(data, where)
    baseline = fields.data.get("baseline")
    return GateRecord(
        nodeid=fields.text("nodeid"),
        outcome=outcome,
        duration_s=fields.number("duration_s", 0.0),
        declared=declared,
        baseline=None if baseline is None else decode_gate_baseline(baseline, f"{where}.baseline"),
    )


# ---- report files ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredReport:
    """A JSON report read back: its gates (as written) and when it was made."""

    path: str
    version: int
    created: str | None
    gates: tuple[Mapping[str, Any], ...]


def read_report(path: str | os.PathLike[str]) -> StoredReport:
    """Read a report written by ``--int8-report-json``; anything else is one DataError naming the file."""
    source = Path(path)
    try:
        payload = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{source}: baseline report not found.") from None
    except RecursionError:  # [[[[... nested deeper than the parser's stack
        raise DataError(f"{source}: not a readable JSON report (nested too deeply).") from None
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON, undecodable text, a 5,000-digit integer
        raise DataError(f"{source}: not a readable JSON report ({bounded_text(str(exc))}).") from None
    if not isinstance(payload, Mapping) or not isinstance(payload.get("gates"), list):
        raise DataError(f"{source}: not a pytest-int8gate JSON report (no list of 'gates').")
    schema = payload.get("schema")
    version = payload.get("version")
    if schema is None:  # reports from before the schema field: version 1's fields
        version = 1
    elif schema != REPORT_SCHEMA:
        raise DataError(f"{source}: schema {bounded_repr(schema)} is not {REPORT_SCHEMA!r}.")
    elif not isinstance(version, int) or isinstance(version, bool) or version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and version > REPORT_SCHEMA_VERSION
        raise DataError(
            f"{source}: report schema version {bounded_repr(version)} is "
            + ("newer than this pytest-int8gate reads" if newer else "not one this pytest-int8gate reads")
            + f" ({', '.join(map(str, READABLE_VERSIONS))})."
        )
    gates = [g for g in payload["gates"] if isinstance(g, Mapping) and "name" in g]
    if len(gates) != len(payload["gates"]):
        raise DataError(f"{source}: every entry of 'gates' must be an object with a 'name'.")
    for index, gate in enumerate(gates):
        decode_record(gate, f"{source}: gates[{index}]")  # a malformed gate names the file and the field
    created = payload.get("created")
    return StoredReport(str(source), version, str(created) if created else None, tuple(gates))
