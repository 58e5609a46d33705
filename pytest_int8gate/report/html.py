"""The HTML report: one self-contained page (no network, no scripts, inline styles and charts), and one
gate's fragment for pytest-html's extras; a rendering of the gate views."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .chart import esc, sensitivity_svg
from .view import BisectionView, GateView, fix_changes, has_intervals, headline

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto;
       max-width: 1100px; padding: 0 16px; color: #1f2328; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 18px 0 6px; } h2 code { font-size: 1em; }
.meta { color: #59636e; margin: 0 0 16px; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border: 1px solid #d1d9e0; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f6f8fa; padding: 8px 12px; border: 1px solid #d1d9e0; overflow-x: auto; }
.verdict { font-weight: 600; padding: 1px 6px; border-radius: 4px; white-space: nowrap; }
.v-pass { background: #dafbe1; color: #116329; } .v-fail { background: #ffebe9; color: #a40e26; }
.v-error { background: #fff8c5; color: #7d4e00; }
.ok { color: #116329; } .bad { color: #a40e26; font-weight: 600; }
.gate { border-top: 1px solid #d1d9e0; margin-top: 24px; }
.sev-failure, .sev-error { color: #a40e26; font-weight: 600; } .sev-warning { color: #7d4e00; }
svg text { font: 11px system-ui, sans-serif; }
details > summary { cursor: pointer; }
"""


def _code(value: object) -> str:
    return f"<code>{esc(value)}</code>"


def _badge(view: GateView) -> str:
    return f'<span class="verdict v-{esc(view.status)}">{esc(view.status_word)}</span>'


def _result(passed: bool, word: str) -> str:
    return f'<span class="{"ok" if passed else "bad"}">{esc(word)}</span>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """``header`` is escaped here; ``rows`` hold cells already escaped (they may contain markup)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _change_cell(view: GateView) -> str:
    if view.baseline is None:
        return "-"
    if view.baseline.status == "new":
        return "new gate"
    parts = []
    for c in view.changes:
        css = "bad" if c.word in ("worse", "regressed") else "ok" if c.word == "better" else ""
        parts.append(f'{esc(c.metric)} <span class="{css}">{esc(c.change)} {esc(c.word)}</span>')
    return "<br>".join(parts) or "-"


def _summary_table(views: Sequence[GateView], with_baseline: bool) -> str:
    with_ci = has_intervals(views)
    header = ["model", "verdict", "metrics (value, limit)"]
    if with_ci:
        header.append("95% CI")
    if with_baseline:
        header.append("Δ vs baseline")
    header.append("backend")
    rows = []
    for index, view in enumerate(views):
        row = [f'<a href="#gate-{index}"><code>{esc(view.name)}</code></a>', _badge(view)]
        if view.status == "error":
            row.append(esc(view.error))
        else:
            row.append(
                "<br>".join(
                    f"{esc(m.name)} {_result(m.passed, m.observed_text)} ({esc(m.limit)})"
                    for m in view.metrics
                )
            )
        if with_ci:
            row.append(
                "<br>".join(f"{esc(m.name)} {esc(m.interval)}" for m in view.metrics if m.interval) or "-"
            )
        if with_baseline:
            row.append(_change_cell(view))
        row.append(esc(view.backend_short or "-"))
        rows.append(row)
    return _table(header, rows)


def _metrics(view: GateView) -> str:
    rows = [
        [esc(m.name), esc(m.fp32), esc(m.int8), esc(m.delta), esc(m.limit), esc(m.interval or "-"),
         _result(m.passed, m.result)]
        for m in view.metrics
    ]  # fmt: skip
    return _table(["metric", "fp32", "int8", "drop", "limit", "95% CI", "result"], rows, numeric=(1, 2, 3))


def _bisection(bisection: BisectionView) -> str:
    out = [f"<h3>Offending layers</h3><p>{esc(bisection.search)}.</p>"]
    if bisection.offenders:
        rows = [
            [esc(o.index), _code(o.name), esc(o.op), esc(o.metrics),
             esc(o.repair + (f" (tried: {'; '.join(o.attempts)})" if o.attempts else ""))]
            for o in bisection.offenders
        ]  # fmt: skip
        out.append(_table(["idx", "layer", "op", "budget when quantized", "verdict"], rows, numeric=(0,)))
    else:
        out.append("<p>None found.</p>")
    fix = bisection.fix
    if fix is not None:
        outcome = f"{_result(fix.passed, fix.outcome)} {esc(fix.outcome_note)}".strip()
        out.append(
            f"<p><strong>Verified fix</strong> {esc(fix.scope)}: {fix_changes(fix, _code, esc)} → "
            f"{esc(fix.results)} {outcome}</p>"
        )
        if fix.deploy:
            out.append(f"<p>{'<br>'.join(esc(line) for line in fix.deploy)}</p>")
        if fix.manifest:
            out.append(
                "<p>Apply it in <code>int8gate.yaml</code> (under the model's entry):</p>"
                f"<pre>{esc(fix.manifest)}</pre>"
            )
    out.extend(f"<p>Note: {esc(note)}</p>" for note in bisection.notes)
    if bisection.most_sensitive:
        worst = ", ".join(f"{_code(name)} {esc(db)}" for name, db in bisection.most_sensitive)
        out.append(f"<p>Most sensitive layers (own-output SQNR in dB, lower is worse): {worst}</p>")
    return "".join(out)


def _sensitivity(view: GateView) -> str:
    svg = sensitivity_svg(view)
    if svg is None or view.bisection is None:
        return ""
    rows = [
        [
            esc(p.index),
            f'<code class="{"bad" if p.offender else ""}">{esc(p.name)}</code>',
            esc(p.op),
            esc(p.text),
        ]
        for p in view.bisection.sensitivity
    ]
    table = _table(["idx", "layer", "op", "SQNR dB"], rows, numeric=(0, 3))
    return (
        f'<h3>Per-layer sensitivity</h3><div class="chart">{svg}</div>'
        f"<details><summary>Sensitivity table ({len(rows)} layers)</summary>{table}</details>"
    )


def _diagnostics(view: GateView) -> str:
    if not view.findings:
        return ""
    rows = [
        [
            f'<span class="sev-{esc(f.severity)}">{esc(f.severity)}</span>',
            esc(f.code),
            esc(f.message),
            esc(f.fix),
        ]
        for f in view.findings
    ]
    return "<h3>Diagnostics</h3>" + _table(["severity", "check", "finding", "fix"], rows)


def _gate_baseline(view: GateView) -> str:
    if view.baseline is None:
        return ""
    if view.baseline.status == "new":
        return "<h3>Against the baseline</h3><p>New gate: not in the baseline.</p>"
    rows = []
    for c in view.changes:
        word = c.word + (f" (tolerance {c.tolerance})" if c.tolerance else "")
        css = "bad" if c.worse else "ok" if c.better else ""
        rows.append(
            [
                esc(c.metric),
                esc(c.baseline),
                esc(c.current),
                esc(c.change),
                f'<span class="{css}">{esc(word)}</span>',
            ]
        )
    if not rows:
        return ""
    return "<h3>Against the baseline</h3>" + _table(
        ["metric", "baseline", "now", "change", ""], rows, numeric=(1, 2, 3)
    )


def gate_fragment(view: GateView) -> str:
    """One gate's details as an HTML fragment."""
    facts = [_code(view.model), esc(view.backend or "-")]
    if view.calibrator:
        facts.append(f"calibrator {esc(view.calibrator)}")
    if view.samples:
        facts.append(esc(view.samples))
    out = [f'<p class="meta">{" · ".join(facts)}</p>']
    if view.status == "error":
        out.append(f"<p>The gate could not be judged:</p><pre>{esc(view.error)}</pre>")
        out.append(_diagnostics(view))
        return "".join(out)
    out.append(_metrics(view))
    out.append(_gate_baseline(view))
    out.append(_diagnostics(view))
    if view.bisection is not None:
        out.append(_bisection(view.bisection))
    elif view.bisection_status:
        out.append(f"<p>Offending layers: {esc(view.bisection_status)}.</p>")
    out.append(_sensitivity(view))
    out.extend(f"<p>Note: {esc(note)}</p>" for note in view.notes)
    return "".join(out)


def gate_extra_fragment(view: GateView) -> str:
    """:func:`gate_fragment` with the report's styles, for embedding in another page (pytest-html)."""
    return f'<div class="int8gate"><style>{_scoped_css(".int8gate")}</style>{gate_fragment(view)}</div>'


def _scoped_css(scope: str) -> str:
    """The report's CSS with every selector limited to ``scope`` (``body`` and ``:root`` become it)."""
    rules = []
    for selectors, body in re.findall(r"([^{}]+)\{([^}]*)\}", _CSS):
        scoped = []
        for selector in selectors.split(","):
            selector = selector.strip()
            scoped.append(scope if selector in ("body", ":root") else f"{scope} {selector}")
        rules.append(f"{', '.join(scoped)} {{{body}}}")
    return "\n".join(rules)


def render_html(views: Sequence[GateView], meta: Mapping[str, Any]) -> str:
    """The run as one self-contained HTML page: no network, no scripts, styles and charts inline."""
    provenance = [headline(views)]
    if meta.get("tool_version"):
        provenance.append(f"pytest-int8gate {meta['tool_version']}")
    if meta.get("created"):
        provenance.append(str(meta["created"]))
    sections = []
    for index, view in enumerate(views):
        title = f"<code>{esc(view.name)}</code> {_badge(view)}"
        body = gate_fragment(view)
        if view.status == "pass":
            sections.append(
                f'<section class="gate" id="gate-{index}"><details><summary><h2 style="display:inline">'
                f"{title}</h2></summary>{body}</details></section>"
            )
        else:
            sections.append(f'<section class="gate" id="gate-{index}"><h2>{title}</h2>{body}</section>')
    baseline = meta.get("baseline")
    baseline_html = ""
    if isinstance(baseline, Mapping):
        created = f", created {esc(baseline['created'])}" if baseline.get("created") else ""
        baseline_html = (
            f"<p>Compared with the baseline <code>{esc(baseline.get('path', ''))}</code>{created}."
        )
        missing = baseline.get("missing") or []
        if missing:
            baseline_html += " In the baseline but not in this run: " + ", ".join(_code(n) for n in missing)
        baseline_html += "</p>"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>INT8 gate report: {esc(headline(views))}</title><style>{_CSS}</style></head>\n<body>"
        f'<header><h1>INT8 gate report</h1><p class="meta">{esc(" · ".join(provenance))}</p></header>'
        f'<section id="summary"><h2>Gates</h2>{_summary_table(views, isinstance(baseline, Mapping))}'
        f"{baseline_html}</section>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
