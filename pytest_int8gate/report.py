"""Turn verdicts into what people read: the failure text, the session summary, JSON and JUnit properties."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .budget import BUDGET_METRICS
from .cache import atomic_write_bytes
from .results import (
    SEVERITIES,
    BisectionReport,
    Finding,
    GateVerdict,
    MetricResult,
    OffendingLayer,
    severity_counts,
)

#: Metrics shown in the summary and JUnit properties, in this order, when measured.
KEY_METRICS = ("top1", "top1_agreement", "cosine", "cosine_min", "sqnr_db", "max_abs_error")
#: The JSON report's schema (documented in docs/report-schema.md); the version changes only when a field
#: is removed or changes meaning — new fields may appear in any version.
REPORT_SCHEMA = "pytest-int8gate/report"
REPORT_SCHEMA_VERSION = 1


def _num(value: float | None, width: int = 7) -> str:
    if value is None:
        return "-".center(width)
    if value == 0:
        value = 0.0  # no "-0.0000"
    if math.isinf(value):
        return ("inf" if value > 0 else "-inf").rjust(width)
    magnitude = abs(value)
    text = f"{value:.4f}" if magnitude < 100 else f"{value:.1f}"
    return text.rjust(width)


def header_line(verdict: GateVerdict) -> str:
    return (
        f"[{verdict.backend_text} | {verdict.calibrator} | calibration {verdict.calibration_samples}, "
        f"evaluation {verdict.eval_samples} samples | output {verdict.output_name}]"
    )


def metric_table(results: Sequence[MetricResult], indent: str = "  ") -> list[str]:
    # the 95 % interval column (of the drop for *_drop metrics) appears when a metric has one
    width = max((len(_interval_text(r)) for r in results), default=0)
    ci_header = f"{'95% CI':<{width + 2}}" if width else ""
    rows = [f"{indent}{'metric':<15}{'fp32':>9}{'int8':>9}{'delta':>9}   {'limit':<11}{ci_header}result"]
    for r in results:
        op = "<=" if r.upper else ">="
        ci = f"{_interval_text(r):<{width + 2}}" if width else ""
        rows.append(
            f"{indent}{r.name:<15}{_num(r.fp32, 9)}{_num(r.int8, 9)}{_num(r.delta, 9)}   "
            f"{op} {r.limit:<8g}{ci}{'PASS' if r.passed else 'FAIL'}"
        )
    return rows


def _interval_text(result: MetricResult) -> str:
    if result.ci95 is None:
        return ""
    low, high = (_num(v, 0).strip() for v in result.ci95)
    return f"[{low}, {high}]" + (" strict" if result.strict_ci else "")


def counts_text(counts: Mapping[str, int]) -> str:
    """``1 failure, 2 warnings`` (severities with no finding left out)."""
    return ", ".join(f"{n} {severity}{'s' if n > 1 else ''}" for severity, n in counts.items() if n)


def diagnostics_lines(findings: Sequence[Finding]) -> list[str]:
    """The diagnostics block of the verdict text: each finding with its fix."""
    if not findings:
        return []
    lines = [f"Diagnostics ({counts_text(severity_counts(findings))}):"]
    for finding in findings:
        label = finding.severity.upper() if finding.severity != "info" else "info"
        lines.append(f"  {label} {finding.code}: {finding.message}")
        lines.append(f"    fix: {finding.fix}")
    return lines


def _results_inline(results: Sequence[MetricResult]) -> str:
    return ", ".join(f"{r.name} {_num(r.observed, 0).strip()}" for r in results)


def bisection_lines(report: BisectionReport, eval_samples: int) -> list[str]:
    lines = [
        f"Offending layers ({report.strategy} search: {report.search_evaluations} evaluations over "
        f"{report.total_layers} quantized layers on {report.subset_size} samples; "
        f"{report.repair_evaluations} repair attempts):"
    ]
    if report.offenders:
        width = max(len("layer"), *(len(o.name) for o in report.offenders)) + 2
        lines.append(f"  {'idx':>4}  {'layer':<{width}}{'op':<15}{'budget when quantized':<34}verdict")
        for o in report.offenders:
            metrics = ", ".join(f"{k} {_num(v, 0).strip()}" for k, v in o.metrics.items())
            lines.append(f"  {o.index:>4}  {o.name:<{width}}{o.op_type:<15}{metrics:<34}{_repair_text(o)}")
            if o.attempts:
                lines.append(f"  {'':>4}  {'':<{width}}tried: {'; '.join(o.attempts)}")
    else:
        lines.append("  none found")
    fix = report.fix
    if fix is not None:
        parts = []
        if fix.exclude:
            parts.append(f"exclude [{', '.join(fix.exclude)}]")
        if fix.overrides:
            parts.append("calibrator " + ", ".join(f"{k}={v}" for k, v in fix.overrides.items()))
        if fix.equalize:
            parts.append(f"equalize [{', '.join(fix.equalize)}]")
        if fix.bias_correction:
            parts.append(f"bias correction [{', '.join(fix.bias_correction)}]")
        outcome = "PASS" if fix.passed else "FAIL - not a fix"
        lines.append(
            f"Verified fix on all {eval_samples} evaluation samples: {'; '.join(parts)} -> "
            f"{_results_inline(fix.results)}  {outcome}"
        )
        if fix.fp32_sha256 is not None:
            where = fix.fp32_model or "not written (no cache directory; `int8gate equalize` writes it)"
            lines.append(f"Equalized FP32 model (deploy this one): {where}  sha256 {fix.fp32_sha256}")
            lines.append(
                f"  its FP32 outputs differ from the original's by at most {fix.fp32_max_abs_difference:.3g} "
                f"(largest output {fix.fp32_reference_max_abs:.3g}, {eval_samples} samples)"
            )
        if fix.passed:
            lines.append("Apply it in int8gate.yaml (under the model's entry):")
            lines.extend("  " + line for line in fix.manifest_snippet().splitlines())
    for note in report.notes:
        lines.append(f"Note: {note}")
    if report.sensitivity:
        worst = ", ".join(f"{s.name} {s.sqnr_db:.1f}" for s in report.sensitivity[:5])
        lines.append(f"Most sensitive layers (own-output SQNR in dB, lower is worse): {worst}")
    return lines


def _repair_text(offender: OffendingLayer) -> str:
    """The verdict column: the rung of the repair ladder that fixed the layer."""
    if offender.action == "calibrator":
        return f"stays INT8 with {offender.calibrator}"
    if offender.action == "equalize":
        return f"stays INT8 via equalization with {offender.producer}"
    if offender.action == "bias_correction":
        return "stays INT8 via bias correction"
    return "keep in float"


def failure_text(verdict: GateVerdict) -> str:
    """The text a failing gate shows in the test output (no traceback)."""
    lines = [f"INT8 gate failed: {verdict.name}  {header_line(verdict)}"]
    lines.extend(metric_table(verdict.results))
    lines.extend(diagnostics_lines(verdict.diagnostics))
    if isinstance(verdict.bisection, BisectionReport):
        lines.extend(bisection_lines(verdict.bisection, verdict.eval_samples))
    elif verdict.bisection is None and not verdict.failed_metrics:
        lines.append("Offending layers: not searched (the budget is met; the diagnostics fail the gate).")
    elif verdict.bisection is None:
        lines.append("Offending layers: not searched (bisection disabled; enable with --int8-bisect).")
    lines.extend(f"Note: {note}" for note in verdict.notes)
    return "\n".join(lines)


def verdict_text(verdict: GateVerdict) -> str:
    """A passing or failing verdict as text (the failure text when it failed)."""
    if not verdict.passed:
        return failure_text(verdict)
    lines = [f"INT8 gate passed: {verdict.name}  {header_line(verdict)}"]
    lines.extend(metric_table(verdict.results))
    lines.extend(diagnostics_lines(verdict.diagnostics))
    lines.extend(f"Note: {note}" for note in verdict.notes)
    return "\n".join(lines)


def _json_number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return "inf" if value > 0 else "-inf"


def verdict_record(verdict: GateVerdict, *, nodeid: str, duration_s: float | None = None) -> dict[str, Any]:
    """The JSON report entry of one gate."""
    bisection = verdict.bisection.as_dict() if isinstance(verdict.bisection, BisectionReport) else None
    return {
        "model": verdict.model,
        "name": verdict.name,
        "nodeid": nodeid,
        "verdict": "pass" if verdict.passed else "fail",
        "metrics": {
            r.name: {
                **{k: _json_number(v) if isinstance(v, float) else v for k, v in r.as_dict().items()},
                "ci95": None if r.ci95 is None else list(r.ci95),
                "strict_ci": r.strict_ci,
            }
            for r in verdict.results
        },
        "measured": {
            "fp32": {k: _json_number(v) for k, v in verdict.fp32.items()},
            "int8": {k: _json_number(v) for k, v in verdict.int8.items()},
        },
        "budget": dict(verdict.budget.limits),
        "backend": dict(verdict.backend),
        "calibrator": verdict.calibrator,
        "plan": dict(verdict.plan),
        "samples": {"calibration": verdict.calibration_samples, "evaluation": verdict.eval_samples},
        "layers": {"quantized": verdict.quantized_layers, "quantizable": verdict.total_layers},
        "offending_layers": bisection["offending_layers"] if bisection else [],
        "bisection": bisection,
        "evaluations": verdict.evaluations,
        "cache_hits": list(verdict.cache_hits),
        "notes": list(verdict.notes),
        "diagnostics": [finding.as_dict() for finding in verdict.diagnostics],
        "duration_s": round(duration_s if duration_s is not None else verdict.duration_s, 3),
    }


def error_record(
    *,
    model: str,
    name: str,
    nodeid: str,
    message: str,
    duration_s: float,
    backend: str = "",
    calibrator: str = "",
    diagnostics: Sequence[Finding] = (),
) -> dict[str, Any]:
    """The JSON report entry of a gate that could not be judged; same keys as a verdict's, nothing measured.

    ``backend`` is the requested backend's name (nothing may have been built); ``diagnostics`` what was
    found about the error (the first NaN tensor).
    """
    return {
        "model": model,
        "name": name,
        "nodeid": nodeid,
        "verdict": "error",
        "error": message,
        "metrics": {},
        "backend": {"backend": backend} if backend else {},
        "calibrator": calibrator,
        "samples": {"calibration": None, "evaluation": None},
        "offending_layers": [],
        "evaluations": 0,
        "cache_hits": [],
        "diagnostics": [finding.as_dict() for finding in diagnostics],
        "duration_s": round(duration_s, 3),
    }


def junit_properties(verdict: GateVerdict) -> list[tuple[str, object]]:
    """Key figures as (name, value) pairs for ``item.user_properties`` (JUnit <property> elements)."""
    props: list[tuple[str, object]] = [
        ("int8gate_verdict", "pass" if verdict.passed else "fail"),
        ("int8gate_backend", verdict.backend_text),
        ("int8gate_calibrator", verdict.calibrator),
    ]
    for name in KEY_METRICS:
        if name in verdict.int8:
            props.append((f"int8gate_int8_{name}", _fmt_prop(verdict.int8[name])))
        if name in verdict.fp32:
            props.append((f"int8gate_fp32_{name}", _fmt_prop(verdict.fp32[name])))
    if isinstance(verdict.bisection, BisectionReport):
        props.append(("int8gate_offending_layers", ",".join(o.name for o in verdict.bisection.offenders)))
    return props


def _fmt_prop(value: float) -> str:
    return f"{value:.6g}"


@dataclass(frozen=True)
class SummaryRow:
    name: str
    verdict: str
    figures: str


def summary_row(record: Mapping[str, Any]) -> SummaryRow:
    if record["verdict"] == "error":
        return SummaryRow(record["name"], "ERROR", str(record.get("error", ""))[:100])
    measured = record.get("measured", {}).get("int8", {})
    parts = []
    for name, values in record["metrics"].items():
        spec = BUDGET_METRICS[name]
        value = values["int8"] if not spec.drop else None
        if spec.drop and values["fp32"] is not None:
            value = values["fp32"] - values["int8"]
        parts.append(f"{name} {_num(value, 0).strip()}")
    if not record["metrics"] and "cosine" in measured:
        parts.append(f"cosine {_num(measured['cosine'], 0).strip()}")
    offenders = record.get("offending_layers") or []
    if offenders:
        parts.append("offenders " + ", ".join(o["name"] for o in offenders))
    if record.get("cache_hits"):
        parts.append("cached: " + ", ".join(record["cache_hits"]))
    findings = record.get("diagnostics") or []
    if findings:
        counts = {str(s): sum(f["severity"] == s for f in findings) for s in SEVERITIES}
        parts.append(f"diagnostics: {counts_text(counts)}")
    return SummaryRow(record["name"], record["verdict"].upper(), "; ".join(parts))


def summary_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [summary_row(r) for r in records]
    if not rows:
        return []
    width = max(len(r.name) for r in rows) + 2
    return [f"{r.name:<{width}}{r.verdict:<7}{r.figures}" for r in rows]


def write_json_report(
    path: str | os.PathLike[str], records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]
) -> None:
    """The session's JSON report; ``meta`` adds top-level fields but cannot replace the schema's."""
    payload = {"schema": REPORT_SCHEMA, "version": REPORT_SCHEMA_VERSION, **meta, "gates": list(records)}
    payload.update(schema=REPORT_SCHEMA, version=REPORT_SCHEMA_VERSION)
    atomic_write_bytes(Path(path), (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())
