"""Reports for people: Markdown (pull-request comment, CI step summary) and one self-contained HTML page.

Both render the JSON gate records of ``report.verdict_record`` / ``report.error_record`` (so records from
pytest-xdist workers or from a stored ``--int8-report-json`` file render alike) and the report's top-level
fields (``meta``: tool version, creation time, the baseline compared against).
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import atomic_write_bytes

#: GitHub rejects a step summary over 1 MiB; beyond this the per-gate details are left out.
STEP_SUMMARY_LIMIT = 1_000_000
STEP_SUMMARY_VARIABLE = "GITHUB_STEP_SUMMARY"

_VERDICT_WORD = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}
_VERDICT_ICON = {"pass": "✅", "fail": "❌", "error": "⚠️"}
_SEVERITY_ORDER = {"failure": 0, "error": 0, "warning": 1, "info": 2}


# ---- reading records ------------------------------------------------------------------------------------


def as_float(value: object) -> float | None:
    """A record's number: JSON has no infinity, so the reports write ``"inf"`` / ``"-inf"``."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return None


def fmt(value: object) -> str:
    """A number as the reports print it: 4 decimals, 1 from 100 on, ``-`` when missing."""
    number = as_float(value)
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
    number = as_float(value)
    if number is None:
        return "-"
    return fmt(number) if math.isinf(number) or math.isnan(number) else f"{number:.1f}"


def fmt_change(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return ("+" if value > 0 else "") + fmt(value)


@dataclass(frozen=True)
class MetricLine:
    """One budget metric of a record: the number compared with the limit, and the outcome."""

    name: str
    fp32: float | None
    int8: float | None
    delta: float | None
    observed: float | None  # the drop for ``*_drop`` metrics, else the INT8 value
    op: str
    limit: float | None
    passed: bool
    ci95: tuple[float, float] | None

    @property
    def limit_text(self) -> str:
        return f"{self.op} {self.limit:g}" if self.limit is not None else "-"


def _interval(value: object) -> tuple[float, float] | None:
    if isinstance(value, Mapping):
        low = value.get("low", value.get("lower", value.get("lo")))
        high = value.get("high", value.get("upper", value.get("hi")))
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = value
    else:
        return None
    low_f, high_f = as_float(low), as_float(high)
    return None if low_f is None or high_f is None else (low_f, high_f)


def metric_lines(record: Mapping[str, Any]) -> list[MetricLine]:
    """The record's budget metrics, with the 95 % interval when the record has one.

    The interval is read from ``metrics[name]["ci95"]`` or from a top-level ``ci95`` mapping of metric
    name to interval; either may be ``[low, high]`` or ``{"low": ..., "high": ...}``.
    """
    top_ci = record.get("ci95") if isinstance(record.get("ci95"), Mapping) else {}
    lines = []
    for name, values in (record.get("metrics") or {}).items():
        if not isinstance(values, Mapping):
            continue
        delta, int8 = as_float(values.get("delta")), as_float(values.get("int8"))
        observed = -delta if delta is not None else int8
        ci = _interval(values.get("ci95", top_ci.get(name) if isinstance(top_ci, Mapping) else None))
        lines.append(
            MetricLine(
                name=str(name),
                fp32=as_float(values.get("fp32")),
                int8=int8,
                delta=delta,
                observed=observed,
                op=str(values.get("op", "")),
                limit=as_float(values.get("limit")),
                passed=bool(values.get("passed")),
                ci95=ci,
            )
        )
    return lines


def backend_text(record: Mapping[str, Any], *, device: bool = False) -> str:
    backend = record.get("backend") or {}
    if not isinstance(backend, Mapping) or not backend.get("backend"):
        return "-"
    parts = [str(backend.get("backend")), str(backend.get("version", ""))]
    if device and backend.get("device"):
        parts.append(str(backend["device"]))
    if backend.get("mode"):
        parts.append(str(backend["mode"]))
    return " ".join(p for p in parts if p)


def diagnostics_of(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """The record's diagnostics as (severity, check, finding, fix) rows, most severe first."""
    raw = record.get("diagnostics")
    if isinstance(raw, Mapping):
        raw = raw.get("findings", [{"check": str(k), "finding": str(v)} for k, v in raw.items()])
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return []
    rows = []
    for item in raw:
        if not isinstance(item, Mapping):
            rows.append({"severity": "", "check": "", "finding": str(item), "fix": ""})
            continue
        rows.append(
            {
                "severity": str(item.get("severity", item.get("level", ""))),
                "check": str(item.get("check", item.get("name", item.get("code", item.get("id", ""))))),
                "finding": str(
                    item.get("message", item.get("finding", item.get("explanation", item.get("text", ""))))
                ),
                "fix": str(item.get("fix", item.get("remedy", item.get("hint", "")))),
            }
        )
    return sorted(rows, key=lambda r: _SEVERITY_ORDER.get(r["severity"].lower(), 3))


def sensitivity_points(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The bisection's per-layer SQNR in topological order (worst-first order when indices are missing)."""
    bisection = record.get("bisection") or {}
    points = [dict(p) for p in bisection.get("sensitivity") or [] if isinstance(p, Mapping)]
    if points and all(isinstance(p.get("index"), int) and p["index"] >= 0 for p in points):
        points.sort(key=lambda p: int(p["index"]))
    return points


def _counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(("pass", "fail", "error"), 0)
    for record in records:
        verdict = str(record.get("verdict"))
        counts[verdict] = counts.get(verdict, 0) + 1
    return counts


def headline(records: Sequence[Mapping[str, Any]]) -> str:
    counts = _counts(records)
    total = len(records)
    return (
        f"{total} gate{'s' if total != 1 else ''}: {counts['pass']} passed, {counts['fail']} failed, "
        f"{counts['error']} error{'s' if counts['error'] != 1 else ''}"
    )


def _has_ci(records: Sequence[Mapping[str, Any]]) -> bool:
    return any(line.ci95 is not None for r in records for line in metric_lines(r))


def _baseline_metrics(record: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    baseline = record.get("baseline")
    if not isinstance(baseline, Mapping):
        return {}
    metrics = baseline.get("metrics")
    return metrics if isinstance(metrics, Mapping) else {}


def _change_word(change: Mapping[str, Any]) -> str:
    if change.get("regressed"):
        return "regressed"
    if change.get("worse"):
        return "worse"
    if change.get("better"):
        return "better"
    return "same"


def _fix_parts(fix: Mapping[str, Any], code: Callable[[object], str], text: Callable[[object], str]) -> str:
    """What a verified fix changes, e.g. ``exclude [a]; calibrator b=percentile; equalize [c]``."""
    parts = []
    for key, label in (
        ("exclude", "exclude"),
        ("equalize", "equalize"),
        ("bias_correction", "bias correction"),
    ):
        names = [str(name) for name in fix.get(key) or []]
        if names:
            parts.append(f"{label} " + ", ".join(code(n) for n in names))
    overrides = fix.get("calibrator_overrides") or {}
    if overrides:
        parts.append("calibrator " + ", ".join(f"{code(k)}={text(v)}" for k, v in overrides.items()))
    return "; ".join(parts) or "no change"


def _sci(value: object) -> str:
    number = as_float(value)
    return "-" if number is None else f"{number:.3g}"


def _deploy_note(fix: Mapping[str, Any]) -> str | None:
    """The rewritten FP32 model to deploy, when the fix equalizes layers."""
    if not fix.get("fp32_sha256"):
        return None
    where = fix.get("fp32_model") or "not written (no cache directory; `int8gate equalize` writes it)"
    return (
        f"Equalized FP32 model (deploy this one): {where}; sha256 {fix.get('fp32_sha256')}; max abs "
        f"difference to the original FP32 outputs {_sci(fix.get('fp32_max_abs_difference'))} (largest output "
        f"{_sci(fix.get('fp32_reference_max_abs'))})"
    )


def _fix_results(fix: Mapping[str, Any]) -> str:
    parts = []
    for name, values in (fix.get("metrics") or {}).items():
        delta = as_float(values.get("delta"))
        observed = -delta if delta is not None else as_float(values.get("int8"))
        parts.append(f"{name} {fmt(observed)}")
    return ", ".join(parts)


def _offender_verdict(offender: Mapping[str, Any]) -> str:
    """The repair that fixed the layer, and what was tried before it."""
    action = offender.get("action")
    if action == "calibrator":
        verdict = f"stays INT8 with {offender.get('calibrator')}"
    elif action == "equalize":
        verdict = f"stays INT8 via equalization with {offender.get('producer')}"
    elif action == "bias_correction":
        verdict = "stays INT8 via bias correction"
    else:
        verdict = "keep in float"
    attempts = [str(a) for a in offender.get("attempts") or []]
    return verdict + (f" (tried: {'; '.join(attempts)})" if attempts else "")


def _offender_metrics(offender: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {fmt(v)}" for k, v in (offender.get("metrics") or {}).items())


def _samples_text(record: Mapping[str, Any]) -> str:
    samples = record.get("samples") or {}
    calibration, evaluation = samples.get("calibration"), samples.get("evaluation")
    if calibration is None and evaluation is None:
        return ""
    return f"calibration {calibration}, evaluation {evaluation} samples"


# ---- Markdown -------------------------------------------------------------------------------------------

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


def _md_fenced(text: str, language: str = "") -> list[str]:
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return [f"{fence}{language}", *text.splitlines(), fence]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    aligns = align or "l" * len(header)
    separator = ["---:" if a == "r" else "---" for a in aligns]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(separator) + " |"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _md_metrics_cell(record: Mapping[str, Any], baseline: bool) -> str:
    if record.get("verdict") == "error":
        message = str(record.get("error", ""))
        return md_text(message if len(message) <= 160 else message[:157] + "...")
    changes = _baseline_metrics(record)
    parts = []
    for line in metric_lines(record):
        mark = "✓" if line.passed else "✗"
        text = f"{md_text(line.name)} **{fmt(line.observed)}** ({md_text(line.limit_text)}) {mark}"
        change = changes.get(line.name)
        if baseline and isinstance(change, Mapping) and change.get("change") is not None:
            text += f" Δ {fmt_change(as_float(change.get('change')))} {_change_word(change)}"
        parts.append(text)
    return "<br>".join(parts) or "-"


def _md_ci_cell(record: Mapping[str, Any]) -> str:
    parts = [
        f"{md_text(line.name)} [{fmt(line.ci95[0])}, {fmt(line.ci95[1])}]"
        for line in metric_lines(record)
        if line.ci95 is not None
    ]
    return "<br>".join(parts) or "-"


def _md_verdict_cell(record: Mapping[str, Any]) -> str:
    verdict = str(record.get("verdict"))
    text = f"{_VERDICT_ICON.get(verdict, '')} {_VERDICT_WORD.get(verdict, md_text(verdict))}".strip()
    severities = [d["severity"].lower() for d in diagnostics_of(record)]
    warnings = sum(s in ("warning", "failure", "error") for s in severities)
    if warnings:
        text += f"<br>{warnings} diagnostic{'s' if warnings != 1 else ''}"
    if isinstance(record.get("baseline"), Mapping) and record["baseline"].get("regressed"):
        text += "<br>regressed vs baseline"
    return text


def _model_cell(record: Mapping[str, Any]) -> str:
    name = str(record.get("name", ""))
    model_file = Path(str(record.get("model", ""))).name
    cell = md_code(name)
    if model_file and model_file != name:
        cell += f"<br>{md_code(model_file)}"
    return cell


def markdown_summary_table(
    records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None
) -> list[str]:
    baseline = isinstance((meta or {}).get("baseline"), Mapping)
    header = ["model", "verdict", "metrics (value, limit" + (", Δ vs baseline)" if baseline else ")")]
    with_ci = _has_ci(records)
    if with_ci:
        header.append("95% CI")
    header.append("backend")
    rows = []
    for record in records:
        row = [_model_cell(record), _md_verdict_cell(record), _md_metrics_cell(record, baseline)]
        if with_ci:
            row.append(_md_ci_cell(record))
        row.append(md_text(backend_text(record)))
        rows.append(row)
    return _md_table(header, rows)


def _md_gate_section(record: Mapping[str, Any]) -> list[str]:
    verdict = str(record.get("verdict"))
    name = str(record.get("name", ""))
    lines = [
        f"### {_VERDICT_ICON.get(verdict, '')} {md_code(name)}: {_VERDICT_WORD.get(verdict, verdict)}",
        "",
    ]
    facts = [md_code(Path(str(record.get("model", ""))).name), md_text(backend_text(record, device=True))]
    if record.get("calibrator"):
        facts.append(f"calibrator {md_text(record['calibrator'])}")
    if _samples_text(record):
        facts.append(_samples_text(record))
    lines += [" · ".join(f for f in facts if f and f != "-"), ""]
    if verdict == "error":
        lines += ["The gate could not be judged:", "", *_md_fenced(str(record.get("error", ""))), ""]
        return lines
    metric_rows = []
    for line in metric_lines(record):
        row = [md_text(line.name), fmt(line.fp32), fmt(line.int8), fmt(line.delta), md_text(line.limit_text)]
        row.append(f"[{fmt(line.ci95[0])}, {fmt(line.ci95[1])}]" if line.ci95 else "-")
        row.append("PASS" if line.passed else "**FAIL**")
        metric_rows.append(row)
    lines += _md_table(
        ["metric", "fp32", "int8", "delta", "limit", "95% CI", "result"], metric_rows, "lrrrlll"
    )
    lines.append("")
    lines += _md_diagnostics(record)
    bisection = record.get("bisection")
    if isinstance(bisection, Mapping):
        lines += _md_bisection(record, bisection)
    elif verdict == "fail":
        lines += ["Offending layers: not searched (bisection disabled; enable with `--int8-bisect`).", ""]
    for note in record.get("notes") or []:
        lines.append(f"- Note: {md_text(note)}")
    if record.get("notes"):
        lines.append("")
    return lines


def _md_diagnostics(record: Mapping[str, Any]) -> list[str]:
    rows = diagnostics_of(record)
    if not rows:
        return []
    table = _md_table(
        ["severity", "check", "finding", "fix"],
        [
            [md_text(r["severity"]), md_text(r["check"]), md_text(r["finding"]), md_text(r["fix"])]
            for r in rows
        ],
    )
    return ["**Diagnostics**", "", *table, ""]


def _md_bisection(record: Mapping[str, Any], bisection: Mapping[str, Any]) -> list[str]:
    offenders = bisection.get("offending_layers") or []
    lines = [
        f"**Offending layers** ({md_text(bisection.get('strategy', ''))} search: "
        f"{bisection.get('search_evaluations')} evaluations over {bisection.get('total_layers')} quantized "
        f"layers on {bisection.get('subset_size')} samples; {bisection.get('repair_evaluations')} repair "
        "attempts)",
        "",
    ]
    if offenders:
        rows = [
            [
                str(o.get("index", "")),
                md_code(o.get("name", "")),
                md_text(o.get("op", "")),
                md_text(_offender_metrics(o)),
                md_text(_offender_verdict(o)),
            ]
            for o in offenders
        ]
        lines += _md_table(["idx", "layer", "op", "budget when quantized", "verdict"], rows, "rllll")
    else:
        lines.append("None found.")
    lines.append("")
    fix = bisection.get("fix")
    if isinstance(fix, Mapping):
        outcome = "**PASS**" if fix.get("passed") else "**FAIL** (not a fix)"
        evaluation = (record.get("samples") or {}).get("evaluation")
        lines += [
            f"**Verified fix** on all {evaluation} evaluation samples: {_fix_parts(fix, md_code, md_text)} → "
            f"{md_text(_fix_results(fix))} {outcome}",
            "",
        ]
        deploy = _deploy_note(fix)
        if deploy:
            lines += [md_text(deploy, line_start=True), ""]
        if fix.get("passed") and fix.get("manifest"):
            lines += ["Apply it in `int8gate.yaml` (under the model's entry):", ""]
            lines += [*_md_fenced(str(fix["manifest"]), "yaml"), ""]
    for note in bisection.get("notes") or []:
        lines.append(f"- Note: {md_text(note)}")
    if bisection.get("notes"):
        lines.append("")
    worst = [p for p in bisection.get("sensitivity") or [] if isinstance(p, Mapping)][:5]
    if worst:
        text = ", ".join(f"{md_code(p.get('name', ''))} {fmt_db(p.get('sqnr_db'))}" for p in worst)
        lines += [f"Most sensitive layers (own-output SQNR in dB, lower is worse): {text}", ""]
    return lines


def _md_baseline(records: Sequence[Mapping[str, Any]], info: Mapping[str, Any]) -> list[str]:
    created = f", created {md_text(info['created'])}" if info.get("created") else ""
    lines = [
        f"### Change against the baseline ({md_code(Path(str(info.get('path', ''))).name)}{created})",
        "",
    ]
    rows = []
    new = []
    for record in records:
        baseline = record.get("baseline")
        if not isinstance(baseline, Mapping):
            continue
        if baseline.get("status") == "new":
            new.append(str(record.get("name")))
            continue
        for metric, change in _baseline_metrics(record).items():
            word = _change_word(change)
            if change.get("tolerance") is not None:
                word += f" (tolerance {fmt(change.get('tolerance'))})"
            rows.append(
                [
                    md_code(record.get("name", "")),
                    md_text(metric),
                    fmt(change.get("baseline")),
                    fmt(change.get("current")),
                    fmt_change(as_float(change.get("change"))),
                    f"**{word}**" if change.get("regressed") else word,
                ]
            )
    if rows:
        lines += _md_table(["gate", "metric", "baseline", "now", "change", ""], rows, "llrrrl")
        lines.append("")
    if new:
        lines += [f"New gates (not in the baseline): {', '.join(md_code(n) for n in new)}", ""]
    missing = info.get("missing") or []
    if missing:
        lines += [f"In the baseline but not in this run: {', '.join(md_code(n) for n in missing)}", ""]
    return lines


def markdown_report(
    records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None, *, details: bool = True
) -> str:
    """The run as Markdown: one table of all gates, then each failing or erroring gate in detail."""
    meta = meta or {}
    lines = ["## INT8 gate report", "", f"**{headline(records)}**"]
    provenance = []
    if meta.get("tool_version"):
        provenance.append(f"pytest-int8gate {md_text(meta['tool_version'])}")
    if meta.get("created"):
        provenance.append(md_text(meta["created"]))
    if provenance:
        lines[-1] += " · " + " · ".join(provenance)
    lines += ["", *markdown_summary_table(records, meta), ""]
    if details:
        for record in records:
            if record.get("verdict") != "pass":
                lines += _md_gate_section(record)
    baseline = meta.get("baseline")
    if isinstance(baseline, Mapping):
        lines += _md_baseline(records, baseline)
    return "\n".join(lines).rstrip() + "\n"


def step_summary_markdown(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) -> str:
    """The Markdown for ``$GITHUB_STEP_SUMMARY``: the full report, or the table alone if it is too long."""
    text = markdown_report(records, meta)
    if len(text.encode()) <= STEP_SUMMARY_LIMIT:
        return text
    return markdown_report(records, meta, details=False) + (
        "\nPer-gate details left out: the report is larger than a step summary may be; "
        "see the --int8-report-md or --int8-report-html file.\n"
    )


def append_step_summary(
    records: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """Append the report to the file named by ``$GITHUB_STEP_SUMMARY``; the path, or None when unset."""
    target = (os.environ if environ is None else environ).get(STEP_SUMMARY_VARIABLE, "")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as handle:  # appended: other steps' summaries stay
        handle.write(step_summary_markdown(records, meta) + "\n")
    return path


def write_text_report(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(Path(path), text.encode("utf-8"))


# ---- HTML -----------------------------------------------------------------------------------------------


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _html_code(value: object) -> str:
    return f"<code>{esc(value)}</code>"


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


def _verdict_badge(verdict: str) -> str:
    return f'<span class="verdict v-{esc(verdict)}">{esc(_VERDICT_WORD.get(verdict, verdict))}</span>'


def _html_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = (), cls: str = ""
) -> str:
    """``header`` is escaped here; ``rows`` hold cells already escaped (they may contain markup)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    class_attr = f' class="{esc(cls)}"' if cls else ""
    return f"<table{class_attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_summary_table(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    baseline = isinstance(meta.get("baseline"), Mapping)
    with_ci = _has_ci(records)
    header = ["model", "verdict", "metrics (value, limit)"]
    if with_ci:
        header.append("95% CI")
    if baseline:
        header.append("Δ vs baseline")
    header.append("backend")
    rows = []
    for index, record in enumerate(records):
        name = esc(record.get("name", ""))
        row = [f'<a href="#gate-{index}"><code>{name}</code></a>', _verdict_badge(str(record.get("verdict")))]
        if record.get("verdict") == "error":
            row.append(esc(record.get("error", "")))
        else:
            row.append(
                "<br>".join(
                    f'{esc(line.name)} <span class="{"ok" if line.passed else "bad"}">'
                    f"{esc(fmt(line.observed))}</span> ({esc(line.limit_text)})"
                    for line in metric_lines(record)
                )
            )
        if with_ci:
            row.append(
                "<br>".join(
                    f"{esc(line.name)} [{esc(fmt(line.ci95[0]))}, {esc(fmt(line.ci95[1]))}]"
                    for line in metric_lines(record)
                    if line.ci95 is not None
                )
                or "-"
            )
        if baseline:
            row.append(_html_baseline_cell(record))
        row.append(esc(backend_text(record)))
        rows.append(row)
    return _html_table(header, rows)


def _html_baseline_cell(record: Mapping[str, Any]) -> str:
    baseline = record.get("baseline")
    if not isinstance(baseline, Mapping):
        return "-"
    if baseline.get("status") == "new":
        return "new gate"
    parts = []
    for metric, change in _baseline_metrics(record).items():
        word = _change_word(change)
        css = "bad" if word in ("worse", "regressed") else "ok" if word == "better" else ""
        parts.append(
            f'{esc(metric)} <span class="{css}">'
            f"{esc(fmt_change(as_float(change.get('change'))))} {esc(word)}</span>"
        )
    return "<br>".join(parts) or "-"


def _nice_step(span: float) -> float:
    raw = span / 5 if span > 0 else 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return float(factor * magnitude)
    return float(10 * magnitude)


def sensitivity_svg(record: Mapping[str, Any], *, width: int = 960, height: int = 280) -> str | None:
    """Per-layer SQNR (dB) as an inline SVG bar chart in topological order, offenders in red; None if no data.

    Layers whose SQNR is infinite (bit-exact) are drawn to the top of the axis and labelled; every bar has
    a ``<title>`` tooltip with its layer, op and value.
    """
    points = sensitivity_points(record)
    if not points:
        return None
    offenders = {
        str(o.get("name"))
        for o in (
            record.get("offending_layers") or (record.get("bisection") or {}).get("offending_layers") or []
        )
        if isinstance(o, Mapping)
    }
    values = [as_float(p.get("sqnr_db")) for p in points]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    low = min([0.0, *finite])
    high = max([1.0, *finite])
    step = _nice_step(high - low)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    if high - low < step:
        high = low + step
    left, right, top, bottom = 56, 12, 24, 64
    plot_w, plot_h = width - left - right, height - top - bottom
    slot = plot_w / len(points)
    bar_w = max(1.0, min(28.0, slot * 0.75))

    def y_of(value: float) -> float:
        return top + plot_h * (high - value) / (high - low)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Per-layer SQNR in dB, topological order">',
        f'<text x="{left}" y="14">own-output SQNR per quantized layer (dB, higher is better); '
        f'<tspan fill="#cf222e">red: offending layer</tspan></text>',
    ]
    tick = low
    while tick <= high + step / 2:
        y = y_of(tick)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d1d9e0"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(f"{tick:g}")}</text>'
        )
        tick += step
    zero = y_of(0.0)
    label_every = max(1, math.ceil(len(points) / 40))
    for position, (point, value) in enumerate(zip(points, values, strict=True)):
        name = str(point.get("name", ""))
        bad = name in offenders
        x = left + position * slot + (slot - bar_w) / 2
        shown = high if value is None or value == math.inf else max(low, value)
        y_top, y_bottom = sorted((y_of(shown), zero))
        color = "#cf222e" if bad else ("#8c959f" if value is None or math.isinf(value) else "#0969da")
        index = point.get("index")
        title = f"{index}: {name} ({point.get('op', '')}) {fmt_db(value)} dB" if index is not None else name
        if bad:  # a band over the whole height: an offender's bar may be too short to see
            parts.append(
                f'<rect x="{left + position * slot:.1f}" y="{top}" width="{slot:.1f}" height="{plot_h}" '
                f'fill="#ffebe9"><title>{esc(title)}</title></rect>'
                f'<text x="{x + bar_w / 2:.1f}" y="{min(y_top, zero) - 4:.1f}" text-anchor="middle" '
                f'fill="#cf222e" font-weight="bold">{esc(fmt_db(value))}</text>'
            )
        parts.append(
            f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{bar_w:.1f}" '
            f'height="{max(y_bottom - y_top, 2.0 if bad else 0.5):.1f}" '
            f'fill="{color}"><title>{esc(title)}</title></rect>'
        )
        if value is None or math.isinf(value):
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{y_top - 3:.1f}" text-anchor="middle">∞</text>')
        if bad or position % label_every == 0:
            label = str(index) if isinstance(index, int) and index >= 0 else str(position)
            weight = ' font-weight="bold" fill="#cf222e"' if bad else ""
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle"{weight}>'
                f"{esc(label)}</text>"
            )
    parts.append(
        f'<line x1="{left}" x2="{width - right}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="#59636e"/>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 24}" text-anchor="middle">layer index '
        "(topological order; hover a bar for its name)</text>"
    )
    named = [p for p in points if str(p.get("name")) in offenders]
    if named:
        text = ", ".join(f"{p.get('index')}: {p.get('name')}" for p in named)
        parts.append(f'<text x="{left}" y="{height - 6}" fill="#cf222e">offenders {esc(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _html_metrics(record: Mapping[str, Any]) -> str:
    rows = []
    for line in metric_lines(record):
        ci = f"[{fmt(line.ci95[0])}, {fmt(line.ci95[1])}]" if line.ci95 else "-"
        result = '<span class="ok">PASS</span>' if line.passed else '<span class="bad">FAIL</span>'
        rows.append(
            [
                esc(line.name),
                esc(fmt(line.fp32)),
                esc(fmt(line.int8)),
                esc(fmt(line.delta)),
                esc(line.limit_text),
                esc(ci),
                result,
            ]
        )
    return _html_table(
        ["metric", "fp32", "int8", "delta", "limit", "95% CI", "result"], rows, numeric=(1, 2, 3)
    )


def _html_bisection(record: Mapping[str, Any], bisection: Mapping[str, Any]) -> str:
    out = [
        f"<h3>Offending layers</h3><p>{esc(bisection.get('strategy', ''))} search: "
        f"{esc(bisection.get('search_evaluations'))} evaluations over {esc(bisection.get('total_layers'))} "
        f"quantized layers on {esc(bisection.get('subset_size'))} samples; "
        f"{esc(bisection.get('repair_evaluations'))} repair attempts.</p>"
    ]
    offenders = bisection.get("offending_layers") or []
    if offenders:
        rows = [
            [
                esc(o.get("index", "")),
                f"<code>{esc(o.get('name', ''))}</code>",
                esc(o.get("op", "")),
                esc(_offender_metrics(o)),
                esc(_offender_verdict(o)),
            ]
            for o in offenders
        ]
        out.append(
            _html_table(["idx", "layer", "op", "budget when quantized", "verdict"], rows, numeric=(0,))
        )
    else:
        out.append("<p>None found.</p>")
    fix = bisection.get("fix")
    if isinstance(fix, Mapping):
        outcome = (
            '<span class="ok">PASS</span>'
            if fix.get("passed")
            else '<span class="bad">FAIL (not a fix)</span>'
        )
        evaluation = (record.get("samples") or {}).get("evaluation")
        out.append(
            f"<p><strong>Verified fix</strong> on all {esc(evaluation)} evaluation samples: "
            f"{_fix_parts(fix, _html_code, esc)} → {esc(_fix_results(fix))} {outcome}</p>"
        )
        deploy = _deploy_note(fix)
        if deploy:
            out.append(f"<p>{esc(deploy)}</p>")
        if fix.get("passed") and fix.get("manifest"):
            out.append(
                "<p>Apply it in <code>int8gate.yaml</code> (under the model's entry):</p>"
                f"<pre>{esc(fix['manifest'])}</pre>"
            )
    out.extend(f"<p>Note: {esc(note)}</p>" for note in bisection.get("notes") or [])
    return "".join(out)


def _html_sensitivity(record: Mapping[str, Any]) -> str:
    svg = sensitivity_svg(record)
    if svg is None:
        return ""
    offenders = {str(o.get("name")) for o in record.get("offending_layers") or [] if isinstance(o, Mapping)}
    rows = [
        [
            esc(p.get("index", "")),
            f'<code class="{"bad" if str(p.get("name")) in offenders else ""}">'
            f"{esc(p.get('name', ''))}</code>",
            esc(p.get("op", "")),
            esc(fmt_db(p.get("sqnr_db"))),
        ]
        for p in sensitivity_points(record)
    ]
    table = _html_table(["idx", "layer", "op", "SQNR dB"], rows, numeric=(0, 3))
    return (
        f'<h3>Per-layer sensitivity</h3><div class="chart">{svg}</div>'
        f"<details><summary>Sensitivity table ({len(rows)} layers)</summary>{table}</details>"
    )


def _html_diagnostics(record: Mapping[str, Any]) -> str:
    rows = diagnostics_of(record)
    if not rows:
        return ""
    cells = [
        [
            f'<span class="sev-{esc(r["severity"].lower())}">{esc(r["severity"])}</span>',
            esc(r["check"]),
            esc(r["finding"]),
            esc(r["fix"]),
        ]
        for r in rows
    ]
    return "<h3>Diagnostics</h3>" + _html_table(["severity", "check", "finding", "fix"], cells)


def _html_gate_baseline(record: Mapping[str, Any]) -> str:
    baseline = record.get("baseline")
    if not isinstance(baseline, Mapping):
        return ""
    if baseline.get("status") == "new":
        return "<h3>Against the baseline</h3><p>New gate: not in the baseline.</p>"
    rows = []
    for metric, change in _baseline_metrics(record).items():
        word = _change_word(change)
        if change.get("tolerance") is not None:
            word += f" (tolerance {fmt(change.get('tolerance'))})"
        css = "bad" if change.get("worse") else "ok" if change.get("better") else ""
        rows.append(
            [
                esc(metric),
                esc(fmt(change.get("baseline"))),
                esc(fmt(change.get("current"))),
                esc(fmt_change(as_float(change.get("change")))),
                f'<span class="{css}">{esc(word)}</span>',
            ]
        )
    if not rows:
        return ""
    return "<h3>Against the baseline</h3>" + _html_table(
        ["metric", "baseline", "now", "change", ""], rows, numeric=(1, 2, 3)
    )


def gate_html(record: Mapping[str, Any]) -> str:
    """One gate's details as an HTML fragment (also what goes into pytest-html's extras)."""
    verdict = str(record.get("verdict"))
    facts = [
        f"<code>{esc(record.get('model', ''))}</code>",
        esc(backend_text(record, device=True)),
    ]
    if record.get("calibrator"):
        facts.append(f"calibrator {esc(record['calibrator'])}")
    if _samples_text(record):
        facts.append(esc(_samples_text(record)))
    out = [f'<p class="meta">{" · ".join(facts)}</p>']
    if verdict == "error":
        out.append(f"<p>The gate could not be judged:</p><pre>{esc(record.get('error', ''))}</pre>")
        return "".join(out)
    out.append(_html_metrics(record))
    out.append(_html_gate_baseline(record))
    out.append(_html_diagnostics(record))
    bisection = record.get("bisection")
    if isinstance(bisection, Mapping):
        out.append(_html_bisection(record, bisection))
    elif verdict == "fail":
        out.append("<p>Offending layers: not searched (bisection disabled; enable with --int8-bisect).</p>")
    out.append(_html_sensitivity(record))
    out.extend(f"<p>Note: {esc(note)}</p>" for note in record.get("notes") or [])
    return "".join(out)


def gate_extra_html(record: Mapping[str, Any]) -> str:
    """:func:`gate_html` with the report's styles, for embedding in another page (pytest-html)."""
    return f'<div class="int8gate"><style>{_scoped_css(".int8gate")}</style>{gate_html(record)}</div>'


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


def html_report(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) -> str:
    """The run as one self-contained HTML page: no network, no scripts, styles and charts inline."""
    meta = meta or {}
    provenance = [headline(records)]
    if meta.get("tool_version"):
        provenance.append(f"pytest-int8gate {meta['tool_version']}")
    if meta.get("created"):
        provenance.append(str(meta["created"]))
    sections = []
    for index, record in enumerate(records):
        verdict = str(record.get("verdict"))
        title = f"<code>{esc(record.get('name', ''))}</code> {_verdict_badge(verdict)}"
        body = gate_html(record)
        if verdict == "pass":
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
            baseline_html += " In the baseline but not in this run: " + ", ".join(
                f"<code>{esc(n)}</code>" for n in missing
            )
        baseline_html += "</p>"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>INT8 gate report: {esc(headline(records))}</title><style>{_CSS}</style></head>\n<body>"
        f'<header><h1>INT8 gate report</h1><p class="meta">{esc(" · ".join(provenance))}</p></header>'
        f'<section id="summary"><h2>Gates</h2>{_html_summary_table(records, meta)}{baseline_html}</section>\n'
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
