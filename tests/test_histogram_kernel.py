"""The calibration histogram's C kernel (pytest_int8gate/_histogram.c) against the numpy path it must equal,
and its guards against a caller that passes what it must not."""

from __future__ import annotations

import math
import shutil
import sysconfig

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pytest_int8gate import calibrate
from pytest_int8gate.calibrate import HIST_BINS, HistogramScratch, TensorStatistics

kernel = calibrate._kernel
needs_kernel = pytest.mark.skipif(kernel is None, reason="the C kernel is not built on this machine")


def counts_of(values: np.ndarray, *, compiled: bool, chunks: int = 1) -> tuple[list[int], int | None, float]:
    stats = TensorStatistics()
    scratch = HistogramScratch(compiled=compiled)
    for part in np.array_split(values, chunks):
        stats.update(part, scratch)
    counts, width = stats.histogram()
    return counts.tolist(), stats.exponent, width


def test_the_kernel_is_built_wherever_a_c_compiler_is() -> None:
    """The build (setup.py) may skip the kernel only for want of a compiler: a build that silently failed
    would leave every test below skipped and calibration statistics twice as slow."""
    compiler = str(sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) on this machine: the numpy path runs")
    assert kernel is not None, "a C compiler is here but pytest_int8gate._histogram was not built"
    assert calibrate.HISTOGRAM_KERNEL == "compiled"


@needs_kernel
@settings(max_examples=60, deadline=None)
@given(
    values=hnp.arrays(
        np.float32,
        st.integers(0, 20_000),
        elements=st.floats(-1e6, 1e6, width=32, allow_nan=False, allow_infinity=False),
    ),
    relu=st.booleans(),
    chunks=st.integers(1, 4),
)
def test_compiled_and_numpy_binning_give_the_same_counts(values: np.ndarray, relu: bool, chunks: int) -> None:
    if relu:
        values = np.maximum(values, 0)
    assert counts_of(values, compiled=True, chunks=chunks) == counts_of(values, compiled=False, chunks=chunks)


@needs_kernel
@pytest.mark.parametrize("scale", [2.0**-140, 1e-30, 1e-3, 1.0, 3.0, 2.0**100])
def test_compiled_binning_equals_the_definition_at_every_scale(scale: float) -> None:
    rng = np.random.default_rng(7)
    values = (rng.standard_normal(70_001) * scale).astype(np.float32)
    values[:5000] = 0.0  # a run of zeros (a ReLU's), longer than a lane block
    values[5000:5010] = np.float32(scale)  # values on bin edges
    counts, exponent, width = counts_of(values, compiled=True, chunks=3)
    assert exponent is not None
    expected = np.bincount(
        np.floor(np.abs(values.astype(np.float64)) / width).astype(np.int64), minlength=HIST_BINS
    )
    assert counts == expected.tolist()
    assert counts == counts_of(values, compiled=False, chunks=3)[0]


@needs_kernel
def test_the_kernel_refuses_values_off_its_grid_and_writes_nothing_out_of_bounds() -> None:
    assert kernel is not None
    counts = np.zeros(HIST_BINS, np.int64)
    lanes = np.zeros(kernel.LANES * HIST_BINS, np.uint32)
    values = np.array([1.0, 2.0, np.nan, 1e9, -3.0] * 2000, np.float32)
    with pytest.raises(ValueError, match=r"4000 value\(s\) outside the histogram's grid"):
        kernel.add_counts(values, counts, lanes, 1.0, 8)
    # NaN and 1e9 are off the grid; the others (|-3| included) were counted, and the lanes left zero
    assert counts[1] == counts[2] == counts[3] == 2000 and counts.sum() == 6000
    assert not lanes.any()


@needs_kernel
@pytest.mark.parametrize(
    ("values", "counts", "lanes", "factor", "reach", "message"),
    [
        (np.ones(4, np.float64), np.zeros(8, np.int64), np.zeros(32, np.uint32), 1.0, 8, "items of 4 bytes"),
        (np.ones(4, np.int32), np.zeros(8, np.int64), np.zeros(32, np.uint32), 1.0, 8, "float32"),
        (np.ones(4, np.float32), np.zeros(8, np.float64), np.zeros(32, np.uint32), 1.0, 8, "int64"),
        (np.ones(4, np.float32), np.zeros(8, np.int64), np.zeros(31, np.uint32), 1.0, 8, "LANES"),
        (np.ones(4, np.float32), np.zeros(8, np.int64), np.zeros(32, np.uint32), 1.0, 9, "reach"),
        (np.ones(4, np.float32), np.zeros(8, np.int64), np.zeros(32, np.uint32), 0.1, 8, "factor"),
        (np.ones(4, np.float32), np.zeros(8, np.int64), np.zeros(32, np.uint32), -1.0, 8, "factor"),
        (np.ones(8, np.float32)[::2], np.zeros(8, np.int64), np.zeros(32, np.uint32), 1.0, 8, "contiguous"),
    ],
)
def test_the_kernel_checks_its_arguments(
    values: np.ndarray, counts: np.ndarray, lanes: np.ndarray, factor: float, reach: int, message: str
) -> None:
    assert kernel is not None and kernel.LANES == 4
    with pytest.raises((ValueError, BufferError), match=message):
        kernel.add_counts(values, counts, lanes, factor, reach)
    assert not counts.any()


def test_the_numpy_path_runs_where_the_kernel_is_not_built() -> None:
    values = np.linspace(-3, 3, 10_001, dtype=np.float32)
    counts, _, width = counts_of(values, compiled=False)
    expected = np.bincount(
        np.floor(np.abs(values.astype(np.float64)) / width).astype(np.int64), minlength=HIST_BINS
    )
    assert counts == expected.tolist()
    assert math.isclose(width, 4.0 / HIST_BINS)
