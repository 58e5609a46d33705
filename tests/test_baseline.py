"""Baseline comparison: reading a stored JSON report, the change of each metric, tolerances, and the
terminal lines; on hand-made records shaped like ``report.verdict_record``'s."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_int8gate.baseline import Baseline, baseline_lines, load_baseline, metric_value, parse_tolerances
from pytest_int8gate.errors import BudgetError, DataError
from pytest_int8gate.report import REPORT_SCHEMA, write_json_report
from pytest_int8gate.report_formats import html_report, markdown_report


def record(
    name: str, top1: float, cosine: float, *, budget: dict[str, float] | None = None
) -> dict[str, Any]:
    """A labelled gate's record: FP32 top-1 0.97, INT8 ``top1``; budget top1_drop and cosine."""
    budget = budget or {"top1_drop": 0.01, "cosine": 0.98}
    metrics: dict[str, Any] = {}
    if "top1_drop" in budget:
        limit = budget["top1_drop"]
        metrics["top1_drop"] = dict(fp32=0.97, int8=top1, delta=top1 - 0.97, limit=limit, op="<=")
        metrics["top1_drop"]["passed"] = 0.97 - top1 <= limit
    if "cosine" in budget:
        limit = budget["cosine"]
        metrics["cosine"] = dict(
            fp32=None, int8=cosine, delta=None, limit=limit, op=">=", passed=cosine >= limit
        )
    return {
        "model": f"/m/{name}.onnx",
        "name": name,
        "nodeid": f"{name}.onnx::int8_gate",
        "verdict": "pass" if all(m["passed"] for m in metrics.values()) else "fail",
        "metrics": metrics,
        "measured": {"fp32": {"top1": 0.97}, "int8": {"top1": top1, "cosine": cosine, "sqnr_db": "inf"}},
        "budget": budget,
        "backend": {"backend": "onnxruntime", "version": "1.32.0", "mode": "simulated"},
        "samples": {"calibration": 600, "evaluation": 500},
        "offending_layers": [],
    }


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    path = tmp_path / "main.json"
    gates = [record("a", 0.965, 0.995), record("b", 0.96, 0.990), record("gone", 0.9, 0.9)]
    write_json_report(path, gates, {"tool": "pytest-int8gate", "created": "2026-01-01 00:00:00 UTC"})
    return path


def test_metric_value_is_the_number_a_budget_compares_recomputed_from_measurements() -> None:
    gate = record("a", 0.95, 0.99, budget={"cosine": 0.98})
    assert metric_value(gate, "top1_drop") == pytest.approx(0.02)  # not in the budget, still measured
    assert metric_value(gate, "cosine") == 0.99
    assert metric_value(gate, "sqnr_db") == float("inf")
    assert metric_value(gate, "top5_drop") is None


def test_changes_per_metric_with_direction_and_tolerance(stored: Path) -> None:
    baseline = load_baseline(stored)
    assert baseline.created == "2026-01-01 00:00:00 UTC" and baseline.path == str(stored)

    comparison = baseline.comparison(record("a", 0.955, 0.999), {"top1_drop": 0.005})

    assert comparison["status"] == "compared" and comparison["verdict"] == "pass"
    top1, cosine = comparison["metrics"]["top1_drop"], comparison["metrics"]["cosine"]
    assert top1["baseline"] == pytest.approx(0.005) and top1["current"] == pytest.approx(0.015)
    assert top1["change"] == pytest.approx(0.01) and top1["lower_is_better"] is True
    assert top1["worse"] is True and top1["better"] is False
    assert top1["tolerance"] == 0.005 and top1["regressed"] is True and comparison["regressed"] is True
    assert (
        cosine["change"] == pytest.approx(0.004) and cosine["better"] is True and cosine["regressed"] is False
    )
    assert cosine["tolerance"] is None


def test_within_tolerance_or_without_one_is_reported_not_a_regression(stored: Path) -> None:
    baseline = load_baseline(stored)
    slightly_worse = record("a", 0.962, 0.994)

    within = baseline.comparison(slightly_worse, {"top1_drop": 0.005, "cosine": 0.01})
    untolerated = baseline.comparison(slightly_worse, {})

    assert within["metrics"]["top1_drop"]["worse"] is True and within["regressed"] is False
    assert untolerated["metrics"]["cosine"]["worse"] is True and untolerated["regressed"] is False
    same = baseline.comparison(record("a", 0.965, 0.995), {"top1_drop": 0.0})
    assert all(m["change"] == 0 and not m["worse"] and not m["better"] for m in same["metrics"].values())


def test_new_and_missing_gates_and_budgets_changed_between_runs(stored: Path) -> None:
    baseline = load_baseline(stored)
    records = [record("a", 0.965, 0.995, budget={"cosine": 0.99}), record("new", 0.9, 0.9)]
    for gate in records:
        gate["baseline"] = baseline.comparison(gate, {"cosine": 0.0})

    assert set(records[0]["baseline"]["metrics"]) == {"cosine", "top1_drop"}  # the union of both budgets
    assert records[1]["baseline"] == {"status": "new", "verdict": None, "metrics": {}, "regressed": False}
    summary = baseline.summary(records, {"cosine": 0.0})
    assert summary["missing"] == ["b", "gone"] and summary["regressions"] == 0
    assert summary["tolerance"] == {"cosine": 0.0}


def test_duplicate_names_are_told_apart_by_node_id(tmp_path: Path) -> None:
    first, second = record("same", 0.9, 0.9), record("same", 0.96, 0.99)
    second["nodeid"] = "other.py::test_x"
    baseline = Baseline([first, second], path="p", created=None)
    probe = record("same", 0.96, 0.99)
    probe["nodeid"] = "other.py::test_x"
    assert baseline.find(probe) is second


def test_terminal_lines_show_each_change_and_the_failure(stored: Path) -> None:
    baseline = load_baseline(stored)
    records = [record("a", 0.955, 0.999), record("new", 0.9, 0.9)]
    for gate in records:
        gate["baseline"] = baseline.comparison(gate, {"top1_drop": 0.005})
    lines = baseline_lines(records, baseline.summary(records, {"top1_drop": 0.005}))

    assert lines[0] == f"int8gate: against baseline {stored} (2026-01-01 00:00:00 UTC):"
    assert lines[1] == (
        "  a    top1_drop 0.0050 -> 0.0150 (+0.0100 REGRESSED); cosine 0.9950 -> 0.9990 (+0.0040 better)"
    )
    assert lines[2] == "  new  new gate, not in the baseline"
    assert lines[3] == "  in the baseline but not in this run: b, gone"
    assert lines[4].startswith("int8gate: FAILED: 1 metric regressed against the baseline")


def test_markdown_and_html_show_the_changes(stored: Path) -> None:
    baseline = load_baseline(stored)
    records = [record("a", 0.955, 0.999), record("new", 0.9, 0.9)]
    for gate in records:
        gate["baseline"] = baseline.comparison(gate, {"top1_drop": 0.005})
    meta = {"baseline": baseline.summary(records, {"top1_drop": 0.005})}

    text = markdown_report(records, meta)
    assert "metrics (value, limit, Δ vs baseline)" in text
    assert "top1_drop **0.0150** (<= 0.01) ✗ Δ +0.0100 regressed" in text
    assert "### Change against the baseline (`main.json`, created 2026-01-01 00:00:00 UTC)" in text
    assert "| `a` | top1_drop | 0.0050 | 0.0150 | +0.0100 | **regressed (tolerance 0.0050)** |" in text
    assert "| `a` | cosine | 0.9950 | 0.9990 | +0.0040 | better |" in text
    assert "New gates (not in the baseline): `new`" in text
    assert "In the baseline but not in this run: `b`, `gone`" in text
    page = html_report(records, meta)
    assert (
        "Δ vs baseline" in page and "+0.0100 regressed" in page and "New gate: not in the baseline." in page
    )


def test_reports_without_a_schema_field_from_before_it_still_load(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(
        json.dumps({"version": "0.1.0", "tool": "pytest-int8gate", "gates": [record("a", 0.9, 0.9)]})
    )
    assert [r["name"] for r in load_baseline(path).records] == ["a"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "baseline report not found"),
        ("{not json", "not a readable JSON report"),
        ('{"gates": 3}', "not a pytest-int8gate JSON report"),
        ('{"schema": "other", "gates": []}', "schema 'other' is not 'pytest-int8gate/report'"),
        (json.dumps({"schema": REPORT_SCHEMA, "version": 3, "gates": []}), "version 3 is newer"),
        (
            json.dumps({"schema": REPORT_SCHEMA, "version": 1, "gates": [{"x": 1}]}),
            "must be an object with a",
        ),
    ],
)
def test_a_bad_baseline_file_is_one_sentence_naming_it(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "base.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        load_baseline(path)
    assert str(path) in str(info.value)


def test_tolerances_parse_like_budgets_and_must_not_be_negative() -> None:
    assert parse_tolerances(["top1_drop=0.005", "cosine=0.001,sqnr_db=1"]) == {
        "top1_drop": 0.005, "cosine": 0.001, "sqnr_db": 1.0,
    }  # fmt: skip
    with pytest.raises(BudgetError, match="unknown budget key 'speed'"):
        parse_tolerances(["speed=1"])
    with pytest.raises(BudgetError, match="tolerance sqnr_db=-1 must be >= 0"):
        parse_tolerances(["sqnr_db=-1"])


def test_infinite_values_compare_without_nan() -> None:
    old, new = record("a", 0.96, 0.99), copy.deepcopy(record("a", 0.96, 0.99))
    baseline = Baseline([old], path="p", created=None)
    new["budget"] = {**new["budget"], "sqnr_db": 30.0}
    change = baseline.comparison(new, {"sqnr_db": 0.0})["metrics"]["sqnr_db"]
    assert change["baseline"] == "inf" and change["current"] == "inf" and change["change"] == 0.0
    assert change["regressed"] is False
