"""Activation ranges against the calibrated amax: clipping the calibration data did not predict, and
one-sided activations that leave int8 levels unused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..calibrate import ACTIVATION_BUDGET_BYTES, fixed_batch_axis
from ..data import Feeds, sample_count
from ..probe import ExposedModel
from ..results import Finding
from .limits import CLIP_RATE_FACTOR, CLIP_RATE_LIMIT, DIAGNOSTIC_SAMPLES, MAX_LISTED, ONE_SIDED_BITS

if TYPE_CHECKING:
    pass


@dataclass
class ActivationRange:
    """Range of one activation over some samples, and how many values exceed a given amax."""

    minimum: float = math.inf
    maximum: float = -math.inf
    clipped: int = 0
    count: int = 0

    @property
    def clip_rate(self) -> float:
        return self.clipped / self.count if self.count else 0.0

    def update(self, values: np.ndarray, amax: float) -> None:
        flat = np.asarray(values).reshape(-1)
        if flat.size == 0:
            return
        low, high = float(flat.min()), float(flat.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            flat = flat[np.isfinite(flat)]
            if flat.size == 0:
                return
            low, high = float(flat.min()), float(flat.max())
        self.minimum = min(self.minimum, low)
        self.maximum = max(self.maximum, high)
        self.count += int(flat.size)
        if low < -amax or high > amax:  # only then is there anything to count
            self.clipped += int(np.count_nonzero(flat > amax)) + int(np.count_nonzero(flat < -amax))


#: Whether range updates overlap the next step's inference (worth it with a second CPU to run them).
_OVERLAP = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)) > 1


class ActivationProbe(ExposedModel):
    """One FP32 session that also returns the quantized activations, to measure their ranges."""

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[str], *, threads: int = 0) -> None:
        super().__init__(model, tensors, precision="fp32", optimize=True, threads=threads, known_only=True)
        weights = {init.name for init in model.graph.initializer}
        fed = [value.name for value in model.graph.input if value.name not in weights]
        self._fixed_batch = fixed_batch_axis(model, fed)

    def measure(self, batches: Iterable[Feeds], amax: Mapping[str, float]) -> dict[str, ActivationRange]:
        """Each tensor's range and clipping over ``batches``, run in steps of as many samples as keep the
        exposed activations within calibration's budget (a batch of 32 large activations would cost
        gigabytes; ranges and counts do not depend on how the samples are split). With more than one CPU a
        step's ranges are taken on a worker thread while ONNX Runtime runs the next step (two steps'
        activations alive at most)."""
        ranges = {name: ActivationRange() for name in self.tensors}

        def update(values: Mapping[str, np.ndarray]) -> None:
            for name, measured in ranges.items():
                measured.update(values[name], amax[name])

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="int8gate-ranges") if _OVERLAP else None
        pending: Future[None] | None = None
        try:
            for values in self._steps(batches):
                if pool is None:
                    update(values)
                    continue
                if pending is not None:
                    pending.result()
                pending = pool.submit(update, values)
            if pending is not None:
                pending.result()
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return ranges

    def _steps(self, batches: Iterable[Feeds]) -> Iterator[dict[str, np.ndarray]]:
        """The exposed tensors' values, step by step (see :meth:`measure`)."""
        # a model exported with a fixed batch axis runs whole batches only (step 0: never split)
        step: int | None = 0 if self._fixed_batch else None
        for feeds in batches:
            size = sample_count(feeds)
            # feeds that do not all hold the samples on axis 0 (constants, a state [2, N, 128]) run whole
            whole = step == 0 or any(np.shape(value)[:1] != (size,) for value in feeds.values())
            start = 0
            while True:
                count = size if whole else min(step or 1, size - start)
                part = feeds if count == size else {k: v[start : start + count] for k, v in feeds.items()}
                values = self.run(part)
                if step is None and not whole:
                    per_sample = sum(value.nbytes for value in values.values()) // max(count, 1)
                    step = max(1, ACTIVATION_BUDGET_BYTES // max(per_sample, 1))
                yield values
                start += count
                if whole or start >= size:
                    break


def check_clipping(
    calibration: Mapping[str, ActivationRange],
    evaluation: Mapping[str, ActivationRange],
    amax: Mapping[str, float],
    *,
    samples: int = DIAGNOSTIC_SAMPLES,
) -> Finding | None:
    """Warning listing the activations whose evaluation values exceed the calibrated amax far more often
    than the calibration values do: the calibration data does not represent the evaluation data."""
    flagged = {}
    for name, measured in evaluation.items():
        calib_rate = calibration[name].clip_rate if name in calibration else 0.0
        rate = measured.clip_rate
        if rate >= CLIP_RATE_LIMIT and rate >= CLIP_RATE_FACTOR * calib_rate:
            flagged[name] = {
                "eval_clip_rate": rate,
                "calib_clip_rate": calib_rate,
                "amax": float(amax[name]),
                "eval_max_abs": max(abs(measured.minimum), abs(measured.maximum)),
            }
    if not flagged:
        return None
    ordered = sorted(flagged, key=lambda k: -float(flagged[k]["eval_clip_rate"]))
    listed = ", ".join(
        f"{name} {flagged[name]['eval_clip_rate']:.1%} beyond amax {flagged[name]['amax']:.3g} "
        f"(calibration {flagged[name]['calib_clip_rate']:.2%})"
        for name in ordered[:MAX_LISTED]
    )
    more = f" and {len(ordered) - MAX_LISTED} more" if len(ordered) > MAX_LISTED else ""
    return Finding(
        "clipping",
        "warning",
        f"the calibration data does not represent the evaluation data: {len(flagged)} of {len(evaluation)} "
        f"quantized activations are clipped far more often on evaluation data: {listed}{more}.",
        "Calibrate on data drawn like the evaluation data (same sources, classes, conditions and "
        "preprocessing); if rare evaluation values are right, widen these ranges with the max or percentile "
        "calibrator for their layers.",
        {"tensors": {name: flagged[name] for name in ordered}, "samples": samples},
    )


def bits_lost(minimum: float, maximum: float, amax: float) -> float:
    """Bits of the symmetric range [-amax, amax] that values in [minimum, maximum] never use."""
    if amax <= 0:
        return 0.0
    used = min(maximum, amax) - max(minimum, -amax)
    if used <= 0:
        return 0.0
    return math.log2(2.0 * amax / used)


def check_distribution_shape(
    ranges: Mapping[str, ActivationRange], amax: Mapping[str, float], *, samples: int = DIAGNOSTIC_SAMPLES
) -> Finding | None:
    """Info listing one-sided activations (e.g. after ReLU/ReLU6/sigmoid) and the int8 bits they waste."""
    lost = {}
    for name, measured in ranges.items():
        if measured.count == 0:
            continue
        bits = bits_lost(measured.minimum, measured.maximum, amax[name])
        if bits >= ONE_SIDED_BITS:
            lost[name] = {
                "bits_lost": bits,
                "min": measured.minimum,
                "max": measured.maximum,
                "amax": float(amax[name]),
            }
    if not lost:
        return None
    listed = ", ".join(
        f"{name} [{v['min']:.3g}, {v['max']:.3g}] {v['bits_lost']:.2f} bit"
        for name, v in list(lost.items())[:MAX_LISTED]
    )
    more = f" and {len(lost) - MAX_LISTED} more" if len(lost) > MAX_LISTED else ""
    return Finding(
        "distribution-shape",
        "info",
        f"{len(lost)} of {len(ranges)} quantized activations are one-sided, so the symmetric int8 scale "
        f"leaves levels unused (bits lost out of 8): {listed}{more}.",
        "Expected after ReLU, ReLU6 or sigmoid; TensorRT's symmetric scheme has no zero point to recover it. "
        "If such a tensor feeds an offending layer, keep that layer in float or try the percentile or mse "
        "calibrator for it.",
        {"tensors": lost, "samples": samples},
    )
