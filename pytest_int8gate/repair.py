"""The repair ladder's rewrites as pipeline artefacts: an equalized or smoothed (SmoothQuant) FP32 model
(hashed, written to the cache, since it is the model a user then deploys) and a bias-corrected Q/DQ model.

The ladder itself (its rungs, and which is tried when) lives in ladder.py; the rewrites in equalize.py and
bias_correction.py. This module joins them to the pipeline's plans and cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import __version__
from .bias_correction import BatchSource, correct_biases
from .cache import ArtifactCache, content_key
from .choices import FP32_TOLERANCE as FP32_TOLERANCE
from .choices import REPAIRS as REPAIRS  # the rung names and their check; these paths stay importable
from .choices import check_repairs as check_repairs
from .data import sample_count
from .equalize import EqualizationReport, Fp32Difference, equalized_model, fp32_difference
from .errors import ModelError
from .graph import LoadedModel
from .quantize import QuantizedModel
from .smoothquant import SmoothQuantReport, smoothed_model


@dataclass(frozen=True)
class RewrittenModel:
    """An equalized FP32 model: what to deploy, where it was written, and its hash."""

    model: LoadedModel
    report: EqualizationReport
    sha256: str  # of the serialized model (the file's bytes)
    path: Path | None  # None without a cache directory

    def deploy_note(self) -> str:
        """One line for the verdict: which pairs were equalized, and the model INT8 was made from."""
        pairs = ", ".join(f"{p.pair.consumer} with {p.pair.producer}" for p in self.report.pairs)
        where = str(self.path) if self.path is not None else "not written (no cache directory)"
        return f"FP32 model equalized ({pairs}); deploy {where} (sha256 {self.sha256})"


def equalized_variant(
    model: LoadedModel, consumers: frozenset[str], cache: ArtifactCache | None
) -> RewrittenModel:
    """``model`` with the pairs of ``consumers`` equalized (paper's weight rule), written to ``cache``."""
    rewritten, report = equalized_model(model, consumers)
    data = rewritten.proto.SerializeToString(deterministic=True)
    digest = hashlib.sha256(data).hexdigest()
    path = None
    if cache is not None:
        key = content_key(
            {"model": model.info.model_hash, "equalize": sorted(consumers), "version": __version__}
        )
        path, _ = cache.get_or_build("equalized", key, ".onnx", lambda: data)
    return RewrittenModel(model=rewritten, report=report, sha256=digest, path=path)


@dataclass(frozen=True)
class SmoothedVariant:
    """An FP32 model with SmoothQuant applied to some layers: what to deploy, and how it was smoothed."""

    model: LoadedModel
    report: SmoothQuantReport
    sha256: str
    path: Path | None  # None without a cache directory
    fp32_difference: Fp32Difference

    def deploy_note(self) -> str:
        """One line for the verdict: each smoothed layer, the FP32 check, and the model to deploy."""
        layers = "; ".join(layer.describe() for layer in self.report.layers)
        where = str(self.path) if self.path is not None else "not written (no cache directory)"
        difference = self.fp32_difference
        return (
            f"FP32 model smoothed (SmoothQuant: {layers}); its outputs differ from the original's by at most "
            f"{difference.max_abs:.3g} (largest output {difference.reference_max_abs:.3g}) on "
            f"{difference.samples} calibration samples; deploy {where} (sha256 {self.sha256})"
        )


#: Calibration samples the smoothed model's FP32 outputs are compared on.
SMOOTHQUANT_CHECK_SAMPLES = 256


def smoothed_variant(
    original: LoadedModel,
    source: LoadedModel,
    alphas: Mapping[str, float],
    batches: Callable[[], Iterable[Mapping[str, np.ndarray]]],
    cache: ArtifactCache | None,
    *,
    threads: int = 0,
) -> SmoothedVariant:
    """``source`` (``original`` or its equalized variant) with the layers of ``alphas`` smoothed, their
    activations measured on ``batches()``; a rewrite that changes the FP32 outputs is a ModelError."""
    smoothed, report = smoothed_model(source, alphas, batches(), threads=threads)
    difference = fp32_difference(
        original.proto, smoothed.proto, _first_samples(batches(), SMOOTHQUANT_CHECK_SAMPLES), threads=threads
    )
    if difference.relative > FP32_TOLERANCE:
        raise ModelError(
            f"{original.info.source}: SmoothQuant of {', '.join(alphas)} changed the FP32 outputs by "
            f"{difference.max_abs:.3g} (largest output {difference.reference_max_abs:.3g}); it is not "
            "applied."
        )
    data = smoothed.proto.SerializeToString(deterministic=True)
    digest = hashlib.sha256(data).hexdigest()
    path = None
    if cache is not None:
        key = content_key({"model": digest, "version": __version__})
        path, _ = cache.get_or_build("smoothed", key, ".onnx", lambda: data)
    return SmoothedVariant(smoothed, report, digest, path, difference)


def _first_samples(
    batches: Iterable[Mapping[str, np.ndarray]], count: int
) -> Iterator[Mapping[str, np.ndarray]]:
    seen = 0
    for batch in batches:
        yield batch
        seen += sample_count(batch)
        if seen >= count:
            return


def bias_corrected(
    source: LoadedModel,
    quantized: QuantizedModel,
    layers: Iterable[str],
    batches: BatchSource,
    *,
    threads: int = 0,
) -> QuantizedModel:
    """``quantized`` with the bias of ``layers`` corrected on ``batches`` (calibration data).

    A layer that has no correctable bias is an error; one the plan keeps in float is left alone.
    """
    proto, report = correct_biases(source.proto, quantized.proto, layers, batches, threads=threads)
    structural = {k: v for k, v in report.skipped.items() if k in quantized.quantized_layers}
    if structural:
        name, reason = next(iter(structural.items()))
        raise ModelError(f"{source.info.source}: cannot correct the bias of {name!r}: {reason}.")
    notes = dict(quantized.notes)
    for layer in report.layers:
        remark = (
            f"bias corrected: mean output error {layer.mean_error_before:.3g} -> {layer.mean_error_after:.3g}"
        )
        notes[layer.layer] = f"{notes[layer.layer]}; {remark}" if layer.layer in notes else remark
    return replace(quantized, proto=proto, notes=notes)
