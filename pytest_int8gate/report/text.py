"""Plain-text renderings of gate views: the failure text of a test, the verdict text of ``int8gate check``,
the rows of the terminal summary and the terminal's baseline lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..results import GateVerdict
from .view import BisectionView, FixView, GateView, gate_view


def _cell(text: str, width: int) -> str:
    return text.center(width) if text == "-" else text.rjust(width)


def header_line(view: GateView) -> str:
    return (
        f"[{view.backend} | {view.calibrator} | {view.samples} | {view.coverage} | "
        f"output{'s' if ', ' in view.output else ''} {view.output}]"
        if view.samples
        else f"[{view.backend} | {view.calibrator}]"
    )


def metric_table(view: GateView, indent: str = "  ") -> list[str]:
    # the 95 % interval column (of the drop for *_drop metrics) appears when a metric has one
    width = max((len(m.interval) for m in view.metrics), default=0)
    ci_header = f"{'95% CI':<{width + 2}}" if width else ""
    name_width = max(15, *(len(m.name) + 2 for m in view.metrics)) if view.metrics else 15
    rows = [
        f"{indent}{'metric':<{name_width}}{'fp32':>9}{'int8':>9}{'drop':>9}   {'limit':<11}{ci_header}result"
    ]
    for m in view.metrics:
        ci = f"{m.interval:<{width + 2}}" if width else ""
        rows.append(
            f"{indent}{m.name:<{name_width}}{_cell(m.fp32, 9)}{_cell(m.int8, 9)}{_cell(m.delta, 9)}   "
            f"{m.limit:<11}{ci}{m.result}"
        )
    return rows


def diagnostics_lines(view: GateView) -> list[str]:
    """The diagnostics block: each finding with its fix."""
    if not view.findings:
        return []
    lines = [f"Diagnostics ({view.findings_counts}):"]
    for finding in view.findings:
        lines.append(f"  {finding.label} {finding.code}: {finding.message}")
        lines.append(f"    fix: {finding.fix}")
    return lines


def fix_text(fix: FixView) -> str:
    """``exclude [a]; calibrator b=percentile; equalize [c]``."""
    parts = []
    for change in fix.changes:
        if any(value is not None for _, value in change.items):
            parts.append(f"{change.label} " + ", ".join(f"{name}={value}" for name, value in change.items))
        else:
            parts.append(f"{change.label} [{', '.join(name for name, _ in change.items)}]")
    return "; ".join(parts) or "no change"


def fix_lines(fix: FixView) -> list[str]:
    outcome = f"{fix.outcome} {fix.outcome_note}".strip()
    lines = [f"Verified fix {fix.scope}: {fix_text(fix)} -> {fix.results}  {outcome}"]
    if fix.deploy:
        lines.append(fix.deploy[0])
        lines.extend("  " + line for line in fix.deploy[1:])
    if fix.manifest:
        lines.append("Apply it in int8gate.yaml (under the model's entry):")
        lines.extend("  " + line for line in fix.manifest.splitlines())
    return lines


def bisection_lines(bisection: BisectionView) -> list[str]:
    lines = [f"Offending layers ({bisection.search}):"]
    if bisection.offenders:
        width = max(len("layer"), *(len(o.name) for o in bisection.offenders)) + 2
        column = max(34, *(len(o.metrics) + 2 for o in bisection.offenders))
        lines.append(f"  {'idx':>4}  {'layer':<{width}}{'op':<15}{'budget when quantized':<{column}}verdict")
        for o in bisection.offenders:
            lines.append(f"  {o.index:>4}  {o.name:<{width}}{o.op:<15}{o.metrics:<{column}}{o.repair}")
            if o.attempts:
                lines.append(f"  {'':>4}  {'':<{width}}tried: {'; '.join(o.attempts)}")
    else:
        lines.append("  none found")
    if bisection.fix is not None:
        lines.extend(fix_lines(bisection.fix))
    lines.extend(f"Note: {note}" for note in bisection.notes)
    if bisection.most_sensitive:
        worst = ", ".join(f"{name} {db}" for name, db in bisection.most_sensitive)
        lines.append(f"Most sensitive layers (own-output SQNR in dB, lower is worse): {worst}")
    return lines


def gate_text(view: GateView) -> str:
    """A gate as text: the verdict with its table, diagnostics, search and notes; an error's reason."""
    if view.status == "error":
        lines = [f"INT8 gate error: {view.name}  {header_line(view)}", f"  {view.error}"]
        lines.extend(diagnostics_lines(view))
        return "\n".join(lines)
    lines = [f"INT8 gate {'passed' if view.status == 'pass' else 'failed'}: {view.name}  {header_line(view)}"]
    if view.budget:
        lines.append(f"  {view.budget}")
    lines.extend(metric_table(view))
    lines.extend(diagnostics_lines(view))
    if view.bisection is not None:
        lines.extend(bisection_lines(view.bisection))
    elif view.bisection_status:
        lines.append(f"Offending layers: {view.bisection_status}.")
    lines.extend(f"Note: {note}" for note in view.notes)
    return "\n".join(lines)


def failure_text(verdict: GateVerdict) -> str:
    """The text a failing gate shows in the test output (no traceback)."""
    return gate_text(gate_view(verdict))


def verdict_text(verdict: GateVerdict) -> str:
    """A passing or failing verdict as text (the failure text when it failed)."""
    return gate_text(gate_view(verdict))


def junit_properties(verdict: GateVerdict) -> list[tuple[str, object]]:
    """Key figures as (name, value) pairs for ``item.user_properties`` (JUnit <property> elements)."""
    return list(gate_view(verdict).properties)


@dataclass(frozen=True)
class SummaryRow:
    name: str
    verdict: str
    figures: str


def summary_row(record: Mapping[str, Any] | GateView) -> SummaryRow:
    view = record if isinstance(record, GateView) else gate_view(record)
    return SummaryRow(view.name, view.status_word, view.summary)


def summary_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The terminal summary's rows: name, PASS/FAIL/ERROR, the figures."""
    views = [gate_view(r) for r in records]
    if not views:
        return []
    width = max(len(v.name) for v in views) + 2
    lines = []
    for view in views:
        lines.append(f"{view.name:<{width}}{view.status_word:<7}{view.summary}")
        # failures and warnings one line each, on passing gates too: a pass with a warning deserves a look
        lines.extend(
            f"{'':<{width}}  {f.severity} {f.code}: {f.message}"
            for f in view.findings
            if f.severity in ("failure", "warning")
        )
    return lines


def timings_text(timings: Mapping[str, float]) -> str:
    """``load 0.21 s, calibrate 1.30 s, ...``: a verdict's stage timings (``"<stage>_s"`` keys), in order."""
    return ", ".join(
        f"{name.removesuffix('_s').replace('_', ' ')} {seconds:.2f} s" for name, seconds in timings.items()
    )


def timings_line(record: Mapping[str, Any]) -> str | None:
    """The terminal summary's line of a gate's stage timings (``-v``); None when it has none."""
    timings = record.get("timings")
    if not timings:
        return None
    total = record.get("duration_s", 0.0)
    return f"{record.get('name', '?')}: {timings_text(timings)} ({total:.2f} s in all)"


def baseline_lines(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> list[str]:
    """The terminal summary's lines about the baseline: per gate the change of each metric."""
    created = f" ({summary['created']})" if summary.get("created") else ""
    lines = [f"int8gate: against baseline {summary.get('path')}{created}:"]
    views = [v for v in (gate_view(r) for r in records) if v.baseline is not None]
    width = max((len(v.name) for v in views), default=0) + 2
    for view in views:
        assert view.baseline is not None
        if view.baseline.status == "new":
            parts = ["new gate, not in the baseline"]
        else:
            parts = [
                f"{c.metric} {c.baseline} -> {c.current} ({c.change} "
                f"{c.word.upper() if c.regressed else c.word})"
                for c in view.changes
            ]
        lines.append(f"  {view.name:<{width}}{'; '.join(parts) or 'nothing to compare'}")
    if summary.get("missing"):
        lines.append(f"  in the baseline but not in this run: {', '.join(summary['missing'])}")
    regressions = int(summary.get("regressions") or 0)
    if regressions:
        lines.append(
            f"int8gate: FAILED: {regressions} metric{'s' if regressions != 1 else ''} regressed against the "
            "baseline by more than the tolerance (--int8-baseline-tolerance)"
        )
    return lines
