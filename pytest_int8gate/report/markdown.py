"""The Markdown report (pull-request comment, GitHub step summary): one table of all gates, then each failing
or erroring gate in detail, then the change against the baseline; a rendering of the gate views."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .view import BisectionView, GateView, fix_changes, has_intervals, headline

VERDICT_ICONS = {"pass": "✅", "fail": "❌", "error": "⚠️"}

_MD_ESCAPE = re.compile(
    r"[\\`*\[\]|~]"  # always markup
    r"|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])"  # emphasis; GitHub ignores intraword underscores
    r"|<(?=[A-Za-z/!?])"  # an HTML tag
)
_MD_LINE_START = re.compile(r"^([#>]|[-+](?=\s|$)|\d+(?=[.)](?:\s|$)))")  # heading, quote, list item


def md_text(text: object, *, line_start: bool = False) -> str:
    """Free text for Markdown: one line, with what GitHub would read as markup or HTML escaped.

    ``line_start``: the text begins a line, where ``#``, ``>``, ``-`` and ``1.`` are markup too.
    """
    flat = " ".join(str(text).split())
    escaped = _MD_ESCAPE.sub(lambda m: "\\" + m.group(0), flat)
    escaped = re.sub(r"&(?=#?\w+;)", "&amp;", escaped)  # an entity
    if line_start:
        escaped = _MD_LINE_START.sub(
            lambda m: m.group(0) + "\\" if m.group(0)[0].isdigit() else "\\" + m.group(0), escaped
        )
    return escaped


def md_code(text: object) -> str:
    """``text`` as an inline code span that survives backticks and table pipes."""
    flat = " ".join(str(text).split()).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def _fenced(text: str, language: str = "") -> list[str]:
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return [f"{fence}{language}", *text.splitlines(), fence]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    aligns = align or "l" * len(header)
    separator = ["---:" if a == "r" else "---" for a in aligns]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(separator) + " |"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _status(view: GateView) -> str:
    return f"{VERDICT_ICONS[view.status]} {view.status_word}"


def _metrics_cell(view: GateView, baseline: bool) -> str:
    if view.status == "error":
        return md_text(view.error if len(view.error) <= 160 else view.error[:157] + "...")
    parts = []
    for m in view.metrics:
        text = f"{md_text(m.name)} **{m.observed_text}** ({md_text(m.limit)}) {'✓' if m.passed else '✗'}"
        if baseline and m.change is not None:
            text += f" Δ {m.change.change} {m.change.word}"
        parts.append(text)
    return "<br>".join(parts) or "-"


def _verdict_cell(view: GateView) -> str:
    text = _status(view)
    if view.concerns:
        text += f"<br>{view.concerns} diagnostic{'s' if view.concerns != 1 else ''}"
    if view.regressed:
        text += "<br>regressed vs baseline"
    return text


def _model_cell(view: GateView) -> str:
    cell = md_code(view.name)
    if view.model_file and view.model_file != view.name:
        cell += f"<br>{md_code(view.model_file)}"
    return cell


def markdown_summary_table(views: Sequence[GateView], with_baseline: bool) -> list[str]:
    header = ["model", "verdict", "metrics (value, limit" + (", Δ vs baseline)" if with_baseline else ")")]
    with_ci = has_intervals(views)
    if with_ci:
        header.append("95% CI")
    header.append("backend")
    rows = []
    for view in views:
        row = [_model_cell(view), _verdict_cell(view), _metrics_cell(view, with_baseline)]
        if with_ci:
            row.append(
                "<br>".join(f"{md_text(m.name)} {m.interval}" for m in view.metrics if m.interval) or "-"
            )
        row.append(md_text(view.backend_short or "-"))
        rows.append(row)
    return _table(header, rows)


def _gate_section(view: GateView) -> list[str]:
    lines = [f"### {VERDICT_ICONS[view.status]} {md_code(view.name)}: {view.status_word}", ""]
    facts = [md_code(view.model_file), md_text(view.backend)]
    if view.calibrator:
        facts.append(f"calibrator {md_text(view.calibrator)}")
    if view.samples:
        facts.append(view.samples)
    if view.coverage:
        facts.append(view.coverage)
    lines += [" · ".join(f for f in facts if f and f != "-"), ""]
    if view.budget:
        lines += [md_text(view.budget), ""]
    if view.status == "error":
        lines += ["The gate could not be judged:", "", *_fenced(view.error), ""]
        lines += _diagnostics(view)
        return lines
    rows = [
        [md_text(m.name), m.fp32, m.int8, m.delta, md_text(m.limit), m.interval or "-",
         "PASS" if m.passed else "**FAIL**"]
        for m in view.metrics
    ]  # fmt: skip
    lines += _table(["metric", "fp32", "int8", "drop", "limit", "95% CI", "result"], rows, "lrrrlll")
    lines.append("")
    lines += _diagnostics(view)
    if view.bisection is not None:
        lines += _bisection(view.bisection)
    elif view.bisection_status:
        lines += [f"Offending layers: {md_text(view.bisection_status)}.", ""]
    lines += [f"- Note: {md_text(note)}" for note in view.notes]
    if view.notes:
        lines.append("")
    return lines


def _diagnostics(view: GateView) -> list[str]:
    if not view.findings:
        return []
    rows = [[md_text(f.severity), md_text(f.code), md_text(f.message), md_text(f.fix)] for f in view.findings]
    return ["**Diagnostics**", "", *_table(["severity", "check", "finding", "fix"], rows), ""]


def _bisection(bisection: BisectionView) -> list[str]:
    lines = [f"**Offending layers** ({md_text(bisection.search)})", ""]
    if bisection.offenders:
        rows = [
            [
                str(o.index),
                md_code(o.name),
                md_text(o.op),
                md_text(o.metrics),
                md_text(o.repair + (f" (tried: {'; '.join(o.attempts)})" if o.attempts else "")),
            ]
            for o in bisection.offenders
        ]
        lines += _table(["idx", "layer", "op", "budget when quantized", "verdict"], rows, "rllll")
    else:
        lines.append("None found.")
    lines.append("")
    fix = bisection.fix
    if fix is not None:
        outcome = f"**{fix.outcome}** {fix.outcome_note}".strip()
        lines += [
            f"**Verified fix** {fix.scope}: {fix_changes(fix, md_code, md_text)} → {md_text(fix.results)} "
            f"{outcome}",
            "",
        ]
        if fix.deploy:
            lines += [md_text("; ".join(fix.deploy), line_start=True), ""]
        if fix.manifest:
            lines += ["Apply it in `int8gate.yaml` (under the model's entry):", ""]
            lines += [*_fenced(fix.manifest, "yaml"), ""]
    lines += [f"- Note: {md_text(note)}" for note in bisection.notes]
    if bisection.notes:
        lines.append("")
    if bisection.most_sensitive:
        text = ", ".join(f"{md_code(name)} {db}" for name, db in bisection.most_sensitive)
        lines += [f"Most sensitive layers (own-output SQNR in dB, lower is worse): {text}", ""]
    return lines


def _baseline_section(views: Sequence[GateView], info: Mapping[str, Any]) -> list[str]:
    created = f", created {md_text(info['created'])}" if info.get("created") else ""
    lines = [
        f"### Change against the baseline ({md_code(Path(str(info.get('path', ''))).name)}{created})",
        "",
    ]
    rows = []
    new = []
    for view in views:
        if view.baseline is None:
            continue
        if view.baseline.status == "new":
            new.append(view.name)
            continue
        for c in view.changes:
            word = c.word + (f" (tolerance {c.tolerance})" if c.tolerance else "")
            rows.append(
                [md_code(view.name), md_text(c.metric), c.baseline, c.current, c.change,
                 f"**{word}**" if c.regressed else word]
            )  # fmt: skip
    if rows:
        lines += _table(["gate", "metric", "baseline", "now", "change", ""], rows, "llrrrl")
        lines.append("")
    if new:
        lines += [f"New gates (not in the baseline): {', '.join(md_code(n) for n in new)}", ""]
    missing = info.get("missing") or []
    if missing:
        lines += [f"In the baseline but not in this run: {', '.join(md_code(n) for n in missing)}", ""]
    return lines


def _passing_warnings(views: Sequence[GateView]) -> list[str]:
    """Warnings of passing gates, one line each: a pass with a warning deserves a look."""
    items = [
        f"- {md_code(view.name)}: {md_text(f.severity)} {md_code(f.code)}: {md_text(f.message)}"
        for view in views
        if view.status == "pass"
        for f in view.findings
        if f.severity == "warning"
    ]
    return ["**Warnings on passing gates**", "", *items, ""] if items else []


def render_markdown(views: Sequence[GateView], meta: Mapping[str, Any], *, details: bool = True) -> str:
    """The run as Markdown: one table of all gates, then each failing or erroring gate in detail."""
    lines = ["## INT8 gate report", "", f"**{headline(views)}**"]
    provenance = []
    if meta.get("tool_version"):
        provenance.append(f"pytest-int8gate {md_text(meta['tool_version'])}")
    if meta.get("created"):
        provenance.append(md_text(meta["created"]))
    if provenance:
        lines[-1] += " · " + " · ".join(provenance)
    baseline = meta.get("baseline")
    lines += ["", *markdown_summary_table(views, isinstance(baseline, Mapping)), ""]
    lines += _passing_warnings(views)
    if details:
        for view in views:
            if view.status != "pass":
                lines += _gate_section(view)
    if isinstance(baseline, Mapping):
        lines += _baseline_section(views, baseline)
    return "\n".join(lines).rstrip() + "\n"
