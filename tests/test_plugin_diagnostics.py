"""Diagnostics and confidence intervals through the pytest plugin (``pytester``): the failure text shows the
findings before the bisection, the terminal summary counts them, the JSON report lists them, and the new
options, ini keys and manifest keys reach the gate."""

from __future__ import annotations

import textwrap

import numpy as np
import onnx
import pytest
from example_files import DATA_ARGS, DIGITS, EVAL, LABELS
from inner_runs import failure_section, gates
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.backends.onnxruntime import OrtRunner


@pytest.fixture
def project(project: pytest.Pytester) -> pytest.Pytester:
    """The inner project of conftest.py (its own ini, the example models and data) with FP32 reference
    files."""
    with np.load(EVAL) as archive:
        images = archive["input"][:64]
    logits = OrtRunner(onnx.load(str(DIGITS)), precision="fp32", optimize=True).run({"input": images})[
        "logits"
    ]
    np.savez(project.path / "reference.npz", logits=logits)
    np.savez(project.path / "wrong_reference.npz", logits=logits[::-1].copy())  # samples in the wrong order
    return project


def summary_section(result: pytest.RunResult) -> str:
    return result.stdout.str().split("= int8gate =", 1)[1]


def test_a_failure_finding_fails_a_gate_whose_budget_passes(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--int8-model", "digits_cnn.onnx", *DATA_ARGS, "--int8-fp32-reference", "wrong_reference.npz",
        "--int8-report-json", "report.json",
    )  # fmt: skip

    result.assert_outcomes(failed=1)
    failure = failure_section(result)
    assert "INT8 gate failed: digits_cnn.onnx" in failure
    assert "Diagnostics (1 failure, 1 info):" in failure
    assert "FAILURE fp32-parity: FP32 parity failed: output 'logits'" in failure
    assert "fix: An INT8 comparison against a wrong FP32 result means nothing" in failure
    assert failure.index("Diagnostics (") < failure.index("Offending layers: not searched (the budget is met")
    assert "diagnostics: 1 failure, 1 info" in summary_section(result)
    gate = gates(project.path / "report.json")["digits_cnn.onnx"]
    assert gate["verdict"] == "fail"
    assert all(metric["passed"] for metric in gate["metrics"].values())
    assert [(d["code"], d["severity"]) for d in gate["diagnostics"]] == [
        ("fp32-parity", "failure"),
        ("distribution-shape", "info"),
    ]
    assert set(gate["diagnostics"][0]) == {"code", "severity", "message", "fix", "details"}
    low, high = gate["metrics"]["top1_drop"]["ci95"]
    assert low < 0 < high < 0.01  # 500 samples, no disagreement: +-0.55 points
    assert gate["metrics"]["cosine"]["ci95"] is None


def test_diagnostics_come_before_the_bisection_in_the_failure_text(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--int8-model", "digits_cnn_outlier.onnx", *DATA_ARGS, "--int8-calibrator", "max",
        "--int8-min-calib-samples", "1000", "--int8-bisect-max-evals", "8",
    )  # fmt: skip

    result.assert_outcomes(failed=1)
    failure = failure_section(result)
    table = failure.index("top1_drop")
    diagnostics = failure.index("Diagnostics (1 warning, 1 info):")
    bisection = failure.index("Offending layers (")
    assert table < diagnostics < bisection
    assert "WARNING calibration-size: calibration used 600 samples, fewer than the 1000" in failure
    assert "95% CI" in failure.splitlines()[failure.splitlines().index(next(
        line for line in failure.splitlines() if line.strip().startswith("metric")))]  # fmt: skip
    assert "diagnostics: 1 warning, 1 info" in summary_section(result)


def test_strict_ci_from_the_ini_file_fails_a_one_point_budget_on_200_samples(
    project: pytest.Pytester,
) -> None:
    with np.load(EVAL) as archive:
        np.savez(project.path / "eval200.npz", input=archive["input"][:200])
    np.save(project.path / "labels200.npy", np.load(LABELS)[:200])
    (project.path / "pytest.ini").write_text(
        textwrap.dedent(
            """
            [pytest]
            int8_calib_data = calib.npz
            int8_eval_data = eval200.npz
            int8_labels = labels200.npy
            int8_budget = top1_drop=0.01
            int8_strict_ci = true
            """
        )
    )

    result = project.runpytest(
        "--int8-model", "digits_cnn.onnx", "--int8-no-bisect", "--int8-report-json", "r.json"
    )

    result.assert_outcomes(failed=1)
    failure = failure_section(result)
    row = next(line for line in failure.splitlines() if line.strip().startswith("top1_drop"))
    # INT8 loses nothing on these 200 samples, but 200 samples cannot show a drop below 1 point
    assert row.split()[1:4] == ["0.9700", "0.9700", "0.0000"]
    assert "[-0.0137, 0.0137] strict" in row and row.split()[-1] == "FAIL"
    assert "WARNING eval-set-too-small: the evaluation set (200 samples) is too small" in failure
    metric = gates(project.path / "r.json")["digits_cnn.onnx"]["metrics"]["top1_drop"]
    assert metric["strict_ci"] is True and metric["passed"] is False
    assert metric["ci95"] == [pytest.approx(-0.01372, abs=1e-5), pytest.approx(0.01372, abs=1e-5)]


def test_manifest_keys_strict_ci_and_fp32_reference(project: pytest.Pytester) -> None:
    (project.path / "int8gate.yaml").write_text(
        textwrap.dedent(
            """
            models:
              - name: digits
                model: digits_cnn.onnx
                calib_data: calib.npz
                eval_data: eval.npz
                labels: eval_labels.npy
                budget: {top1_drop: 0.01}
                strict_ci: true
                fp32_reference: reference.npz
            """
        )
    )

    result = project.runpytest("--int8-report-json", "report.json", "--int8-check-determinism")

    result.assert_outcomes(passed=1)  # 500 samples: the whole interval (+-0.55 points) is within 1 point
    gate = gates(project.path / "report.json")["digits"]
    assert gate["metrics"]["top1_drop"]["strict_ci"] is True
    assert [d["code"] for d in gate["diagnostics"]] == ["distribution-shape", "determinism"]
    assert gate["diagnostics"][1]["details"]["bit_exact"] is True
    assert "diagnostics: 2 infos" in summary_section(result)


def test_a_wrong_manifest_type_for_strict_ci_is_a_collection_error(project: pytest.Pytester) -> None:
    (project.path / "int8gate.yaml").write_text(
        "models:\n  - model: digits_cnn.onnx\n    calib_data: calib.npz\n    strict_ci: 'yes'\n"
    )
    result = project.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*'strict_ci' must be true or false*"])


def test_nan_errors_record_the_first_non_finite_tensor_in_the_json(project: pytest.Pytester) -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
        helper.make_node("Log", ["h"], ["logh"], name="log"),
        helper.make_node("Relu", ["logh"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "nan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "W")],
    )  # fmt: skip
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), project.path / "nan.onnx"
    )
    np.savez(project.path / "x.npz", x=np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32))

    result = project.runpytest(
        "--int8-model", "nan.onnx", "--int8-calib-data", "x.npz", "--int8-budget", "cosine=-1",
        "--int8-report-json", "report.json",
    )  # fmt: skip

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["INT8 gate error: *NaN at sample 1*first in tensor 'logh' (output of node 'log', Log)*"]
    )
    gate = gates(project.path / "report.json")["nan.onnx"]
    assert gate["verdict"] == "error"
    (finding,) = gate["diagnostics"]
    assert (finding["code"], finding["severity"]) == ("non-finite", "failure")
    assert finding["details"]["tensor"] == "logh" and finding["details"]["precision"] == "FP32"
