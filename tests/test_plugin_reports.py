"""The report options end to end through ``pytester``: ``--int8-report-md``/``-html``, the GitHub step
summary, ``--int8-baseline`` with its tolerance, the progress lines, the JSON schema fields, pytest-html."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
from example_files import DATA_ARGS
from inner_runs import output_of

TWO_GATES = ("--int8-model", "digits_cnn.onnx", "--int8-model", "digits_cnn_outlier.onnx", *DATA_ARGS)


@pytest.fixture
def project(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """The inner project of conftest.py (its own ini, the example models and data), run as outside CI."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("CI", raising=False)
    return project


def test_markdown_html_and_step_summary_are_written_and_announced(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = project.path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))

    result = project.runpytest(
        *TWO_GATES, "--int8-calibrator", "max", "--int8-report-md", "out/report.md",
        "--int8-report-html", "out/report.html", "--int8-report-json", "out/report.json",
    )  # fmt: skip

    result.assert_outcomes(passed=1, failed=1)
    root = project.path.resolve()
    result.stdout.fnmatch_lines(
        [
            f"int8gate: JSON report written to {root}/out/report.json",
            f"int8gate: Markdown report written to {root}/out/report.md",
            f"int8gate: HTML report written to {root}/out/report.html",
            f"int8gate: report appended to $GITHUB_STEP_SUMMARY ({summary})",
        ]
    )
    markdown = (project.path / "out" / "report.md").read_text()
    assert "**2 gates: 1 passed, 1 failed, 0 errors**" in markdown
    assert (
        "| `digits_cnn.onnx` | ✅ PASS |" in markdown
        and "| `digits_cnn_outlier.onnx` | ❌ FAIL |" in markdown
    )
    assert re.search(r'```yaml\n[a-z_]+:\n  - "/conv2/Conv"\n```', markdown)  # the verified fix's snippet
    assert summary.read_text() == "earlier step\n" + markdown + "\n"
    page = (project.path / "out" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "/conv2/Conv" in page

    payload = json.loads((project.path / "out" / "report.json").read_text())
    assert payload["schema"] == "pytest-int8gate/report" and payload["version"] == 2
    assert payload["tool"] == "pytest-int8gate" and payload["tool_version"]
    assert payload["created"].endswith(" UTC")
    outlier = next(g for g in payload["gates"] if g["name"] == "digits_cnn_outlier.onnx")
    assert next(s["index"] for s in outlier["bisection"]["sensitivity"]) == 1  # worst first, with its index


def test_no_step_summary_without_the_variable_and_ini_keys_for_the_report_paths(
    project: pytest.Pytester,
) -> None:
    (project.path / "pytest.ini").write_text(
        "[pytest]\nint8_report_md = build/r.md\nint8_report_html = build/r.html\n"
    )

    result = project.runpytest("--int8-model", "digits_cnn.onnx", *DATA_ARGS)

    result.assert_outcomes(passed=1)
    assert (project.path / "build" / "r.md").is_file() and (project.path / "build" / "r.html").is_file()
    assert "GITHUB_STEP_SUMMARY" not in output_of(result)


def doctored_baseline(report: Path, target: Path, **cosines: float) -> None:
    """The report with each named gate's INT8 cosine replaced: a baseline that scored differently."""
    payload = json.loads(report.read_text())
    for gate in payload["gates"]:
        if gate["name"] in cosines:
            gate["measured"]["int8"]["cosine"] = cosines[gate["name"]]
            gate["metrics"]["cosine"]["int8"] = cosines[gate["name"]]
    target.write_text(json.dumps(payload))


def test_baseline_changes_are_shown_and_a_regression_beyond_the_tolerance_fails_the_run(
    project: pytest.Pytester,
) -> None:
    first = project.runpytest(*TWO_GATES, "--int8-calibrator", "max", "--int8-report-json", "main.json")
    first.assert_outcomes(passed=1, failed=1)
    measured = {g["name"]: g for g in json.loads((project.path / "main.json").read_text())["gates"]}
    cosine = measured["digits_cnn.onnx"]["measured"]["int8"]["cosine"]
    doctored_baseline(project.path / "main.json", project.path / "better.json", **{"digits_cnn.onnx": 1.5})

    same = project.runpytest(
        *TWO_GATES, "--int8-calibrator", "max", "--int8-baseline", "main.json", "--int8-report-md", "same.md",
        "--int8-report-json", "same.json",
    )  # fmt: skip
    regressed = project.runpytest(
        "--int8-model", "digits_cnn.onnx", *DATA_ARGS, "--int8-calibrator", "max",
        "--int8-baseline", "better.json", "--int8-baseline-tolerance", "cosine=0.01",
    )  # fmt: skip
    tolerated = project.runpytest(
        "--int8-model", "digits_cnn.onnx", *DATA_ARGS, "--int8-calibrator", "max",
        "--int8-baseline", "better.json",
    )  # fmt: skip

    same.assert_outcomes(passed=1, failed=1)
    same.stdout.fnmatch_lines(
        [
            f"int8gate: against baseline {project.path.resolve()}/main.json (* UTC):",
            "  digits_cnn.onnx * top1_drop 0.0000 -> 0.0000 (0 same); * cosine * -> * (0 same)",
            "  digits_cnn_outlier.onnx * top1_drop 0.8740 -> 0.8740 (0 same)*",
        ]
    )
    record = next(
        g for g in json.loads((project.path / "same.json").read_text())["gates"] if g["verdict"] == "pass"
    )
    assert record["baseline"]["status"] == "compared" and record["baseline"]["regressed"] is False
    assert record["baseline"]["metrics"]["cosine"]["change"] == 0
    assert "### Change against the baseline (`main.json`" in (project.path / "same.md").read_text()

    assert regressed.ret == pytest.ExitCode.TESTS_FAILED  # the gate passed its budget; the run still fails
    regressed.assert_outcomes(passed=1)
    regressed.stdout.fnmatch_lines(
        [
            f"  digits_cnn.onnx  * cosine 1.5000 -> {cosine:.4f} (-* REGRESSED)",
            "int8gate: FAILED: 1 metric regressed against the baseline by more than the tolerance*",
        ]
    )
    assert tolerated.ret == pytest.ExitCode.OK  # without a tolerance the change is only reported
    tolerated.stdout.fnmatch_lines(["  digits_cnn.onnx  * cosine 1.5000 -> * (-* worse)"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--int8-baseline", "missing.json"), "--int8-baseline: *missing.json: baseline report not found."),
        (("--int8-baseline-tolerance", "speed=1"), "--int8-baseline-tolerance: unknown budget key 'speed'*"),
        (("--int8-baseline-tolerance", "cosine=-0.1"), "*tolerance cosine=-0.1 must be >= 0*"),
    ],
)
def test_bad_baseline_options_are_usage_errors(
    project: pytest.Pytester, args: tuple[str, ...], message: str
) -> None:
    result = project.runpytest("--int8-model", "digits_cnn.onnx", *DATA_ARGS, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])


def progress_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stdout.lines if line.startswith("int8gate ") and ":" in line]


def test_progress_is_one_line_per_stage_in_ci_logs_and_silent_with_q(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    args = ("--int8-model", "digits_cnn_outlier.onnx", *DATA_ARGS, "--int8-calibrator", "max")

    logged = project.runpytest(*args)
    quiet = project.runpytest(*args, "-q")

    lines = progress_lines(logged)
    assert lines[0].startswith("int8gate data: reading calibration data ")
    assert "int8gate calibrate: calibrating 5 tensors on 600 samples" in lines
    stages = [line.split(":", 1)[0] for line in lines]
    assert {"int8gate calibrate", "int8gate build", "int8gate evaluate", "int8gate bisect"} <= set(stages)
    for previous, line in itertools.pairwise(lines):  # one line per stage, a closing line at most
        assert line.split(":", 1)[0] != previous.split(":", 1)[0] or ": done, " in line, (previous, line)
    bisect_lines = [line for line in lines if line.startswith("int8gate bisect: ")]
    done = re.search(r"int8gate bisect: done, (\d+) steps", "\n".join(lines))
    assert done and int(done.group(1)) > 2 and len(bisect_lines) < int(done.group(1))  # not every probe
    assert not any("/600 samples" in line for line in lines)  # counter ticks: live only
    assert progress_lines(quiet) == []


def test_pytest_html_extras_carry_the_gate_table_and_chart(project: pytest.Pytester) -> None:
    # pytest-html is in the `test` extra: without it this test fails (an ImportError), it does not skip
    import pytest_html  # noqa: F401

    result = project.runpytest(
        "--int8-model", "digits_cnn_outlier.onnx", *DATA_ARGS, "--int8-calibrator", "max",
        "--html", "html/index.html", "--self-contained-html",
    )  # fmt: skip
    result.assert_outcomes(failed=1)
    page = (project.path / "html" / "index.html").read_text()
    assert "int8gate" in page and "/conv2/Conv" in page and "svg" in page


def test_reports_asked_for_are_written_when_no_gate_ran_but_the_step_summary_is_left_alone(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = project.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    project.makepyfile(test_plain="def test_nothing_quantized():\n    assert True\n")

    result = project.runpytest("--int8-report-md", "r.md", "--int8-report-html", "r.html")

    result.assert_outcomes(passed=1)
    assert "**0 gates: 0 passed, 0 failed, 0 errors**" in (project.path / "r.md").read_text()
    assert (project.path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert not summary.exists()


def test_baseline_and_tolerance_from_the_ini_file_relative_to_it(project: pytest.Pytester) -> None:
    project.runpytest("--int8-model", "digits_cnn.onnx", *DATA_ARGS, "--int8-report-json", "main.json")
    (project.path / "ci").mkdir()
    doctored_baseline(
        project.path / "main.json", project.path / "ci" / "base.json", **{"digits_cnn.onnx": 1.5}
    )
    (project.path / "pytest.ini").write_text(
        "[pytest]\nint8_baseline = ci/base.json\n"
        "int8_baseline_tolerance =\n    cosine=0.01\n    top1_drop=0.5\n"
    )

    result = project.runpytest("--int8-model", "digits_cnn.onnx", *DATA_ARGS)

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            f"int8gate: against baseline {project.path.resolve()}/ci/base.json (* UTC):",
            "  digits_cnn.onnx  top1_drop 0.0000 -> 0.0000 (0 same); * cosine 1.5000 -> * (-* REGRESSED)",
        ]
    )
