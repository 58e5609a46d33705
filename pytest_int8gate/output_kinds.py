"""What each model output is (class scores, multi-label scores, embeddings, dense values, integers) and the
default budget that judges it without being blind to the errors that kind of output hides from cosine.

Plain data and numpy only: the evaluation stage classifies an output from its declared shape and its FP32
values on the evaluation set's first samples (evaluate.KIND_SAMPLES, whatever the batch size); the gate
asks here which limits apply when the user gave none and which user-chosen metrics say little about an
output.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


class OutputKind(str, enum.Enum):
    """How an output is judged by default."""

    CLASS_SCORES = "class scores"
    SCORES = "scores in [0, 1]"
    EMBEDDING = "embeddings"
    DENSE = "dense values"
    INTEGER = "integer values"


#: Rows of probabilities sum to one within this (softmax heads); otherwise [0, 1] scores are independent.
PROBABILITY_SUM_TOLERANCE = 1e-3
#: A mean this many times the spread across samples makes an output "offset-dominated": its per-sample
#: cosine stays near 1 whatever happens to the part that varies.
OFFSET_DOMINANCE = 5.0
#: Every row's Euclidean length is 1 within this: an L2-normalised embedding (sentence, face, image
#: retrieval heads), compared by cosine similarity, where the largest coordinate decides nothing.
UNIT_NORM_TOLERANCE = 1e-3
#: Decision threshold of independent scores in [0, 1] (sigmoid outputs: multi-label, binary, masks).
SCORE_THRESHOLD = 0.5

#: Default limits by kind, used for an output when no budget is configured anywhere. ``rel_rmse`` <= 0.2
#: is as strict as cosine >= 0.98 on an output without offset (sqrt(2 * (1 - 0.98)) = 0.2), and unlike
#: cosine it sees an offset-dominated or one-value output. Top-1 agreement >= 0.95: INT8 classifiers
#: that keep their top-1 accuracy typically agree with FP32 on 97-99 % of samples. Class scores are not
#: judged on rel_rmse by default: a classifier's probabilities barely vary across samples of one class (a
#: real file-type classifier on uniform data: agreement 1.0, cosine 1.0, rel_rmse 0.54), and the decision
#: is what matters there.
#: Class scores are judged on the decision (same class as FP32) as well as the values; multi-label scores on
#: each (sample, label) decision; dense values on the error relative to their spread across samples, which
#: an offset cannot hide and which means something for one value per sample; integers (ids, masks) exactly.
DEFAULT_LIMITS: Mapping[OutputKind, Mapping[str, float]] = {
    OutputKind.CLASS_SCORES: {"top1_agreement": 0.95, "cosine": 0.98},
    OutputKind.SCORES: {"decision_agreement": 0.98, "rel_rmse": 0.2},
    OutputKind.EMBEDDING: {"cosine": 0.98, "rel_rmse": 0.2},
    OutputKind.DENSE: {"rel_rmse": 0.2, "cosine": 0.98},
    OutputKind.INTEGER: {"exact_match": 0.98},
}
#: Added to class-score defaults when labels are given.
LABELLED_LIMITS: Mapping[str, float] = {"top1_drop": 0.01}

#: Why each kind's default judges what it does (shown in the header's budget line and the docs).
DEFAULT_REASONS: Mapping[OutputKind, str] = {
    OutputKind.CLASS_SCORES: "class scores: the decision (top-1 agreement with FP32) as well as the values",
    OutputKind.SCORES: "scores in [0, 1] (sigmoid: multi-label, binary, masks): every decision at 0.5, and "
    "the values",
    OutputKind.EMBEDDING: "embeddings (rows of unit length): cosine, as retrieval compares them, and RMS "
    "error relative to the FP32 spread across samples",
    OutputKind.DENSE: "dense values: RMS error relative to the FP32 spread across samples, and cosine",
    OutputKind.INTEGER: "integer values: the share of samples whose output is identical",
}


def class_view(output: np.ndarray) -> np.ndarray | None:
    """``[N, C]`` (trailing 1-sized axes dropped, C >= 2), or None when the output is not a class vector."""
    view = output
    while view.ndim > 2 and view.shape[-1] == 1:
        view = view[..., 0]
    if view.ndim != 2 or view.shape[1] < 2:
        return None
    return view


def _in_unit_interval(values: np.ndarray) -> bool:
    return bool(values.size) and float(values.min()) >= 0.0 and float(values.max()) <= 1.0


def _rows_sum_to_one(rows: np.ndarray) -> bool:
    sums = rows.astype(np.float64).sum(axis=-1)
    return bool(np.all(np.abs(sums - 1.0) <= PROBABILITY_SUM_TOLERANCE))


def _rows_of_unit_length(rows: np.ndarray) -> bool:
    if rows.shape[1] < 3:  # two coordinates of unit length are more likely an angle than an embedding
        return False
    lengths = np.linalg.norm(rows.astype(np.float64), axis=-1)
    return bool(np.all(np.abs(lengths - 1.0) <= UNIT_NORM_TOLERANCE))


def position_classes(output: np.ndarray) -> np.ndarray | None:
    """``[N * positions, C]`` rows of a ``[N, ..., C]`` output whose last axis holds probabilities (a
    softmax per position: sequence recognizers, segmentation); None otherwise."""
    if output.ndim < 3 or output.shape[-1] < 2 or output.dtype.kind != "f" or not _in_unit_interval(output):
        return None
    rows = output.reshape(-1, output.shape[-1])
    return rows if _rows_sum_to_one(rows) else None


def classify_output(fp32: np.ndarray) -> OutputKind:
    """The kind of an output, from a batch ``[N, ...]`` of its FP32 values."""
    if fp32.dtype.kind in "iub":
        return OutputKind.INTEGER
    if fp32.dtype.kind != "f":
        return OutputKind.DENSE
    view = class_view(fp32)
    if view is not None:
        if _in_unit_interval(view) and _rows_sum_to_one(view):
            return OutputKind.CLASS_SCORES
        # after the softmax test: a confident softmax row is nearly one-hot, so of unit length as well
        if _rows_of_unit_length(view):
            return OutputKind.EMBEDDING
        if _in_unit_interval(view):
            return OutputKind.SCORES
        return OutputKind.CLASS_SCORES
    if position_classes(fp32) is not None:
        return OutputKind.CLASS_SCORES
    if _in_unit_interval(fp32):
        return OutputKind.SCORES
    return OutputKind.DENSE


def default_limits(kind: OutputKind, *, has_labels: bool) -> dict[str, float]:
    limits = dict(DEFAULT_LIMITS[kind])
    if has_labels and kind is OutputKind.CLASS_SCORES:
        limits = {**LABELLED_LIMITS, **limits}
    return limits


@dataclass(frozen=True)
class OutputProfile:
    """What the evaluation learnt about one output's FP32 values: its kind and how its values vary."""

    name: str
    kind: OutputKind
    #: Values per sample (1 for ``[N]`` or ``[N, 1]`` outputs).
    elements: int
    #: RMS over elements of each element's standard deviation across samples.
    spread: float
    #: RMS over elements of each element's mean across samples.
    offset: float

    def uninformative(self, metric: str) -> str | None:
        """Why ``metric`` says little about this output, or None when it is meaningful here."""
        if metric in ("cosine", "cosine_min"):
            if self.elements == 1:
                return (
                    f"output {self.name!r} holds one value per sample, so its per-sample cosine is only the "
                    "sign of that value"
                )
            if self.offset > OFFSET_DOMINANCE * self.spread:
                return (
                    f"output {self.name!r} is dominated by a common offset ({self.offset:.3g} against a "
                    f"spread of {self.spread:.3g} across samples), so its cosine stays near 1 whatever "
                    "happens to the part that varies"
                )
        if metric == "sqnr_db" and self.offset > OFFSET_DOMINANCE * self.spread:
            return (
                f"output {self.name!r} is dominated by a common offset, so its SQNR mostly measures the "
                "offset"
            )
        return None

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "elements": self.elements,
            "spread": self.spread,
            "offset": self.offset,
        }
