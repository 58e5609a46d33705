"""Tests for pytest_int8gate.gate: budget validation and parsing, judging limits, verdict fields."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest

from pytest_int8gate.errors import BudgetError
from pytest_int8gate.gate import (
    BUDGET_METRICS,
    Budget,
    GateVerdict,
    MetricResult,
    judge,
)
from pytest_int8gate.results import Comparison, OutputComparison


def comparison(
    int8: Mapping[str, float], fp32: Mapping[str, float] | None = None, output: str = "logits"
) -> Comparison:
    return Comparison(
        (OutputComparison(output, 500, dict(fp32 or {}), dict(int8), np.ones(500), labelled=True),)
    )


LABELLED = comparison(
    {
        "cosine": 0.991,
        "cosine_min": 0.90,
        "sqnr_db": 25.0,
        "max_abs_error": 0.5,
        "top1_agreement": 0.98,
        "top1": 0.964,
        "top5": 0.995,
    },
    {"top1": 0.974, "top5": 1.0},
)


# ---- Budget.from_mapping ---------------------------------------------------------------------------


def test_from_mapping_accepts_every_documented_key() -> None:
    values = {
        "top1_drop": 0.01,
        "top5_drop": 0.005,
        "top1_agreement": 0.95,
        "cosine": 0.98,
        "cosine_min": 0.9,
        "sqnr_db": 20,
        "max_abs_error": 1.5,
        "kpi_drop": -0.5,
        "rel_rmse": 0.2,
        "decision_agreement": 0.98,
        "exact_match": 0.99,
    }
    budget = Budget.from_mapping(values)
    assert dict(budget.limits) == {k: float(v) for k, v in values.items()}
    assert all(isinstance(v, float) for v in budget.limits.values())
    assert set(budget.limits) == set(BUDGET_METRICS)


def test_unknown_key_lists_the_valid_keys() -> None:
    with pytest.raises(BudgetError) as info:
        Budget.from_mapping({"top1drop": 0.01}, source="marker int8_budget")
    message = str(info.value)
    assert message.startswith("marker int8_budget: unknown budget key 'top1drop'")
    for key in BUDGET_METRICS:
        assert key in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cosine", 1.5),
        ("cosine", -1.01),
        ("top1_drop", -0.1),
        ("top1_drop", 2),
        ("top1_agreement", 1.0001),
        ("max_abs_error", -1e-6),
    ],
)
def test_out_of_range_values_are_refused(key: str, value: object) -> None:
    with pytest.raises(BudgetError, match=rf"budget {key}=.* is out of range"):
        Budget.from_mapping({key: value})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cosine", math.nan),
        ("sqnr_db", "nan"),
        ("sqnr_db", -math.inf),
        ("sqnr_db", "-inf"),
        ("max_abs_error", math.inf),
        ("max_abs_error", "1e400"),  # reads as inf
        ("rel_rmse", "inf"),
        ("kpi_drop", 1e400),
    ],
)
def test_limits_that_are_not_finite_are_refused(key: str, value: object) -> None:
    """A limit nothing can exceed gates nothing: refused, never silently accepted."""
    with pytest.raises(BudgetError, match=rf"budget {key}=.* is not a finite number"):
        Budget.from_mapping({key: value})


def test_budget_keys_merge_one_by_one_and_a_looser_override_is_recorded() -> None:
    ini = Budget.from_mapping({"cosine": 0.999, "top1_drop": 0.01}, source="ini")
    command_line = Budget.from_mapping({"sqnr_db": 20}, source="--int8-budget")
    manifest = Budget.from_mapping({"cosine": 0.5}, source="manifest")
    merged = ini.merged(command_line).merged(manifest)
    assert dict(merged.limits) == {"cosine": 0.5, "top1_drop": 0.01, "sqnr_db": 20.0}
    assert dict(merged.sources) == {"cosine": "manifest", "top1_drop": "ini", "sqnr_db": "--int8-budget"}
    assert merged.loosened == ("cosine >= 0.5 from manifest loosens cosine >= 0.999 from ini",)
    stricter = ini.merged(Budget.from_mapping({"cosine": 0.9999, "top1_drop": 0.005}, source="marker"))
    assert stricter.loosened == ()
    assert merged.sources_text() == "cosine=0.5 (manifest), top1_drop=0.01 (ini), sqnr_db=20 (--int8-budget)"


@pytest.mark.parametrize("value", ["abc", None, [0.98], {"v": 1}, "", "0.9x"])
def test_non_numbers_are_refused(value: object) -> None:
    with pytest.raises(BudgetError, match="budget cosine must be a number"):
        Budget.from_mapping({"cosine": value})


@pytest.mark.parametrize("value", [True, False])
def test_bools_are_not_numbers(value: bool) -> None:
    with pytest.raises(BudgetError, match="must be a number"):
        Budget.from_mapping({"top1_drop": value})


def test_numeric_strings_and_limits_at_the_range_edges_are_accepted() -> None:
    budget = Budget.from_mapping({"cosine": "0.98", "top1_drop": 0, "top1_agreement": 1, "sqnr_db": "-3"})
    assert dict(budget.limits) == {"cosine": 0.98, "top1_drop": 0.0, "top1_agreement": 1.0, "sqnr_db": -3.0}


# ---- Budget.parse, merged, with_defaults, text ----------------------------------------------------------


def test_parse_comma_separated_and_repeated_items() -> None:
    budget = Budget.parse(["top1_drop=0.01,cosine=0.98", "sqnr_db=20"])
    assert dict(budget.limits) == {"top1_drop": 0.01, "cosine": 0.98, "sqnr_db": 20.0}
    assert Budget.parse(["cosine=0.9", "cosine=0.95"]).limits == {"cosine": 0.95}
    assert not Budget.parse([])


@pytest.mark.parametrize("item", ["cosine", "=0.98", "cosine=", "cosine:0.98"])
def test_parse_refuses_items_that_are_not_key_value(item: str) -> None:
    with pytest.raises(BudgetError, match=r"--int8-budget: .* is not KEY=VALUE"):
        Budget.parse([item])


def test_parse_validates_keys_and_values() -> None:
    with pytest.raises(BudgetError, match="--int8-budget: unknown budget key 'cosin'"):
        Budget.parse(["cosin=0.98"])
    with pytest.raises(BudgetError, match="must be a number"):
        Budget.parse(["cosine=high"], source="ini")


def test_merged_overrides_and_adds() -> None:
    base = Budget.from_mapping({"cosine": 0.98, "top1_drop": 0.01})
    merged = base.merged(Budget.from_mapping({"cosine": 0.99, "sqnr_db": 20}))
    assert dict(merged.limits) == {"cosine": 0.99, "top1_drop": 0.01, "sqnr_db": 20.0}
    assert dict(base.limits) == {"cosine": 0.98, "top1_drop": 0.01}


def test_an_empty_budget_is_false_and_a_configured_one_true() -> None:
    assert not Budget()
    assert Budget.from_mapping({"sqnr_db": 30})


def test_text() -> None:
    assert Budget.from_mapping({"top1_drop": 0.01, "cosine": 0.98}).text() == "top1_drop=0.01, cosine=0.98"


# ---- judge ------------------------------------------------------------------------------------------------


def test_a_drop_of_exactly_the_limit_passes() -> None:
    assert 0.974 - 0.964 > 0.01  # float noise: the naive comparison would fail this gate
    (result,) = judge(Budget.from_mapping({"top1_drop": 0.01}), LABELLED)
    assert result.passed
    assert result.fp32 == 0.974
    assert result.int8 == 0.964
    assert result.delta == pytest.approx(-0.01)
    assert result.observed == pytest.approx(0.01)
    assert result.upper


def test_a_drop_just_past_the_limit_fails() -> None:
    failing = comparison({"top1": 0.963}, {"top1": 0.974})
    (result,) = judge(Budget.from_mapping({"top1_drop": 0.01}), failing)
    assert not result.passed
    assert result.observed == pytest.approx(0.011)


def test_lower_and_upper_bounds_at_exactly_the_limit() -> None:
    budget = Budget.from_mapping({"cosine": 0.991, "max_abs_error": 0.5, "sqnr_db": 25})
    assert [r.passed for r in judge(budget, LABELLED)] == [True, True, True]
    stricter = Budget.from_mapping({"cosine": 0.9911, "max_abs_error": 0.4999, "sqnr_db": 25.001})
    results = judge(stricter, LABELLED)
    assert [(r.name, r.passed) for r in results] == [
        ("cosine", False),
        ("max_abs_error", False),
        ("sqnr_db", False),
    ]
    assert [r.upper for r in results] == [False, True, False]
    assert all(r.fp32 is None and r.delta is None for r in results)


def test_an_int8_improvement_passes_a_drop_budget() -> None:
    better = comparison({"top1": 0.98}, {"top1": 0.974})
    (result,) = judge(Budget.from_mapping({"top1_drop": 0.0}), better)
    assert result.passed
    assert result.observed == pytest.approx(-0.006)


def test_judge_keeps_the_budget_order() -> None:
    budget = Budget.from_mapping({"top5_drop": 0.01, "cosine": 0.98, "top1_agreement": 0.99})
    results = judge(budget, LABELLED)
    assert [(r.name, r.passed) for r in results] == [
        ("top5_drop", True),
        ("cosine", True),
        ("top1_agreement", False),
    ]


def test_missing_labels_for_top1_drop_is_a_budget_error() -> None:
    unlabelled = comparison({"cosine": 0.99, "top1_agreement": 0.99})
    with pytest.raises(BudgetError, match=r"top1_drop needs labels"):
        judge(Budget.from_mapping({"top1_drop": 0.01}), unlabelled)


def test_class_metric_on_a_non_class_output_is_a_budget_error() -> None:
    with pytest.raises(BudgetError, match=r"top1_agreement needs a class-score output.*'boxes'"):
        judge(Budget.from_mapping({"top1_agreement": 0.9}), comparison({"cosine": 0.9}, output="boxes"))


def test_kpi_budget_without_a_kpi_is_a_budget_error() -> None:
    with pytest.raises(BudgetError, match="kpi_drop needs a KPI function"):
        judge(Budget.from_mapping({"kpi_drop": 0.0}), LABELLED)


def test_kpi_drop_is_judged() -> None:
    with_kpi = comparison({"kpi": 0.70}, {"kpi": 0.72})
    (result,) = judge(Budget.from_mapping({"kpi_drop": 0.02}), with_kpi)
    assert result.passed
    (result,) = judge(Budget.from_mapping({"kpi_drop": 0.019}), with_kpi)
    assert not result.passed


# ---- results and verdicts ---------------------------------------------------------------------------------


def test_metric_result_as_dict() -> None:
    drop = MetricResult("top1_drop", 0.974, 0.964, -0.01, 0.01, True, True)
    assert drop.as_dict() == {
        "fp32": 0.974,
        "int8": 0.964,
        "delta": -0.01,
        "limit": 0.01,
        "op": "<=",
        "passed": True,
        "output": "",
    }
    cosine = MetricResult("cosine", None, 0.97, None, 0.98, False, False)
    assert cosine.as_dict()["op"] == ">="
    assert cosine.as_dict()["fp32"] is None
    assert cosine.observed == 0.97


def test_verdict_passes_only_when_every_metric_passes() -> None:
    budget = Budget.from_mapping({"top1_drop": 0.01, "cosine": 0.995})
    results = judge(budget, LABELLED)
    verdict = GateVerdict(
        name="digits",
        model="digits.onnx",
        backend={"backend": "onnxruntime"},
        backend_text="onnxruntime",
        calibrator="entropy",
        calibration_samples=600,
        eval_samples=500,
        output_name="logits",
        budget=budget,
        results=results,
        fp32=dict(LABELLED.fp32),
        int8=dict(LABELLED.int8),
        plan={},
        quantized_layers=5,
        total_layers=5,
        evaluations=1,
        duration_s=0.1,
    )
    assert not verdict.passed
    assert [r.name for r in verdict.failed_metrics] == ["cosine"]
    assert GateVerdict(**{**verdict.__dict__, "results": results[:1]}).passed


def test_a_failing_value_is_never_printed_as_if_it_met_its_limit() -> None:
    from pytest_int8gate.report.view import failing_number

    assert failing_number(0.996995, 0.997, upper=False) == "0.99699"  # 0.9970 would read as a pass
    assert failing_number(0.0100001, 0.01, upper=True) == "0.0100001"
    assert failing_number(0.5, 0.98, upper=False) == "0.5000"
