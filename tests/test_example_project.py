"""End to end on the example project's real model and data: its gate passes, its outlier model fails and
the failure names the planted layer with a verified fix that keeps it in INT8 (equalization)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"

pytestmark = pytest.mark.slow


@pytest.fixture
def example(tmp_path: Path) -> Path:
    target = tmp_path / "example_project"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".pytest_cache", "__pycache__"))
    return target


def run_pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_example_gate_passes_through_marker_tests_and_manifest(example: Path) -> None:
    result = run_pytest(example, "--int8-report-json", "report.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout
    report = json.loads((example / "report.json").read_text())
    names = {gate["name"] for gate in report["gates"]}
    assert {"digits_cnn", "digits_cnn_outlier_fixed"} <= names
    for gate in report["gates"]:
        assert gate["verdict"] == "pass"
        assert gate["layers"]["quantized"] == gate["layers"]["quantizable"] == 5  # nothing in float
        if "top1_drop" in gate["metrics"]:
            # INT8 (entropy, simulated) within 1 point of FP32 on the held-out set
            assert gate["metrics"]["top1_drop"]["fp32"] - gate["metrics"]["top1_drop"]["int8"] <= 0.01


def test_the_outlier_model_fails_and_names_the_planted_layer(example: Path) -> None:
    result = run_pytest(
        example,
        "--int8-model",
        "models/digits_cnn_outlier.onnx",
        "-k",
        "outlier and not fixed",
        "--int8-report-json",
        "report.json",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "INT8 gate failed: digits_cnn_outlier.onnx" in out
    # the repair ladder: own SQNR rules the other calibrators out, equalization with conv1 keeps conv2 INT8
    assert "/conv2/Conv  Conv" in out and "stays INT8 via equalization with /conv1/Conv" in out
    tried = r"tried: percentile not tried \(own SQNR [^)]*\); mse not tried \([^)]*\); max not tried"
    assert re.search(tried, out)
    assert (
        "Verified fix on all 500 evaluation samples and on the 300 the search never used: "
        "equalize [/conv2/Conv] -> top1_drop 0.0000"
    ) in out
    assert "Equalized FP32 model (deploy this one): " in out
    assert "pytest_int8gate" not in out.split("FAILURES")[1].split("int8gate ===")[0]  # no traceback
    gate = json.loads((example / "report.json").read_text())["gates"][0]
    assert gate["verdict"] == "fail"
    assert [(o["name"], o["action"]) for o in gate["offending_layers"]] == [("/conv2/Conv", "equalize")]
    fix = gate["bisection"]["fix"]
    assert fix["passed"] is True and fix["exclude"] == [] and fix["equalize"] == ["/conv2/Conv"]
    # the model to deploy is on disk, with the recorded hash, and `int8gate equalize` reproduces it
    deployed = Path(fix["fp32_model"]).read_bytes()
    assert hashlib.sha256(deployed).hexdigest() == fix["fp32_sha256"]
    cli = subprocess.run(
        [sys.executable, "-m", "pytest_int8gate.cli", "equalize", "models/digits_cnn_outlier.onnx",
         "--layers", "/conv2/Conv", "--out", "eq.onnx", "--data", "data/eval.npz"],
        cwd=example, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert (example / "eq.onnx").read_bytes() == deployed
    assert "/conv1/Conv -> Relu -> /conv2/Conv" in cli.stdout
