"""One view, one codec: a failing gate (budget failure with bisection and verified fix), a gate failing only
on a diagnostic, and an error, each rendered in every format (failure text, terminal summary row, JUnit
properties, Markdown, HTML) say the same things; the codec round-trips and its JSON parses strictly, also
from a real run whose metrics are infinite or NaN; older baseline files read back."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from example_files import CALIB, DIGITS, EVAL, LABELS, OUTLIER
from inner_runs import output_of
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.cli import main
from pytest_int8gate.errors import DataError, Int8GateError
from pytest_int8gate.pipeline import GatePipeline, GateSpec
from pytest_int8gate.report import (
    REPORT_SCHEMA,
    REPORT_SCHEMA_VERSION,
    error_record,
    failure_text,
    gate_view,
    html_report,
    junit_properties,
    markdown_report,
    summary_lines,
    verdict_record,
    write_json_report,
)
from pytest_int8gate.report.baseline import load_baseline
from pytest_int8gate.report.codec import dumps, encode_number
from pytest_int8gate.report.decode import decode_record
from pytest_int8gate.report.text import gate_text
from pytest_int8gate.results import Finding, GateVerdict


def strict_loads(text: str) -> Any:
    """JSON as a strict parser reads it: ``NaN``, ``Infinity`` and ``-Infinity`` are errors."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def run(model: Path, **spec: Any) -> GateVerdict:
    settings = dict(calib_data=CALIB, eval_data=EVAL, labels=str(LABELS), calibrator="max") | spec
    return GatePipeline(GateSpec(model=model, **settings)).run()


@pytest.fixture(scope="module")
def bisected() -> GateVerdict:
    """The example's outlier model with the max calibrator: top-1 fails, bisected to /conv2/Conv, fixed."""
    verdict = run(OUTLIER)
    assert verdict.bisection is not None and verdict.bisection.fix is not None and verdict.failed_metrics
    return verdict


@pytest.fixture(scope="module")
def diagnostic_only() -> GateVerdict:
    """The clean model's real verdict (every budget metric passes) with a failing diagnostic added."""
    verdict = run(DIGITS)
    assert verdict.passed
    finding = Finding(
        "preprocessing", "failure", "evaluation data is x255 the calibration data", "scale it to 0..1"
    )
    return dataclasses.replace(verdict, diagnostics=(finding, *verdict.diagnostics))


@pytest.fixture(scope="module")
def error(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The record of a real gate that could not be judged: a file that is not an ONNX model."""
    broken = tmp_path_factory.mktemp("broken") / "broken.onnx"
    broken.write_bytes(b"not a model at all")
    with pytest.raises(Int8GateError) as info:
        run(broken)
    return error_record(
        model=str(broken), name="broken.onnx", nodeid="broken.onnx::int8_gate", message=str(info.value),
        duration_s=0.1, backend="onnxruntime", calibrator="max",
    )  # fmt: skip


class TextOf(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_words(page: str) -> str:
    parser = TextOf()
    parser.feed(page.replace("<br>", " "))
    return " ".join(" ".join(parser.parts).split())


def markdown_words(text: str) -> str:
    text = text.replace("<br>", " ").replace("**", "").replace("`", "")
    return " ".join(re.sub(r"\\(.)", r"\1", text).split())


def words(text: str) -> str:
    return " ".join(text.split())


def renderings(record: dict[str, Any], verdict: GateVerdict | None) -> dict[str, str]:
    """Every format of one gate, as plain words (whitespace collapsed, markup removed)."""
    shown = {
        "text": words(gate_text(gate_view(record))),
        "summary": words("\n".join(summary_lines([record]))),
        "markdown": markdown_words(markdown_report([record])),
        "html": html_words(html_report([record])),
    }
    if verdict is not None:  # the test's failure text is rendered from the verdict itself, not the record
        assert words(failure_text(verdict)) == shown["text"]
    return shown


def num(value: float) -> str:
    """A number as the reports print it (computed here from the record, not by the code under test)."""
    value = 0.0 if value == 0 else value  # no "-0.0000"
    return "inf" if value == math.inf else f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def test_a_bisected_failure_says_the_same_in_every_format(bisected: GateVerdict) -> None:
    record = verdict_record(bisected, nodeid="models/x.onnx::int8_gate", duration_s=1.0)
    shown = renderings(record, bisected)

    bisection, fix = record["bisection"], record["bisection"]["fix"]
    walk = {"culprits": " (few strong culprits: sensitivity-ordered bisection)", "": ""}[bisection["walk"]]
    search = (
        f"{bisection['strategy']} search{walk}: {bisection['search_evaluations']} evaluations over "
        f"{bisection['total_layers']} quantized layers on {bisection['subset_size']} samples; "
        f"{bisection['repair_evaluations']} repair attempts"
    )
    floats, overrides = fix["float_layers"], len(fix["calibrator_overrides"])
    cost = (
        f"fix: {fix['entries']} {'entry' if fix['entries'] == 1 else 'entries'}: "
        f"{floats} {'layer' if floats == 1 else 'layers'} in float, "
        f"{overrides} {'override' if overrides == 1 else 'overrides'}; {fix['int8_layers']} of "
        f"{fix['quantized_layers']} layers and {100 * fix['int8_mac_share']:.1f} % of MACs in INT8"
    )
    fix_results = ", ".join(
        f"{name} {num(-m['delta'] if m['delta'] is not None else m['int8'])}"
        for name, m in fix["metrics"].items()
    )
    for name, metric in record["metrics"].items():
        observed = -metric["delta"] if metric["delta"] is not None else metric["int8"]
        limit = f"{metric['op']} {metric['limit']:g}"
        assert f"{name} {num(observed)}" in shown["summary"]
        for where in ("markdown", "html"):
            assert f"{name} {num(observed)} ({limit})" in shown[where], (where, name)
        for where in ("text", "markdown", "html"):
            assert num(metric["int8"]) in shown[where] and limit in shown[where], (where, name)
            if metric["delta"] is not None:  # shown as a drop: fp32 - int8, positive = worse
                assert num(-metric["delta"]) in shown[where], (where, name)
    assert shown["summary"].split()[1] == "FAIL"
    assert shown["text"].startswith("INT8 gate failed: digits_cnn_outlier.onnx")
    assert "❌ FAIL" in shown["markdown"] and "FAIL" in shown["html"]
    assert dict(junit_properties(bisected))["int8gate_verdict"] == "fail"
    assert dict(junit_properties(bisected))["int8gate_offending_layers"] == "/conv2/Conv"
    assert "offenders /conv2/Conv" in shown["summary"]
    for where in ("text", "markdown", "html"):
        text = shown[where]
        assert search in text, where
        assert cost in text, where
        assert "stays INT8 via equalization with /conv1/Conv" in text, where
        assert "percentile not tried (own SQNR" in text and "max not tried (" in text, where
        assert (
            f"Verified fix on all {record['samples']['evaluation']} evaluation samples and on the "
            f"{fix['unseen_samples']} the search never used: equalize" in text
        ), where
        assert f"{fix_results} PASS" in text, where
        assert "Equalized FP32 model (deploy this one):" in text and fix["fp32_sha256"] in text, where
        assert words(fix["manifest"]) in text, where
        assert "Most sensitive layers (own-output SQNR in dB, lower is worse): /conv2/Conv" in text, where
        assert "not searched" not in text, where


def test_a_failure_on_a_diagnostic_alone_says_why_nothing_was_searched(diagnostic_only: GateVerdict) -> None:
    record = verdict_record(diagnostic_only, nodeid="x.onnx::int8_gate")
    shown = renderings(record, diagnostic_only)

    assert record["verdict"] == "fail" and all(m["passed"] for m in record["metrics"].values())
    for where in ("text", "markdown", "html"):
        text = shown[where]
        assert "Offending layers: not searched (the budget is met; the diagnostics fail the gate)." in text, (
            where
        )
        assert "bisection disabled" not in text, where
        assert "preprocessing" in text and "evaluation data is x255 the calibration data" in text, where
        assert "scale it to 0..1" in text, where
        for name, metric in record["metrics"].items():
            assert f"{metric['op']} {metric['limit']:g}" in text and "PASS" in text, (where, name)
    assert shown["summary"].split()[1] == "FAIL" and "diagnostics: 1 failure" in shown["summary"]
    assert shown["text"].startswith("INT8 gate failed:") and "FAIL" in shown["markdown"]
    assert dict(junit_properties(diagnostic_only))["int8gate_verdict"] == "fail"


def test_a_failure_without_bisection_says_it_was_disabled(bisected: GateVerdict) -> None:
    unsearched = dataclasses.replace(bisected, bisection=None)
    shown = renderings(verdict_record(unsearched, nodeid="x"), unsearched)
    for where in ("text", "markdown", "html"):
        assert (
            "Offending layers: not searched (bisection disabled; enable with --int8-bisect)." in shown[where]
        )


def test_an_error_says_the_same_in_every_format(error: dict[str, Any]) -> None:
    shown = renderings(error, None)
    message = error["error"]
    assert "broken.onnx" in message
    assert (
        shown["summary"].split()[:2] == ["broken.onnx", "ERROR"] and words(message[:100]) in shown["summary"]
    )
    assert shown["text"].startswith("INT8 gate error: broken.onnx") and words(message) in shown["text"]
    for where in ("markdown", "html"):
        assert "ERROR" in shown[where] and words(message) in shown[where], where
        assert "0 passed, 0 failed, 1 error" in shown[where], where


def test_the_codec_round_trips_and_its_json_parses_strictly(
    bisected: GateVerdict, error: dict[str, Any]
) -> None:
    record = verdict_record(bisected, nodeid="n", duration_s=2.0)
    again = decode_record(strict_loads(dumps(record)))
    assert verdict_record(again.outcome, nodeid="n", duration_s=2.0) == record  # type: ignore[arg-type]
    assert again.status == "fail" and gate_view(again) == gate_view(record)
    assert decode_record(strict_loads(dumps(error))).status == "error"

    inf_and_nan = dataclasses.replace(
        bisected, int8={**bisected.int8, "sqnr_db": math.inf, "cosine": math.nan}
    )
    text = dumps(verdict_record(inf_and_nan, nodeid="n"))
    measured = strict_loads(text)["measured"]["int8"]
    assert (measured["sqnr_db"], measured["cosine"]) == ("inf", "nan")
    back = decode_record(strict_loads(text)).outcome
    assert (
        isinstance(back, GateVerdict) and back.int8["sqnr_db"] == math.inf and math.isnan(back.int8["cosine"])
    )
    assert [encode_number(v) for v in (1.5, math.inf, -math.inf, math.nan)] == [1.5, "inf", "-inf", "nan"]
    assert dumps({"x": np.float32(np.inf), "y": np.array([1.0, np.nan]), "z": np.bool_(True)}) == (
        '{\n  "x": "inf",\n  "y": [\n    1.0,\n    "nan"\n  ],\n  "z": true\n}\n'
    )


def test_a_record_that_says_fail_is_never_shown_as_a_pass(bisected: GateVerdict) -> None:
    record = verdict_record(dataclasses.replace(bisected, bisection=None), nodeid="n")
    for metric in record["metrics"].values():
        metric["passed"] = True  # a tampered record: the metrics pass, the verdict says fail
    assert gate_view(record).status_word == "FAIL"
    assert summary_lines([record])[0].split()[1] == "FAIL"


def test_an_unknown_verdict_word_is_refused(bisected: GateVerdict) -> None:
    record = verdict_record(bisected, nodeid="n")
    record["verdict"] = "passed"
    with pytest.raises(DataError, match="verdict 'passed' is not pass, fail or error"):
        decode_record(record)


def test_a_wrongly_typed_field_is_one_sentence_naming_the_file_the_gate_and_the_field(
    bisected: GateVerdict, tmp_path: Path
) -> None:
    record = verdict_record(bisected, nodeid="n")
    record["metrics"]["cosine"]["int8"] = "high"
    path = tmp_path / "main.json"
    write_json_report(path, [record], {})
    with pytest.raises(DataError) as info:
        load_baseline(path)
    message = str(info.value)
    assert str(path) in message and "digits_cnn_outlier.onnx" in message and "'int8'" in message
    assert "\n" not in message


def test_a_version_1_report_still_reads_as_a_baseline(bisected: GateVerdict, tmp_path: Path) -> None:
    """Version 1 wrote a non-finite layer SQNR as null and could hold bare Infinity tokens."""
    record = verdict_record(bisected, nodeid="n")
    record["bisection"]["sensitivity"][0]["sqnr_db"] = None
    record["metrics"]["cosine"]["limit"] = math.inf
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({"schema": REPORT_SCHEMA, "version": 1, "gates": [record]}))  # Infinity token

    baseline = load_baseline(path)
    comparison = baseline.comparison(verdict_record(bisected, nodeid="n"), {})
    assert comparison["status"] == "compared" and comparison["regressed"] is False
    assert {c["change"] for c in comparison["metrics"].values()} == {0.0}
    view = gate_view(baseline.records[0])
    cosine = next(m for m in view.metrics if m.name == "cosine")
    assert cosine.limit == ">= inf" and view.bisection is not None
    assert view.bisection.sensitivity[1].text == "nan"  # /conv2/Conv, read from null


def test_a_newer_version_is_refused_naming_the_file_and_the_version(tmp_path: Path) -> None:
    path = tmp_path / "future.json"
    path.write_text(json.dumps({"schema": REPORT_SCHEMA, "version": REPORT_SCHEMA_VERSION + 1, "gates": []}))
    with pytest.raises(DataError, match=rf"version {REPORT_SCHEMA_VERSION + 1} is newer") as info:
        load_baseline(path)
    assert str(path) in str(info.value)


def save_relu_model(folder: Path) -> tuple[Path, Path]:
    """A model whose first output ``y`` (one Relu) INT8 leaves bit for bit equal to FP32 (its SQNR is
    infinite), beside a quantized Gemm output ``z`` (a gate that quantized nothing is an error)."""
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu"),
         helper.make_node("Gemm", ["x", "w"], ["z"], name="fc")], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
        [weight],
    )  # fmt: skip
    model, data = folder / "relu.onnx", folder / "relu.npz"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    np.savez(data, x=np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32))
    return model, data


RELU_CONFTEST = """
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def int8_model():
    return HERE / "relu.onnx"


@pytest.fixture(scope="session")
def int8_calibration_data():
    return str(HERE / "relu.npz")
"""

RELU_TEST = """
import math


def nan_kpi(outputs, labels):
    return math.nan


def test_identical_outputs(int8_gate):
    verdict = int8_gate.check(budget={"sqnr_db": 20, "max_abs_error": 1e9}, name="identical")
    assert verdict.int8["sqnr_db"] == math.inf


def test_nan_kpi(int8_gate):
    int8_gate.check(budget={"kpi_drop": 0.5}, kpi=nan_kpi, name="nan-kpi")
"""


def test_the_json_report_of_a_real_run_parses_strictly_with_infinite_and_nan_metrics(
    empty_project: pytest.Pytester,
) -> None:
    save_relu_model(empty_project.path)
    empty_project.makeconftest(RELU_CONFTEST)
    empty_project.makepyfile(test_relu=RELU_TEST)

    result = empty_project.runpytest(
        "--int8-report-json", "report.json", "--int8-report-md", "report.md", "--int8-report-html", "r.html"
    )

    result.assert_outcomes(passed=1, failed=1)  # a NaN KPI fails the gate
    text = (empty_project.path / "report.json").read_text()
    assert not re.search(r"\b(NaN|Infinity)\b", text)
    payload = strict_loads(text)
    assert payload["version"] == REPORT_SCHEMA_VERSION
    gates = {gate["name"]: gate for gate in payload["gates"]}
    identical, nan_kpi = gates["identical"], gates["nan-kpi"]
    assert identical["verdict"] == "pass" and identical["measured"]["int8"]["sqnr_db"] == "inf"
    assert identical["metrics"]["sqnr_db"]["int8"] == "inf" and identical["budget"]["max_abs_error"] == 1e9
    assert identical["metrics"]["max_abs_error"]["limit"] == 1e9  # a limit is always finite
    assert nan_kpi["verdict"] == "fail" and nan_kpi["metrics"]["kpi_drop"]["delta"] == "nan"
    assert nan_kpi["measured"]["int8"]["kpi"] == "nan"
    summary = output_of(result)
    assert re.search(r"identical +PASS +sqnr_db inf; max_abs_error 0\.0000", summary)
    assert re.search(r"nan-kpi +FAIL +kpi_drop nan", summary)
    markdown = (empty_project.path / "report.md").read_text()
    assert "sqnr_db **inf** (>= 20) ✓" in markdown and "kpi_drop **nan** (<= 0.5) ✗" in markdown
    load_baseline(empty_project.path / "report.json")  # and it reads back as a baseline


def test_the_cli_json_is_the_report_record_and_parses_strictly(tmp_path: Path) -> None:
    model, data = save_relu_model(tmp_path)
    out = tmp_path / "verdict.json"
    argv = ["check", str(model), "--calib-data", str(data), "--budget", "sqnr_db=20,max_abs_error=1e9"]
    assert main([*argv, "--json", str(out)]) == 0

    record = strict_loads(out.read_text())
    assert record["verdict"] == "pass" and record["measured"]["int8"]["sqnr_db"] == "inf"
    assert record["metrics"]["sqnr_db"]["int8"] == "inf" and record["output"] == "y"
    assert decode_record(record).status == "pass"
