"""Calibration: one FP32 pass with the needed activations exposed, streaming per-tensor statistics,
calibrators that turn statistics into amax, and the calibration table (JSON and TensorRT's text cache).

ONNX Runtime only runs the model here; ``onnxruntime.quantization`` is deliberately not used (measured
5-55x slower than a bare FP32 pass, and its entropy calibrator with default bins returns MinMax ranges).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import struct
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx

from . import __version__
from .backends.onnxruntime import OrtRunner
from .data import ModelFeeds
from .errors import CalibrationError, DataError, bounded_repr, bounded_text
from .graph import add_graph_outputs

_kernel: ModuleType | None
try:  # the optional C kernel (setup.py): the same counts as the numpy path in about half the time
    from . import _histogram as _kernel
except ImportError:  # installed without a C compiler
    _kernel = None
#: Which binning the calibration histogram uses here ("compiled": the C kernel is built; "numpy").
HISTOGRAM_KERNEL = "compiled" if _kernel is not None else "numpy"

CALIBRATORS: tuple[str, ...] = ("max", "percentile", "entropy", "mse")

#: Bins of the streaming |x| histogram; memory per tensor is fixed at HIST_BINS int64 counts.
#: A power of two <= 16384 (bin indices of four interleaved histograms are computed as uint16).
HIST_BINS = 4096
#: Values binned per step of :class:`HistogramScratch` (256 KiB of float32 + 128 KiB of indices: cache-sized).
SCRATCH_VALUES = 1 << 16
#: Exposed-activation bytes per calibration step: the pass splits the caller's batches into steps of as many
#: samples as fit in this budget (at least one), so that the activations ONNX Runtime writes are still in
#: cache when their statistics are taken. Measured on a ResNet-style 224 px network: a batch of 32
#: (~120 MB of exposed activations) doubled the pass and made the statistics ~1.6x dearer than batch 1.
ACTIVATION_BUDGET_BYTES = 4 << 20
#: Positive int8 levels of TensorRT's symmetric scheme (scale = amax / 127, 128 levels 0..127).
INT8_MAX = 127
QUANTIZED_LEVELS = 128
#: Candidate thresholds of the MSE calibrator: absmax * k / MSE_CANDIDATES for k = 1..MSE_CANDIDATES.
MSE_CANDIDATES = 256

TABLE_FORMAT = "pytest-int8gate calibration table"
#: 2: data fingerprints digest each sample with BLAKE3 (1: SHA-256). A table of another version is refused
#: as such, not as one whose data changed.
TABLE_FORMAT_VERSION = 2
TRT_CACHE_ALGORITHM = "EntropyCalibration2"

_HISTOGRAM_SHIFT = HIST_BINS.bit_length() - 1
_TRT_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9_]+)$")
_HEX_SCALE = re.compile(r"^[0-9a-fA-F]{1,8}$")


@dataclass(frozen=True)
class CalibratorSettings:
    """Parameters of the calibrators; part of the table's identity (a change means recalibration)."""

    percentile: float = 99.99
    #: TensorRT's KL algorithm works on a 2048-bin histogram of |x|.
    entropy_bins: int = 2048
    #: First candidate threshold bin; 128 = the number of quantized levels, the smallest usable.
    entropy_start_bin: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)):
            raise CalibrationError(f"percentile must be a number, got {bounded_repr(self.percentile)}.")
        if not (0 < self.percentile <= 100 and math.isfinite(self.percentile)):  # no float() of 10**400
            raise CalibrationError(
                f"percentile must satisfy 0 < p <= 100, got {bounded_repr(self.percentile)}."
            )
        for name in ("entropy_bins", "entropy_start_bin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise CalibrationError(f"{name} must be an integer, got {bounded_repr(value)}.")
        if not QUANTIZED_LEVELS <= self.entropy_start_bin <= self.entropy_bins:
            raise CalibrationError(
                f"entropy settings need {QUANTIZED_LEVELS} <= entropy_start_bin <= entropy_bins, got "
                f"entropy_start_bin={self.entropy_start_bin}, entropy_bins={self.entropy_bins}."
            )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "percentile": self.percentile,
            "entropy_bins": self.entropy_bins,
            "entropy_start_bin": self.entropy_start_bin,
        }


class TensorStatistics:
    """Streaming statistics of one tensor: running min/max/absmax and a histogram of |x|.

    The histogram has a fixed grid of :data:`HIST_BINS` bins over ``[0, 2**e)``, where ``e`` is the
    smallest integer with ``absmax < 2**e``. When a value exceeds the range, ``e`` grows and bins merge
    pairwise. Bin edges are powers of two times integers, so ``floor(|x| / width)`` is exact and merging
    is exactly what binning with the wider grid would give: the counts depend only on the multiset of
    values, never on batch order or batch size. ``count`` is the number of finite values histogrammed;
    NaN/Inf are only counted in ``nonfinite``. Memory is independent of the number of samples.
    """

    __slots__ = ("_counts", "_exponent", "absmax", "count", "max_value", "min_value", "nonfinite")

    def __init__(self) -> None:
        self.absmax = 0.0
        self.min_value = math.inf
        self.max_value = -math.inf
        self.count = 0
        self.nonfinite = 0
        self._counts = np.zeros(HIST_BINS, dtype=np.int64)
        # None while every value seen is zero: zeros land in bin 0 whatever the grid.
        self._exponent: int | None = None

    @property
    def exponent(self) -> int | None:
        """``e`` of the grid ``[0, 2**e)``; None while all values are zero."""
        return self._exponent

    def update(self, values: np.ndarray, scratch: HistogramScratch | None = None) -> None:
        """Add ``values`` (any shape); ``scratch`` holds the binning's temporaries (reused)."""
        array = np.asarray(values)
        if array.dtype != np.float32 and array.dtype != np.float64:
            array = array.astype(np.float32 if array.dtype == np.float16 else np.float64)
        array = array.reshape(-1)
        if array.size == 0:
            return
        low, high = float(array.min()), float(array.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            finite = np.isfinite(array)
            self.nonfinite += int(array.size - np.count_nonzero(finite))
            array = array[finite]
            if array.size == 0:
                return
            low, high = float(array.min()), float(array.max())
        self.min_value = min(self.min_value, low)
        self.max_value = max(self.max_value, high)
        self.count += int(array.size)
        batch_absmax = max(-low, high)
        if batch_absmax > self.absmax:
            self.absmax = batch_absmax
            self._grow_to(_range_exponent(batch_absmax))
        if self._exponent is None:
            self._counts[0] += array.size
            return
        (scratch or HistogramScratch()).add_counts(
            self._counts, array, self._exponent, low >= 0, batch_absmax
        )

    def merge(self, other: TensorStatistics) -> None:
        """Add ``other``'s values to these statistics (same result as updating with them)."""
        self.nonfinite += other.nonfinite
        if other.count == 0:
            return
        self.min_value = min(self.min_value, other.min_value)
        self.max_value = max(self.max_value, other.max_value)
        self.count += other.count
        self.absmax = max(self.absmax, other.absmax)
        if other._exponent is not None:
            self._grow_to(other._exponent)
        counts = other._counts
        if other._exponent is not None and self._exponent is not None and other._exponent < self._exponent:
            counts = _merge_pairs(counts, self._exponent - other._exponent)
        self._counts += counts

    def histogram(self) -> tuple[np.ndarray, float]:
        """A copy of the |x| counts and the bin width (0.0 while every value is zero)."""
        width = 0.0 if self._exponent is None else math.ldexp(1.0, self._exponent - _HISTOGRAM_SHIFT)
        return self._counts.copy(), width

    def _grow_to(self, exponent: int) -> None:
        if self._exponent is None:
            self._exponent = exponent
        elif exponent > self._exponent:
            self._counts = _merge_pairs(self._counts, exponent - self._exponent)
            self._exponent = exponent

    def __repr__(self) -> str:
        return (
            f"TensorStatistics(count={self.count}, absmax={self.absmax!r}, min={self.min_value!r}, "
            f"max={self.max_value!r}, nonfinite={self.nonfinite})"
        )


def _range_exponent(absmax: float) -> int:
    """The smallest integer e with absmax < 2**e (absmax > 0)."""
    _, exponent = math.frexp(absmax)  # absmax = m * 2**exponent with 0.5 <= m < 1
    return exponent


def _bin_counts(finite: np.ndarray, exponent: int) -> np.ndarray:
    """Counts of |finite| on the grid [0, 2**exponent) with HIST_BINS bins."""
    counts = np.zeros(HIST_BINS, dtype=np.int64)
    HistogramScratch().add_counts(counts, finite, exponent)
    return counts


class HistogramScratch:
    """Reusable buffers for binning. With the C kernel (``_histogram.c``) float32 values are binned in one
    pass with the GIL released; otherwise in chunks of :data:`SCRATCH_VALUES`, so that numpy's temporaries
    stay in a core's cache and no array the size of an activation is allocated per update. Both give the
    same counts.

    One scratch serves one thread at a time (each worker of the calibration pass keeps its own).
    """

    __slots__ = ("_indices", "_lanes", "_scaled")

    def __init__(self, *, compiled: bool = True) -> None:
        """``compiled=False`` takes the numpy path even where the C kernel is built."""
        self._scaled = np.empty(SCRATCH_VALUES, dtype=np.float32)
        self._indices = np.empty(SCRATCH_VALUES, dtype=np.uint16)
        # the kernel's interleaved counters, zero between calls
        self._lanes = (
            np.zeros(_kernel.LANES * HIST_BINS, dtype=np.uint32) if compiled and _kernel is not None else None
        )

    def add_counts(
        self,
        counts: np.ndarray,
        finite: np.ndarray,
        exponent: int,
        nonnegative: bool = False,
        absmax: float | None = None,
    ) -> None:
        """Add the counts of |finite| on the grid [0, 2**exponent) to ``counts`` (HIST_BINS int64);
        ``nonnegative`` says no value is below 0 (a ReLU's output), so that |x| is x; ``absmax``, if
        known, is the largest |x| of ``finite``."""
        shift = _HISTOGRAM_SHIFT - exponent
        # Scaling by a power of two is exact unless the factor itself leaves float32's normal range.
        if finite.dtype != np.float32 or not -126 <= shift <= 127:
            scaled = np.abs(finite.astype(np.float64, copy=False))
            scaled *= math.ldexp(1.0, shift)
            counts += np.bincount(scaled.astype(np.uint16), minlength=HIST_BINS)
            return
        factor = np.float32(math.ldexp(1.0, shift))
        if self._lanes is not None and _kernel is not None and finite.flags.c_contiguous:
            # |x| * factor <= absmax * factor (exact: a power-of-two scaling), so no bin above it is reached
            reach = HIST_BINS if absmax is None else min(HIST_BINS, int(absmax * float(factor)) + 1)
            _kernel.add_counts(finite, counts, self._lanes, float(factor), reach)
            return
        for start in range(0, finite.size, SCRATCH_VALUES):
            chunk = finite[start : start + SCRATCH_VALUES]
            scaled = self._scaled[: chunk.size]
            indices = self._indices[: chunk.size]
            if not nonnegative:
                np.abs(chunk, out=scaled)
                chunk = scaled
            np.multiply(chunk, factor, out=scaled)
            # Non-negative, so truncation is floor; every value is < HIST_BINS because |x| <= absmax < 2**e.
            # uint16 indices: the cast is several times cheaper than to intp, and bincount accepts them.
            np.copyto(indices, scaled, casting="unsafe")
            if not nonnegative:
                counts += np.bincount(indices, minlength=HIST_BINS)
                continue
            # A ReLU's output is mostly exact zeros: neighbouring values count into _LANES interleaved
            # histograms, so that a run of zeros does not wait on one counter's previous increment
            # (measured ~12% faster there, ~15% slower on values without such runs).
            np.add(indices, _LANE_OFFSETS[: chunk.size], out=indices)
            lanes = np.bincount(indices, minlength=_LANES * HIST_BINS)
            counts += lanes.reshape(_LANES, HIST_BINS).sum(axis=0)


#: Interleaved histograms of :meth:`HistogramScratch.add_counts`; _LANES * HIST_BINS indices fit in uint16.
_LANES = 4
_LANE_OFFSETS = (np.arange(SCRATCH_VALUES) % _LANES * HIST_BINS).astype(np.uint16)


def _merge_pairs(counts: np.ndarray, times: int) -> np.ndarray:
    """Merge neighbouring bins pairwise ``times`` times, keeping HIST_BINS bins (upper ones empty)."""
    merged = np.zeros(HIST_BINS, dtype=np.int64)
    if times >= _HISTOGRAM_SHIFT:
        merged[0] = counts.sum()
        return merged
    factor = 1 << times
    merged[: HIST_BINS // factor] = counts.reshape(-1, factor).sum(axis=1)
    return merged


#: Most inferences the calibration pass runs side by side; each holds one step's activations.
MAX_PASS_WORKERS = 4
#: Histogram bytes the workers' own statistics may hold together (each keeps its own until they are merged).
WORKER_STATISTICS_BYTES = 64 << 20
#: Exposed-activation bytes the steps in flight may hold together (see :func:`in_flight_steps`).
IN_FLIGHT_BYTES = 1 << 30


@dataclass(frozen=True)
class CalibrationStatistics:
    """The statistics of one FP32 pass and what it cost.

    ``fp32_pass_s`` is the time inside ONNX Runtime and ``statistics_s`` the time spent updating statistics,
    each summed over the ``workers`` that ran side by side; ``pass_wall_s`` is the wall time of the whole
    pass, data loading included.
    """

    tensors: Mapping[str, TensorStatistics]
    num_samples: int
    fp32_pass_s: float
    statistics_s: float
    pass_wall_s: float = 0.0
    #: The most samples one inference step held (steps are sized by the exposed activations' bytes).
    step_samples: int = 0
    #: Inferences run side by side, each with ``threads_per_worker`` ONNX Runtime intra-op threads (0: its
    #: own choice).
    workers: int = 1
    threads_per_worker: int = 0


@dataclass
class _Worker:
    """One worker's own statistics, scratch and time (a worker is one thread of the pass)."""

    stats: dict[str, TensorStatistics]
    scratch: HistogramScratch
    fp32_s: float = 0.0
    statistics_s: float = 0.0


def in_flight_steps(workers: int, step_bytes: int) -> int:
    """Steps the pass keeps in flight: one per worker while their activations fit in
    :data:`IN_FLIGHT_BYTES`, and never fewer than two (the most a step as large as a whole fixed batch of a
    detector, gigabytes, can afford; workers then wait rather than hold more)."""
    return max(min(workers, 2), min(workers, IN_FLIGHT_BYTES // max(step_bytes, 1)))


def pass_workers(tensors: int, threads: int = 0) -> tuple[int, int]:
    """How many inferences the calibration pass runs side by side, and ONNX Runtime's intra-op threads for
    each (0: its own choice), on ``threads`` CPUs (0: all usable ones) for ``tensors`` histograms."""
    cpus = threads or _usable_cpus()
    by_memory = WORKER_STATISTICS_BYTES // max(tensors * HIST_BINS * 8, 1)
    workers = max(1, min(cpus, MAX_PASS_WORKERS, by_memory))
    if workers == 1:
        return 1, threads
    return workers, max(1, cpus // workers)


def collect_statistics(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    threads: int = 0,
    activation_budget: int = ACTIVATION_BUDGET_BYTES,
    workers: int | None = None,
) -> CalibrationStatistics:
    """Run ``model`` once in FP32 over ``batches`` and stream statistics of ``tensors``.

    Intermediate tensors become extra graph outputs of one ONNX Runtime session; tensors that are graph
    inputs are read from the feeds. The caller's batches are split into steps of as many samples as keep
    the exposed activations within ``activation_budget`` bytes (measured on the first sample; a model
    with a fixed batch size is fed its batches whole).

    Steps go to ``workers`` threads (default: :func:`pass_workers`), each running a step through the shared
    session and then taking its statistics into its own :class:`TensorStatistics`, which are merged at the
    end. Counts are exact and independent of order, so the split never changes a value. Side-by-side
    single-threaded inferences use a few cores better than one inference on all of them at one sample a
    step (no barrier per operator), and the statistics fill the same cores instead of preempting ONNX
    Runtime's threads: measured on 2 cores at one sample a step, the pass with statistics took 1.2-1.4x
    the bare pass on ResNet-style networks, against 1.5-1.9x for intra-op threads with statistics on a
    thread beside them. At most ``workers`` steps' activations are alive at once, fewer when they would
    exceed :data:`IN_FLIGHT_BYTES` (:func:`in_flight_steps`), and each worker keeps one set of histograms;
    memory does not depend on the number of samples.

    A step runs after the iterator has moved on, so a batch's arrays must stay as they are until the pass
    returns: a source that refills one buffer for every batch must yield copies (the data module's
    datasets never refill theirs).
    """
    names = list(dict.fromkeys(tensors))
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [vi.name for vi in model.graph.input if vi.name not in initializers]
    produced = {out for node in model.graph.node for out in node.output if out}
    for name in names:
        if name in initializers:
            raise CalibrationError(
                f"tensor {name!r} is an initializer (a weight), not an activation; weights are quantized "
                "from their values and need no calibration."
            )
        if name not in produced and name not in graph_inputs:
            raise CalibrationError(
                f"tensor {name!r} is not produced by any node of the model's graph and is not a graph input."
            )
    if not graph_inputs:
        raise CalibrationError("the model has no graph inputs to feed.")
    first_input = graph_inputs[0]
    exposed = [name for name in names if name not in graph_inputs]
    fed = [name for name in names if name in graph_inputs]
    if workers is None:
        workers, intra_op = pass_workers(len(names), threads)
    else:
        workers, intra_op = max(1, workers), (threads if workers <= 1 else max(1, threads // workers))
    runner = OrtRunner(
        add_graph_outputs(model, exposed),
        precision="fp32",
        optimize=True,
        threads=intra_op,
        # Python works between the runs: spinning intra-op threads would take its core
        session_config={"session.intra_op.allow_spinning": "0"},
    )
    splittable = not fixed_batch_axis(model, graph_inputs)
    states: list[_Worker] = []
    local = threading.local()
    states_lock = threading.Lock()

    def worker() -> _Worker:
        state: _Worker | None = getattr(local, "state", None)
        if state is None:
            state = _Worker({name: TensorStatistics() for name in names}, HistogramScratch())
            with states_lock:
                states.append(state)
            local.state = state
        return state

    def run_step(feeds: Mapping[str, np.ndarray]) -> int:
        """Run one step and take its statistics on this thread; the exposed activations' bytes."""
        state = worker()
        started = time.perf_counter()
        outputs = runner.run(feeds)
        taken = time.perf_counter()
        for name in fed:
            state.stats[name].update(np.asarray(feeds[name]), state.scratch)
        for name in exposed:
            state.stats[name].update(outputs[name], state.scratch)
        state.fp32_s += taken - started
        state.statistics_s += time.perf_counter() - taken
        return sum(outputs[name].nbytes for name in exposed) + sum(
            np.asarray(feeds[name]).nbytes for name in fed
        )

    num_samples = num_batches = largest_step = 0
    step: int | None = None if splittable else 0
    wall_started = time.perf_counter()
    pool = (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="int8gate-calibration")
        if workers > 1
        else None
    )
    pending: deque[Future[int]] = deque()
    window = 0  # steps in flight at once: set by the first step
    try:
        for index, batch in enumerate(batches):
            if not isinstance(batch, Mapping):
                raise DataError(f"calibration batch {index} is a {type(batch).__name__}, not a feed dict.")
            if first_input not in batch:
                raise DataError(
                    f"calibration batch {index} has no array for the model input {first_input!r}."
                )
            first = np.asarray(batch[first_input])
            size = int(first.shape[0]) if first.ndim else 1
            if isinstance(batch, ModelFeeds):  # its first input may hold the samples on another axis
                size = batch.samples
            num_samples += size
            num_batches += 1
            # feeds that do not all hold the samples on axis 0 (constants, a state [2, N, 128]) run whole
            whole = step == 0 or any(np.shape(value)[:1] != (size,) for value in batch.values())
            start = 0
            while start < size or (whole and start == 0):
                count = size if whole else min(step or 1, size - start)
                feeds = (
                    batch if whole else {key: value[start : start + count] for key, value in batch.items()}
                )
                largest_step = max(largest_step, size if whole else count)
                if window == 0:  # the first step, run alone: how many samples fit in the budget, and how
                    # many steps of that size may be in flight
                    measured = pool.submit(run_step, feeds).result() if pool is not None else run_step(feeds)
                    step_bytes = measured
                    if step is None:  # one sample was measured
                        step = max(1, activation_budget // max(measured, 1))
                        step_bytes = measured * step
                    window = in_flight_steps(workers, step_bytes)
                elif pool is None:
                    run_step(feeds)
                else:
                    if len(pending) >= window:  # at most one step in hand per worker, within the bytes
                        pending.popleft().result()
                    pending.append(pool.submit(run_step, feeds))
                start += count
                if whole:
                    break
        while pending:
            pending.popleft().result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if num_batches == 0:
        raise DataError("the calibration data yielded no batches; at least one sample is needed.")
    # no state at all when every batch held zero samples: statistics that saw nothing
    stats = states[0].stats if states else {name: TensorStatistics() for name in names}
    for state in states[1:]:
        for name in names:
            stats[name].merge(state.stats[name])
    return CalibrationStatistics(
        tensors=stats,
        num_samples=num_samples,
        fp32_pass_s=sum(state.fp32_s for state in states),
        statistics_s=sum(state.statistics_s for state in states),
        pass_wall_s=time.perf_counter() - wall_started,
        step_samples=largest_step,
        workers=workers,
        threads_per_worker=intra_op,
    )


def fixed_batch_axis(model: onnx.ModelProto, graph_inputs: Sequence[str]) -> bool:
    """Whether an input declares a fixed size on axis 0 (such a model is fed its batches whole)."""
    for value_info in model.graph.input:
        if value_info.name in graph_inputs:
            dims = value_info.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                return True
    return False


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def compute_amax(
    stats: TensorStatistics, method: str, settings: CalibratorSettings = CalibratorSettings()
) -> float:
    """The amax (scale = amax / 127) that calibrator ``method`` picks from ``stats``.

    ``max``: the absolute maximum. ``percentile``: the |x| at ``settings.percentile`` of the histogram,
    linearly interpolated inside its bin. ``entropy``: TensorRT's KL-divergence search
    (:func:`entropy_amax`). ``mse``: the threshold with the smallest squared clip+round error
    (:func:`mse_amax`). Every method returns 0.0 when all values are zero, and never exceeds absmax.
    """
    if method not in CALIBRATORS:
        raise CalibrationError(f"unknown calibrator {method!r}; choose one of {', '.join(CALIBRATORS)}.")
    if stats.count == 0 or stats.absmax == 0.0:
        return 0.0
    if method == "max":
        return float(stats.absmax)
    counts, width = stats.histogram()
    if method == "percentile":
        return percentile_amax(counts, width, stats.absmax, settings.percentile)
    if method == "entropy":
        return entropy_amax(counts, width, stats.absmax, settings)
    return mse_amax(counts, width, stats.absmax)


def percentile_amax(counts: np.ndarray, width: float, absmax: float, percentile: float) -> float:
    """The |x| below which ``percentile`` % of the values lie, interpolated uniformly inside its bin."""
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1])
    target = percentile / 100.0 * total
    index = int(np.searchsorted(cumulative, target, side="left"))
    index = min(index, len(counts) - 1)
    below = int(cumulative[index - 1]) if index > 0 else 0
    inside = int(counts[index])
    fraction = (target - below) / inside if inside else 1.0
    return float(min((index + min(max(fraction, 0.0), 1.0)) * width, absmax))


def entropy_amax(
    counts: np.ndarray, width: float, absmax: float, settings: CalibratorSettings = CalibratorSettings()
) -> float:
    """TensorRT's entropy calibration (EntropyCalibration2, "8-bit Inference with TensorRT", GTC 2017).

    1. Histogram of |x| over [0, absmax] with ``settings.entropy_bins`` (2048) bins. The streaming
       histogram has 4096 power-of-two bins of which more than half are occupied, so bin pairs are
       merged (exactly, integer counts) until the occupied range fits in <= 2048 bins: the KL grid has
       between 1025 and 2048 bins of width ``2 * width``. This keeps the result a pure function of the
       values, independent of batch order and batch size.
    2. Bin 0's count is replaced by bin 1's, as NVIDIA's pytorch-quantization and ModelOpt do: bin 0
       holds the exact zeros of ReLU outputs, which int8 represents exactly, and their spike would
       otherwise drive the search towards heavy clipping (measured: ReLU(N(0,1)) clipped at 2.0 sigma).
    3. For each candidate ``i`` in ``[entropy_start_bin, nbins]`` (start 128 = number of levels):
       a. P = hist[:i], with the outliers sum(hist[i:]) folded into P[i-1].
       b. Q = hist[:i] quantized into 128 levels: bin j belongs to group floor(j * 128 / i) (near-equal
          groups); each group's total is spread uniformly over the group's NONZERO bins of hist[:i],
          zero bins stay 0.
       c. Normalise P and Q; KL(P||Q) = sum over P>0 of p * log(p / q). Zero P bins are skipped. Q can
          be 0 where P is not only in bin i-1 (outliers folded into an empty bin); there q = 1e-10, the
          smoothing of NVIDIA ModelOpt, so the candidate costs a large but finite divergence and huge
          isolated outliers can still be clipped.
    4. Pick the i with minimum KL (ties: the largest i, as NVIDIA's tools); amax = (i + 0.5) *
       bin_width, the threshold of the GTC 2017 description (half a bin past the last kept bin), capped
       at absmax.

    Vectorised with prefix sums: over the nonzero bins of a group, sum(h log Q) = T log(T / c) (T the
    group total, c its nonzero count), so a candidate costs O(128) instead of O(i).
    """
    hist = np.asarray(counts, dtype=np.int64)
    occupied = int(np.flatnonzero(hist)[-1]) + 1 if hist.any() else 0
    factor = 1
    while -(-occupied // factor) > settings.entropy_bins:
        factor *= 2
    if factor > 1:
        padded = np.zeros(-(-len(hist) // factor) * factor, dtype=np.int64)
        padded[: len(hist)] = hist
        hist = padded.reshape(-1, factor).sum(axis=1)
        occupied = -(-occupied // factor)
    bin_width = width * factor
    nbins = occupied
    if nbins <= settings.entropy_start_bin:
        return float(absmax)
    h = hist[:nbins].astype(np.float64)
    h[0] = h[1]
    divergence = _entropy_divergences(h, settings.entropy_start_bin)
    candidates = np.arange(settings.entropy_start_bin, nbins + 1)
    best = int(candidates[len(candidates) - 1 - int(np.argmin(divergence[::-1]))])
    return float(min((best + 0.5) * bin_width, absmax))


#: Normalised Q probability used where Q is 0 but P is not (NVIDIA ModelOpt's smoothing constant).
_KL_Q_FLOOR = 1e-10


def _entropy_divergences(h: np.ndarray, start_bin: int) -> np.ndarray:
    """KL(P||Q) for every candidate i in [start_bin, len(h)] (see :func:`entropy_amax`)."""
    # Both branches of the final np.where are evaluated: logs of 0 appear in the discarded one.
    with np.errstate(divide="ignore", invalid="ignore"):
        return _divergences(h, start_bin)


def _divergences(h: np.ndarray, start_bin: int) -> np.ndarray:
    nbins = len(h)
    total = float(h.sum())
    cumulative = np.concatenate(([0.0], np.cumsum(h)))
    nonzero = np.concatenate(([0], np.cumsum(h > 0)))
    cumulative_hlogh = np.concatenate(([0.0], np.cumsum(_xlogx(h))))

    candidates = np.arange(start_bin, nbins + 1)
    edges = _group_edges(start_bin, 1 << max(nbins - 1, 1).bit_length())[: len(candidates)]
    # One contiguous gather, then differences: the same subtractions as gathering both edge columns.
    group_total = np.diff(cumulative[edges], axis=1)
    group_nonzero = np.maximum(np.diff(nonzero[edges], axis=1), 1)
    # Unnormalised Q summed against hist over the nonzero bins j < i: sum_g T_g log(T_g / c_g).
    h_log_q = np.sum(_xlogx(group_total) - group_total * np.log(group_nonzero), axis=1)

    last = candidates - 1
    last_count = h[last]
    kept = cumulative[candidates]  # sum(Q) before normalisation; sum(P) is always `total`
    outliers = total - kept
    last_p = last_count + outliers
    # Bins below i-1 keep hist's counts; bin i-1 carries the outliers.
    p_log_p = cumulative_hlogh[last] + _xlogx(last_p)
    # The outliers sit in bin i-1, whose Q is its group's level T/c (or the floor when hist is 0 there).
    last_level = group_total[:, -1] / group_nonzero[:, -1]
    p_log_q = h_log_q + np.where(last_count > 0, outliers * np.log(last_level), 0.0)
    divergence = (p_log_p - p_log_q) / total + np.log(kept / total)
    # Empty bin i-1 with outliers: the exact terms above cover bins < i-1; add bin i-1 with the floor.
    empty_last = (last_count == 0) & (outliers > 0)
    p_last = last_p / total
    floored = (
        (cumulative_hlogh[last] - h_log_q) / total
        + _xlogx(kept / total)
        + _xlogx(p_last)
        - p_last * math.log(_KL_Q_FLOOR)
    )
    result: np.ndarray = np.where(empty_last, floored, divergence)
    return result


@functools.lru_cache(maxsize=4)
def _group_edges(start_bin: int, max_bins: int) -> np.ndarray:
    """Row ``i - start_bin``: the 129 bin edges of candidate ``i``'s 128 groups, for i up to ``max_bins``.

    Group g of candidate i covers bins [ceil(g*i/128), ceil((g+1)*i/128)): never empty for i >= 128. A row
    depends only on its candidate, so one table serves every histogram (read-only, shared by threads).
    """
    candidates = np.arange(start_bin, max_bins + 1)
    groups = np.arange(QUANTIZED_LEVELS + 1)
    edges = (groups[None, :] * candidates[:, None] + QUANTIZED_LEVELS - 1) // QUANTIZED_LEVELS
    edges.setflags(write=False)
    return edges


def _xlogx(values: np.ndarray) -> np.ndarray:
    """values * log(values), with 0 log 0 = 0."""
    positive = values > 0
    result: np.ndarray = np.where(positive, values * np.log(np.where(positive, values, 1.0)), 0.0)
    return result


def mse_amax(counts: np.ndarray, width: float, absmax: float) -> float:
    """The threshold T minimising the expected squared error of clip+round with scale T/127.

    Candidates are absmax * k / 256 for k = 1..256; values are the bin centres weighted by counts
    (the top centre is capped at absmax). Ties go to the larger threshold (less clipping).
    """
    occupied = np.flatnonzero(counts)
    weights = counts[occupied].astype(np.float64)
    centres = np.minimum((occupied + 0.5) * width, absmax)
    thresholds = absmax * np.arange(1, MSE_CANDIDATES + 1) / MSE_CANDIDATES
    scales = thresholds / INT8_MAX
    errors = np.empty(MSE_CANDIDATES)
    # Candidates in blocks, in one reused buffer: the same arithmetic as one [candidates, bins] matrix
    # (bit-identical errors), without allocating and faulting in several such matrices per tensor.
    block = np.empty((_MSE_BLOCK, centres.size))
    for first in range(0, MSE_CANDIDATES, _MSE_BLOCK):
        block_scales = scales[first : first + _MSE_BLOCK, None]
        rows = block[: block_scales.shape[0]]
        np.divide(centres[None, :], block_scales, out=rows)
        np.rint(rows, out=rows)
        np.minimum(rows, INT8_MAX, out=rows)
        np.multiply(rows, block_scales, out=rows)
        np.subtract(centres[None, :], rows, out=rows)
        np.square(rows, out=rows)
        np.matmul(rows, weights, out=errors[first : first + _MSE_BLOCK])
    best = len(thresholds) - 1 - int(np.argmin(errors[::-1]))
    return float(thresholds[best])


#: Candidate thresholds per block of :func:`mse_amax` (32 x 4096 float64 = 1 MiB: cache-sized).
_MSE_BLOCK = 32


@dataclass(frozen=True)
class CalibrationTable:
    """amax of every calibrator for every calibrated tensor, tied to one model and one data set."""

    amax: Mapping[str, Mapping[str, float]]
    skipped: Mapping[str, str]
    model_hash: str
    data_fingerprint: str
    num_samples: int
    settings: CalibratorSettings = field(default_factory=CalibratorSettings)
    package_version: str = __version__

    def amax_for(self, tensor: str, method: str) -> float:
        if tensor in self.skipped:
            raise CalibrationError(f"tensor {tensor!r} has no amax: {self.skipped[tensor]}.")
        if tensor not in self.amax:
            raise CalibrationError(f"the calibration table has no entry for tensor {tensor!r}.")
        if method not in self.amax[tensor]:
            raise CalibrationError(
                f"the calibration table has no {method!r} amax for tensor {tensor!r} "
                f"(calibrators: {', '.join(CALIBRATORS)})."
            )
        return self.amax[tensor][method]

    def to_json(self) -> str:
        document = {
            "format": TABLE_FORMAT,
            "format_version": TABLE_FORMAT_VERSION,
            "package_version": self.package_version,
            "model_hash": self.model_hash,
            "data_fingerprint": self.data_fingerprint,
            "num_samples": self.num_samples,
            "settings": self.settings.as_dict(),
            "calibrators": list(CALIBRATORS),
            "amax": {tensor: dict(by_method) for tensor, by_method in self.amax.items()},
            "skipped": dict(self.skipped),
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> CalibrationTable:
        try:
            document = json.loads(text)
        except RecursionError as exc:  # [[[[... nested deeper than the parser's stack
            raise CalibrationError(f"{source}: not a calibration table (JSON nested too deeply).") from exc
        except ValueError as exc:  # invalid JSON, or an integer of more digits than Python converts
            raise CalibrationError(
                f"{source}: not a calibration table (invalid JSON: {bounded_text(str(exc))})."
            ) from exc
        if not isinstance(document, dict) or document.get("format") != TABLE_FORMAT:
            raise CalibrationError(f"{source}: not a pytest-int8gate calibration table.")
        if document.get("format_version") != TABLE_FORMAT_VERSION:
            raise CalibrationError(
                f"{source}: calibration table format version {bounded_repr(document.get('format_version'))} "
                f"is not {TABLE_FORMAT_VERSION}; recalibrate."
            )
        model_hash = _json_field(document, "model_hash", str, source)
        data_fingerprint = _json_field(document, "data_fingerprint", str, source)
        package_version = _json_field(document, "package_version", str, source)
        num_samples = _json_field(document, "num_samples", int, source)
        settings_doc = _json_field(document, "settings", dict, source)
        amax_doc = _json_field(document, "amax", dict, source)
        skipped_doc = _json_field(document, "skipped", dict, source)
        try:
            settings = CalibratorSettings(**settings_doc)
        except TypeError as exc:
            shown = bounded_repr(settings_doc)
            raise CalibrationError(f"{source}: bad calibrator settings {shown}.") from exc
        except CalibrationError as exc:
            raise CalibrationError(f"{source}: {exc}") from exc
        amax: dict[str, dict[str, float]] = {}
        for tensor, by_method in amax_doc.items():
            shown = bounded_repr(tensor)
            if not isinstance(by_method, dict) or set(by_method) != set(CALIBRATORS):
                raise CalibrationError(
                    f"{source}: tensor {shown} must have an amax for each of {', '.join(CALIBRATORS)}."
                )
            values: dict[str, float] = {}
            for method in CALIBRATORS:
                value = by_method[method]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise CalibrationError(f"{source}: amax {method!r} of tensor {shown} is not a number.")
                try:
                    number = float(value)  # an integer of 400 digits does not fit a float
                except OverflowError:
                    number = math.inf
                if not (math.isfinite(number) and number > 0):
                    raise CalibrationError(
                        f"{source}: amax {method!r} of tensor {shown} is {bounded_repr(value)}; it must be "
                        "a finite number > 0."
                    )
                values[method] = number
            amax[tensor] = values
        skipped: dict[str, str] = {}
        for tensor, reason in skipped_doc.items():
            if not isinstance(reason, str):
                raise CalibrationError(
                    f"{source}: the skip reason of tensor {bounded_repr(tensor)} is not a string."
                )
            skipped[tensor] = reason
        return cls(
            amax=amax,
            skipped=skipped,
            model_hash=model_hash,
            data_fingerprint=data_fingerprint,
            num_samples=num_samples,
            settings=settings,
            package_version=package_version,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON atomically (temporary file in the same folder, then ``os.replace``)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(self.to_json())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        model_hash: str | None = None,
        data_fingerprint: str | None = None,
        allow_stale: bool = False,
    ) -> CalibrationTable:
        """Read a table; unless ``allow_stale``, refuse one made for another model or other data."""
        source = Path(path)
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"{source}: cannot read the calibration table ({exc}).") from exc
        table = cls.from_json(text, source=str(source))
        if allow_stale:
            return table
        changed = []
        if model_hash is not None and model_hash != table.model_hash:
            changed.append(f"the model changed (table {table.model_hash[:12]}, model {model_hash[:12]})")
        if data_fingerprint is not None and data_fingerprint != table.data_fingerprint:
            changed.append(
                f"the calibration data changed (table {table.data_fingerprint[:12]}, "
                f"data {data_fingerprint[:12]})"
            )
        if changed:
            raise CalibrationError(
                f"{source}: stale calibration table: {' and '.join(changed)}; recalibrate (or allow a "
                "stale table explicitly)."
            )
        return table

    def to_trt_cache(self, method: str = "entropy", trt_version: str = "10.13") -> str:
        """TensorRT's text calibration cache with ``method``'s amax (skipped tensors are omitted).

        The header always names EntropyCalibration2, the calibrator TensorRT must run to accept the
        cache; the scales (amax / 127) come from ``method``.
        """
        if method not in CALIBRATORS:
            raise CalibrationError(f"unknown calibrator {method!r}; choose one of {', '.join(CALIBRATORS)}.")
        header = f"TRT-{trt_version_number(trt_version)}-{TRT_CACHE_ALGORITHM}"
        scales = {tensor: self.amax_for(tensor, method) / INT8_MAX for tensor in self.amax}
        return TrtCalibrationCache(header=header, scales=scales).to_text()


def _json_field(document: Mapping[str, Any], key: str, kind: type, source: str) -> Any:
    if key not in document:
        raise CalibrationError(f"{source}: the calibration table has no {key!r} key.")
    value = document[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CalibrationError(f"{source}: {key!r} must be a {kind.__name__}, got {type(value).__name__}.")
    return value


def trt_version_number(version: str) -> int:
    """TensorRT's NV_TENSORRT_VERSION for ``"major.minor[.patch]"``.

    TensorRT >= 10 defines it as major*10000 + minor*100 + patch (10.13 -> 101300, as in the header
    "TRT-101300-EntropyCalibration2"); TensorRT 8.x as major*1000 + minor*100 + patch (8.6.1 -> 8601).
    """
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)*", version.strip())
    if not match:
        raise CalibrationError(f"TensorRT version {version!r} is not 'major.minor[.patch]'.")
    major, minor, patch = int(match[1]), int(match[2]), int(match[3] or 0)
    if minor > 99 or patch > 99:
        raise CalibrationError(f"TensorRT version {version!r} has a component above 99.")
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def _scale_hex(scale: float) -> str:
    # TensorRT prints the float32 bits with std::hex, no zero padding (a zero scale reads "0").
    return format(struct.unpack(">I", struct.pack(">f", scale))[0], "x")


@dataclass(frozen=True)
class TrtCalibrationCache:
    """A parsed TensorRT text calibration cache: header line and per-tensor scales, in file order."""

    header: str
    scales: Mapping[str, float]
    final_newline: bool = True

    def amax(self) -> dict[str, float]:
        return {name: scale * INT8_MAX for name, scale in self.scales.items()}

    def to_text(self) -> str:
        lines = [self.header, *(f"{name}: {_scale_hex(scale)}" for name, scale in self.scales.items())]
        return "\n".join(lines) + ("\n" if self.final_newline else "")


def calibrate(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    model_hash: str,
    data_fingerprint: str,
    settings: CalibratorSettings = CalibratorSettings(),
    threads: int = 0,
) -> tuple[CalibrationTable, CalibrationStatistics]:
    """One FP32 pass over ``batches`` and the amax of every calibrator for every tensor."""
    statistics = collect_statistics(model, tensors, batches, threads=threads)
    skipped = {name: reason for name, stats in statistics.tensors.items() if (reason := skip_reason(stats))}
    usable = [(name, stats) for name, stats in statistics.tensors.items() if name not in skipped]

    def searched(item: tuple[str, TensorStatistics]) -> dict[str, float]:
        return {method: compute_amax(item[1], method, settings) for method in CALIBRATORS}

    # The searches are numpy array work that releases the GIL: one thread per usable CPU.
    workers = min(_usable_cpus(), len(usable))
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="int8gate-amax") as pool:
            found = list(pool.map(searched, usable))
    else:
        found = [searched(item) for item in usable]
    amax = {name: by_method for (name, _), by_method in zip(usable, found, strict=True)}
    table = CalibrationTable(
        amax=amax,
        skipped=skipped,
        model_hash=model_hash,
        data_fingerprint=data_fingerprint,
        num_samples=statistics.num_samples,
        settings=settings,
        package_version=__version__,
    )
    return table, statistics


def skip_reason(stats: TensorStatistics) -> str:
    """Why a tensor must not be quantized ("" if it can be)."""
    if stats.nonfinite:
        return f"{stats.nonfinite} non-finite value(s) (NaN/Inf) in the FP32 calibration pass"
    if stats.count == 0:
        return "no values seen in the calibration pass"
    if stats.absmax == 0.0:
        return "all calibration values are zero (amax 0 gives no usable scale)"
    return ""


def read_trt_cache(text: str, source: str = "<string>") -> TrtCalibrationCache:
    """Parse TensorRT's text cache: a ``TRT-<version>-<algorithm>`` line, then ``name: <hex float32>``."""
    final_newline = text.endswith("\n")
    lines = (text[:-1] if final_newline else text).split("\n")
    header = lines[0]
    if not _TRT_HEADER.match(header):
        raise CalibrationError(
            f"{source}: line 1 {header[:60]!r} is not a TensorRT cache header like "
            f"'TRT-101300-{TRT_CACHE_ALGORITHM}'."
        )
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        name, separator, value = line.rpartition(":")
        value = value.strip()
        if not separator or not name or not _HEX_SCALE.match(value):
            raise CalibrationError(f"{source}: line {number} {line[:60]!r} is not 'tensor: <hex float32>'.")
        if name in scales:
            raise CalibrationError(f"{source}: line {number}: tensor {name!r} appears twice.")
        scale = struct.unpack(">f", int(value, 16).to_bytes(4, "big"))[0]
        if not (math.isfinite(scale) and scale >= 0):
            raise CalibrationError(f"{source}: line {number}: scale of tensor {name!r} is {scale!r}.")
        scales[name] = scale
    return TrtCalibrationCache(header=header, scales=scales, final_newline=final_newline)
