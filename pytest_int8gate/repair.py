"""The repair ladder's rewrites as pipeline artefacts: an equalized FP32 model (hashed, written to the
cache, since it is the model a user then deploys) and a bias-corrected Q/DQ model.

The ladder itself (its rungs, and which is tried when) lives in ladder.py; the rewrites in equalize.py and
bias_correction.py. This module joins them to the pipeline's plans and cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from . import __version__
from .bias_correction import BatchSource, correct_biases
from .cache import ArtifactCache, content_key
from .choices import REPAIRS as REPAIRS  # the rung names and their check; these paths stay importable
from .choices import check_repairs as check_repairs
from .equalize import EqualizationReport, equalized_model
from .errors import ModelError
from .graph import LoadedModel
from .quantize import QuantizedModel

#: An equalized model whose FP32 outputs move by more than this (relative to the largest output) is
#: not function-preserving: measured float32 rounding is ~1e-7 relative (7.6e-6 on outputs of 45).
FP32_TOLERANCE = 1e-4


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
