"""Stage timings (timings.py): nested stages never count twice, every verdict carries them, the JSON report
holds them and ``-v`` prints one line per gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from example_files import CALIB, DATA_ARGS, DIGITS, EVAL, LABELS

from pytest_int8gate import timings
from pytest_int8gate.gate import Budget
from pytest_int8gate.pipeline import GatePipeline, GateSpec
from pytest_int8gate.report.text import timings_text
from pytest_int8gate.timings import StageTimer


def test_a_nested_stage_pauses_the_outer_one(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 1.0, 3.0, 3.5, 10.0, 10.0])
    monkeypatch.setattr(timings.time, "perf_counter", lambda: next(clock))
    timer = StageTimer()
    with timer.stage("quantize"):  # 0.0
        with timer.stage("calibrate"):  # 1.0 .. 3.0
            assert timer.current == "calibrate"
        with timer.stage("quantize"):  # 3.5 .. 10.0: re-entered, adds up
            pass
    assert timer.seconds == {"quantize": 1.0 + 0.5 + 6.5, "calibrate": 2.0}
    assert list(timer.as_dict()) == ["calibrate_s", "quantize_s"]  # in the order of the stages


def test_timings_text_names_each_stage() -> None:
    assert timings_text({"load_s": 0.214, "fp32_eval_s": 1.5}) == "load 0.21 s, fp32 eval 1.50 s"


def spec(cache_dir: Path | None) -> GateSpec:
    return GateSpec(
        model=DIGITS,
        calib_data=CALIB,
        eval_data=EVAL,
        labels=str(LABELS),
        budget=Budget.from_mapping({"top1_drop": 0.01}),
        cache_dir=cache_dir,
        bisect=False,
    )


def test_every_stage_of_a_gate_is_timed_and_they_add_up_to_its_duration(tmp_path: Path) -> None:
    cold = GatePipeline(spec(tmp_path / "cache")).run()
    stages = ["load", "calibrate", "quantize", "fp32_eval", "int8_eval", "compare", "diagnostics"]
    assert list(cold.timings) == [f"{stage}_s" for stage in stages]
    assert all(seconds > 0 for seconds in cold.timings.values())
    assert sum(cold.timings.values()) <= cold.duration_s + 1e-3

    warm = GatePipeline(spec(tmp_path / "cache")).run()  # every output from the cache: no engine ran
    assert "fp32_eval_s" not in warm.timings and "int8_eval_s" not in warm.timings
    assert sum(warm.timings.values()) <= warm.duration_s + 1e-3


def test_the_json_report_holds_the_timings_and_verbose_prints_them(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--int8-model", "digits_cnn.onnx", *DATA_ARGS, "--int8-report-json", "r.json", "-v"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["int8gate timings digits_cnn.onnx: load * s, calibrate * s, quantize * s, fp32 eval * s, *s in all)"]
    )
    (record,) = json.loads((project.path / "r.json").read_text())["gates"]
    assert {"load_s", "calibrate_s", "fp32_eval_s", "int8_eval_s", "diagnostics_s"} <= set(record["timings"])

    quiet = project.runpytest("--int8-model", "digits_cnn.onnx", *DATA_ARGS, "-p", "no:cacheprovider")
    quiet.assert_outcomes(passed=1)
    assert "int8gate timings" not in quiet.stdout.str()
