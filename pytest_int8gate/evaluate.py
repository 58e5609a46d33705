"""Run FP32 and INT8 runners over evaluation data and measure how far INT8 strays from FP32.

Metrics accumulate batch by batch (memory grows only by one float per sample, plus the outputs when a
user KPI needs them). NaN or Inf in any output is a failure, never a number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

import numpy as np

from .backends import Runner
from .data import Dataset, Feeds, ModelFeeds, sample_count
from .errors import DataError, ModelError, NonFiniteOutputError
from .output_kinds import (
    SCORE_THRESHOLD,
    OutputKind,
    OutputProfile,
    class_view,
    classify_output,
    position_classes,
)
from .results import Comparison as Comparison  # its home is results.py; this path stays importable
from .results import OutputComparison

#: A user KPI: (outputs [N, ...], labels or None) -> score, higher is better.
KpiFunction = Callable[[np.ndarray, "np.ndarray | None"], float]

#: Activation bytes one evaluation batch may reach, counted as every tensor the FP32 model's nodes produce
#: (graph.activation_bytes: an engine reuses buffers and holds far less at once). Measured on the PP-OCRv4
#: detector at 320 px (169 MB of such tensors per sample): batch 32 peaked at 2.2 GB with both engines,
#: and batches of 1-8 run no slower than 32 on this CPU (conv nets and the SVTR recognizer alike).
EVALUATION_ACTIVATION_BUDGET = 512 << 20


def evaluation_batch_size(requested: int, activation_bytes_per_sample: int | None) -> int:
    """Samples per evaluation batch: ``requested``, fewer when that many samples' activations would exceed
    :data:`EVALUATION_ACTIVATION_BUDGET` (at least 1; ``requested`` when the activations are unknown)."""
    if not activation_bytes_per_sample:
        return requested
    return max(1, min(requested, EVALUATION_ACTIVATION_BUDGET // activation_bytes_per_sample))


def select_output(runner: Runner, output_name: str | None) -> str:
    names = runner.output_names
    if output_name is None:
        return names[0]
    if output_name not in names:
        raise DataError(f"output {output_name!r} is not an output of the model; outputs are {list(names)}.")
    return output_name


def gated_outputs(runner: Runner, output_name: str | None) -> tuple[str, ...]:
    """The outputs a gate judges: every output of the model, or the one ``output_name`` narrows it to."""
    if output_name is None:
        return tuple(runner.output_names)
    return (select_output(runner, output_name),)


def check_finite(array: np.ndarray, *, precision: str, output: str, first_sample: int) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        flat = array.reshape(array.shape[0], -1) if array.ndim else array.reshape(1, 1)
        row, col = (int(i) for i in np.argwhere(~np.isfinite(flat))[0])
        kind = "NaN" if np.isnan(flat[row, col]) else "Inf"
        raise NonFiniteOutputError(
            f"the {precision} model's output {output!r} is {kind} at sample {row + first_sample}."
        )


def checked_output(value: np.ndarray, output: str, *, precision: str, first_sample: int) -> np.ndarray:
    """``value`` of ``output`` when it can be compared sample by sample: a sample axis, no NaN or Inf."""
    if value.ndim == 0:  # outputs are compared sample by sample: a scalar has no sample axis
        raise ModelError(
            f"the {precision} model's output {output!r} is a scalar (0-d), which has no sample axis to "
            "compare per sample; gate another output (the output setting) or give the scalar a batch axis."
        )
    check_finite(value, precision=precision, output=output, first_sample=first_sample)
    return value


class MetricAccumulator:
    """Streams (fp32, int8, labels) batches into the comparison metrics."""

    def __init__(self, *, labels: bool, keep_outputs: bool = False, kind: OutputKind | None = None) -> None:
        """``kind``: what the output is (None: read from the first batch given to :meth:`add`)."""
        self.labels = labels
        self.keep_outputs = keep_outputs
        self.count = 0
        self.cosines: list[np.ndarray] = []
        self.signal = 0.0
        self.noise = 0.0
        self.max_abs = 0.0
        self.agree = 0
        self.fp32_top1 = 0
        self.int8_top1 = 0
        self.fp32_top5 = 0
        self.int8_top5 = 0
        self.classes: int | None = None
        self.kept: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
        self.hits: dict[str, list[np.ndarray]] = {}
        self.kind: OutputKind | None = kind
        # per-element mean and sum of squared deviations of FP32 across samples (Chan et al.'s merge)
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.decisions = 0
        self.decisions_agreed = 0
        self.position_decisions = 0
        self.positions_agreed = 0
        self.exact = 0

    def add(self, fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None = None) -> None:
        if fp32.shape != int8.shape:
            raise DataError(f"FP32 output shape {fp32.shape} differs from INT8 output shape {int8.shape}.")
        n = fp32.shape[0]
        if self.kind is None:
            self.kind = classify_output(fp32)
        a = fp32.reshape(n, -1).astype(np.float64)
        b = int8.reshape(n, -1).astype(np.float64)
        self._add_spread(a)
        if self.kind is OutputKind.INTEGER:
            self.exact += self._hits("exact_match", np.all(a == b, axis=1))
        if self.kind is OutputKind.SCORES:
            agreed = (a > SCORE_THRESHOLD) == (b > SCORE_THRESHOLD)
            self.decisions += agreed.size
            self.decisions_agreed += int(np.count_nonzero(agreed))
        diff = a - b
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        denom = na * nb
        dots = np.einsum("ij,ij->i", a, b)
        cos = np.where(
            denom > 0, dots / np.where(denom > 0, denom, 1.0), np.where((na == 0) & (nb == 0), 1.0, 0.0)
        )
        self.cosines.append(np.clip(cos, -1.0, 1.0))
        self.signal += float(np.sum(a * a))
        self.noise += float(np.sum(diff * diff))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))) if diff.size else 0.0)
        classes = classification_view(fp32) if self.kind is OutputKind.CLASS_SCORES else None
        if classes is None and self.kind is OutputKind.CLASS_SCORES:
            # probabilities per position ([N, T, C]): decisions are per position, labels do not apply
            positions, int8_positions = position_classes(fp32), position_classes(int8)
            if positions is not None and int8_positions is not None:
                same = positions.argmax(axis=1) == int8_positions.argmax(axis=1)
                self.position_decisions += same.size
                self.positions_agreed += int(np.count_nonzero(same))
        if classes is not None:
            fc, ic = classes, classification_view(int8)
            assert ic is not None
            self.classes = fc.shape[1]
            f1, i1 = fc.argmax(axis=1), ic.argmax(axis=1)
            self._hits("top1_agreement", f1 == i1)
            self.agree += int(np.sum(f1 == i1))
            if labels is not None:
                bad = labels[(labels < 0) | (labels >= fc.shape[1])]
                if bad.size:
                    raise DataError(
                        f"labels hold class {int(bad[0])} but the output has classes 0..{fc.shape[1] - 1}."
                    )
                self.fp32_top1 += self._hits("fp32_top1", f1 == labels)
                self.int8_top1 += self._hits("int8_top1", i1 == labels)
                self.fp32_top5 += self._hits("fp32_top5", _topk_hits(fc, labels, 5))
                self.int8_top5 += self._hits("int8_top5", _topk_hits(ic, labels, 5))
        if self.keep_outputs:
            self.kept[0].append(fp32)
            self.kept[1].append(int8)
            if labels is not None:
                self.kept[2].append(labels)
        self.count += n

    def _add_spread(self, values: np.ndarray) -> None:
        n = values.shape[0]
        if n == 0:
            return
        batch_mean = values.mean(axis=0)
        batch_m2 = ((values - batch_mean) ** 2).sum(axis=0)
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = batch_mean, batch_m2
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)

    def profile(self, output_name: str) -> OutputProfile | None:
        if self.mean is None or self.m2 is None or self.kind is None or self.count == 0:
            return None
        spread = math.sqrt(float(np.mean(self.m2)) / self.count) if self.m2.size else 0.0
        offset = math.sqrt(float(np.mean(self.mean**2))) if self.mean.size else 0.0
        return OutputProfile(output_name, self.kind, int(self.mean.size), spread, offset)

    def _hits(self, name: str, mask: np.ndarray) -> int:
        self.hits.setdefault(name, []).append(mask)
        return int(np.count_nonzero(mask))

    def result(self, output_name: str, kpi: KpiFunction | None = None) -> OutputComparison:
        cos = np.concatenate(self.cosines) if self.cosines else np.zeros(0)
        fp32: dict[str, float] = {}
        int8: dict[str, float] = {
            "cosine": float(cos.mean()) if cos.size else 1.0,
            "cosine_min": float(cos.min()) if cos.size else 1.0,
            "sqnr_db": sqnr_db(self.signal, self.noise),
            "max_abs_error": self.max_abs,
        }
        n = max(self.count, 1)
        profile = self.profile(output_name)
        if profile is not None:
            int8["rel_rmse"] = relative_rmse(self.noise, self.count * profile.elements, profile.spread)
        if self.kind is OutputKind.SCORES:
            int8["decision_agreement"] = self.decisions_agreed / max(self.decisions, 1)
        if self.position_decisions:
            int8["top1_agreement"] = self.positions_agreed / self.position_decisions
        if self.kind is OutputKind.INTEGER:
            int8["exact_match"] = self.exact / n
        if self.classes is not None:
            int8["top1_agreement"] = self.agree / n
            if self.labels:
                fp32["top1"] = self.fp32_top1 / n
                int8["top1"] = self.int8_top1 / n
                fp32["top5"] = self.fp32_top5 / n
                int8["top5"] = self.int8_top5 / n
        if kpi is not None:
            outs_f = np.concatenate(self.kept[0])
            outs_i = np.concatenate(self.kept[1])
            labels = np.concatenate(self.kept[2]) if self.kept[2] else None
            fp32["kpi"] = float(kpi(outs_f, labels))
            int8["kpi"] = float(kpi(outs_i, labels))
        hits = {name: np.concatenate(masks) for name, masks in self.hits.items()}
        return OutputComparison(output_name, self.count, fp32, int8, cos, hits, profile, self.labels)


#: [N, C] class scores (trailing 1-sized axes dropped), or None when the output is not a class vector.
classification_view = class_view


def relative_rmse(noise: float, values: int, spread: float) -> float:
    """RMS of INT8 - FP32 over ``values`` values, relative to the FP32 spread across samples.

    Zero error is 0 whatever the spread; an error on an output that does not vary across samples is
    infinite (nothing can be said to be preserved)."""
    if noise == 0.0 or values == 0:
        return 0.0
    if spread == 0.0:
        return math.inf
    return math.sqrt(noise / values) / spread


def _topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    hits: np.ndarray = np.any(top == labels[:, None], axis=1)
    return hits


def sqnr_db(signal: float, noise: float) -> float:
    """Signal-to-quantization-noise ratio in dB; infinite when INT8 equals FP32 exactly."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _labelled_batches(
    dataset: Dataset, batch_size: int, labels: np.ndarray | None
) -> Iterator[tuple[int, Feeds, np.ndarray | None]]:
    start = 0
    for feeds in dataset.batches(batch_size):
        n = sample_count(feeds)
        yield start, feeds, None if labels is None else labels[start : start + n]
        start += n


#: FP32 samples each output's kind is read from: the first this many of the set, whatever the batch size
#: (a batch sized down by memory, or of 1, must not turn class scores into something judged otherwise).
KIND_SAMPLES = 32
#: Bytes of FP32 and INT8 outputs held until the kind is known: outputs so large that KIND_SAMPLES of them
#: would pass this are classified from fewer first samples (as many as fit, at least one; the count
#: depends on an output sample's size alone, never on the batch size).
KIND_HOLD_BYTES = 64 << 20


def kind_samples(bytes_per_sample: float) -> int:
    """First samples each output's kind is read from, for outputs of ``bytes_per_sample`` (FP32 + INT8)."""
    if bytes_per_sample <= 0:
        return KIND_SAMPLES
    return max(1, min(KIND_SAMPLES, int(KIND_HOLD_BYTES // bytes_per_sample)))


class GateAccumulator:
    """One :class:`MetricAccumulator` per gated output. Labels (and a user KPI) belong to one output: the one
    ``output_name`` names, else the first whose FP32 values are class scores ``[N, C]`` (else the first).
    Each output's kind is read from its first FP32 samples (:func:`kind_samples`: :data:`KIND_SAMPLES` when
    they fit in :data:`KIND_HOLD_BYTES`): batches are held until that many have come (or the set ends)."""

    def __init__(self, outputs: tuple[str, ...], *, labels: bool, kpi: bool) -> None:
        self.outputs = outputs
        self.has_labels = labels
        self.kpi = kpi
        self.labelled = outputs[0]
        self.accumulators: dict[str, MetricAccumulator] | None = None
        self._held: list[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray], np.ndarray | None]] = []
        self._held_samples = 0
        self._kind_samples = KIND_SAMPLES

    def _start(self, first: Mapping[str, np.ndarray]) -> dict[str, MetricAccumulator]:
        """The accumulators, from the FP32 values of the set's first samples of every output."""
        kinds = {name: classify_output(first[name]) for name in self.outputs}
        classes = [
            name
            for name in self.outputs
            if kinds[name] is OutputKind.CLASS_SCORES and class_view(first[name]) is not None
        ]
        if classes:
            self.labelled = classes[0]
        return {
            name: MetricAccumulator(labels=self.has_labels, keep_outputs=self.kpi, kind=kinds[name])
            if name == self.labelled
            else MetricAccumulator(labels=False, kind=kinds[name])
            for name in self.outputs
        }

    def add(
        self, fp32: Mapping[str, np.ndarray], int8: Mapping[str, np.ndarray], labels: np.ndarray | None
    ) -> None:
        if self.accumulators is None:
            count = next(iter(fp32.values())).shape[0] if fp32 else 0
            if not self._held and count:
                size = sum(fp32[name].nbytes + int8[name].nbytes for name in self.outputs)
                self._kind_samples = kind_samples(size / count)
            self._held.append((fp32, int8, labels))
            self._held_samples += count
            if self._held_samples >= self._kind_samples:
                self._release()
            return
        for name, acc in self.accumulators.items():
            acc.add(fp32[name], int8[name], labels if name == self.labelled else None)

    def _release(self) -> None:
        """Start the accumulators from the held batches' first samples, then add those batches."""
        held, self._held = self._held, []
        first = {}
        for name in self.outputs:
            # an output whose per-sample shape changes between batches: its first batch's shape
            shape = held[0][0][name].shape[1:]
            parts = [fp32[name] for fp32, _, _ in held if fp32[name].shape[1:] == shape]
            first[name] = np.concatenate(parts)[: self._kind_samples]
        self.accumulators = self._start(first)
        for fp32, int8, labels in held:
            self.add(fp32, int8, labels)

    def result(self, kpi: KpiFunction | None) -> Comparison:
        if self.accumulators is None and self._held:
            self._release()
        if self.accumulators is None:
            raise DataError("the evaluation data holds no samples.")
        compared = []
        for name, acc in self.accumulators.items():
            mine = name == self.labelled
            comparison = acc.result(name, kpi if mine else None)
            compared.append(replace(comparison, labelled=mine))
        return Comparison(tuple(compared))


def run_outputs(
    runner: Runner, feeds: Feeds, outputs: tuple[str, ...], *, precision: str, first_sample: int
) -> dict[str, np.ndarray]:
    """``outputs`` of ``runner`` on one batch, each checked (a sample axis, no NaN or Inf) and with its
    samples on axis 0 (feeds made by a dataset's layout say where each output holds them)."""
    values = runner.run(feeds)
    if isinstance(feeds, ModelFeeds) and feeds.layout is not None:
        layout = feeds.layout
        values = {name: layout.output(name, values[name], feeds.samples, precision) for name in outputs}
    return {
        name: checked_output(values[name], name, precision=precision, first_sample=first_sample)
        for name in outputs
    }


def compare(
    fp32: Runner,
    int8: Runner,
    dataset: Dataset,
    *,
    batch_size: int,
    output_name: str | None = None,
    labels: np.ndarray | None = None,
    kpi: KpiFunction | None = None,
) -> Comparison:
    """Run both runners over ``dataset`` and compare every output (or only ``output_name``)."""
    outputs = gated_outputs(fp32, output_name)
    acc = GateAccumulator(outputs, labels=labels is not None, kpi=kpi is not None)
    for start, feeds, batch_labels in _labelled_batches(dataset, batch_size, labels):
        ref = run_outputs(fp32, feeds, outputs, precision="FP32", first_sample=start)
        got = run_outputs(int8, feeds, outputs, precision="INT8", first_sample=start)
        acc.add(ref, got, batch_labels)
    return acc.result(kpi)


@dataclass(frozen=True)
class ReferenceOutputs:
    """FP32 outputs of a fixed subset, computed once and compared against many INT8 variants."""

    outputs: tuple[str, ...]
    batches: tuple[tuple[Feeds, dict[str, np.ndarray]], ...]
    labels: np.ndarray | None = None

    @staticmethod
    def compute(
        fp32: Runner,
        dataset: Dataset,
        *,
        batch_size: int,
        output_name: str | None = None,
        labels: np.ndarray | None = None,
    ) -> ReferenceOutputs:
        outputs = gated_outputs(fp32, output_name)
        kept = []
        for start, feeds, _ in _labelled_batches(dataset, batch_size, None):
            kept.append((feeds, run_outputs(fp32, feeds, outputs, precision="FP32", first_sample=start)))
        return ReferenceOutputs(outputs, tuple(kept), labels)

    def compare(self, int8: Runner, kpi: KpiFunction | None = None) -> Comparison:
        acc = GateAccumulator(self.outputs, labels=self.labels is not None, kpi=kpi is not None)
        start = 0
        for feeds, ref in self.batches:
            got = run_outputs(int8, feeds, self.outputs, precision="INT8", first_sample=start)
            n = next(iter(ref.values())).shape[0]
            acc.add(ref, got, None if self.labels is None else self.labels[start : start + n])
            start += n
        return acc.result(kpi)
