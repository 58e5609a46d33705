"""The checks of NVIDIA's INT8 debugging guides, run before any layer is blamed: each problem found is a
:class:`Finding` with a severity, a one-line explanation and the fix.

Most checks are pure functions of measured numbers. The few that must run a model (activation ranges,
CPU fidelity, FP32 parity, determinism, the first non-finite tensor) do so on a bounded subset of the data
(:data:`DIAGNOSTIC_SAMPLES`). :func:`run_diagnostics` runs them all for one gate.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .backends import Runner
from .backends.onnxruntime import OrtRunner, device_text
from .choices import DEFAULT_MIN_CALIB_SAMPLES as DEFAULT_MIN_CALIB_SAMPLES
from .data import Dataset, Feeds, read_numpy_file
from .errors import DataError, NonFiniteOutputError
from .evaluate import Comparison, classification_view, select_output
from .graph import ModelInfo, add_graph_outputs

# the finding types live in results.py; these paths stay importable
from .results import SEVERITIES as SEVERITIES
from .results import Finding as Finding
from .results import NonFiniteTensorError as NonFiniteTensorError
from .results import Severity as Severity
from .results import severity_counts as severity_counts
from .results import sort_findings as sort_findings
from .stats import discordant_pairs, drop_samples_needed, proportion_samples_needed

if TYPE_CHECKING:
    from .calibrate import CalibrationTable
    from .context import GateContext
    from .results import MetricResult

#: Samples of calibration and evaluation data the model-running checks use (bounds their cost).
DIAGNOSTIC_SAMPLES = 128
#: Samples the fused-vs-simulated and determinism checks run twice: saturation shows on most samples.
REPEAT_SAMPLES = 32
#: A tensor is reported as clipped when at least this fraction of its evaluation values exceed its amax...
CLIP_RATE_LIMIT = 0.01
#: ...and at least this many times the fraction of calibration values that do (calibrators clip on purpose).
CLIP_RATE_FACTOR = 4.0
#: Median ratio of evaluation to calibration spread (std) beyond which inputs are differently scaled.
SCALE_RATIO_LIMIT = 4.0
#: Mean difference, in pooled standard deviations, beyond which inputs are differently shifted.
SHIFT_LIMIT = 1.0
#: |mean| below this many standard deviations counts as mean-subtracted.
CENTRED_LIMIT = 0.25
#: Largest relative L2 error (per sample) of the FP32 engine against its reference.
PARITY_TOLERANCE = 1e-3
#: Fused and simulated INT8 agree when the mean cosine of their outputs reaches this...
FIDELITY_COSINE = 0.999
#: ...and they pick the same class on at least this fraction of samples...
FIDELITY_AGREEMENT = 0.99
#: ...or fused strays from simulated by at most this fraction of simulated INT8's own error against FP32.
FIDELITY_ERROR_RATIO = 0.5
#: A tensor whose range leaves at least this many bits of the symmetric int8 range unused is one-sided.
ONE_SIDED_BITS = 0.5
#: Tensors named in one finding's message (all of them are in its details).
MAX_LISTED = 6
#: Below this many bytes of weights the diagnostics' own sessions run on one thread: creating ONNX
#: Runtime's thread pool costs more (measured 6-16 ms a session) than a small model's subset pass.
SMALL_MODEL_BYTES = 4 << 20


# ---- 1. FP32 parity -------------------------------------------------------------------------------


def output_parity(
    outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Per output in ``reference``: the largest per-sample relative L2 error and absolute error."""
    measured: dict[str, dict[str, float]] = {}
    for name, expected in reference.items():
        got = outputs[name]
        n = expected.shape[0] if expected.ndim else 1
        ref = expected.reshape(n, -1).astype(np.float64)
        out = got.reshape(n, -1).astype(np.float64)
        error = np.linalg.norm(out - ref, axis=1)
        norm = np.linalg.norm(ref, axis=1)
        relative = np.where(norm > 0, error / np.where(norm > 0, norm, 1.0), np.where(error > 0, np.inf, 0.0))
        relative = np.where(np.isnan(relative), np.inf, relative)
        measured[name] = {
            "max_relative_error": float(relative.max()) if relative.size else 0.0,
            "max_abs_error": float(np.nanmax(np.abs(out - ref))) if out.size else 0.0,
            "samples": float(n),
        }
    return measured


def check_fp32_parity(
    outputs: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    *,
    reference_name: str,
    tolerance: float = PARITY_TOLERANCE,
) -> Finding | None:
    """Failure when the FP32 engine's outputs stray from the reference beyond ``tolerance``."""
    measured = output_parity(outputs, reference)
    bad = {k: v for k, v in measured.items() if not v["max_relative_error"] <= tolerance}
    if not bad:
        return None
    worst_name = max(bad, key=lambda k: bad[k]["max_relative_error"])
    worst = bad[worst_name]
    return Finding(
        "fp32-parity",
        "failure",
        f"FP32 parity failed: output {worst_name!r} of the FP32 engine differs from {reference_name} by up "
        f"to {worst['max_relative_error']:.3g} relative L2 error per sample (largest absolute difference "
        f"{worst['max_abs_error']:.3g}, tolerance {tolerance:g}) on {int(worst['samples'])} samples.",
        "An INT8 comparison against a wrong FP32 result means nothing: make the FP32 engine match first "
        "(a reference made with other preprocessing or another model version, an op the backend computes "
        "differently, TF32/FP16 enabled in an FP32 build).",
        {"reference": reference_name, "tolerance": tolerance, "outputs": measured},
    )


def load_fp32_reference(
    path: str | os.PathLike[str], output_names: Sequence[str], eval_samples: int
) -> dict[str, np.ndarray]:
    """A user's FP32 reference: a ``.npz`` of model outputs (by name) for the first evaluation samples."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: FP32 reference file not found.")
    if file.suffix != ".npz":
        raise DataError(f"{file}: the FP32 reference must be a .npz of output name -> array [samples, ...].")
    arrays = read_numpy_file(file)
    if not arrays:
        raise DataError(f"{file}: the FP32 reference holds no arrays.")
    unknown = sorted(set(arrays) - set(output_names))
    if unknown:
        raise DataError(
            f"{file}: FP32 reference array(s) {unknown} are not outputs of the model; its outputs are "
            f"{list(output_names)}."
        )
    lengths = {name: (a.shape[0] if a.ndim else 0) for name, a in arrays.items()}
    count = min(lengths.values())
    if count == 0 or len(set(lengths.values())) != 1:
        raise DataError(f"{file}: FP32 reference arrays need one shared, non-empty axis 0; got {lengths}.")
    if count > eval_samples:
        raise DataError(
            f"{file}: the FP32 reference holds {count} samples but the evaluation data only {eval_samples}."
        )
    for name, array in arrays.items():
        if array.dtype.kind != "f" or not np.isfinite(array).all():
            raise DataError(f"{file}: FP32 reference {name!r} must be finite floats, got {array.dtype}.")
    return arrays


def run_outputs(
    runner: Runner, dataset: Dataset, batch_size: int, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """``names`` of ``runner``'s outputs over the whole (small) ``dataset``."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feeds in dataset.batches(batch_size):
        outputs = runner.run(feeds)
        for name in names:
            parts[name].append(outputs[name])
    return {name: np.concatenate(values) for name, values in parts.items()}


def reference_parity(
    runner: Runner, dataset: Dataset, reference: Mapping[str, np.ndarray], *, batch_size: int, source: str
) -> Finding | None:
    """Compare ``runner`` with a user's reference outputs on the first samples of ``dataset``."""
    count = min(next(iter(reference.values())).shape[0], DIAGNOSTIC_SAMPLES)
    expected = {name: array[:count] for name, array in reference.items()}
    outputs = run_outputs(runner, dataset.head(count), batch_size, list(expected))
    for name, array in expected.items():
        if outputs[name].shape != array.shape:
            raise DataError(
                f"{source}: FP32 reference {name!r} has shape {list(array.shape)} but the model gives "
                f"{list(outputs[name].shape)} for those samples."
            )
    return check_fp32_parity(outputs, expected, reference_name=f"the reference {source}")


# ---- 2. calibration set size ----------------------------------------------------------------------


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


# ---- 3 and 9. activation ranges: clipping and distribution shape ----------------------------------


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


class ActivationProbe:
    """One FP32 session that also returns the quantized activations, to measure their ranges."""

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[str], *, threads: int = 0) -> None:
        produced = {out for node in model.graph.node for out in node.output}
        graph_inputs = {vi.name for vi in model.graph.input}
        self.tensors = tuple(t for t in tensors if t in produced or t in graph_inputs)
        exposed = [t for t in self.tensors if t not in graph_inputs]
        self._runner = OrtRunner(
            add_graph_outputs(model, exposed), precision="fp32", optimize=True, threads=threads
        )

    def measure(self, batches: Iterable[Feeds], amax: Mapping[str, float]) -> dict[str, ActivationRange]:
        ranges = {name: ActivationRange() for name in self.tensors}
        for feeds in batches:
            outputs = self._runner.run(feeds)
            for name, measured in ranges.items():
                measured.update(feeds[name] if name in feeds else outputs[name], amax[name])
        return ranges


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


def channel_stats(batch: np.ndarray) -> ChannelStats | None:
    """Statistics per channel of a float batch [N, ...]; None for non-float inputs (ids, masks)."""
    array = np.asarray(batch)
    if array.dtype.kind != "f" or array.size == 0:
        return None
    axis = channel_axis(array.shape)
    values = (
        np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
        if axis is not None
        else array.reshape(1, -1)
    ).astype(np.float64)
    return ChannelStats(axis, values.mean(axis=1), values.std(axis=1), values.min(axis=1), values.max(axis=1))


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
    return Finding(
        "preprocessing-mismatch",
        "warning",
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


# ---- 7. NaN / Inf ---------------------------------------------------------------------------------

_FLOAT_TYPES = (
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
)


def float_node_outputs(model: onnx.ModelProto) -> tuple[str, ...]:
    """Every float tensor a node of ``model`` produces, in node order (``model`` with inferred types)."""
    graph = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.value_info, *graph.output]}
    return tuple(out for node in graph.node for out in node.output if out and types.get(out) in _FLOAT_TYPES)


def exposed_runner(model: onnx.ModelProto, *, precision: str, optimize: bool, threads: int = 0) -> OrtRunner:
    """A session of ``model`` that also returns every float intermediate tensor (not the int8 ones)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model shape inference cannot handle: the declared types are all there is
        inferred = model
    return OrtRunner(
        add_graph_outputs(inferred, float_node_outputs(inferred)),
        precision=precision,
        optimize=optimize,
        threads=threads,
    )


def first_nonfinite(
    model: onnx.ModelProto, outputs: Mapping[str, np.ndarray]
) -> tuple[onnx.NodeProto, str] | None:
    """The first node (in graph order) that writes NaN/Inf, and that tensor, from a run's ``outputs``."""
    for node in model.graph.node:
        for name in node.output:
            value = outputs.get(name)
            if value is not None and value.dtype.kind == "f" and not np.isfinite(value).all():
                return node, name
    return None


def locate_nonfinite(
    models: Sequence[tuple[str, onnx.ModelProto, bool]],
    batches: Iterable[Feeds],
    *,
    threads: int = 0,
) -> Finding | None:
    """Failure naming the first tensor where NaN/Inf appears: ``models`` are (precision, model, optimize),
    tried on each batch in order (as evaluation runs them) with every intermediate tensor exposed."""
    runners = [
        (p, m, exposed_runner(m, precision=p.lower(), optimize=o, threads=threads)) for p, m, o in models
    ]
    start = 0
    for feeds in batches:
        for precision, model, runner in runners:
            outputs = runner.run(feeds)
            found = first_nonfinite(model, outputs)
            if found is not None:
                return _nonfinite_finding(precision, found[0], found[1], outputs[found[1]], start)
        start += int(next(iter(feeds.values())).shape[0])
    return None


def _nonfinite_finding(
    precision: str, node: onnx.NodeProto, tensor: str, value: np.ndarray, start: int
) -> Finding:
    bad = ~np.isfinite(value)
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    kind = "NaN" if np.isnan(value[index]) else "Inf"
    sample = start + index[0] if value.ndim else start
    if precision == "FP32":
        fix = (
            "The FP32 model itself is not finite on this input, so INT8 cannot be judged: check the input's "
            f"preprocessing and what {node.op_type} receives (log/sqrt of values <= 0, division by zero, exp "
            "overflow)."
        )
    else:
        fix = (
            f"Only the INT8 model produces it: quantization sends {node.op_type} an input where it is "
            "undefined (e.g. a small value rounded to 0 before a division or log); keep the quantized layer "
            f"that feeds {node.name!r} in float (`exclude:`) or give it a calibrator with a finer range."
        )
    return Finding(
        "non-finite",
        "failure",
        f"the {precision} model produces {kind} first in tensor {tensor!r} (output of node {node.name!r}, "
        f"{node.op_type}) at evaluation sample {sample}, the first node in graph order to produce it.",
        fix,
        {
            "precision": precision,
            "tensor": tensor,
            "node": node.name,
            "op": node.op_type,
            "kind": kind,
            "sample": sample,
        },
    )


# ---- 8. determinism -------------------------------------------------------------------------------


def check_determinism(runner: Runner, batches: Sequence[Feeds], *, what: str = "INT8 engine") -> Finding:
    """Run every batch twice: info when the outputs are bit-exact, a warning naming the output otherwise."""
    differing: dict[str, float] = {}
    samples = 0
    for feeds in batches:
        first, second = runner.run(feeds), runner.run(feeds)
        samples += int(next(iter(feeds.values())).shape[0])
        for name, value in first.items():
            again = second[name]
            if value.shape != again.shape or value.tobytes() != again.tobytes():
                diff = (
                    float(np.nanmax(np.abs(value.astype(np.float64) - again.astype(np.float64))))
                    if value.shape == again.shape and value.size
                    else math.inf
                )
                differing[name] = max(differing.get(name, 0.0), diff)
    if not differing:
        return Finding(
            "determinism",
            "info",
            f"the {what} is bit-exact: two runs on the same {samples} samples gave identical outputs.",
            "Nothing to fix.",
            {"samples": samples, "bit_exact": True},
        )
    worst = max(differing, key=lambda k: differing[k])
    return Finding(
        "determinism",
        "warning",
        f"the {what} is not deterministic: two runs on the same {samples} samples differ in output {worst!r} "
        f"by up to {differing[worst]:.3g}, so the gate's numbers can change from run to run.",
        "Remove what varies between runs: random ops left in the graph, non-deterministic kernels or "
        "plugins, TensorRT tactics chosen anew on every build (use a timing cache, and gate the engine you "
        "deploy).",
        {"samples": samples, "bit_exact": False, "max_abs_difference": differing},
    )


# ---- 10. CPU fidelity -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fidelity:
    """How closely fused and simulated INT8 agree on one output, against how far INT8 is from FP32."""

    samples: int
    cosine_mean: float
    cosine_min: float
    top1_agreement: float | None
    #: ||fused - simulated|| / ||simulated - fp32|| over the samples: the CPU's deviation measured in units
    #: of the quantization error itself (inf when simulated equals FP32 exactly and fused does not).
    error_ratio: float


def measure_fidelity(
    simulated: Runner, fused: Runner, fp32: Runner, batches: Iterable[Feeds], output: str
) -> Fidelity:
    cosines: list[np.ndarray] = []
    same = total = 0
    classes = True
    deviation = quantization = 0.0
    for feeds in batches:
        sim, fus = simulated.run(feeds)[output], fused.run(feeds)[output]
        n = sim.shape[0]
        x, y = sim.reshape(n, -1).astype(np.float64), fus.reshape(n, -1).astype(np.float64)
        reference = fp32.run(feeds)[output].reshape(n, -1).astype(np.float64)
        deviation += float(np.sum((y - x) ** 2))
        quantization += float(np.sum((x - reference) ** 2))
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        dots = np.einsum("ij,ij->i", x, y)
        cosines.append(
            np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(dots == 0, 1.0, 0.0))
        )
        view_sim, view_fus = classification_view(sim), classification_view(fus)
        if view_sim is None or view_fus is None:
            classes = False
        else:
            same += int(np.sum(view_sim.argmax(axis=1) == view_fus.argmax(axis=1)))
        total += n
    cos = np.concatenate(cosines) if cosines else np.ones(0)
    unquantizable = math.inf if deviation > 0 else 0.0  # simulated INT8 equals FP32 exactly
    ratio = math.sqrt(deviation / quantization) if quantization > 0 else unquantizable
    return Fidelity(
        samples=total,
        cosine_mean=float(cos.mean()) if cos.size else 1.0,
        cosine_min=float(cos.min()) if cos.size else 1.0,
        top1_agreement=same / total if classes and total else None,
        error_ratio=ratio,
    )


def check_cpu_fidelity(fidelity: Fidelity, *, device: str) -> Finding | None:
    """Warning when ONNX Runtime's fused int8 kernels and simulated Q/DQ disagree on this CPU: the outputs
    differ (cosine or top-1) AND the difference is a sizeable part of INT8's own error against FP32 (so
    rounding-tie differences on a model INT8 has already destroyed do not count)."""
    agree_ok = fidelity.top1_agreement is None or fidelity.top1_agreement >= FIDELITY_AGREEMENT
    if (fidelity.cosine_mean >= FIDELITY_COSINE and agree_ok) or fidelity.error_ratio <= FIDELITY_ERROR_RATIO:
        return None
    top1 = "" if fidelity.top1_agreement is None else f", top-1 agreement {fidelity.top1_agreement:.1%}"
    return Finding(
        "cpu-fidelity",
        "warning",
        f"ONNX Runtime's fused int8 kernels disagree with simulated Q/DQ on this CPU ({device}): mean cosine "
        f"{fidelity.cosine_mean:.4f}{top1}, a difference {fidelity.error_ratio:.3g}x the INT8 error itself, "
        f"over {fidelity.samples} samples. Simulated Q/DQ computes what TensorRT computes and predicts it; "
        "fused kernels can saturate on CPUs without VNNI.",
        "Judge with --int8-ort-mode simulated (the default) to predict TensorRT; use fused numbers only for "
        "deployment on this CPU with ONNX Runtime itself, or on a CPU with VNNI.",
        {
            "device": device,
            "samples": fidelity.samples,
            "cosine_mean": fidelity.cosine_mean,
            "cosine_min": fidelity.cosine_min,
            "top1_agreement": fidelity.top1_agreement,
            "error_ratio": fidelity.error_ratio,
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


# ---- all of them for one gate ---------------------------------------------------------------------


def session_threads(requested: int, model: onnx.ModelProto) -> int:
    """Threads of a diagnostic session: the gate's setting, else one for a small model (0: ORT's default)."""
    if requested:
        return requested
    weights = sum(len(init.raw_data) or 4 * len(init.float_data) for init in model.graph.initializer)
    return 1 if weights < SMALL_MODEL_BYTES else 0


def run_diagnostics(
    context: GateContext, comparison: Comparison, results: Sequence[MetricResult]
) -> tuple[Finding, ...]:
    """Every check that applies to the gate of ``context``; the model-running ones on at most
    :data:`DIAGNOSTIC_SAMPLES` samples of each data set."""
    info = context.model.info
    batch_size = context.batch_size
    threads = session_threads(context.threads, context.model.proto)
    findings: list[Finding | None] = []
    findings.append(check_calibration_size(context.calibration_data.num_samples, context.min_calib_samples))
    findings.append(check_eval_set_size(results, comparison))
    held_out = context.held_out
    calib_subset = context.calibration_data.head(DIAGNOSTIC_SAMPLES)
    eval_subset = context.eval_data.head(DIAGNOSTIC_SAMPLES) if held_out else calib_subset
    if held_out:
        findings.append(check_shapes(info, context.calibration_data, context.eval_data))
        calib_feeds = next(calib_subset.batches(calib_subset.num_samples))
        eval_feeds = next(eval_subset.batches(eval_subset.num_samples))
        for tensor in info.inputs:
            calib_stats = channel_stats(calib_feeds[tensor.name])
            eval_stats = channel_stats(eval_feeds[tensor.name])
            if calib_stats is not None and eval_stats is not None:
                findings.append(check_preprocessing(tensor.name, calib_stats, eval_stats))

    quantized = context.default_quantized
    amax = {tensor: scale * 127.0 for tensor, scale in quantized.activation_scales.items()}
    if amax:
        # the FP32 model the Q/DQ model was made from (equalized when the plan says so) carries the amax
        source = context.fp32_model(context.plan.equalize)
        probe = ActivationProbe(source.proto, list(amax), threads=threads)
        calib_ranges = probe.measure(calib_subset.batches(batch_size), amax)
        findings.append(check_distribution_shape(calib_ranges, amax, samples=calib_subset.num_samples))
        if held_out:
            eval_ranges = probe.measure(eval_subset.batches(batch_size), amax)
            findings.append(check_clipping(calib_ranges, eval_ranges, amax, samples=eval_subset.num_samples))

    fp32_runner = context.fp32_runner()
    if context.fp32_reference is not None:
        reference = load_fp32_reference(
            context.fp32_reference, fp32_runner.output_names, context.eval_data.num_samples
        )
        findings.append(
            reference_parity(
                fp32_runner,
                context.eval_data,
                reference,
                batch_size=batch_size,
                source=str(context.fp32_reference),
            )
        )
    if context.backend.name != "onnxruntime":
        ort_fp32 = OrtRunner(context.model.proto, precision="fp32", optimize=True, threads=threads)
        names = list(ort_fp32.output_names)
        findings.append(
            check_fp32_parity(
                run_outputs(fp32_runner, eval_subset, batch_size, names),
                run_outputs(ort_fp32, eval_subset, batch_size, names),
                reference_name="ONNX Runtime's FP32 result",
            )
        )
    else:
        # the other mode than the gate's own, built from the same Q/DQ model
        gate_is_fused = context.ort_mode == "fused"
        other = OrtRunner(
            quantized.proto,
            precision="int8",
            optimize=not gate_is_fused,
            threads=threads,
            mode="simulated" if gate_is_fused else "fused",
        )
        own = context.int8_runner()
        simulated, fused = (other, own) if gate_is_fused else (own, other)
        output = select_output(simulated, context.output)
        repeated = eval_subset.head(REPEAT_SAMPLES)
        fidelity = measure_fidelity(simulated, fused, fp32_runner, repeated.batches(batch_size), output)
        findings.append(check_cpu_fidelity(fidelity, device=device_text()))
    if context.check_determinism:
        repeated_batches = list(eval_subset.head(REPEAT_SAMPLES).batches(batch_size))
        findings.append(check_determinism(context.int8_runner(), repeated_batches))
    return sort_findings(f for f in findings if f is not None)


def diagnose_nonfinite(context: GateContext, error: NonFiniteOutputError) -> NonFiniteOutputError:
    """``error`` with the finding that names the first NaN/Inf tensor (``error`` itself if none is found)."""
    models = [
        ("FP32", context.model.proto, True),
        ("INT8", context.default_quantized.proto, False),
    ]
    finding = locate_nonfinite(models, context.eval_data.batches(context.batch_size), threads=context.threads)
    if finding is None:
        return error
    return NonFiniteTensorError(f"{error} {finding.message[0].upper()}{finding.message[1:]}", finding)
