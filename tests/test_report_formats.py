"""Markdown and HTML reports: what they say for real gate records (a failing gate with its bisection, a
passing one) and for hand-made records (an error, a confidence interval, diagnostics, hostile names); the
HTML is checked as markup and, where Debian's Chromium is installed, rendered to a PNG.
"""

from __future__ import annotations

import copy
import re
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from example_files import CALIB, DIGITS, EVAL, LABELS, OUTLIER

from pytest_int8gate.budget import Budget
from pytest_int8gate.pipeline import GatePipeline, GateSpec
from pytest_int8gate.report import (
    STEP_SUMMARY_LIMIT,
    append_step_summary,
    gate_extra_html,
    gate_view,
    html_report,
    markdown_report,
    step_summary_markdown,
    verdict_record,
)
from pytest_int8gate.report.chart import sensitivity_svg
from pytest_int8gate.report.codec import decode_number
from pytest_int8gate.report.markdown import md_code, md_text
from pytest_int8gate.report.view import fmt

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = "<script>alert('x')</script> | `tick` **bold** _under_"


def gate_record(model: Path, **spec: Any) -> dict[str, Any]:
    spec.setdefault("budget", Budget({"top1_drop": 0.01, "cosine": 0.98}))
    pipeline = GatePipeline(
        GateSpec(model=model, calib_data=CALIB, eval_data=EVAL, labels=str(LABELS), calibrator="max", **spec)
    )
    verdict = pipeline.run()
    return verdict_record(verdict, nodeid=f"{model.name}::int8_gate", duration_s=1.0)


def without_ci(record: dict[str, Any]) -> dict[str, Any]:
    record = copy.deepcopy(record)
    for values in record["metrics"].values():
        values.pop("ci95", None)
    return record


@pytest.fixture(scope="module")
def real_records() -> list[dict[str, Any]]:
    """The example's outlier model (fails, bisected to /conv2/Conv) and its clean model (passes), without
    confidence intervals (tests that want them add their own)."""
    return [without_ci(gate_record(OUTLIER)), without_ci(gate_record(DIGITS))]


def error_record(
    name: str = "broken.onnx", message: str = "broken.onnx: not an ONNX model."
) -> dict[str, Any]:
    return {
        "model": f"/models/{name}",
        "name": name,
        "nodeid": f"{name}::int8_gate",
        "verdict": "error",
        "error": message,
        "metrics": {},
        "backend": {"backend": "onnxruntime"},
        "calibrator": "entropy",
        "samples": {"calibration": None, "evaluation": None},
        "offending_layers": [],
        "evaluations": 0,
        "cache_hits": [],
        "duration_s": 0.1,
    }


def with_ci_and_diagnostics(record: dict[str, Any]) -> dict[str, Any]:
    record = copy.deepcopy(record)
    record["metrics"]["top1_drop"]["ci95"] = [0.851, 0.897]
    record["diagnostics"] = [
        {
            "code": "calibration-size",
            "severity": "warning",
            "message": "calibration used 600 samples, fewer than the 1000",
            "fix": "calibrate on 1000+",
        },
        {
            "code": "fp32-parity",
            "severity": "failure",
            "message": "FP32 parity failed: output differs",
            "fix": "compare with the right reference",
        },
    ]
    return record


# ---- reading records ----------------------------------------------------------------------------------


def test_metric_rows_give_the_number_compared_with_the_limit(real_records: list[dict[str, Any]]) -> None:
    failing = {row.name: row for row in gate_view(real_records[0]).metrics}
    top1 = failing["top1_drop"]
    fp32, int8 = (real_records[0]["metrics"]["top1_drop"][k] for k in ("fp32", "int8"))
    assert top1.observed == pytest.approx(fp32 - int8)  # a drop, not the INT8 accuracy
    assert top1.observed > 0.5 and not top1.passed and top1.limit == "<= 0.01" and top1.result == "FAIL"
    cosine = failing["cosine"]
    assert cosine.observed == real_records[0]["metrics"]["cosine"]["int8"] and cosine.limit == ">= 0.98"
    assert top1.interval == "" and cosine.fp32 == "-"


def test_the_interval_is_read_from_the_metric(real_records: list[dict[str, Any]]) -> None:
    record = with_ci_and_diagnostics(real_records[0])
    assert {row.name: row.interval for row in gate_view(record).metrics} == {
        "top1_drop": "[0.8510, 0.8970]",
        "cosine": "",
    }
    record["metrics"]["top1_drop"]["strict_ci"] = True
    assert gate_view(record).metrics[0].interval == "[0.8510, 0.8970] strict"


def test_numbers_print_like_the_terminal_and_json_infinity_reads_back() -> None:
    assert [fmt(v) for v in (None, 0.98765, -0.0, 123.456, "inf", "-inf", "nan", "junk")] == [
        "-", "0.9877", "0.0000", "123.5", "inf", "-inf", "nan", "-",
    ]  # fmt: skip
    assert decode_number("inf") == float("inf") and decode_number(True) is None


def test_sensitivity_comes_in_topological_order_with_the_layer_index(
    real_records: list[dict[str, Any]],
) -> None:
    bisection = gate_view(real_records[0]).bisection
    assert bisection is not None
    indices = [p.index for p in bisection.sensitivity]
    assert indices == sorted(indices) and len(indices) == 5  # the digits CNN's 5 quantized layers
    conv2 = next(p for p in bisection.sensitivity if p.name == "/conv2/Conv")
    assert conv2.index == 1 and conv2.offender
    worst_first = real_records[0]["bisection"]["sensitivity"]
    assert worst_first[0]["name"] == "/conv2/Conv"  # the record keeps the worst-first order
    assert bisection.most_sensitive[0][0] == "/conv2/Conv"


# ---- Markdown -------------------------------------------------------------------------------------------


def table_rows(markdown: str) -> list[list[str]]:
    """The first table's body rows, split on unescaped pipes."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_markdown_has_one_table_of_all_gates_then_the_failing_gates_in_detail(
    real_records: list[dict[str, Any]],
) -> None:
    records = [*real_records, error_record()]
    text = markdown_report(records, {"tool_version": "9.9", "created": "2026-01-02 03:04:05 UTC"})

    assert text.startswith("## INT8 gate report\n")
    assert "**3 gates: 1 passed, 1 failed, 1 error** · pytest-int8gate 9.9 · 2026-01-02 03:04:05 UTC" in text
    rows = table_rows(text)
    assert [row[0] for row in rows] == ["`digits_cnn_outlier.onnx`", "`digits_cnn.onnx`", "`broken.onnx`"]
    assert [row[1] for row in rows] == ["❌ FAIL", "✅ PASS", "⚠️ ERROR"]
    assert all(len(row) == 4 for row in rows)  # model, verdict, metrics, backend: no CI column without CIs
    assert "top1_drop **0.8740** (<= 0.01) ✗" in rows[0][2] and "cosine **0.3172** (>= 0.98) ✗" in rows[0][2]
    assert "top1_drop **0.0000** (<= 0.01) ✓" in rows[1][2]
    assert rows[0][3].startswith("onnxruntime ") and rows[0][3].endswith(" simulated")
    assert rows[2][2] == "broken.onnx: not an ONNX model."

    failing = text.split("### ❌ `digits_cnn_outlier.onnx`: FAIL", 1)[1].split("### ⚠️", 1)[0]
    assert "| top1_drop | 0.9740 | 0.1000 | 0.8740 | <= 0.01 | - | **FAIL** |" in failing
    # the offender's budget on the subset in the search's context (which starts from the closest calibrator)
    assert re.search(r"\| 1 \| `/conv2/Conv` \| Conv \| top1_drop \d\.\d{4}, cosine \d\.\d{4} \| ", failing)
    fix = records[0]["bisection"]["fix"]
    assert (
        fix["passed"] and '- "/conv2/Conv"' in fix["manifest"]
    )  # keep in float, or a repair that stays INT8
    assert re.search(
        r"\*\*Verified fix\*\* on all 500 evaluation samples and on the 300 the search never used: "
        r"[a-z ]+ `/conv2/Conv` → top1_drop 0\.0",
        failing,
    )
    assert f"```yaml\n{fix['manifest']}\n```" in failing
    assert "Most sensitive layers (own-output SQNR in dB, lower is worse): `/conv2/Conv` 0.3," in failing
    assert "### ✅" not in text  # passing gates: the table row only
    assert "### ⚠️ `broken.onnx`: ERROR" in text and "```\nbroken.onnx: not an ONNX model.\n```" in text


def test_markdown_shows_the_interval_column_and_diagnostics_when_records_have_them(
    real_records: list[dict[str, Any]],
) -> None:
    text = markdown_report([with_ci_and_diagnostics(real_records[0]), real_records[1]])

    rows = table_rows(text)
    assert all(len(row) == 5 for row in rows)
    assert rows[0][3] == "top1_drop [0.8510, 0.8970]" and rows[1][3] == "-"
    assert "2 diagnostics" in rows[0][1]
    assert "| top1_drop | 0.9740 | 0.1000 | 0.8740 | <= 0.01 | [0.8510, 0.8970] | **FAIL** |" in text
    diagnostics = text.split("**Diagnostics**", 1)[1]
    assert diagnostics.index(
        "| failure | fp32-parity | FP32 parity failed: output differs | compare with the right reference |"
    ) < diagnostics.index("| warning | calibration-size |")  # most severe first


def test_markdown_escapes_names_and_messages(real_records: list[dict[str, Any]]) -> None:
    record = copy.deepcopy(real_records[0])
    record["name"] = HOSTILE
    record["bisection"]["offending_layers"][0]["name"] = "a|b`c"
    text = markdown_report([record, error_record("x.onnx", HOSTILE)])

    outside_code = re.sub(r"```.*?```", "", text.replace(md_code(HOSTILE), ""), flags=re.S)
    assert not re.search(r"(?<!\\)<script", outside_code)  # raw only in code spans and fenced blocks
    rows = table_rows(text)
    assert len(rows) == 2 and all(len(row) == 4 for row in rows)  # the pipes did not split cells
    assert rows[1][2] == md_text(HOSTILE) and r"\<script>" in rows[1][2] and r"\*\*bold\*\*" in rows[1][2]
    assert "``a\\|b`c``" in text  # a longer fence around the backtick, the pipe escaped
    assert md_text("top1_drop <= 0.01, version 0.1.0") == "top1_drop <= 0.01, version 0.1.0"  # stays readable
    assert md_text(">= 0.98") == ">= 0.98" and md_text("- x") == "- x"  # markup only at a line's start
    assert md_text("1. - # x", line_start=True) == "1\\. - # x" and md_text("- x", line_start=True) == "\\- x"


def test_step_summary_is_appended_when_the_variable_is_set(
    real_records: list[dict[str, Any]], tmp_path: Path
) -> None:
    summary = tmp_path / "step_summary.md"
    summary.write_text("# earlier step\n")

    assert append_step_summary(real_records, environ={}) is None
    assert append_step_summary(real_records, environ={"GITHUB_STEP_SUMMARY": str(summary)}) == summary

    text = summary.read_text()
    assert text.startswith("# earlier step\n## INT8 gate report\n")
    assert text.endswith(markdown_report(real_records) + "\n")


def test_a_step_summary_too_large_for_github_keeps_the_table(real_records: list[dict[str, Any]]) -> None:
    record = copy.deepcopy(real_records[0])
    record["notes"] = ["x" * 1000] * (STEP_SUMMARY_LIMIT // 1000 + 10)
    text = step_summary_markdown([record, real_records[1]])

    assert len(text.encode()) < STEP_SUMMARY_LIMIT
    assert len(table_rows(text)) == 2 and "Per-gate details left out" in text and "### " not in text


# ---- HTML -----------------------------------------------------------------------------------------------

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source", "track", "embed"}
SVG_LEAVES = {"rect", "line", "path", "circle"}


class Markup(HTMLParser):
    """Checks nesting (every element closed, in order) and collects tags, attributes and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.saw_doctype = False

    def handle_decl(self, decl: str) -> None:
        self.saw_doctype = self.saw_doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(markup: str) -> Markup:
    parser = Markup()
    parser.feed(markup)
    parser.close()
    assert not parser.problems, parser.problems[:5]
    assert not parser.stack, f"unclosed: {parser.stack}"
    return parser


def test_html_is_well_formed_self_contained_and_escaped(real_records: list[dict[str, Any]]) -> None:
    records = [with_ci_and_diagnostics(real_records[0]), real_records[1], error_record("evil.onnx", HOSTILE)]
    records[0]["notes"] = [HOSTILE]
    page = html_report(records, {"tool_version": "9.9", "created": "now"})

    markup = parse(page)
    assert markup.saw_doctype and page.startswith("<!DOCTYPE html>")
    tags = {tag for tag, _ in markup.tags}
    assert {"html", "head", "body", "table", "svg", "details"} <= tags
    assert not tags & {"script", "iframe", "img", "link", "object", "embed"}  # no scripts, nothing fetched
    for _, attrs in markup.tags:
        assert not any(k.startswith("on") for k in attrs), attrs  # no inline event handlers
        for key in ("src", "href"):
            assert not (attrs.get(key) or "").startswith(("http:", "https:", "//")), attrs
    csp = next(a for t, a in markup.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in (csp["content"] or "")
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    text = " ".join(markup.text)
    assert HOSTILE in text  # shown as text, exactly
    for expected in ("top1_drop [0.8510, 0.8970]", "FP32 parity failed: output differs",
                     "compare with the right reference", "/conv2/Conv", "Verified fix",
                     "3 gates: 1 passed, 1 failed, 1 error"):  # fmt: skip
        assert expected in text, expected
    assert records[0]["bisection"]["fix"]["manifest"] in text  # the manifest snippet, unescaped as text


def test_sensitivity_chart_has_a_bar_per_layer_in_order_with_the_offender_in_red(
    real_records: list[dict[str, Any]],
) -> None:
    svg = sensitivity_svg(gate_view(real_records[0]))
    assert svg is not None and sensitivity_svg(gate_view(real_records[1])) is None  # no bisection, no chart

    markup = parse(svg)
    bars = [a for t, a in markup.tags if t == "rect" and a.get("fill") in ("#0969da", "#cf222e", "#8c959f")]
    assert len(bars) == 5
    xs = [float(a["x"] or 0) for a in bars]
    assert xs == sorted(xs)
    assert [a["fill"] for a in bars] == ["#0969da", "#cf222e", "#0969da", "#0969da", "#0969da"]  # index 1
    heights = [float(a["height"] or 0) for a in bars]
    assert heights[1] == min(heights) and heights[0] > 10 * heights[1]  # 0.3 dB against ~55 dB
    assert any("1: /conv2/Conv (Conv) 0.3 dB" in t for t in markup.text)  # the tooltip


def test_pytest_html_fragment_is_well_formed_and_scopes_its_styles(
    real_records: list[dict[str, Any]],
) -> None:
    fragment = gate_extra_html(real_records[0])

    markup = parse(fragment)
    assert markup.tags[0] == ("div", {"class": "int8gate"})
    style = fragment.split("<style>", 1)[1].split("</style>", 1)[0]
    selectors = [rule.split("{", 1)[0] for rule in style.split("}") if "{" in rule]
    assert selectors and all(s.strip().startswith(".int8gate") for sel in selectors for s in sel.split(","))
    assert "<svg" in fragment and "/conv2/Conv" in fragment


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)")
def test_html_renders_in_headless_chromium(real_records: list[dict[str, Any]], tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(html_report(real_records))
    shot = tmp_path / "report.png"

    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1000,1400",
         page.as_uri()],
        check=True, capture_output=True, timeout=90,
    )  # fmt: skip

    data = shot.read_bytes()
    assert png_size(data) == (1000, 1400)
    assert len(data) > 20_000  # text, tables and the chart; a blank page of this size is ~5 kB
