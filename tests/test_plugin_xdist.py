"""The plugin in a real ``pytest`` subprocess: loaded through its ``pytest11`` entry point, and under
pytest-xdist, where ``-n 2`` must give the same verdicts and numbers as ``-n 0`` and report once.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import xml.etree.ElementTree as ET

import pytest
from example_files import DATA_ARGS, DIGITS
from inner_runs import gates

SUBPROCESS_TIMEOUT = 240
HAS_XDIST = importlib.util.find_spec("xdist") is not None
needs_xdist = pytest.mark.skipif(not HAS_XDIST, reason="pytest-xdist is not installed")


@pytest.fixture
def project(project: pytest.Pytester) -> pytest.Pytester:
    """The inner project of conftest.py with a third model, a renamed copy of the example model: three
    models and the data, no tests, its own ini."""
    shutil.copy(DIGITS, project.path / "digits_copy.onnx")
    return project


def summary_rows(result: pytest.RunResult) -> list[str]:
    lines = result.stdout.lines
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r"=+ int8gate =+", line)]
    assert len(starts) == 1, result.stdout.str()  # printed once: by the controller, not by each worker
    rows = []
    for line in lines[starts[0] + 1 :]:
        if line.startswith("="):
            break
        if line.strip() and not line.startswith("int8gate:"):
            rows.append(line)
    return rows


def test_the_entry_point_loads_the_plugin_in_a_fresh_process(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess(
        "--int8-model", "digits_cnn.onnx", *DATA_ARGS, timeout=SUBPROCESS_TIMEOUT
    )

    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(
        [
            "plugins: *int8gate-*",
            "digits_cnn.onnx *",
            "int8gate calibrate: *",  # not a terminal: one progress line per stage
            ".*[[]100%[]]",
            "digits_cnn.onnx  PASS *",
        ]
    )


@needs_xdist
def test_two_workers_give_the_same_verdicts_and_numbers_as_one_process(project: pytest.Pytester) -> None:
    models = ("digits_cnn.onnx", "digits_cnn_outlier.onnx", "digits_copy.onnx")
    common = [arg for model in models for arg in ("--int8-model", model)] + [
        *DATA_ARGS,
        "--int8-calibrator",
        "max",
    ]

    serial = project.runpytest_subprocess(
        *common, "-n", "0", "--int8-cache-dir", "cache0", "--int8-report-json", "serial.json",
        timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip
    parallel = project.runpytest_subprocess(
        *common, "-n", "2", "--int8-cache-dir", "cache2", "--int8-report-json", "parallel.json",
        "--junitxml", "junit.xml", timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip

    for result in (serial, parallel):
        result.assert_outcomes(passed=2, failed=1)
    parallel.stdout.fnmatch_lines(["created: 2/2 workers*"])
    one, two = (
        gates(project.path / "serial.json", by="nodeid"),
        gates(project.path / "parallel.json", by="nodeid"),
    )
    assert sorted(one) == sorted(two) == sorted(f"{model}::int8_gate" for model in models)
    for nodeid in one:
        assert two[nodeid]["verdict"] == one[nodeid]["verdict"], nodeid
        assert two[nodeid]["metrics"] == one[nodeid]["metrics"], nodeid
        assert two[nodeid]["measured"] == one[nodeid]["measured"], nodeid
        assert two[nodeid]["offending_layers"] == one[nodeid]["offending_layers"], nodeid
    assert one["digits_cnn_outlier.onnx::int8_gate"]["verdict"] == "fail"
    assert [o["name"] for o in two["digits_cnn_outlier.onnx::int8_gate"]["offending_layers"]] == [
        "/conv2/Conv"
    ]

    rows = summary_rows(parallel)
    assert sorted(row.split()[0] for row in rows) == sorted(models), rows
    assert parallel.stdout.str().count("JSON report written to") == 1
    # JUnit properties travel from the workers too
    cases = {case.get("classname"): case for case in ET.parse(project.path / "junit.xml").iter("testcase")}
    assert set(cases) == set(models)
    for case in cases.values():
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props["int8gate_calibrator"] == "max"
        assert float(props["int8gate_int8_cosine"]) > 0


@needs_xdist
def test_invalid_marker_under_xdist_is_a_clear_error_not_an_internal_error(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_inner_budget="""
        import pytest

        @pytest.mark.int8_budget(cosin=0.98)
        def test_bad():
            pass
        """
    )

    result = project.runpytest_subprocess("-n", "2", timeout=SUBPROCESS_TIMEOUT)

    text = result.stdout.str() + result.stderr.str()
    assert result.ret not in (pytest.ExitCode.OK, pytest.ExitCode.INTERNAL_ERROR), text
    assert "INTERNALERROR" not in text
    assert "test_inner_budget.py::test_bad" in text and "'cosin'" in text and "valid keys are" in text


@needs_xdist
def test_the_default_manifest_is_collected_by_every_worker(project: pytest.Pytester) -> None:
    (project.path / "int8gate.yaml").write_text(
        "models:\n"
        "  - {name: first, model: digits_cnn.onnx, calib_data: calib.npz}\n"
        "  - {name: second, model: digits_copy.onnx, calib_data: calib.npz}\n"
    )

    result = project.runpytest_subprocess("-n", "2", "-v", timeout=SUBPROCESS_TIMEOUT)

    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines_random(["*PASSED int8gate.yaml::first*", "*PASSED int8gate.yaml::second*"])
