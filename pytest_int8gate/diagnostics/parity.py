"""FP32 parity: the FP32 engine against a user's reference outputs or against ONNX Runtime's FP32 result."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..backends.base import Runner
from ..data import Dataset, read_numpy_file
from ..errors import DataError
from ..results import Finding
from .limits import DIAGNOSTIC_SAMPLES, PARITY_TOLERANCE

if TYPE_CHECKING:
    pass


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
