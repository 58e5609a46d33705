"""The one JSON codec of gate results, writing side: verdicts, errors and baseline comparisons as report
records (``decode`` reads them back).

JSON has no infinity and no NaN. Every number written here is finite or one of the strings ``"inf"``,
``"-inf"``, ``"nan"``; :func:`dumps` refuses anything else, so a report always parses with a strict JSON
parser. Reading accepts those strings, ``null`` ("not measured") and the bare ``Infinity``/``NaN`` tokens
that files of schema version 1 may hold. The schema is documented in docs/report-schema.md.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from ..results import BisectionReport, Finding, GateVerdict, MetricResult, OffendingLayer, VerifiedFix
from .records import GateBaseline, GateError, GateRecord

#: The JSON report's schema. The version changes only when a field is removed, renamed or changes meaning;
#: new fields may appear in any version. Version 2: non-finite numbers are "inf"/"-inf"/"nan" everywhere
#: (version 1 wrote a non-finite sensitivity SQNR as null, and a NaN metric as "-inf" or a bare NaN).
REPORT_SCHEMA = "pytest-int8gate/report"
REPORT_SCHEMA_VERSION = 2
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


# ---- numbers and plain data -----------------------------------------------------------------------------


def encode_number(value: float) -> float | str:
    """A float as the reports write it: itself when finite, else ``"inf"``, ``"-inf"`` or ``"nan"``."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def decode_number(value: object) -> float | None:
    """A record's number (``"inf"``, ``"-inf"``, ``"nan"`` included); None for null and for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return _NON_FINITE.get(value)
    return None


def plain(value: object) -> Any:
    """``value`` as JSON data: mappings, lists, strings, booleans, null and finite numbers or the strings
    of :func:`encode_number` (numpy scalars and arrays become Python numbers and lists)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return encode_number(float(value))
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars (np.bool_ too)
    if callable(tolist):
        return plain(tolist())
    return str(value)


def _plain_object(data: Mapping[str, object]) -> dict[str, Any]:
    result = plain(data)
    assert isinstance(result, dict)
    return result


def dumps(payload: object) -> str:
    """``payload`` as indented JSON text that a strict parser reads (no NaN or Infinity token)."""
    return json.dumps(plain(payload), indent=2, allow_nan=False) + "\n"


# ---- encoding -------------------------------------------------------------------------------------------


def encode_metric(result: MetricResult) -> dict[str, Any]:
    return _plain_object(
        {
            "fp32": result.fp32,
            "int8": result.int8,
            "delta": result.delta,
            "limit": result.limit,
            "op": "<=" if result.upper else ">=",
            "passed": result.passed,
            "ci95": None if result.ci95 is None else list(result.ci95),
            "strict_ci": result.strict_ci,
            "output": result.output,
        }
    )


def encode_finding(finding: Finding) -> dict[str, Any]:
    return _plain_object(
        {
            "code": finding.code,
            "severity": finding.severity,
            "message": finding.message,
            "fix": finding.fix,
            "details": finding.details,
        }
    )


def encode_offender(offender: OffendingLayer) -> dict[str, Any]:
    return _plain_object(
        {
            "index": offender.index,
            "name": offender.name,
            "op": offender.op_type,
            "metrics": offender.metrics,
            "action": offender.action.value,
            "calibrator": offender.calibrator,
            "producer": offender.producer,
            "attempts": list(offender.attempts),
            "alpha": offender.alpha,
        }
    )


def encode_fix(fix: VerifiedFix) -> dict[str, Any]:
    return _plain_object(
        {
            "exclude": list(fix.exclude),
            "calibrator_overrides": dict(fix.overrides),
            "equalize": list(fix.equalize),
            "bias_correction": list(fix.bias_correction),
            "smoothquant": dict(fix.smoothquant),
            "fp32_model": fix.fp32_model,
            "fp32_sha256": fix.fp32_sha256,
            "fp32_max_abs_difference": fix.fp32_max_abs_difference,
            "fp32_reference_max_abs": fix.fp32_reference_max_abs,
            "calibrator": fix.calibrator,
            "passed": fix.passed,
            "metrics": {r.key: encode_metric(r) for r in fix.results},
            "unseen_samples": fix.unseen_samples,
            "unseen_metrics": {r.key: encode_metric(r) for r in fix.unseen_results},
            "entries": fix.entries,
            "float_layers": len(fix.exclude),
            "int8_layers": fix.int8_layers,
            "quantized_layers": fix.quantized_layers,
            "int8_mac_share": fix.int8_mac_share,
            "manifest": fix.manifest_snippet(),
        }
    )


def encode_bisection(report: BisectionReport) -> dict[str, Any]:
    return _plain_object(
        {
            "strategy": report.strategy,
            "total_layers": report.total_layers,
            "subset_size": report.subset_size,
            "baseline_evaluations": report.baseline_evaluations,
            "global_evaluations": report.global_evaluations,
            "verification_evaluations": report.verification_evaluations,
            "search_evaluations": report.search_evaluations,
            "repair_evaluations": report.repair_evaluations,
            "pruning_evaluations": report.pruning_evaluations,
            "evaluations": report.evaluations,
            "phases": report.phases(),
            "walk": report.walk,
            "pruned": list(report.pruned),
            "stopped_by": report.stopped_by,
            "unseen_samples": report.unseen_samples,
            "eval_samples": report.eval_samples,
            "offending_layers": [encode_offender(o) for o in report.offenders],
            "sensitivity": [
                {"index": s.index, "name": s.name, "op": s.op_type, "sqnr_db": s.sqnr_db}
                for s in report.sensitivity
            ],
            "fix": None if report.fix is None else encode_fix(report.fix),
            "notes": list(report.notes),
            "duration_s": round(report.duration_s, 3),
        }
    )


def encode_verdict(verdict: GateVerdict, *, nodeid: str, duration_s: float | None = None) -> dict[str, Any]:
    """The report record of one judged gate."""
    bisection = None if verdict.bisection is None else encode_bisection(verdict.bisection)
    return _plain_object(
        {
            "model": verdict.model,
            "name": verdict.name,
            "nodeid": nodeid,
            "verdict": "pass" if verdict.passed else "fail",
            "metrics": {r.key: encode_metric(r) for r in verdict.results},
            "measured": {"fp32": verdict.fp32, "int8": verdict.int8},
            "budget": verdict.effective_limits,
            "configured_budget": verdict.budget.limits,
            "budget_sources": verdict.budget.sources,
            "default_budget": verdict.default_budget,
            "outputs": list(verdict.outputs),
            "coverage": verdict.coverage,
            "backend": verdict.backend,
            "calibrator": verdict.calibrator,
            "output": verdict.output_name,
            "plan": verdict.plan,
            "samples": {"calibration": verdict.calibration_samples, "evaluation": verdict.eval_samples},
            "layers": {"quantized": verdict.quantized_layers, "quantizable": verdict.total_layers},
            "offending_layers": bisection["offending_layers"] if bisection else [],
            "bisection": bisection,
            "evaluations": verdict.evaluations,
            "cache_hits": list(verdict.cache_hits),
            "notes": list(verdict.notes),
            "diagnostics": [encode_finding(f) for f in verdict.diagnostics],
            "duration_s": round(duration_s if duration_s is not None else verdict.duration_s, 3),
            "timings": {stage: round(seconds, 3) for stage, seconds in verdict.timings.items()},
        }
    )


def encode_error(error: GateError, *, nodeid: str) -> dict[str, Any]:
    """The report record of a gate that could not be judged: a verdict's keys, nothing measured."""
    return _plain_object(
        {
            "model": error.model,
            "name": error.name,
            "nodeid": nodeid,
            "verdict": "error",
            "error": error.message,
            "metrics": {},
            "backend": {"backend": error.backend} if error.backend else {},
            "calibrator": error.calibrator,
            "samples": {"calibration": None, "evaluation": None},
            "offending_layers": [],
            "evaluations": 0,
            "cache_hits": [],
            "diagnostics": [encode_finding(f) for f in error.diagnostics],
            "duration_s": round(error.duration_s, 3),
        }
    )


def encode_gate_baseline(baseline: GateBaseline) -> dict[str, Any]:
    """A record's ``baseline`` field."""
    return _plain_object(
        {
            "status": baseline.status,
            "verdict": baseline.verdict,
            "metrics": {
                c.metric: {
                    "baseline": c.baseline,
                    "current": c.current,
                    "change": c.change,
                    "lower_is_better": c.lower_is_better,
                    "worse": c.worse,
                    "better": c.better,
                    "tolerance": c.tolerance,
                    "regressed": c.regressed,
                }
                for c in baseline.changes
            },
            "regressed": baseline.regressed,
        }
    )


def encode_record(record: GateRecord) -> dict[str, Any]:
    if isinstance(record.outcome, GateError):
        data = encode_error(record.outcome, nodeid=record.nodeid)
    else:
        data = encode_verdict(record.outcome, nodeid=record.nodeid, duration_s=record.duration_s)
    if record.baseline is not None:
        data["baseline"] = encode_gate_baseline(record.baseline)
    return data


def report_document(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON report of a run; ``meta`` adds top-level fields but cannot replace the schema's."""
    payload = {"schema": REPORT_SCHEMA, "version": REPORT_SCHEMA_VERSION, **meta, "gates": list(records)}
    payload.update(schema=REPORT_SCHEMA, version=REPORT_SCHEMA_VERSION)
    return payload


def backend_text(backend: Mapping[str, Any], *, device: bool = True) -> str:
    """``onnxruntime 1.32.0 cpu x86_64 (...) simulated``: what ran a gate (``device``: with the device)."""
    keys = ("backend", "version", "device", "mode") if device else ("backend", "version", "mode")
    return " ".join(str(backend[k]) for k in keys if backend.get(k))
