"""The calibration histogram's C kernel (pytest_int8gate/_histogram.c) against the numpy path it must equal,
and its guards against a caller that passes what it must not.

The kernel under test is built here from this checkout's source with the machine's C compiler, as setup.py
builds it: an installation made without a compiler, or one whose built kernel is older than the source,
still has the source tested. Only where no C compiler works do the tests take the installed kernel, or
skip."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pytest_int8gate import calibrate
from pytest_int8gate.calibrate import HIST_BINS, HistogramScratch, TensorStatistics

SOURCE = Path(calibrate.__file__).with_name("_histogram.c")
#: The smallest extension module: whether the machine's C compiler builds one at all.
CANARY = """#include <Python.h>
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "canary", NULL, -1, NULL, NULL, NULL, NULL, NULL};
PyMODINIT_FUNC PyInit_canary(void) { return PyModule_Create(&module); }
"""


def build_extension(name: str, source: Path, out: Path) -> ModuleType:
    """Build and load one C extension module the way setup.py's build does (setuptools' build_ext, the
    compiler it picks, CC included); raises the compiler's error."""
    from setuptools import Distribution, Extension

    extension = Extension(name, sources=[str(source)], extra_compile_args=["-O3"])
    command = Distribution({"ext_modules": [extension]}).get_command_obj("build_ext")
    command.build_lib = str(out)
    command.build_temp = str(out / "temp")
    command.ensure_finalized()
    command.run()
    spec = importlib.util.spec_from_file_location(name, command.get_ext_fullpath(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def source_build(tmp_path_factory: pytest.TempPathFactory) -> ModuleType | Exception | None:
    """The kernel built from this checkout's source; the build's error where a C compiler works and the
    kernel does not build; None where no C compiler works (the canary does not build either)."""
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("kernel")
    canary = out / "canary.c"
    canary.write_text(CANARY)
    try:
        build_extension("canary", canary, out)
    except Exception:
        return None
    try:
        return build_extension("_histogram", SOURCE, out)
    except Exception as exc:
        return exc


@pytest.fixture(scope="module")
def kernel(source_build: ModuleType | Exception | None) -> Iterator[ModuleType]:
    """The kernel the tests below exercise, installed as calibrate's for their duration."""
    module = source_build if isinstance(source_build, ModuleType) else calibrate._kernel
    if module is None:
        pytest.skip("no C compiler works here and the C kernel is not installed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibrate, "_kernel", module)
        yield module


def counts_of(values: np.ndarray, *, compiled: bool, chunks: int = 1) -> tuple[list[int], int | None, float]:
    stats = TensorStatistics()
    scratch = HistogramScratch(compiled=compiled)
    for part in np.array_split(values, chunks):
        stats.update(part, scratch)
    counts, width = stats.histogram()
    return counts.tolist(), stats.exponent, width


def test_the_kernel_builds_wherever_a_c_compiler_works(source_build: ModuleType | Exception | None) -> None:
    """setup.py's build skips the kernel silently (it is optional) when it does not compile: only the want
    of a working compiler may be why, never the kernel's source. Whether an installation has the kernel
    is the installing machine's matter; `int8gate calibrate` says which binning ran."""
    if source_build is None:
        pytest.skip("no C compiler works here (it does not build an empty extension): the numpy path runs")
    assert not isinstance(source_build, Exception), f"the C kernel does not build: {source_build}"
    assert source_build.LANES == 4


@pytest.mark.usefixtures("kernel")
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


@pytest.mark.usefixtures("kernel")
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


FLOAT32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize(
    ("dtype", "absmax"),
    [
        # float32 at both ends of the kernel's factors (2**127 at absmax in [2**-116, 2**-115), then
        # the float64 path), subnormals only, and values up to float32's largest
        *[
            (np.float32, a)
            for a in (
                2.0**-149,
                2.0**-130,
                1.5 * 2.0**-117,
                1.5 * 2.0**-116,
                1.5 * 2.0**-115,
                1.0,
                FLOAT32_MAX,
            )
        ],
        # float16 goes through float32, float64 through the numpy path
        *[(np.float16, a) for a in (2.0**-24, 1.0, 65504.0)],
        *[(np.float64, a) for a in (1e-300, 1.0, 1e300)],
    ],
)
def test_binning_equals_the_definition_at_the_ends_of_each_float_range(dtype: type, absmax: float) -> None:
    values = np.random.default_rng(8).uniform(-absmax, absmax, 20_000)
    values[:4] = [absmax, -absmax, -0.0, 0.0]
    values = values.astype(dtype)
    counts, exponent, width = counts_of(values, compiled=True, chunks=2)
    assert exponent is not None and sum(counts) == values.size
    expected = np.bincount(
        np.floor(np.abs(values.astype(np.float64)) / width).astype(np.int64), minlength=HIST_BINS
    )
    assert counts == expected.tolist()
    assert counts == counts_of(values, compiled=False, chunks=2)[0]


def test_the_kernel_refuses_values_off_its_grid_and_writes_nothing_out_of_bounds(kernel: ModuleType) -> None:
    counts = np.zeros(HIST_BINS, np.int64)
    lanes = np.zeros(kernel.LANES * HIST_BINS, np.uint32)
    values = np.array([1.0, 2.0, np.nan, 1e9, -3.0] * 2000, np.float32)
    with pytest.raises(ValueError, match=r"4000 value\(s\) outside the histogram's grid"):
        kernel.add_counts(values, counts, lanes, 1.0, 8)
    # NaN and 1e9 are off the grid; the others (|-3| included) were counted, and the lanes left zero
    assert counts[1] == counts[2] == counts[3] == 2000 and counts.sum() == 6000
    assert not lanes.any()


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
        # counts and lanes in the other byte order (values in it are refused as not float32 already)
        (np.ones(4, np.float32), np.zeros(8, ">i8"), np.zeros(32, np.uint32), 1.0, 8, "int64 in native"),
        (np.ones(4, np.float32), np.zeros(8, np.int64), np.zeros(32, ">u4"), 1.0, 8, "uint32 in native"),
        (np.ones(4, ">f4"), np.zeros(8, np.int64), np.zeros(32, np.uint32), 1.0, 8, "float32 in native"),
    ],
)
def test_the_kernel_checks_its_arguments(
    kernel: ModuleType,
    values: np.ndarray,
    counts: np.ndarray,
    lanes: np.ndarray,
    factor: float,
    reach: int,
    message: str,
) -> None:
    assert kernel.LANES == 4
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


HUGE_COUNTS = """
import ctypes, importlib.util, sys
import numpy as np

spec = importlib.util.spec_from_file_location("_histogram", sys.argv[1])
kernel = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kernel)
bins = (1 << 31) + (1 << 20)  # more bins than an int32 index reaches
# buffers that claim that many bins over a few real ones: a kernel that took them would write where no memory
# is (a crash of this process, not a machine's memory used up)
real_counts, real_lanes = np.zeros(16, np.int64), np.zeros(64, np.uint32)
counts = (ctypes.c_int64 * bins).from_address(real_counts.ctypes.data)
lanes = (ctypes.c_uint32 * (kernel.LANES * bins)).from_address(real_lanes.ctypes.data)
try:
    kernel.add_counts(np.full(4096, 2.0**31 + 256, np.float32), counts, lanes, 1.0, bins)
except ValueError as exc:
    print(exc)
"""


def test_the_kernel_refuses_more_bins_than_its_indices_reach(kernel: ModuleType, tmp_path: Path) -> None:
    """Bins at and above 2**31 would take a negative int32 index: a write before the lanes. Run in a process
    of its own, so that a kernel that does write crashes that process only."""
    if not hasattr(kernel, "__file__") or sys.maxsize < 2**40:
        pytest.skip("needs the kernel as a file and a 64-bit address space")
    script = tmp_path / "huge.py"
    script.write_text(HUGE_COUNTS)
    done = subprocess.run(
        [sys.executable, str(script), str(kernel.__file__)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-400:]}"
    assert done.stdout.strip() == "counts must hold fewer than 2**31 bins"
