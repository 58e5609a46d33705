"""The view of a gate: every word and number the reports show, computed once from a verdict or a record.

Text, Markdown, HTML, JUnit properties and the terminal summary row are renderings of a :class:`GateView`;
none of them derives a value, a status word or a sentence of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..results import (
    SEVERITIES,
    BisectionReport,
    Finding,
    GateVerdict,
    MetricResult,
    RepairAction,
    severity_counts,
)
from .codec import backend_text, decode_number
from .decode import decode_record
from .records import GateBaseline, GateError, GateRecord, MetricChange

#: Metrics shown as JUnit properties, in this order, when measured.
KEY_METRICS = ("top1", "top1_agreement", "cosine", "cosine_min", "sqnr_db", "max_abs_error")
STATUS_WORDS = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}
NOT_SEARCHED_DIAGNOSTICS = "not searched (the budget is met; the diagnostics fail the gate)"
NOT_SEARCHED_DISABLED = "not searched (bisection disabled; enable with --int8-bisect)"


# ---- numbers --------------------------------------------------------------------------------------------


def fmt(value: object) -> str:
    """A number as every report prints it: 4 decimals, 1 from 100 on, ``-`` when missing."""
    number = decode_number(value)
    if number is None:
        return "-"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    if math.isnan(number):
        return "nan"
    if number == 0:
        number = 0.0  # no "-0.0000"
    return f"{number:.4f}" if abs(number) < 100 else f"{number:.1f}"


def fmt_db(value: object) -> str:
    """A level in dB, one decimal (``inf`` for a bit-exact layer)."""
    number = decode_number(value)
    if number is None:
        return "-"
    return fmt(number) if not math.isfinite(number) else f"{number:.1f}"


def fmt_change(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return ("+" if value > 0 else "") + fmt(value)


def fmt_sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def counts_text(counts: Mapping[str, int]) -> str:
    """``1 failure, 2 warnings`` (severities with no finding left out)."""
    return ", ".join(f"{n} {severity}{'s' if n > 1 else ''}" for severity, n in counts.items() if n)


# ---- the parts of a view --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricChangeView:
    """A budget metric against the baseline."""

    metric: str
    baseline: str
    current: str
    change: str
    word: str  # "regressed", "worse", "better" or "same"
    tolerance: str  # "" without one
    regressed: bool
    worse: bool
    better: bool


@dataclass(frozen=True)
class MetricRow:
    """One budget metric: the values, the number compared with the limit (a drop as a drop), the result."""

    name: str
    fp32: str
    int8: str
    delta: str
    observed: float
    observed_text: str
    limit: str  # "<= 0.01"
    interval: str  # "[0.0010, 0.0229]", " strict" appended when it decided; "" when none
    passed: bool
    result: str  # PASS or FAIL
    change: MetricChangeView | None = None


@dataclass(frozen=True)
class FindingRow:
    severity: str
    label: str  # FAILURE, WARNING or info
    code: str
    message: str
    fix: str


@dataclass(frozen=True)
class OffenderRow:
    index: int
    name: str
    op: str
    metrics: str  # the budget's metrics on the search subset when it was added
    repair: str  # the rung of the repair ladder that fixed it
    attempts: tuple[str, ...]  # the rungs tried before


@dataclass(frozen=True)
class FixChange:
    """One kind of change of a verified fix: ``label`` and its layers (with a value for calibrators)."""

    label: str
    items: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class FixView:
    scope: str  # "on all 500 evaluation samples", after the words "Verified fix"
    changes: tuple[FixChange, ...]
    results: str  # "top1_drop 0.0000, cosine 1.0000"
    passed: bool
    outcome: str  # PASS or FAIL
    outcome_note: str  # "(not a fix)" for a FAIL
    deploy: tuple[str, ...]  # the rewritten FP32 model to deploy, when the fix equalizes
    manifest: str  # the int8gate.yaml snippet; "" when the fix did not pass


@dataclass(frozen=True)
class SensitivityPoint:
    index: int
    name: str
    op: str
    sqnr_db: float
    text: str
    offender: bool


@dataclass(frozen=True)
class BisectionView:
    search: str  # "binary search: 4 evaluations over 5 quantized layers on 200 samples; 4 repair attempts"
    offenders: tuple[OffenderRow, ...]
    fix: FixView | None
    notes: tuple[str, ...]
    most_sensitive: tuple[tuple[str, str], ...]  # the five worst layers, (name, SQNR text)
    sensitivity: tuple[SensitivityPoint, ...]  # topological order


@dataclass(frozen=True)
class GateView:
    """Everything a report says about one gate."""

    name: str
    model: str
    model_file: str
    nodeid: str
    status: str  # pass, fail or error
    status_word: str  # PASS, FAIL or ERROR
    error: str  # the reason, for errors
    backend: str  # with the device
    backend_short: str  # without it
    calibrator: str
    samples: str  # "calibration 600, evaluation 500 samples"; "" for errors
    output: str
    #: "5 of 5 quantizable layers in INT8"; "" for errors
    coverage: str
    #: The budget and where each key came from, or the defaults by output kind that judged each output.
    budget: str
    metrics: tuple[MetricRow, ...]
    findings: tuple[FindingRow, ...]
    findings_counts: str  # "1 failure, 2 warnings"
    concerns: int  # findings of severity warning or failure
    bisection: BisectionView | None
    bisection_status: str  # why there is no search, for a failing gate without one; else ""
    notes: tuple[str, ...]
    cache_hits: tuple[str, ...]
    summary: str  # the terminal summary row's figures
    properties: tuple[tuple[str, str], ...]  # JUnit <property> name, value
    baseline: GateBaseline | None
    changes: tuple[MetricChangeView, ...]

    @property
    def offender_names(self) -> tuple[str, ...]:
        return () if self.bisection is None else tuple(o.name for o in self.bisection.offenders)

    @property
    def regressed(self) -> bool:
        return self.baseline is not None and self.baseline.regressed


# ---- building -------------------------------------------------------------------------------------------


def gate_view(source: GateVerdict | GateRecord | Mapping[str, Any]) -> GateView:
    """The view of a verdict, a record, or a record's JSON data (decoded with the report codec)."""
    if isinstance(source, GateVerdict):
        record = GateRecord(nodeid="", outcome=source, duration_s=source.duration_s)
    elif isinstance(source, GateRecord):
        record = source
    else:
        record = decode_record(source)
    if isinstance(record.outcome, GateError):
        return _error_view(record, record.outcome)
    return _verdict_view(record, record.outcome)


def _change_view(change: MetricChange) -> MetricChangeView:
    word = (
        "regressed"
        if change.regressed
        else "worse"
        if change.worse
        else "better"
        if change.better
        else "same"
    )
    return MetricChangeView(
        metric=change.metric,
        baseline=fmt(change.baseline),
        current=fmt(change.current),
        change=fmt_change(change.change),
        word=word,
        tolerance="" if change.tolerance is None else fmt(change.tolerance),
        regressed=change.regressed,
        worse=change.worse,
        better=change.better,
    )


def failing_number(value: float, limit: float, upper: bool) -> str:
    """``value`` with enough digits that it never reads as meeting ``limit`` (0.996995 against >= 0.997
    prints 0.99699, not 0.9970)."""
    for digits in range(4, 12):
        text = f"{value:.{digits}f}"
        shown = float(text)
        if (shown > limit) if upper else (shown < limit):
            return text
    return repr(value)


def observed_text(result: MetricResult) -> str:
    """The number compared with the limit; a failing one never rounded onto the passing side."""
    value, limit = result.observed, result.limit
    missed = value > limit if result.upper else value < limit
    if result.passed or not missed or not math.isfinite(value):
        return fmt(value)  # (a strict-interval failure's value itself meets the limit)
    return failing_number(value, limit, result.upper)


def _metric_row(result: MetricResult, change: MetricChangeView | None) -> MetricRow:
    interval = ""
    if result.ci95 is not None:
        interval = f"[{fmt(result.ci95[0])}, {fmt(result.ci95[1])}]" + (" strict" if result.strict_ci else "")
    return MetricRow(
        name=result.key,
        fp32=fmt(result.fp32),
        int8=fmt(result.int8),
        # shown as a drop (fp32 - int8, positive = worse), the number its limit applies to
        delta=observed_text(result) if result.delta is not None else "-",
        observed=result.observed,
        observed_text=observed_text(result),
        limit=f"{'<=' if result.upper else '>='} {result.limit:g}",
        interval=interval,
        passed=result.passed,
        result="PASS" if result.passed else "FAIL",
        change=change,
    )


def _finding_rows(findings: tuple[Finding, ...]) -> tuple[FindingRow, ...]:
    ordered = sorted(findings, key=lambda f: SEVERITIES.index(f.severity))  # stable: the checks' order
    return tuple(
        FindingRow(
            f.severity, f.severity.upper() if f.severity != "info" else "info", f.code, f.message, f.fix
        )
        for f in ordered
    )


def _inline(results: tuple[MetricResult, ...]) -> str:
    return ", ".join(f"{r.key} {observed_text(r)}" for r in results)


def _repair_text(
    action: RepairAction, calibrator: str | None, producer: str | None, alpha: float | None = None
) -> str:
    """The rung of the repair ladder that settled an offending layer."""
    if action is RepairAction.SMOOTHQUANT:
        return f"stays INT8 via SmoothQuant (alpha {alpha:g})" if alpha else "stays INT8 via SmoothQuant"
    if action is RepairAction.CALIBRATOR:
        return f"stays INT8 with {calibrator}"
    if action is RepairAction.EQUALIZE:
        return f"stays INT8 via equalization with {producer}"
    if action is RepairAction.BIAS_CORRECTION:
        return "stays INT8 via bias correction"
    return "keep in float"


_WALKS = {
    "culprits": "few strong culprits: sensitivity-ordered bisection",
    "spread": "error spread thin: shortest passing prefix of ranked entries, INT8 first",
}


def _search_line(report: BisectionReport) -> str:
    """The search's evaluations by phase, the samples each used, and the fix's cost."""
    walk = f" ({_WALKS[report.walk]})" if report.walk in _WALKS else ""
    line = (
        f"{report.strategy} search{walk}: {report.search_evaluations} evaluations over {report.total_layers} "
        f"quantized layers on {report.subset_size} samples; {report.repair_evaluations} repair attempts"
    )
    if report.global_evaluations:
        line += f"; {report.global_evaluations} evaluations of calibrators for the whole model first"
    if report.pruning_evaluations:
        line += f"; {report.pruning_evaluations} pruning evaluations"
    line += f"; {report.verification_evaluations} verification evaluations"
    if report.eval_samples:
        line += f" on {report.eval_samples} samples"
        if report.unseen_samples:
            line += f" and the {report.unseen_samples} the search never used"
    if report.fix is not None and report.fix.quantized_layers:
        line += f"; fix: {report.fix.cost()}"
    return line


def _bisection_view(verdict: GateVerdict) -> BisectionView | None:
    report = verdict.bisection
    if report is None:
        return None
    offenders = tuple(
        OffenderRow(
            index=o.index,
            name=o.name,
            op=o.op_type,
            metrics=", ".join(f"{k} {fmt(v)}" for k, v in o.metrics.items()),
            repair=_repair_text(o.action, o.calibrator, o.producer, o.alpha),
            attempts=tuple(o.attempts),
        )
        for o in report.offenders
    )
    fix = None
    if report.fix is not None:
        f = report.fix
        changes = [
            FixChange(label, tuple((name, None) for name in names))
            for label, names in (("exclude", f.exclude),)
            if names
        ]
        if f.calibrator:
            changes.insert(0, FixChange("calibrator for the model", ((f.calibrator, None),)))
        if f.overrides:
            changes.append(FixChange("calibrator", tuple(f.overrides.items())))
        for label, names in (("equalize", f.equalize), ("bias correction", f.bias_correction)):
            if names:
                changes.append(FixChange(label, tuple((name, None) for name in names)))
        if f.smoothquant:
            changes.append(FixChange("smoothquant", tuple((n, f"{a:g}") for n, a in f.smoothquant.items())))
        deploy: tuple[str, ...] = ()
        if f.fp32_sha256 is not None:
            where = f.fp32_model or "not written (no cache directory; `int8gate equalize` writes it)"
            deploy = (
                f"Equalized FP32 model (deploy this one): {where}  sha256 {f.fp32_sha256}",
                "its FP32 outputs differ from the original's by at most "
                f"{fmt_sci(f.fp32_max_abs_difference)} (largest output {fmt_sci(f.fp32_reference_max_abs)}, "
                f"{verdict.eval_samples} samples)",
            )
        scope = f"on all {verdict.eval_samples} evaluation samples"
        if f.unseen_samples:
            scope += f" and on the {f.unseen_samples} the search never used"
        outcome_note = "" if f.passed else "(not a fix)"
        if f.generalised is False and all(r.passed for r in f.results):
            unseen = _inline(f.unseen_results)
            outcome_note = f"(did not generalise: {unseen} on the unseen samples; not a fix)"
        fix = FixView(
            scope=scope,
            changes=tuple(changes),
            results=_inline(f.results),
            passed=f.passed,
            outcome="PASS" if f.passed else "FAIL",
            outcome_note=outcome_note,
            deploy=deploy,
            manifest=f.manifest_snippet() if f.passed else "",
        )
    offender_names = {o.name for o in report.offenders}
    indexed = all(s.index >= 0 for s in report.sensitivity)  # else the report's (worst-first) order
    points = sorted(report.sensitivity, key=lambda s: s.index) if indexed else list(report.sensitivity)
    return BisectionView(
        search=_search_line(report),
        offenders=offenders,
        fix=fix,
        notes=tuple(report.notes),
        most_sensitive=tuple((s.name, fmt_db(s.sqnr_db)) for s in report.sensitivity[:5]),
        sensitivity=tuple(
            SensitivityPoint(
                s.index, s.name, s.op_type, s.sqnr_db, fmt_db(s.sqnr_db), s.name in offender_names
            )
            for s in points
        ),
    )


def _summary(parts: list[str], findings: tuple[Finding, ...], cache_hits: tuple[str, ...]) -> str:
    if cache_hits:
        parts.append("cached: " + ", ".join(cache_hits))
    if findings:
        parts.append(f"diagnostics: {counts_text(severity_counts(findings))}")
    return "; ".join(parts)


def _concerns(findings: tuple[Finding, ...]) -> int:
    return sum(f.severity in ("warning", "failure") for f in findings)


def _coverage_text(verdict: GateVerdict) -> str:
    """``5 of 5 quantizable layers in INT8, 100.0 % of MACs``."""
    text = f"{verdict.quantized_layers} of {verdict.total_layers} quantizable layers in INT8"
    share = decode_number(verdict.coverage.get("int8_mac_share"))
    return text if share is None else f"{text}, {100 * share:.1f} % of MACs"


def _verdict_view(record: GateRecord, verdict: GateVerdict) -> GateView:
    changes = {} if record.baseline is None else {c.metric: _change_view(c) for c in record.baseline.changes}
    metrics = tuple(_metric_row(r, changes.get(r.key)) for r in verdict.results)
    bisection = _bisection_view(verdict)
    status = record.status
    bisection_status = ""
    if status == "fail" and bisection is None:
        bisection_status = NOT_SEARCHED_DISABLED if verdict.failed_metrics else NOT_SEARCHED_DIAGNOSTICS
    # the row says why a gate failed: the failed diagnostics and the metrics that missed, with their limits
    failed_checks = [f.code for f in verdict.diagnostics if f.severity == "failure"]
    figures = [f"failed: {', '.join(failed_checks)}"] if failed_checks else []
    figures += [f"{m.name} {m.observed_text} (limit {m.limit})" for m in metrics if not m.passed]
    figures += [f"{m.name} {m.observed_text}" for m in metrics if m.passed]
    if not metrics and "cosine" in verdict.int8:
        figures.append(f"cosine {fmt(verdict.int8['cosine'])}")
    if bisection is not None and bisection.offenders:
        figures.append("offenders " + ", ".join(o.name for o in bisection.offenders))
    properties = [
        ("int8gate_verdict", status),
        ("int8gate_backend", backend_text(verdict.backend)),
        ("int8gate_calibrator", verdict.calibrator),
    ]
    for name in KEY_METRICS:
        for precision, measured in (("int8", verdict.int8), ("fp32", verdict.fp32)):
            if name in measured:
                properties.append((f"int8gate_{precision}_{name}", f"{measured[name]:.6g}"))
    if bisection is not None:
        properties.append(("int8gate_offending_layers", ",".join(o.name for o in bisection.offenders)))
    return GateView(
        name=verdict.name,
        model=verdict.model,
        model_file=Path(verdict.model).name,
        nodeid=record.nodeid,
        status=status,
        status_word=STATUS_WORDS[status],
        error="",
        backend=backend_text(verdict.backend),
        backend_short=backend_text(verdict.backend, device=False),
        calibrator=verdict.calibrator,
        samples=f"calibration {verdict.calibration_samples}, evaluation {verdict.eval_samples} samples",
        output=", ".join(str(o.get("name")) for o in verdict.outputs) or verdict.output_name,
        coverage=_coverage_text(verdict),
        budget=(
            f"budget {verdict.budget.sources_text()}"
            if verdict.budget.limits
            else f"no budget configured; defaults by output kind: {verdict.default_budget}"
            if verdict.default_budget
            else ""
        ),
        metrics=metrics,
        findings=_finding_rows(verdict.diagnostics),
        findings_counts=counts_text(severity_counts(verdict.diagnostics)),
        concerns=_concerns(verdict.diagnostics),
        bisection=bisection,
        bisection_status=bisection_status,
        notes=tuple(verdict.notes),
        cache_hits=tuple(verdict.cache_hits),
        summary=_summary(figures, verdict.diagnostics, verdict.cache_hits),
        properties=tuple(properties),
        baseline=record.baseline,
        changes=tuple(changes.values()),
    )


def _error_view(record: GateRecord, error: GateError) -> GateView:
    return GateView(
        name=error.name,
        model=error.model,
        model_file=Path(error.model).name,
        nodeid=record.nodeid,
        status="error",
        status_word=STATUS_WORDS["error"],
        error=error.message,
        backend=error.backend,
        backend_short=error.backend,
        calibrator=error.calibrator,
        samples="",
        output="",
        coverage="",
        budget="",
        metrics=(),
        findings=_finding_rows(error.diagnostics),
        findings_counts=counts_text(severity_counts(error.diagnostics)),
        concerns=_concerns(error.diagnostics),
        bisection=None,
        bisection_status="",
        notes=(),
        cache_hits=(),
        summary=error.message[:100],
        properties=(
            ("int8gate_verdict", "error"),
            ("int8gate_backend", error.backend),
            ("int8gate_calibrator", error.calibrator),
        ),
        baseline=record.baseline,
        changes=() if record.baseline is None else tuple(_change_view(c) for c in record.baseline.changes),
    )


# ---- across views ---------------------------------------------------------------------------------------


def headline(views: Sequence[GateView]) -> str:
    counts = {status: sum(v.status == status for v in views) for status in ("pass", "fail", "error")}
    total = len(views)
    return (
        f"{total} gate{'s' if total != 1 else ''}: {counts['pass']} passed, {counts['fail']} failed, "
        f"{counts['error']} error{'s' if counts['error'] != 1 else ''}"
    )


def fix_changes(fix: FixView, code: Callable[[object], str], text: Callable[[object], str]) -> str:
    """What a verified fix changes, e.g. ``exclude a; calibrator b=percentile; equalize c``, names as code."""
    parts = []
    for change in fix.changes:
        items = ", ".join(
            code(name) + ("" if value is None else f"={text(value)}") for name, value in change.items
        )
        parts.append(f"{change.label} {items}")
    return "; ".join(parts) or "no change"


def has_intervals(views: Sequence[GateView]) -> bool:
    return any(m.interval for v in views for m in v.metrics)
