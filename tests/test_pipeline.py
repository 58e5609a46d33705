"""End-to-end tests of pytest_int8gate.pipeline on the example project's real model and data."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from example_files import CALIB, DIGITS, EVAL, LABELS, OUTLIER

from pytest_int8gate.backends.onnxruntime import device_text
from pytest_int8gate.cache import write_checksum
from pytest_int8gate.errors import CalibrationError, DataError
from pytest_int8gate.gate import Budget, GateVerdict
from pytest_int8gate.pipeline import GatePipeline, GateSpec

TOP1_BUDGET = Budget.from_mapping({"top1_drop": 0.01})


def spec(cache_dir: Path | None, **changes: object) -> GateSpec:
    base = GateSpec(
        model=DIGITS,
        calib_data=CALIB,
        eval_data=EVAL,
        labels=str(LABELS),
        budget=TOP1_BUDGET,
        calibrator="entropy",
        cache_dir=cache_dir,
        bisect=False,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def numbers(verdict: GateVerdict) -> tuple[object, ...]:
    return (verdict.fp32, verdict.int8, verdict.results, verdict.quantized_layers, verdict.eval_samples)


def test_entropy_calibration_passes_a_one_point_top1_budget(tmp_path: Path) -> None:
    verdict = GatePipeline(spec(tmp_path / "cache")).run()

    fp32_top1, int8_top1 = verdict.fp32["top1"], verdict.int8["top1"]
    print(f"digits_cnn entropy: FP32 top-1 {fp32_top1:.3f}, INT8 top-1 {int8_top1:.3f}")
    assert verdict.passed, verdict.results
    assert fp32_top1 == pytest.approx(0.974, abs=0.002)  # the README's measured FP32 accuracy
    assert abs(fp32_top1 - int8_top1) <= 0.01
    assert verdict.int8["cosine"] > 0.99
    assert [(r.name, r.passed) for r in verdict.results] == [("top1_drop", True)]
    assert verdict.calibration_samples == 600
    assert verdict.eval_samples == 500
    assert verdict.output_name == "logits"
    assert verdict.calibrator == "entropy"
    assert verdict.total_layers == 5  # 3 Conv + 2 Gemm
    assert verdict.quantized_layers == 5
    assert verdict.backend["backend"] == "onnxruntime"
    assert verdict.backend["mode"] == "simulated"
    assert f" {device_text()} " in verdict.backend_text  # the CPU and its int8 flags
    assert verdict.evaluations == 1
    assert verdict.cache_hits == ()
    assert verdict.bisection is None


def test_planted_outlier_fails_with_max_calibration(tmp_path: Path) -> None:
    verdict = GatePipeline(spec(tmp_path / "cache", model=OUTLIER, calibrator="max")).run()

    print(f"outlier max: FP32 top-1 {verdict.fp32['top1']:.3f}, INT8 top-1 {verdict.int8['top1']:.3f}")
    assert not verdict.passed
    assert [r.name for r in verdict.failed_metrics] == ["top1_drop"]
    assert verdict.fp32["top1"] == pytest.approx(0.974, abs=0.002)  # the outlier keeps the FP32 function
    assert verdict.int8["top1"] < 0.5
    (result,) = verdict.results
    assert result.observed > 0.4


def test_second_run_reuses_the_cache_and_gives_identical_numbers(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = GatePipeline(spec(cache)).run()
    second_pipeline = GatePipeline(spec(cache))
    second = second_pipeline.run()

    assert first.cache_hits == ()
    assert second.cache_hits == ("calibration table", "FP32 outputs", "INT8 outputs", "diagnostics")
    assert numbers(second) == numbers(first)
    assert second.diagnostics == first.diagnostics
    assert second.backend == first.backend
    assert second_pipeline.quantized_model_path is not None
    assert second_pipeline.quantized_model_path.is_file()
    assert len(list((cache / "calibration").glob("*.json"))) == 1


def test_a_changed_calibrator_reuses_the_table_but_not_the_qdq_model(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    GatePipeline(spec(cache)).run()
    other = GatePipeline(spec(cache, calibrator="max")).run()
    assert other.cache_hits == ("calibration table", "FP32 outputs")
    assert len(list((cache / "qdq").glob("*.onnx"))) == 2


def test_a_changed_data_file_invalidates_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    calib = tmp_path / "calib.npz"
    shutil.copyfile(CALIB, calib)
    first = GatePipeline(spec(cache, calib_data=calib)).run()
    assert GatePipeline(spec(cache, calib_data=calib)).run().cache_hits != ()

    with np.load(calib) as archive:
        images = archive["input"]
    np.savez(calib, input=images[::-1][:400].copy())  # other samples, same file name
    changed = GatePipeline(spec(cache, calib_data=calib)).run()

    assert "calibration table" not in changed.cache_hits
    assert changed.calibration_samples == 400
    assert first.calibration_samples == 600
    assert len(list((cache / "calibration").glob("*.json"))) == 2


def test_a_changed_model_invalidates_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    GatePipeline(spec(cache)).run()
    outlier = GatePipeline(spec(cache, model=OUTLIER)).run()
    assert outlier.cache_hits == ()


def test_in_memory_arrays_give_the_file_results(tmp_path: Path) -> None:
    with np.load(CALIB) as calib, np.load(EVAL) as evaluation:
        calib_arrays = {"input": calib["input"]}
        eval_arrays = {"input": evaluation["input"]}
    labels = np.load(LABELS)

    from_files = GatePipeline(spec(None)).run()
    in_memory = GatePipeline(spec(None, calib_data=calib_arrays, eval_data=eval_arrays, labels=labels)).run()

    assert in_memory.passed
    assert numbers(in_memory) == numbers(from_files)
    assert in_memory.cache_hits == ()


def test_in_memory_arrays_share_the_cache_with_the_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    GatePipeline(spec(cache)).run()
    with np.load(CALIB) as calib:
        arrays = {"input": calib["input"]}
    assert "calibration table" in GatePipeline(spec(cache, calib_data=arrays)).run().cache_hits


def test_without_eval_data_the_calibration_data_is_evaluated_and_noted() -> None:
    pipeline = GatePipeline(spec(None, eval_data=None, labels=None, budget=Budget()))
    verdict = pipeline.run()
    assert verdict.eval_samples == 600
    assert "evaluation data = calibration data (no held-out set given)" in verdict.notes
    assert not verdict.budget  # none configured: the defaults of each output's kind judged it
    assert [r.name for r in verdict.results] == ["top1_agreement", "cosine"]
    assert "top1_agreement >= 0.95, cosine >= 0.98 (class scores" in verdict.default_budget
    assert verdict.passed


def test_the_same_content_given_as_evaluation_data_is_not_held_out() -> None:
    verdict = GatePipeline(spec(None, eval_data=CALIB, labels=None, budget=Budget())).run()
    assert "evaluation data = calibration data (the same content was given for both)" in verdict.notes


def test_data_that_does_not_match_the_model_fails_closed() -> None:
    with np.load(CALIB) as calib:
        wrong_name = {"image": calib["input"]}
    with pytest.raises(DataError, match=r"unknown name\(s\) \['image'\].*\['input'\]"):
        GatePipeline(spec(None, calib_data=wrong_name)).run()
    with pytest.raises(DataError, match="499 labels for 500 evaluation samples"):
        GatePipeline(spec(None, labels=np.load(LABELS)[:499])).run()


def test_a_corrupted_cached_table_is_an_error_not_a_silent_pass(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    GatePipeline(spec(cache)).run()
    (table,) = (cache / "calibration").glob("*.json")
    table.write_text("{ not json")
    write_checksum(table)  # vouched for by its checksum, so not rebuilt (test_cache_integrity.py rebuilds)
    with pytest.raises(CalibrationError, match=rf"{table.name}: not a calibration table"):
        GatePipeline(spec(cache)).run()


def test_progress_reports_each_stage(tmp_path: Path) -> None:
    stages: list[str] = []
    GatePipeline(spec(tmp_path / "cache"), progress=lambda stage, _message: stages.append(stage)).run()
    assert {"calibrate", "build", "evaluate"} <= set(stages)


def test_the_calibration_table_is_the_same_whatever_the_inferences_side_by_side() -> None:
    """threads 1: one inference; 3 and 4: the pass's steps spread over as many, each with its own histograms.
    The gate's table (every calibrator's amax, fingerprint, sample count) is the same document."""
    documents = []
    for threads in (1, 3, 4):
        with GatePipeline(spec(None, threads=threads)) as pipeline:
            documents.append(pipeline.table.to_json())
    assert documents[0] == documents[1] == documents[2]
