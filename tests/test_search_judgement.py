"""The culprit search judges as the gate does, and a fix that fails is reported as a failure everywhere.

Strict confidence intervals (``strict_ci``) and the ``sqnr_db``/``max_abs_error`` budgets run through the
real search (GatePipeline, ONNX Runtime); a verified fix that misses the budget on the full evaluation set
says so, with its numbers, in the terminal text, the Markdown and the HTML report; the margin that drives
the search's non-monotonic fallback is normalised for budgets measured in dB or in output units.
"""

from __future__ import annotations

import re
import sys
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from example_files import CALIB, DIGITS, EVAL, LABELS, OUTLIER

from pytest_int8gate.bisect import BisectionReport, Probe, find_offenders, margin_of, probe_of
from pytest_int8gate.gate import Budget, GateVerdict, MetricResult
from pytest_int8gate.pipeline import GatePipeline, GateSpec
from pytest_int8gate.report import failure_text, verdict_record
from pytest_int8gate.report_formats import html_report, markdown_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
import planted

STRICT_TOP1 = Budget({"top1_drop": 0.01})


def bisection(verdict: GateVerdict) -> BisectionReport:
    assert not verdict.passed
    assert isinstance(verdict.bisection, BisectionReport)
    return verdict.bisection


# ---- strict confidence intervals through the search ------------------------------------------------


def test_a_strict_gate_searches_on_the_full_set_when_the_subset_cannot_pass_strictly() -> None:
    """200 samples cannot show a drop under one point (+-1.4 points with no disagreement at all), 500 can
    (+-0.55): the search notices on the subset, moves to all 500 samples and finds the planted outlier."""
    spec = GateSpec(
        model=OUTLIER, calib_data=CALIB, eval_data=EVAL, labels=str(LABELS), calibrator="max",
        budget=STRICT_TOP1, strict_ci=True, bisect_subset=200, repairs=("calibrator",),
    )  # fmt: skip
    report = bisection(GatePipeline(spec).run())

    assert report.subset_size == 500
    assert report.notes[0] == (
        "with --int8-strict-ci, 200 samples cannot show the budget is met even with no layer quantized; "
        "the search used all 500"
    )
    assert [o.name for o in report.offenders] == ["/conv2/Conv"]
    assert not any("every prefix passes" in note for note in report.notes)
    fix = report.fix
    assert fix is not None and fix.passed and fix.exclude == ("/conv2/Conv",)
    (top1,) = fix.results
    assert top1.strict_ci and top1.ci95 is not None
    assert top1.ci95[1] < 0.01  # judged on the interval's upper bound, as the gate judges


def test_a_strict_gate_no_sample_count_can_pass_is_not_blamed_on_any_layer() -> None:
    """On 200 samples the strict one-point budget fails with INT8 equal to FP32: no layer is to blame, and
    the search says so instead of reporting that every prefix passes."""
    with np.load(EVAL) as archive:
        eval200 = {"input": archive["input"][:200]}
    spec = GateSpec(
        model=DIGITS, calib_data=CALIB, eval_data=eval200, labels=np.load(LABELS)[:200], budget=STRICT_TOP1,
        strict_ci=True,
    )  # fmt: skip
    verdict = GatePipeline(spec).run()
    report = bisection(verdict)

    assert verdict.results[0].strict_ci and verdict.results[0].observed == 0.0
    assert report.offenders == () and report.fix is None and report.search_evaluations == 0
    assert report.notes == (
        "with --int8-strict-ci, the 200 evaluation samples cannot show the budget is met even with no "
        "layer quantized, so no layer was searched: no plan can pass on this set; evaluate on more samples",
    )
    assert "every prefix passes" not in failure_text(verdict)


# ---- sqnr_db and max_abs_error budgets through the search -----------------------------------------------


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A clean 8-layer chain, the same chain with offenders planted at fc3 and fc6, their data."""
    root = tmp_path_factory.mktemp("chains")
    weights = planted.chain_weights(8)
    clean = planted.save_chain(weights, root / "clean.onnx")
    dirty = planted.save_chain(planted.plant(planted.plant(weights, 3), 6), root / "planted.onnx")
    calib = root / "calib.npz"
    np.savez(calib, x=planted.inputs(256, seed=1)["x"])
    return {"clean": clean, "planted": dirty, "calib": calib, "eval": planted.inputs(256, seed=2)}


def chain_spec(
    chains: dict[str, object], model: str, budget: dict[str, float], **changes: object
) -> GateSpec:
    fields: dict[str, object] = {
        "model": chains[model],
        "calib_data": chains["calib"],
        "eval_data": chains["eval"],
        "budget": Budget(budget),
        "bisect_subset": 64,
        "threads": 1,
        "repairs": (),
    }
    fields.update(changes)
    return GateSpec(**fields)  # type: ignore[arg-type]


def test_an_sqnr_budget_bisects_to_exactly_the_planted_layers(chains: dict[str, object]) -> None:
    """Clean layers quantized give 24 dB here, one planted layer about 0 dB: a 10 dB budget separates them."""
    report = bisection(GatePipeline(chain_spec(chains, "planted", {"sqnr_db": 10.0})).run())

    assert [(o.name, o.action) for o in report.offenders] == [("fc3", "float"), ("fc6", "float")]
    assert all(o.metrics["sqnr_db"] < 10.0 for o in report.offenders)
    assert report.fix is not None and report.fix.passed
    assert report.fix.results[0].name == "sqnr_db" and report.fix.results[0].observed >= 10.0
    assert not any("assumption broke" in note for note in report.notes)


def test_a_max_abs_error_budget_bisects_to_exactly_the_planted_layers(chains: dict[str, object]) -> None:
    clean = GatePipeline(chain_spec(chains, "clean", {"max_abs_error": 100.0})).run()
    assert clean.passed
    limit = 2 * clean.int8["max_abs_error"]  # twice what the clean layers together lose

    report = bisection(GatePipeline(chain_spec(chains, "planted", {"max_abs_error": limit})).run())

    assert [o.name for o in report.offenders] == ["fc3", "fc6"]
    assert all(o.metrics["max_abs_error"] > limit for o in report.offenders)
    assert report.fix is not None and report.fix.passed
    assert report.fix.results[0].observed <= limit


# ---- a verified fix that fails says FAIL, with its numbers, in every format -----------------------------


@pytest.fixture(scope="module")
def failing_fix(chains: dict[str, object]) -> GateVerdict:
    """A budget no set of per-layer fixes meets: 0.1 of output error where quantizing any clean layer
    already loses 0.15-0.5 on the subset. The search keeps layers in float one by one; the verification on
    the full set still misses the budget."""
    verdict = GatePipeline(chain_spec(chains, "clean", {"max_abs_error": 0.1}, repairs=())).run()
    fix = bisection(verdict).fix
    assert fix is not None
    return verdict


def fix_figures(verdict: GateVerdict) -> str:
    """The fix's numbers as the reports print them (4 decimals), e.g. ``max_abs_error 0.1234``."""
    report = bisection(verdict)
    assert report.fix is not None
    return ", ".join(f"{r.name} {r.observed:.4f}" for r in report.fix.results)


def test_the_failing_fix_is_measured_above_the_limit(failing_fix: GateVerdict) -> None:
    fix = bisection(failing_fix).fix
    assert fix is not None
    (result,) = fix.results
    assert result.name == "max_abs_error" and result.observed > 0.1 and not result.passed
    assert not fix.passed


def test_a_failing_fix_reads_fail_in_the_terminal_text(failing_fix: GateVerdict) -> None:
    text = failure_text(failing_fix)
    (line,) = [line for line in text.splitlines() if line.startswith("Verified fix on all 256 evaluation")]
    assert line.endswith(f" -> {fix_figures(failing_fix)}  FAIL (not a fix)"), line
    assert "Apply it in int8gate.yaml" not in text  # a failing fix is not offered for the manifest


def test_a_failing_fix_reads_fail_in_markdown(failing_fix: GateVerdict) -> None:
    record = verdict_record(failing_fix, nodeid="clean.onnx::int8_gate")
    text = markdown_report([record])
    (line,) = [
        line for line in text.splitlines() if line.startswith("**Verified fix** on all 256 evaluation")
    ]
    assert line.endswith(f" → {fix_figures(failing_fix)} **FAIL** (not a fix)"), line
    assert "Apply it in `int8gate.yaml`" not in text


def test_a_failing_fix_reads_fail_in_html(failing_fix: GateVerdict) -> None:
    record = verdict_record(failing_fix, nodeid="clean.onnx::int8_gate")
    page = html_report([record])
    (paragraph,) = re.findall(r"<p><strong>Verified fix</strong>.*?</p>", page)
    assert unescape(paragraph).endswith(
        f' → {fix_figures(failing_fix)} <span class="bad">FAIL</span> (not a fix)</p>'
    ), paragraph
    assert "Apply it in <code>int8gate.yaml</code>" not in page


# ---- the margin that drives the non-monotonic fallback -------------------------------------------------


def result(name: str, observed: float, limit: float, *, upper: bool) -> MetricResult:
    passed = observed <= limit if upper else observed >= limit
    return MetricResult(name, None, observed, None, limit, upper, passed)


def test_margins_of_db_and_output_unit_budgets_are_relative_to_the_limit() -> None:
    assert margin_of([result("sqnr_db", 33.0, 30.0, upper=False)]) == pytest.approx(0.1)
    assert margin_of([result("max_abs_error", 0.25, 0.5, upper=True)]) == pytest.approx(0.5)
    assert margin_of([result("max_abs_error", 30.0, 50.0, upper=True)]) == pytest.approx(0.4)
    assert margin_of([result("cosine", 0.995, 0.99, upper=False)]) == pytest.approx(0.005)  # a fraction


@pytest.mark.parametrize(
    ("name", "limit", "passing", "upper"),
    [
        ("sqnr_db", 30.0, [30.5, 30.3, 30.45, 30.4, 30.35, 30.25, 30.5], False),  # 0.25 dB of noise
        ("max_abs_error", 50.0, [20.0, 20.3, 19.9, 20.2, 19.8, 20.1, 19.85], True),  # 0.4 of output units
    ],
)
def test_small_relative_wobbles_of_passing_prefixes_do_not_trigger_the_linear_scan(
    name: str, limit: float, passing: list[float], upper: bool
) -> None:
    """One offender at position 7 of 8; the passing prefixes wobble by under 1 % of the limit (the
    tolerance) but by far more than 0.01 dB or output units: only a normalised margin sees no inversion."""

    def oracle(accepted: object, trial: list[int], overrides: object) -> Probe:
        end = max(trial)
        observed = passing[end] if end < 7 else (limit * 3 if upper else limit / 3)
        return probe_of(len(trial), [result(name, observed, limit, upper=upper)])

    state = find_offenders(8, oracle)

    assert state.offenders == [7]
    assert not state.notes, state.notes
    assert state.search_evaluations == 1 + 3  # whole plan, then log2(8) prefixes: no linear scan
