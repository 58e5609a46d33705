"""Tests of streaming statistics, calibrators, the calibration table and TensorRT's cache format."""

from __future__ import annotations

import json
import math
import random
import struct
import threading
import time
import tracemalloc
import weakref
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate import __version__
from pytest_int8gate import calibrate as calibrate_module
from pytest_int8gate.backends.onnxruntime import OrtRunner
from pytest_int8gate.calibrate import (
    CALIBRATORS,
    HIST_BINS,
    MAX_PASS_WORKERS,
    SCRATCH_VALUES,
    WORKER_STATISTICS_BYTES,
    CalibrationTable,
    CalibratorSettings,
    TensorStatistics,
    TrtCalibrationCache,
    _entropy_divergences,
    calibrate,
    collect_statistics,
    compute_amax,
    entropy_amax,
    in_flight_steps,
    mse_amax,
    pass_workers,
    percentile_amax,
    read_trt_cache,
    skip_reason,
    trt_version_number,
)
from pytest_int8gate.errors import CalibrationError, DataError


def stats_of(*batches: np.ndarray) -> TensorStatistics:
    stats = TensorStatistics()
    for batch in batches:
        stats.update(batch)
    return stats


def snapshot(stats: TensorStatistics) -> tuple[object, ...]:
    counts, width = stats.histogram()
    return (
        counts.tolist(),
        width,
        stats.absmax,
        stats.min_value,
        stats.max_value,
        stats.count,
        stats.nonfinite,
    )


def split(values: np.ndarray, rng: random.Random, pieces: int) -> list[np.ndarray]:
    cuts = sorted(rng.randrange(0, len(values) + 1) for _ in range(pieces - 1))
    return [part for part in np.split(values, cuts)]


# ---- streaming statistics -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=400),
    seed=st.integers(0, 2**32 - 1),
    pieces=st.integers(1, 12),
)
def test_histogram_identical_whatever_batch_order_and_size(
    values: list[float], seed: int, pieces: int
) -> None:
    array = np.array(values, dtype=np.float32)
    reference = stats_of(array)
    rng = random.Random(seed)
    shuffled = array.copy()
    rng.shuffle(shuffled)
    batches = split(shuffled, rng, pieces)
    assert snapshot(stats_of(*batches)) == snapshot(reference)
    merged = TensorStatistics()
    for batch in reversed(batches):
        merged.merge(stats_of(batch))
    assert snapshot(merged) == snapshot(reference)


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000, 50_000])
def test_histogram_invariance_with_growing_range(batch_size: int) -> None:
    rng = np.random.default_rng(1)
    # Magnitudes over 30 octaves, ascending, so the grid grows (and bins merge) many times.
    values = (rng.standard_normal(50_000) * np.exp2(np.linspace(-15, 15, 50_000))).astype(np.float32)
    reference = stats_of(values[::-1].copy())
    batches = [values[i : i + batch_size] for i in range(0, len(values), batch_size)]
    streamed = stats_of(*batches)
    assert snapshot(streamed) == snapshot(reference)
    counts, width = streamed.histogram()
    assert counts.sum() == values.size
    assert streamed.absmax == float(np.abs(values).max())
    # The grid is [0, 2**e) with the smallest e above absmax.
    assert width * HIST_BINS / 2 <= streamed.absmax < width * HIST_BINS
    # Same counts as binning everything at once on the final grid.
    expected = np.bincount((np.abs(values.astype(np.float64)) / width).astype(np.int64), minlength=HIST_BINS)
    assert counts.tolist() == expected.tolist()


def test_memory_does_not_grow_with_updates() -> None:
    """The statistics keep a fixed-size histogram, not the values: 400 more batches (400 KB of float32) add
    nothing that stays allocated."""
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal(257).astype(np.float32) * (1 + step) for step in range(410)]
    stats = TensorStatistics()
    tracemalloc.start()
    try:
        for batch in batches[:10]:
            stats.update(batch)
        settled, _ = tracemalloc.get_traced_memory()
        for batch in batches[10:]:
            stats.update(batch)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - settled < 16_384, f"{after - settled} bytes retained after 400 updates"
    counts, _ = stats.histogram()
    assert counts.shape == (HIST_BINS,)
    assert counts.sum() == stats.count == 410 * 257


def test_float64_float16_and_tiny_values_are_binned_exactly() -> None:
    tiny = np.array([1e-45, -3e-45, 7e-40, 0.0], dtype=np.float32)  # subnormals: grid factor > float32
    assert snapshot(stats_of(tiny)) == snapshot(stats_of(tiny[::-1].copy(), np.zeros(0, np.float32)))
    assert stats_of(tiny).absmax == float(np.float32(7e-40))
    halves = np.array([0.5, -2.0, 1.25], dtype=np.float16)
    assert snapshot(stats_of(halves)) == snapshot(stats_of(halves.astype(np.float64)))


def test_max_on_known_data() -> None:
    stats = stats_of(np.array([0.5, -3.25, 2.0], np.float32), np.array([[1.0, -0.125]], np.float32))
    assert stats.absmax == 3.25
    assert (stats.min_value, stats.max_value, stats.count) == (-3.25, 2.0, 5)
    assert compute_amax(stats, "max") == 3.25


def test_all_zero_tensor_has_zero_amax_for_every_calibrator() -> None:
    stats = stats_of(np.zeros((4, 3), np.float32), np.zeros(5, np.float32))
    assert stats.absmax == 0.0 and stats.count == 17
    counts, width = stats.histogram()
    assert counts[0] == 17 and width == 0.0
    assert all(compute_amax(stats, method) == 0.0 for method in CALIBRATORS)
    stats.update(np.array([0.75], np.float32))  # zeros seen before the grid existed stay in bin 0
    assert stats.histogram()[0][0] == 17


def test_nonfinite_values_are_counted_not_histogrammed() -> None:
    stats = stats_of(np.array([1.0, np.nan, -np.inf, -2.0, np.inf], np.float32))
    assert stats.nonfinite == 3 and stats.count == 2 and stats.absmax == 2.0
    assert stats.histogram()[0].sum() == 2


# ---- calibrators --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percentile", "expected"), [(25.0, 4.25 * 0.25), (50.0, 4.5 * 0.25), (90.0, 4.9 * 0.25)]
)
def test_percentile_is_interpolated_inside_its_bin(percentile: float, expected: float) -> None:
    """100 values in bin 4 of width 0.25 ([1.0, 1.25)): the p-th percentile is p % of the way into it."""
    counts = np.zeros(16, np.int64)
    counts[4] = 100
    assert percentile_amax(counts, 0.25, 10.0, percentile) == pytest.approx(expected, abs=1e-12)


def test_mse_ties_go_to_the_larger_threshold() -> None:
    """Every value at 0.25 with amax 1.0: thresholds 127/256 (0.25 is level 64) and 254/256 (level 32) both
    represent it exactly, an error of exactly 0; the larger threshold is chosen (less clipping)."""
    counts = np.array([7, 0], np.int64)  # bin 0 of width 0.5: centre 0.25
    assert mse_amax(counts, 0.5, 1.0) == 254 / 256


def test_entropy_ties_go_to_the_largest_threshold() -> None:
    """Two magnitudes, each alone in its bin, twice each: clipping everything into the lower bin and
    keeping both bins both give P == Q, a divergence of exactly 0. NVIDIA's tools take the largest such
    threshold, so nothing is clipped (the smallest would clip 0.97 to 0.40)."""
    stats = stats_of(np.array([0.4, 0.4, 0.97, 0.97], np.float32))
    assert compute_amax(stats, "entropy", CalibratorSettings()) == stats.absmax


@pytest.mark.parametrize("percentile", [50.0, 90.0, 99.0, 99.99])
def test_percentile_of_uniform_distribution(percentile: float) -> None:
    rng = np.random.default_rng(3)
    stats = stats_of(rng.uniform(-3.0, 3.0, 400_000).astype(np.float32))
    amax = compute_amax(stats, "percentile", CalibratorSettings(percentile=percentile))
    _, width = stats.histogram()
    assert abs(amax - percentile / 100 * 3.0) <= 2 * width + 0.01 * (1 - percentile / 100) * 3.0 + 3e-3


def test_percentile_lands_in_the_bin_that_reaches_the_target_not_the_next_one() -> None:
    """99 values in [0, 1] and one at 100: the 99th percentile is the 99th value, about 1.0. The bin whose
    cumulative count first reaches 99 % holds it; the next occupied bin holds the outlier at 100."""
    stats = stats_of(np.append(np.linspace(0.01, 1.0, 99), 100.0).astype(np.float32))
    _, width = stats.histogram()
    amax = compute_amax(stats, "percentile", CalibratorSettings(percentile=99.0))
    assert 1.0 - width <= amax <= 1.0 + width, (amax, width)


def test_percentile_100_is_absmax() -> None:
    stats = stats_of(np.array([0.1, 0.2, 0.3, 1.7], np.float32))
    assert compute_amax(stats, "percentile", CalibratorSettings(percentile=100)) == pytest.approx(
        float(np.float32(1.7))
    )


def test_entropy_keeps_the_whole_range_of_a_uniform_distribution() -> None:
    rng = np.random.default_rng(4)
    stats = stats_of(rng.uniform(0.0, 3.0, 500_000).astype(np.float32))
    amax = compute_amax(stats, "entropy")
    assert 0.97 * 3.0 <= amax <= stats.absmax


@pytest.mark.parametrize(
    ("distribution", "low_sigmas", "high_sigmas"), [("gaussian", 3.0, 8.0), ("laplacian", 5.0, 16.0)]
)
def test_entropy_clips_outliers(distribution: str, low_sigmas: float, high_sigmas: float) -> None:
    rng = np.random.default_rng(5)
    core = rng.standard_normal(300_000) if distribution == "gaussian" else rng.laplace(0.0, 1.0, 300_000)
    values = np.concatenate([core, [60.0, -60.0, 55.0]]).astype(np.float32)
    stats = stats_of(values)
    amax = compute_amax(stats, "entropy")
    sigma = float(core.std())
    assert amax < stats.absmax / 4
    assert low_sigmas * sigma <= amax <= high_sigmas * sigma


def test_entropy_clips_isolated_huge_outliers_near_the_smallest_candidate() -> None:
    # Outliers at 1000 sigma: every candidate below them ends in an empty bin, which the Q floor allows;
    # the smallest candidates (128 of ~2000 bins, 64 sigma here) all resolve the Gaussian exactly.
    rng = np.random.default_rng(6)
    values = np.concatenate([rng.standard_normal(200_000), [1000.0, -1000.0]]).astype(np.float32)
    stats = stats_of(values)
    _, width = stats.histogram()
    smallest = (128 + 0.5) * 2 * width
    assert smallest <= compute_amax(stats, "entropy") <= 1.5 * smallest < stats.absmax / 10


def test_entropy_ignores_the_relu_zero_spike() -> None:
    rng = np.random.default_rng(7)
    stats = stats_of(np.maximum(rng.standard_normal(400_000), 0.0).astype(np.float32))
    assert 3.5 <= compute_amax(stats, "entropy") <= stats.absmax


def reference_divergence(hist: np.ndarray, i: int) -> float:
    """KL(P||Q) for candidate i, written plainly (see entropy_amax's docstring)."""
    h = hist.astype(np.float64)
    p = h[:i].copy()
    p[i - 1] += h[i:].sum()
    group = (np.arange(i) * 128) // i
    q = np.zeros(i)
    for g in range(128):
        members = group == g
        nonzero = members & (h[:i] > 0)
        if nonzero.any():
            q[nonzero] = h[:i][members].sum() / nonzero.sum()
    p /= p.sum()
    if q.sum() > 0:
        q /= q.sum()
    kept = p > 0
    return float(np.sum(p[kept] * np.log(p[kept] / np.where(q[kept] > 0, q[kept], 1e-10))))


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_kl_matches_plain_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nbins = int(rng.integers(129, 400))
    hist = rng.poisson(rng.uniform(0, 50, nbins) * (rng.random(nbins) < 0.7)).astype(np.float64)
    hist[-1] = max(hist[-1], 1.0)
    hist[rng.integers(128, nbins - 1)] = 0.0  # at least one candidate with outliers over an empty bin
    vectorised = _entropy_divergences(hist, 128)
    reference = np.array([reference_divergence(hist, i) for i in range(128, nbins + 1)])
    np.testing.assert_allclose(vectorised, reference, rtol=1e-9, atol=1e-11)


def test_entropy_amax_picks_the_minimum_divergence_candidate() -> None:
    rng = np.random.default_rng(8)
    counts = np.zeros(HIST_BINS, np.int64)
    counts[:3000] = rng.poisson(np.exp(-np.arange(3000) / 300.0) * 1000)
    counts[2999] = 5
    hist = counts.reshape(-1, 2).sum(axis=1)[:1500].astype(np.float64)  # merged to <= 2048 bins
    hist[0] = hist[1]
    divergence = np.array([reference_divergence(hist, i) for i in range(128, 1501, 50)])
    expected_best = 128 + 50 * int(np.argmin(divergence))
    amax = entropy_amax(counts, 0.01, 30.0)
    # The full search sees every candidate; it must do at least as well as the sampled ones.
    chosen = round(amax / 0.02 - 0.5)
    assert reference_divergence(hist, chosen) <= reference_divergence(hist, expected_best) + 1e-12


def quantization_mse(values: np.ndarray, threshold: float) -> float:
    scale = threshold / 127
    quantized = np.clip(np.rint(values / scale), -127, 127) * scale
    return float(np.mean((values - quantized) ** 2))


@pytest.mark.parametrize("outlier", [None, 50.0])
def test_mse_is_near_the_true_minimum(outlier: float | None) -> None:
    rng = np.random.default_rng(9)
    core = rng.standard_normal(200_000)
    values = np.concatenate([core, [] if outlier is None else [outlier, -outlier, outlier]])
    values = values.astype(np.float32).astype(np.float64)
    stats = stats_of(values.astype(np.float32))
    amax = compute_amax(stats, "mse")
    grid = stats.absmax * np.arange(1, 257) / 256
    best = min(quantization_mse(values, t) for t in grid)
    assert quantization_mse(values, amax) <= 1.05 * best
    assert quantization_mse(values, amax) < quantization_mse(values, stats.absmax)
    if outlier is not None:
        assert amax < 0.9 * stats.absmax


@pytest.mark.parametrize("method", ["entropy", "mse", "percentile"])
def test_calibrators_do_not_depend_on_batch_order(method: str) -> None:
    rng = np.random.default_rng(10)
    values = np.concatenate([rng.laplace(0, 1, 100_000), [40.0]]).astype(np.float32)
    one = compute_amax(stats_of(values), method)
    shuffled = rng.permutation(values)
    batched = compute_amax(stats_of(*np.array_split(shuffled, 37)), method)
    assert one == batched


def test_unknown_method_lists_calibrators() -> None:
    with pytest.raises(CalibrationError, match="max, percentile, entropy, mse"):
        compute_amax(stats_of(np.ones(3, np.float32)), "kl")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"percentile": 0.0},
        {"percentile": 100.5},
        {"percentile": math.nan},
        {"entropy_start_bin": 64},
        {"entropy_bins": 100},
    ],
)
def test_settings_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(CalibrationError):
        CalibratorSettings(**kwargs)  # type: ignore[arg-type]


# ---- calibration table --------------------------------------------------------------------------------


def make_table() -> CalibrationTable:
    return CalibrationTable(
        amax={
            "input": {"max": 2.5, "percentile": 2.25, "entropy": 2.0, "mse": 1.875},
            "conv1:0": {"max": 10.0, "percentile": 6.0, "entropy": 0.1 + 0.2, "mse": 7.123456789},
        },
        skipped={"dead": "all calibration values are zero (amax 0 gives no usable scale)"},
        model_hash="m" * 64,
        data_fingerprint="d" * 64,
        num_samples=128,
        settings=CalibratorSettings(percentile=99.9),
        package_version=__version__,
    )


def test_json_round_trip_is_equal(tmp_path: Path) -> None:
    table = make_table()
    assert CalibrationTable.from_json(table.to_json()) == table
    path = tmp_path / "sub" / "table.json"
    table.save(path)
    assert CalibrationTable.load(path, model_hash="m" * 64, data_fingerprint="d" * 64) == table
    assert [p.name for p in path.parent.iterdir()] == ["table.json"]  # no temporary left behind


def test_amax_for_missing_or_skipped_names_the_tensor() -> None:
    table = make_table()
    assert table.amax_for("input", "entropy") == 2.0
    with pytest.raises(CalibrationError, match="'nothere'"):
        table.amax_for("nothere", "max")
    with pytest.raises(CalibrationError, match=r"'dead'.*zero"):
        table.amax_for("dead", "max")


def test_stale_table_says_what_changed(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    make_table().save(path)
    with pytest.raises(CalibrationError, match=r"table\.json.*model changed"):
        CalibrationTable.load(path, model_hash="x" * 64, data_fingerprint="d" * 64)
    with pytest.raises(CalibrationError, match="data changed") as excinfo:
        CalibrationTable.load(path, model_hash="m" * 64, data_fingerprint="y" * 64)
    assert "model" not in str(excinfo.value).split("stale calibration table:")[1]
    stale = CalibrationTable.load(path, model_hash="x" * 64, data_fingerprint="y" * 64, allow_stale=True)
    assert stale.model_hash == "m" * 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[]", "not a pytest-int8gate calibration table"),
        ("drop:model_hash", "'model_hash'"),
        ("drop:amax", "'amax'"),
        ("bad-amax", "'input'"),
    ],
)
def test_corrupt_table_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    document = json.loads(make_table().to_json())
    if text.startswith("drop:"):
        del document[text[5:]]
        text = json.dumps(document)
    elif text == "bad-amax":
        document["amax"]["input"]["max"] = -1
        text = json.dumps(document)
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(CalibrationError, match=message) as excinfo:
        CalibrationTable.load(path)
    assert "broken.json" in str(excinfo.value)


# ---- TensorRT cache -----------------------------------------------------------------------------------

TRT_TEXT = (
    "TRT-8601-EntropyCalibration2\n"
    "input: 3caa54fc\n"
    "(Unnamed Layer* 64) [Shuffle]_output: 0\n"
    "conv1:0: 3d5c11b5\n"
    "405: 3c209a08\n"
)


def test_trt_cache_text_round_trip_is_byte_exact() -> None:
    cache = read_trt_cache(TRT_TEXT)
    assert list(cache.scales) == ["input", "(Unnamed Layer* 64) [Shuffle]_output", "conv1:0", "405"]
    assert cache.scales["input"] == struct.unpack(">f", bytes.fromhex("3caa54fc"))[0]
    assert cache.to_text() == TRT_TEXT
    no_newline = TRT_TEXT.rstrip("\n")
    assert read_trt_cache(no_newline).to_text() == no_newline


def test_table_to_trt_cache_and_back() -> None:
    table = make_table()
    text = table.to_trt_cache("entropy", trt_version="10.13")
    assert text.splitlines()[0] == "TRT-101300-EntropyCalibration2"
    assert "dead" not in text
    lines = text.splitlines()[1:]
    assert all(len(line.rpartition(": ")[2]) == 8 for line in lines)
    amax = read_trt_cache(text).amax()
    assert set(amax) == {"input", "conv1:0"}
    for tensor, value in amax.items():
        assert value == pytest.approx(table.amax_for(tensor, "entropy"), rel=2**-23)
    assert read_trt_cache(text).to_text() == text
    assert TrtCalibrationCache(header="TRT-101300-EntropyCalibration2", scales={"a": 1.0}).to_text() == (
        "TRT-101300-EntropyCalibration2\na: 3f800000\n"
    )


@pytest.mark.parametrize(("version", "number"), [("10.13", 101300), ("10.14.1", 101401), ("8.6.1", 8601)])
def test_trt_version_number(version: str, number: int) -> None:
    assert trt_version_number(version) == number


@pytest.mark.parametrize(
    "text",
    [
        "",
        "TRT-EntropyCalibration2\n",
        "TRT-8601-EntropyCalibration2\ninput 3caa54fc\n",
        "TRT-8601-EntropyCalibration2\ninput: xyz\n",
        "TRT-8601-EntropyCalibration2\na: 1\na: 2\n",
        "TRT-8601-EntropyCalibration2\na: 7fc00000\n",
    ],
)
def test_bad_trt_cache_raises(text: str) -> None:
    with pytest.raises(CalibrationError, match=r"calib.cache"):
        read_trt_cache(text, source="calib.cache")


# ---- the FP32 pass ------------------------------------------------------------------------------------


def mlp_model(w1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["hidden"], name="relu"),
            helper.make_node("MatMul", ["hidden", "w2"], ["y"], name="fc2"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def mlp() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    w1 = rng.standard_normal((6, 16)).astype(np.float32)
    w2 = rng.standard_normal((16, 3)).astype(np.float32)
    return mlp_model(w1, w2), w1, w2


def test_collect_statistics_exposes_intermediate_tensors(
    mlp: tuple[onnx.ModelProto, np.ndarray, np.ndarray],
) -> None:
    model, w1, w2 = mlp
    rng = np.random.default_rng(12)
    batches = [{"x": rng.standard_normal((n, 6)).astype(np.float32)} for n in (5, 8, 3)]
    result = collect_statistics(model, ["x", "hidden", "y", "hidden"], iter(batches))
    assert list(result.tensors) == ["x", "hidden", "y"]
    assert result.num_samples == 16
    assert result.fp32_pass_s > 0 and result.statistics_s > 0
    x = np.concatenate([b["x"] for b in batches])
    hidden = np.maximum(x @ w1, 0)
    assert result.tensors["x"].absmax == float(np.abs(x).max())
    assert result.tensors["hidden"].absmax == pytest.approx(float(hidden.max()), rel=1e-5)
    assert result.tensors["hidden"].min_value == 0.0
    assert result.tensors["y"].absmax == pytest.approx(float(np.abs(hidden @ w2).max()), rel=1e-5)
    assert result.tensors["hidden"].count == hidden.size


def test_collect_statistics_rejects_unknown_tensors_and_weights(
    mlp: tuple[onnx.ModelProto, np.ndarray, np.ndarray],
) -> None:
    model, _, _ = mlp
    batches = [{"x": np.ones((2, 6), np.float32)}]
    with pytest.raises(CalibrationError, match="'nowhere'"):
        collect_statistics(model, ["hidden", "nowhere"], batches)
    with pytest.raises(CalibrationError, match=r"'w1'.*weight"):
        collect_statistics(model, ["w1"], batches)


def test_steps_and_workers_do_not_change_the_statistics(
    mlp: tuple[onnx.ModelProto, np.ndarray, np.ndarray],
) -> None:
    """The pass splits batches into steps by activation bytes and spreads the steps over workers with
    statistics of their own: neither changes a single count (a step budget of one byte forces one sample
    per step)."""
    model, _, _ = mlp
    rng = np.random.default_rng(21)
    batches = [
        {"x": (rng.standard_normal((n, 6)) * (1 + i)).astype(np.float32)} for i, n in enumerate((7, 1, 32))
    ]
    cases = ((1, 1), (1, 2), (1, 3), (10**9, 1), (10**9, 2), (200, 2), (200, 4))
    runs = [
        collect_statistics(model, ["x", "hidden", "y"], batches, activation_budget=budget, workers=workers)
        for budget, workers in cases
    ]
    assert [run.step_samples for run in runs] == [1, 1, 1, 32, 32, 2, 2]
    assert [run.workers for run in runs] == [workers for _, workers in cases]
    for run in runs[1:]:
        assert run.num_samples == 40
        for name in ("x", "hidden", "y"):
            assert snapshot(run.tensors[name]) == snapshot(runs[0].tensors[name])


def peak_steps_alive(model: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch, workers: int) -> int:
    """The most steps whose activations ONNX Runtime returned and the pass still held, at once, over 64
    samples in steps of one (each step is held a little longer than it takes)."""
    alive = peak = 0
    lock = threading.Lock()
    run = OrtRunner.run

    def released() -> None:
        nonlocal alive
        with lock:
            alive -= 1

    def counted_run(self: OrtRunner, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        nonlocal alive, peak
        outputs = run(self, feeds)
        with lock:
            alive += 1
            peak = max(peak, alive)
        weakref.finalize(outputs["hidden"], released)
        time.sleep(0.002)
        return outputs

    monkeypatch.setattr(OrtRunner, "run", counted_run)
    rng = np.random.default_rng(23)
    batches = [{"x": rng.standard_normal((8, 6)).astype(np.float32)} for _ in range(8)]
    result = collect_statistics(model, ["x", "hidden"], batches, activation_budget=1, workers=workers)
    assert result.num_samples == 64 and result.workers == workers
    return peak


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_at_most_one_step_per_worker_holds_its_activations(
    mlp: tuple[onnx.ModelProto, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Memory of the side-by-side pass: the activations ONNX Runtime returns for a step are freed before
    the step after the next ``workers`` ones runs."""
    assert 1 <= peak_steps_alive(mlp[0], monkeypatch, workers) <= workers


def test_the_pass_runs_one_single_threaded_inference_per_cpu_within_memory() -> None:
    assert pass_workers(21, threads=2) == (2, 1)
    assert pass_workers(21, threads=16) == (MAX_PASS_WORKERS, 16 // MAX_PASS_WORKERS)
    assert pass_workers(21, threads=1) == (1, 1)
    # each worker keeps its own histograms: too many tensors for that, and one inference runs on all threads
    too_many = WORKER_STATISTICS_BYTES // (HIST_BINS * 8)
    assert pass_workers(too_many, threads=8) == (1, 8)
    assert pass_workers(too_many // 2, threads=8) == (2, 4)


def test_a_model_with_a_fixed_batch_is_fed_its_batches_whole() -> None:
    w = np.random.default_rng(22).standard_normal((6, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(23).standard_normal((3, 4, 6)).astype(np.float32)
    result = collect_statistics(model, ["y"], [{"x": batch} for batch in x], activation_budget=1)
    assert result.step_samples == 4 and result.num_samples == 12
    assert result.tensors["y"].count == 48
    assert result.tensors["y"].absmax == pytest.approx(float(np.abs(x @ w).max()), rel=1e-6)


def test_values_beyond_one_scratch_block_are_all_counted() -> None:
    values = np.random.default_rng(24).standard_normal(2 * SCRATCH_VALUES + 17).astype(np.float32)
    stats = stats_of(values)
    counts, width = stats.histogram()
    expected = np.bincount((np.abs(values.astype(np.float64)) / width).astype(np.int64), minlength=HIST_BINS)
    assert counts.tolist() == expected.tolist()


def test_non_negative_values_with_runs_of_zeros_are_counted_exactly() -> None:
    # A ReLU's output takes the non-negative path (interleaved histograms); a partial last block too.
    rng = np.random.default_rng(25)
    values = np.maximum(rng.standard_normal(3 * SCRATCH_VALUES + 5), 0).astype(np.float32)
    values[: SCRATCH_VALUES // 2] = 0.0
    values[-3:] = -0.0
    stats = stats_of(values[: SCRATCH_VALUES + 1], values[SCRATCH_VALUES + 1 :])
    counts, width = stats.histogram()
    expected = np.bincount((values.astype(np.float64) / width).astype(np.int64), minlength=HIST_BINS)
    assert counts.tolist() == expected.tolist()
    mixed = values.copy()
    mixed[1::2] *= -1
    assert snapshot(stats_of(mixed[::-1].copy())) == snapshot(stats_of(mixed))
    assert stats_of(mixed).histogram()[0].tolist() == counts.tolist()


def _mse_amax_one_matrix(counts: np.ndarray, width: float, absmax: float) -> float:
    """The MSE search written as one [candidates, bins] matrix: the definition the blocked one must equal."""
    occupied = np.flatnonzero(counts)
    weights = counts[occupied].astype(np.float64)
    centres = np.minimum((occupied + 0.5) * width, absmax)
    thresholds = absmax * np.arange(1, 257) / 256
    scales = thresholds / 127
    levels = np.minimum(np.rint(centres[None, :] / scales[:, None]), 127)
    errors = ((centres[None, :] - levels * scales[:, None]) ** 2) @ weights
    return float(thresholds[len(thresholds) - 1 - int(np.argmin(errors[::-1]))])


@pytest.mark.parametrize("seed", range(6))
def test_blocked_mse_search_equals_the_one_matrix_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    occupied = int(rng.integers(2, HIST_BINS))
    counts = np.zeros(HIST_BINS, np.int64)
    counts[:occupied] = rng.poisson(rng.exponential(300.0, occupied))
    counts[occupied - 1] += 1
    width = 2.0 ** -int(rng.integers(0, 10))
    absmax = (occupied - 0.5) * width
    assert mse_amax(counts, width, absmax) == _mse_amax_one_matrix(counts, width, absmax)


def test_empty_batches_raise_data_error(mlp: tuple[onnx.ModelProto, np.ndarray, np.ndarray]) -> None:
    with pytest.raises(DataError, match="no batches"):
        collect_statistics(mlp[0], ["hidden"], iter([]))


def test_calibrate_builds_a_complete_table(mlp: tuple[onnx.ModelProto, np.ndarray, np.ndarray]) -> None:
    model, _, _ = mlp
    rng = np.random.default_rng(13)
    batches = [{"x": rng.standard_normal((32, 6)).astype(np.float32)} for _ in range(4)]
    table, stats = calibrate(model, ["x", "hidden"], batches, model_hash="m", data_fingerprint="d")
    assert table.num_samples == stats.num_samples == 128
    assert table.package_version == __version__ and not table.skipped
    for tensor in ("x", "hidden"):
        assert set(table.amax[tensor]) == set(CALIBRATORS)
        assert table.amax_for(tensor, "max") == stats.tensors[tensor].absmax
        assert all(0 < value <= stats.tensors[tensor].absmax for value in table.amax[tensor].values())
    assert CalibrationTable.from_json(table.to_json()) == table


def test_nan_inputs_are_counted_and_the_tensor_skipped(
    mlp: tuple[onnx.ModelProto, np.ndarray, np.ndarray],
) -> None:
    model, _, _ = mlp
    x = np.random.default_rng(14).standard_normal((10, 6)).astype(np.float32)
    x[2, 3] = np.nan
    x[7, 0] = np.inf
    table, stats = calibrate(model, ["x", "hidden"], [{"x": x}], model_hash="m", data_fingerprint="d")
    assert stats.tensors["x"].nonfinite == 2
    assert stats.tensors["hidden"].nonfinite > 0
    assert "non-finite" in table.skipped["x"] and "2 non-finite" in table.skipped["x"]
    assert "hidden" in table.skipped and not table.amax
    with pytest.raises(CalibrationError, match=r"'x'.*non-finite"):
        table.amax_for("x", "entropy")
    assert "x" not in table.to_trt_cache()


@pytest.mark.parametrize("workers", [1, 2])
def test_batches_of_no_samples_give_statistics_that_saw_nothing(
    mlp: tuple[onnx.ModelProto, np.ndarray, np.ndarray], workers: int
) -> None:
    empty = [{"x": np.zeros((0, 6), np.float32)}]
    result = collect_statistics(mlp[0], ["x", "hidden"], empty, workers=workers)
    assert result.num_samples == 0
    assert all(stats.count == 0 for stats in result.tensors.values())
    assert skip_reason(result.tensors["hidden"]) == "no values seen in the calibration pass"


def test_steps_in_flight_are_bounded_by_their_bytes() -> None:
    gib = 1 << 30
    assert in_flight_steps(4, 4 << 20) == 4  # small steps: one per worker
    assert in_flight_steps(4, gib // 3) == 3
    assert in_flight_steps(4, 4 * gib) == 2  # a whole fixed batch of gigabytes: two, as the pass always held
    assert in_flight_steps(1, 4 * gib) == 1


def test_large_steps_keep_fewer_in_flight_than_workers(
    mlp: tuple[onnx.ModelProto, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every step over the in-flight bytes, four workers hold at most two steps' activations."""
    monkeypatch.setattr(calibrate_module, "IN_FLIGHT_BYTES", 1)
    assert 1 <= peak_steps_alive(mlp[0], monkeypatch, 4) <= 2


def test_a_table_fingerprinted_the_earlier_way_is_refused_as_such(
    mlp: tuple[onnx.ModelProto, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """Tables of format 1 fingerprinted data with SHA-256: one is refused for its format, never reported as
    a table whose data changed (its own fingerprint cannot match today's)."""
    batches = [{"x": np.random.default_rng(14).standard_normal((8, 6)).astype(np.float32)}]
    table, _ = calibrate(mlp[0], ["x", "hidden"], batches, model_hash="m", data_fingerprint="d")
    document = json.loads(table.to_json())
    assert document["format_version"] == 2
    document["format_version"] = 1
    path = tmp_path / "old.json"
    path.write_text(json.dumps(document))
    with pytest.raises(CalibrationError, match=r"format version 1 is not 2; recalibrate"):
        CalibrationTable.load(path, model_hash="m", data_fingerprint="another")
