"""Checks of the data a gate was given: calibration set size, preprocessing and shapes that differ
between calibration and evaluation, an evaluation set too small for its budget, and a cached calibration
table made from another model or other data.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..choices import DEFAULT_MIN_CALIB_SAMPLES
from ..data import Dataset
from ..graph import ModelInfo
from ..results import Comparison, Finding, MetricResult
from ..stats import discordant_pairs, drop_samples_needed, proportion_samples_needed
from .limits import CENTRED_LIMIT, SCALE_RATIO_LIMIT, SHIFT_LIMIT

if TYPE_CHECKING:
    from ..calibrate import CalibrationTable


def check_calibration_size(num_samples: int, minimum: int = DEFAULT_MIN_CALIB_SAMPLES) -> Finding | None:
    if minimum <= 0 or num_samples >= minimum:
        return None
    return Finding(
        "calibration-size",
        "warning",
        f"calibration used {num_samples} samples, fewer than the {minimum} the INT8 guides recommend: "
        "ranges estimated from few samples miss the tails that other data reaches.",
        f"Calibrate on at least {minimum} representative samples (from the training distribution, never the "
        "evaluation set), or lower --int8-min-calib-samples if the small set is deliberate.",
        {"calibration_samples": num_samples, "minimum": minimum},
    )


# ---- 4. preprocessing mismatch --------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel statistics of one float input over some samples."""

    axis: int | None  # channel axis of the batch array; None: the whole tensor is one channel
    mean: np.ndarray
    std: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray

    def as_dict(self) -> dict[str, object]:
        return {
            "channel_axis": self.axis,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "min": self.minimum.tolist(),
            "max": self.maximum.tolist(),
        }


def channel_axis(shape: Sequence[int]) -> int | None:
    """The channel axis of a batch of images ([N, C, H, W] or [N, H, W, C], C <= 4; 5-D: axis 1)."""
    if len(shape) == 4:
        if shape[1] <= 4 or shape[3] > 4:
            return 1
        return 3
    if len(shape) == 5:
        return 1
    return None


#: Values converted to float64 at a time while streaming channel statistics (2 MiB: cache-sized, where
#: converting a whole subset of 320 px images at once took seconds and hundreds of megabytes).
_CHUNK_VALUES = 1 << 18


class ChannelMoments:
    """Per-channel count, mean, sum of squared deviations, min and max of float batches, streamed in
    cache-sized chunks and merged exactly as one pass over all of them would give (Chan et al.)."""

    def __init__(self) -> None:
        self.axis: int | None = None
        self.count = 0
        self.mean = np.zeros(0)
        self.m2 = np.zeros(0)
        self.minimum = np.zeros(0)
        self.maximum = np.zeros(0)
        self.usable = True

    def add(self, batch: np.ndarray) -> None:
        """One batch [N, ...]; a non-float or empty batch makes the statistics unusable (None)."""
        array = np.asarray(batch)
        if array.dtype.kind != "f" or array.size == 0 or not self.usable:
            self.usable = False
            return
        axis = channel_axis(array.shape)
        if self.count and axis != self.axis:
            self.usable = False
            return
        self.axis = axis
        rows = max(1, _CHUNK_VALUES // max(array[:1].size, 1))
        for start in range(0, array.shape[0], rows) if array.ndim else [0]:
            chunk = array[start : start + rows] if array.ndim else array
            values = (
                np.moveaxis(chunk, axis, 0).reshape(chunk.shape[axis], -1)
                if axis is not None
                else chunk.reshape(1, -1)
            ).astype(np.float64)
            self._merge(values)

    def _merge(self, values: np.ndarray) -> None:
        n = values.shape[1]
        mean = values.mean(axis=1)
        m2 = ((values - mean[:, None]) ** 2).sum(axis=1)
        low, high = values.min(axis=1), values.max(axis=1)
        if not self.count:
            self.count, self.mean, self.m2, self.minimum, self.maximum = n, mean, m2, low, high
            return
        if mean.shape != self.mean.shape:
            self.usable = False
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.minimum, self.maximum = np.minimum(self.minimum, low), np.maximum(self.maximum, high)
        self.count = total

    def stats(self) -> ChannelStats | None:
        if not self.usable or not self.count:
            return None
        return ChannelStats(self.axis, self.mean, np.sqrt(self.m2 / self.count), self.minimum, self.maximum)


def channel_stats(batch: np.ndarray) -> ChannelStats | None:
    """Statistics per channel of a float batch [N, ...]; None for non-float inputs (ids, masks)."""
    moments = ChannelMoments()
    moments.add(batch)
    return moments.stats()


def input_channel_stats(dataset: Dataset, names: Sequence[str], batch_size: int) -> dict[str, ChannelStats]:
    """Statistics per channel of each float input in ``names`` over ``dataset``, streamed batch by batch."""
    moments = {name: ChannelMoments() for name in names}
    for feeds in dataset.batches(batch_size):
        for name, moment in moments.items():
            moment.add(feeds[name])
    measured = {name: moment.stats() for name, moment in moments.items()}
    return {name: stats for name, stats in measured.items() if stats is not None}


def check_preprocessing(name: str, calibration: ChannelStats, evaluation: ChannelStats) -> Finding | None:
    """Warning when calibration and evaluation inputs look differently preprocessed: a scale factor (0-255
    against 0-1), permuted channels (BGR against RGB), or an offset (mean subtracted in one only)."""
    if calibration.axis != evaluation.axis or calibration.mean.shape != evaluation.mean.shape:
        return None
    spread = (calibration.std > 1e-12) & (evaluation.std > 1e-12)
    if not spread.any():
        return None
    problem = ""
    ratio = _median(evaluation.std[spread] / calibration.std[spread])
    if ratio >= SCALE_RATIO_LIMIT or ratio <= 1.0 / SCALE_RATIO_LIMIT:
        factor = ratio if ratio >= 1 else 1.0 / ratio
        hint = " (0-255 pixels against 0-1)" if 200 <= factor <= 300 else ""
        larger = "evaluation" if ratio >= 1 else "calibration"
        problem = (
            f"{larger} values are {factor:.3g}x larger{hint}: calibration spans "
            f"[{calibration.minimum.min():.3g}, {calibration.maximum.max():.3g}], evaluation "
            f"[{evaluation.minimum.min():.3g}, {evaluation.maximum.max():.3g}]"
        )
    else:
        pooled = np.sqrt((calibration.std**2 + evaluation.std**2) / 2.0)
        pooled = np.where(pooled > 1e-12, pooled, 1.0)
        permutation = _channel_permutation(calibration.mean, evaluation.mean, pooled)
        shift = np.abs(evaluation.mean - calibration.mean) / pooled
        if permutation is not None:
            problem = (
                f"the channel order differs (BGR against RGB?): evaluation channels {list(permutation)} "
                f"match calibration channels {list(range(len(permutation)))} (channel means: calibration "
                f"{_rounded(calibration.mean)}, evaluation {_rounded(evaluation.mean)})"
            )
        elif float(shift.max()) > SHIFT_LIMIT:
            centred_calib = bool(np.all(np.abs(calibration.mean) < CENTRED_LIMIT * calibration.std))
            centred_eval = bool(np.all(np.abs(evaluation.mean) < CENTRED_LIMIT * evaluation.std))
            what = (
                f"only the {'calibration' if centred_calib else 'evaluation'} data is mean-subtracted"
                if centred_calib != centred_eval
                else f"the means differ by up to {float(shift.max()):.2g} standard deviations"
            )
            problem = (
                f"{what} (channel means: calibration {_rounded(calibration.mean)}, evaluation "
                f"{_rounded(evaluation.mean)})"
            )
    if not problem:
        return None
    # a failure: ranges calibrated on one preprocessing say nothing about inputs made by another, so
    # whichever of the two sets is wrong, the verdict on the other does not hold for deployment
    return Finding(
        "preprocessing-mismatch",
        "failure",
        f"calibration and evaluation inputs {name!r} are not preprocessed the same way: {problem}.",
        "Run exactly the same preprocessing (resize, scale, mean/std normalisation, channel order) for "
        "calibration, evaluation and deployment: NVIDIA's guides name a mismatch here as the most common "
        "cause of INT8 accuracy loss.",
        {
            "input": name,
            "std_ratio": ratio,
            "calibration": calibration.as_dict(),
            "evaluation": evaluation.as_dict(),
        },
    )


def _median(values: np.ndarray) -> float:
    # np.median's first call imports numpy.ma (measured ~45 ms); a sort of a few channels is all it takes
    ordered = np.sort(values)
    middle = ordered.shape[0] // 2
    return float(ordered[middle] if ordered.shape[0] % 2 else (ordered[middle - 1] + ordered[middle]) / 2)


def _channel_permutation(
    calib_mean: np.ndarray, eval_mean: np.ndarray, pooled: np.ndarray
) -> tuple[int, ...] | None:
    """The channel order of the evaluation data when it is a clear permutation of the calibration's."""
    channels = calib_mean.shape[0]
    if not 2 <= channels <= 4:
        return None
    identity = tuple(range(channels))

    def cost(order: tuple[int, ...]) -> float:
        return float(np.mean(np.abs(eval_mean[list(order)] - calib_mean) / pooled))

    best = min((p for p in itertools.permutations(identity) if p != identity), key=cost)
    if cost(identity) > SHIFT_LIMIT / 2 and cost(best) < cost(identity) / 4:
        return best
    return None


def _rounded(values: np.ndarray) -> list[float]:
    return [float(f"{v:.3g}") for v in values.tolist()]


# ---- 5. shapes ------------------------------------------------------------------------------------


def check_shapes(model: ModelInfo, calibration: Dataset, evaluation: Dataset) -> Finding | None:
    """Warning when evaluation feeds shapes (dynamic axes) that calibration never exercised."""
    differences: list[dict[str, object]] = []
    described: list[str] = []
    for tensor in model.inputs:
        calib_shape = calibration.sample_shapes.get(tensor.name)
        eval_shape = evaluation.sample_shapes.get(tensor.name)
        if calib_shape is None or eval_shape is None or calib_shape == eval_shape:
            continue
        dims = tensor.shape[1:] if tensor.shape else ()
        for axis, (c, e) in enumerate(zip(calib_shape, eval_shape, strict=False), start=1):
            if c == e:
                continue
            label = dims[axis - 1] if axis - 1 < len(dims) and isinstance(dims[axis - 1], str) else None
            differences.append(
                {"input": tensor.name, "axis": axis, "dim": label, "calibration": c, "evaluation": e}
            )
            named = f" ({label})" if label else ""
            described.append(
                f"input {tensor.name!r} axis {axis}{named} is {e} in evaluation, {c} in calibration"
            )
    if not differences:
        return None
    listed = "; ".join(described)
    return Finding(
        "shape-mismatch",
        "warning",
        f"evaluation feeds shapes that calibration never exercised: {listed}.",
        "Calibrate at the shapes you evaluate and deploy (resize to the deployment shape, or calibrate per "
        "shape): activation ranges depend on the input size (padding, pooling, sequence length), and a "
        "TensorRT optimisation profile must cover every shape it runs.",
        {"differences": differences},
    )


# ---- 6. stale calibration table -------------------------------------------------------------------


def check_calibration_table(
    table: CalibrationTable, *, model_hash: str, data_fingerprint: str, source: str
) -> Finding | None:
    """Failure when a cached table was made for another model or other calibration data."""
    changed = []
    if table.model_hash != model_hash:
        changed.append(f"the model changed (table {table.model_hash[:12]}, model {model_hash[:12]})")
    if table.data_fingerprint != data_fingerprint:
        changed.append(
            f"the calibration data changed (table {table.data_fingerprint[:12]}, "
            f"data {data_fingerprint[:12]})"
        )
    if not changed:
        return None
    return Finding(
        "stale-calibration",
        "failure",
        f"stale calibration table {source}: {' and '.join(changed)}; it was not used (this gate "
        "recalibrated).",
        f"Delete {source}: a cache entry must match the model and data it was made from, and this one was "
        "copied or edited from elsewhere.",
        {
            "table": source,
            "model_changed": table.model_hash != model_hash,
            "data_changed": table.data_fingerprint != data_fingerprint,
        },
    )


# ---- statistics: an evaluation set too small for its budget ---------------------------------------


def check_eval_set_size(results: Sequence[MetricResult], comparison: Comparison) -> Finding | None:
    """Warning when a metric's 95 % interval both contains its limit (the verdict is undecided) and is
    wider than the room the budget leaves (the limit of a drop, 1 - limit of an agreement): at that size
    a pass or a fail is mostly chance."""
    problems: list[dict[str, object]] = []
    described: list[str] = []
    needed: list[int] = []
    for result in results:
        if result.ci95 is None:
            continue
        low, high = result.ci95
        half = (high - low) / 2.0
        room = result.limit if result.upper else 1.0 - result.limit
        if half <= room or not low <= result.limit <= high:
            continue
        samples = _samples_needed(result, comparison, room)
        problems.append({"metric": result.name, "half_width": half, "room": room, "samples_needed": samples})
        described.append(
            f"{result.name} is known only to +-{100 * half:.2g} points (95 % interval) but the budget "
            f"leaves {100 * room:.2g}"
        )
        if samples is not None:
            needed.append(samples)
    if not problems:
        return None
    n = comparison.num_samples
    listed = "; ".join(described)
    advice = (
        f"Evaluate on about {max(needed)} samples or more (at the measured disagreement rate), or loosen "
        "the budget"
        if needed
        else "A zero budget can never be shown on a finite set; allow a small drop"
    )
    return Finding(
        "eval-set-too-small",
        "warning",
        f"the evaluation set ({n} samples) is too small for the budget: {listed}; a pass or a fail at this "
        "size is mostly chance.",
        f"{advice}; --int8-strict-ci passes a budget only when the whole interval is within it.",
        {"samples": n, "metrics": problems},
    )


def _samples_needed(result: MetricResult, comparison: Comparison, room: float) -> int | None:
    hits = comparison.hits
    measure = result.name.removesuffix("_drop")
    if f"fp32_{measure}" in hits and f"int8_{measure}" in hits:
        b, c = discordant_pairs(hits[f"fp32_{measure}"], hits[f"int8_{measure}"])
        return drop_samples_needed(b, c, comparison.num_samples, room)
    if result.name == "top1_agreement" and "top1_agreement" in hits:
        agree = hits["top1_agreement"]
        return proportion_samples_needed(int(agree.sum()), int(agree.shape[0]), room)
    return None
