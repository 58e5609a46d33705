"""Stored evaluation outputs (outputs.py): a rerun that changes only the budget builds no engine and gives the
same numbers, for every output of a multi-output model too; a damaged or stale entry is computed again; the
search's FP32 reference cut from stored outputs is bit for bit the one computed on the subset."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import false_pass_zoo as zoo
import numpy as np
from example_files import CALIB, DIGITS, EVAL, LABELS, OUTLIER

from pytest_int8gate.backends.onnxruntime import OrtRunner
from pytest_int8gate.cache import ArtifactCache, write_checksum
from pytest_int8gate.data import Dataset
from pytest_int8gate.evaluate import ReferenceOutputs
from pytest_int8gate.gate import Budget
from pytest_int8gate.graph import load_model
from pytest_int8gate.outputs import OutputStore, StoredOutputs, reference_from_stored
from pytest_int8gate.pipeline import GatePipeline, GateSpec


def spec(cache_dir: Path | None, **changes: object) -> GateSpec:
    base = GateSpec(
        model=DIGITS,
        calib_data=CALIB,
        eval_data=EVAL,
        labels=str(LABELS),
        budget=Budget.from_mapping({"top1_drop": 0.01}),
        cache_dir=cache_dir,
        bisect=False,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def built_engines(pipeline: GatePipeline) -> set[str]:
    return {name for name in ("fp32_runner", "default_int8_runner") if name in pipeline.__dict__}


def test_a_rerun_with_only_another_budget_builds_no_engine(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first_pipeline = GatePipeline(spec(cache))
    first = first_pipeline.run()
    assert built_engines(first_pipeline) == {"fp32_runner", "default_int8_runner"}

    strict = Budget.from_mapping({"top1_drop": 0.01, "sqnr_db": 45.0})  # measured: 40.4 dB
    second_pipeline = GatePipeline(spec(cache, budget=strict))
    second = second_pipeline.run()

    assert built_engines(second_pipeline) == set()
    assert second.cache_hits == ("calibration table", "FP32 outputs", "INT8 outputs", "diagnostics")
    assert (second.fp32, second.int8) == (first.fp32, first.int8)
    assert second.backend == first.backend and second.backend_text == first.backend_text
    assert not second.passed and first.passed  # judged against its own budget, from the same outputs
    assert [r.name for r in second.failed_metrics] == ["sqnr_db"]


def test_a_damaged_outputs_entry_is_computed_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = GatePipeline(spec(cache)).run()
    entries = sorted((cache / "outputs").glob("*.bin"))
    assert len(entries) == 2  # FP32 and INT8
    for entry in entries:
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0xFF
        entry.write_bytes(bytes(data))

    pipeline = GatePipeline(spec(cache))
    second = pipeline.run()

    assert "FP32 outputs" not in second.cache_hits and "INT8 outputs" not in second.cache_hits
    assert built_engines(pipeline) == {"fp32_runner", "default_int8_runner"}
    assert (second.fp32, second.int8) == (first.fp32, first.int8)
    assert sum("does not match its checksum" in note for note in second.notes) == 2
    third = GatePipeline(spec(cache)).run()  # rewritten: found again
    assert "INT8 outputs" in third.cache_hits


def test_a_changed_plan_reuses_the_fp32_outputs_only(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    GatePipeline(spec(cache)).run()
    pipeline = GatePipeline(spec(cache, calibrator="max"))
    verdict = pipeline.run()
    uncached = GatePipeline(spec(None, calibrator="max")).run()
    assert verdict.cache_hits == ("calibration table", "FP32 outputs")
    # the diagnostics read the stored FP32 outputs too: the FP32 engine is never built
    assert built_engines(pipeline) == {"default_int8_runner"}
    assert (verdict.fp32, verdict.int8) == (uncached.fp32, uncached.int8)


def digits_outputs(samples: int, cache: Path) -> tuple[OrtRunner, Dataset, StoredOutputs]:
    runner = OrtRunner(load_model(DIGITS).proto, precision="fp32", optimize=True)
    with np.load(EVAL) as archive:
        images = archive["input"][:samples]
    whole = Dataset.from_arrays({"input": images})
    recorder = OutputStore(ArtifactCache(cache)).recorder("k", samples, runner.describe())
    for feeds in whole.batches(32):  # written batch by batch, as an evaluation does
        recorder.add({"logits": runner.run(feeds)["logits"]})
    stored = recorder.finish()
    assert stored is not None
    return runner, whole, stored


def test_the_search_reference_cut_from_stored_outputs_is_the_computed_one(tmp_path: Path) -> None:
    runner, whole, stored = digits_outputs(100, tmp_path)
    for subset, first, sizes in (
        (whole.head(70), 0, [32, 32, 6]),  # the last batch is not one of the whole set's: computed again
        (whole.after(64), 64, [32, 4]),  # the unseen samples: batch-aligned, the first one is cut
        (whole.after(50), 50, [32, 18]),  # not aligned: every batch computed again
    ):
        assert subset is not None
        computed = ReferenceOutputs.compute(runner, subset, batch_size=32, output_name="logits")
        cut = reference_from_stored(
            stored, lambda: runner, subset, first, outputs=("logits",), batch_size=32, labels=None
        )
        assert [ref["logits"].shape[0] for _, ref in cut.batches] == sizes
        for (_, expected), (_, got) in zip(computed.batches, cut.batches, strict=True):
            assert np.array_equal(expected["logits"].view(np.uint32), got["logits"].view(np.uint32))


def test_stored_outputs_round_trip(tmp_path: Path) -> None:
    runner = OrtRunner(load_model(DIGITS).proto, precision="fp32", optimize=True)
    values = {"b": np.arange(12, dtype=np.float32).reshape(3, 4), "a/x": np.ones((3, 2, 2), np.float16)}
    stored = OutputStore(ArtifactCache(tmp_path)).put("k", values, runner.describe())
    assert stored is not None
    again = StoredOutputs.open(stored.path)
    assert again == stored and again.info == runner.describe() and again.outputs == ("b", "a/x")
    for name, array in again.read_all().items():
        assert np.array_equal(array, values[name]) and array.dtype == values[name].dtype
    assert np.array_equal(again.batch(1, 2, precision="FP32")["b"], values["b"][1:3])
    assert again.fits(("b", "a/x"), 3) and not again.fits(("b",), 3) and not again.fits(("b", "a/x"), 4)


def test_outputs_that_change_shape_or_exceed_the_limit_are_not_kept(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    info = OrtRunner(load_model(DIGITS).proto, precision="fp32", optimize=True).describe()
    ragged = OutputStore(cache).recorder("ragged", 5, info)
    ragged.add({"boxes": np.zeros((3, 4), np.float32)})
    ragged.add({"boxes": np.zeros((2, 7), np.float32)})  # a detection output of another size
    assert ragged.finish() is None
    big = OutputStore(cache, limit=100).recorder("big", 5, info)
    big.add({"y": np.zeros((5, 8), np.float32)})
    assert big.finish() is None
    short = OutputStore(cache).recorder("short", 5, info)
    short.add({"y": np.zeros((3, 8), np.float32)})
    assert short.finish() is None  # not every sample seen
    assert not list((tmp_path / "outputs").iterdir())  # no entry, no partial file left


def test_an_intact_entry_holding_other_outputs_is_not_trusted(tmp_path: Path) -> None:
    """An entry whose checksum matches but that holds other outputs (or another sample count) is dropped
    and computed again; a note says so."""
    _, _, stored = digits_outputs(40, tmp_path)
    values = stored.read_all()
    cache = ArtifactCache(tmp_path)
    store = OutputStore(cache)
    assert store.get("k", ("logits",), 40) == stored
    assert store.get("k", ("logits",), 41) is None
    assert not stored.path.exists()
    assert "does not hold the outputs ['logits'] over 41 samples" in cache.notes[0]
    assert store.put("k", values, stored.info) is not None  # written again
    assert store.get("k", ("logits",), 40) == stored


def test_an_entry_with_a_forged_header_is_not_trusted(tmp_path: Path) -> None:
    """A header that claims more data than the file holds (its checksum rewritten to match) is refused."""
    _, _, stored = digits_outputs(40, tmp_path)
    data = bytearray(stored.path.read_bytes())
    data[:] = data.replace(b'"samples": 40', b'"samples": 90')
    stored.path.write_bytes(bytes(data))
    write_checksum(stored.path)
    cache = ArtifactCache(tmp_path)
    assert OutputStore(cache).get("k", ("logits",), 90) is None
    assert "shorter than its header says" in cache.notes[0]


def test_every_output_of_a_two_output_model_is_reused_and_the_search_finds_the_same(tmp_path: Path) -> None:
    model = zoo.save(zoo.two_outputs(broken=True), tmp_path / "two.onnx")
    data = {"calib_data": {"x": zoo.inputs(seed=1)}, "eval_data": {"x": zoo.inputs(seed=2)}}
    two = {"model": model, "labels": None, "budget": Budget.from_mapping({}), "bisect": True, **data}
    cache = tmp_path / "cache"
    first = GatePipeline(spec(cache, **two)).run()
    pipeline = GatePipeline(spec(cache, **two))
    warm = pipeline.run()
    cold = GatePipeline(spec(None, **two)).run()

    assert {"FP32 outputs", "INT8 outputs"} <= set(warm.cache_hits)
    assert "default_int8_runner" not in pipeline.__dict__  # the gate's INT8 outputs came from the cache
    for verdict in (first, warm):
        assert (verdict.fp32, verdict.int8, verdict.outputs) == (cold.fp32, cold.int8, cold.outputs)
        assert [(r.name, r.output, r.passed) for r in verdict.results] == [
            (r.name, r.output, r.passed) for r in cold.results
        ]
    assert not warm.passed and any(r.output == "second" and not r.passed for r in warm.results)
    assert first.bisection is not None and warm.bisection is not None and cold.bisection is not None
    assert replace(warm.bisection, duration_s=0.0) == replace(first.bisection, duration_s=0.0)
    assert warm.bisection.fix is not None and cold.bisection.fix is not None
    assert warm.bisection.fix.results == cold.bisection.fix.results  # the same fix, judged the same
    assert warm.bisection.offenders == cold.bisection.offenders


def test_a_failing_gate_bisects_the_same_with_stored_outputs(tmp_path: Path) -> None:
    failing = {"model": OUTLIER, "calibrator": "max", "bisect": True}
    cache = tmp_path / "cache"
    first = GatePipeline(spec(cache, **failing)).run()
    warm = GatePipeline(spec(cache, **failing)).run()
    cold = GatePipeline(spec(None, **failing)).run()
    assert "FP32 outputs" not in first.cache_hits  # computed by the first run, whatever reads it later
    assert warm.cache_hits.count("FP32 outputs") == 1  # told once, however often the search reads them
    assert warm.bisection is not None and cold.bisection is not None
    assert replace(warm.bisection, duration_s=0.0) == replace(cold.bisection, duration_s=0.0)


def test_writing_and_reading_outputs_holds_one_batch_at_a_time(tmp_path: Path) -> None:
    import tracemalloc

    info = OrtRunner(load_model(DIGITS).proto, precision="fp32", optimize=True).describe()
    batch = np.random.default_rng(0).standard_normal((8, 4096)).astype(np.float32)  # 128 KiB a batch
    tracemalloc.start()
    recorder = OutputStore(ArtifactCache(tmp_path)).recorder("k", 8 * 128, info)
    for _ in range(128):  # 16 MiB in all
        recorder.add({"y": batch})
    stored = recorder.finish()
    assert stored is not None
    for start in range(0, stored.samples, 8):
        assert np.array_equal(stored.batch(start, 8, precision="FP32")["y"], batch)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 << 20, peak  # a batch, and the checksum's 1 MiB read buffer


def test_outputs_of_a_model_with_a_constant_and_a_sample_axis_1_are_reused(tmp_path: Path) -> None:
    """Feeds whose first input is a 0-d constant and whose state holds its samples on axis 1: the stored
    outputs line up sample for sample, and the search on a warm run finds what it finds cold."""
    from recurrent_models import vad_data, vad_model

    vad_model(tmp_path / "vad.onnx", outlier=True)
    vad_data(tmp_path / "calib.npz", 96, seed=1)
    vad_data(tmp_path / "eval.npz", 96, seed=2)
    layout = {
        "model": tmp_path / "vad.onnx",
        "calib_data": str(tmp_path / "calib.npz"),
        "eval_data": str(tmp_path / "eval.npz"),
        "labels": None,
        "budget": Budget.from_mapping({}),
        "constants": {"sr": 16000},
        "sample_axes": {"state": 1},
        "bisect": True,
    }
    cache = tmp_path / "cache"
    cold = GatePipeline(spec(None, **layout)).run()
    GatePipeline(spec(cache, **layout)).run()
    warm = GatePipeline(spec(cache, **layout)).run()
    assert {"FP32 outputs", "INT8 outputs"} <= set(warm.cache_hits)
    for field in ("fp32", "int8", "outputs", "results"):
        assert getattr(warm, field) == getattr(cold, field), field
    assert not warm.passed and warm.bisection is not None and cold.bisection is not None
    assert warm.bisection.offenders == cold.bisection.offenders
