"""Empirical bias correction (Nagel et al. 2019, section 4.2): remove the mean output error of quantized
layers by adjusting their float bias in the Q/DQ model.

Quantizing weights and inputs shifts a layer's expected output: ``E[y_int8 - y_fp32] = E[eps x] != 0``
in general (rounding errors do not average out against inputs with a non-zero mean, such as ReLU
outputs, and clipping cuts one tail). The empirical correction measures that shift per output channel
on calibration data and subtracts it from the bias, so the expected output matches FP32 again. The bias
stays float in a Q/DQ model (TensorRT adds it in the int8 kernel's float epilogue), so the correction
costs nothing at run time. Layers are corrected one at a time in topological order, each measured with
the layers before it already corrected, so that a shift an earlier layer passes on is not corrected
twice; that is one pass over the data per corrected layer, plus one FP32 pass and one final pass that
measures the result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .graph import graph_consumers
from .probe import probe

#: Ops whose third input is a per-output-channel bias on output axis 1.
BIASED_OPS = ("Conv", "ConvTranspose", "Gemm")
#: Batches of calibration data, produced anew for every pass.
BatchSource = Callable[[], Iterable[Mapping[str, np.ndarray]]]


@dataclass(frozen=True)
class LayerBiasCorrection:
    """One corrected layer: mean over channels of |E[int8 - fp32]| of its output, before and after."""

    layer: str
    bias: str  # the initializer the corrected layer now reads
    channels: int
    mean_error_before: float
    mean_error_after: float
    max_correction: float  # largest |change| of a bias value

    def as_dict(self) -> dict[str, object]:
        return {
            "layer": self.layer,
            "bias": self.bias,
            "channels": self.channels,
            "mean_error_before": self.mean_error_before,
            "mean_error_after": self.mean_error_after,
            "max_correction": self.max_correction,
        }


@dataclass(frozen=True)
class BiasCorrectionReport:
    """What was corrected, what could not be and why, on how many samples."""

    layers: tuple[LayerBiasCorrection, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)
    samples: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "layers": [layer.as_dict() for layer in self.layers],
            "skipped": dict(self.skipped),
            "samples": self.samples,
        }


def correction_problem(node: onnx.NodeProto, initializers: Mapping[str, onnx.TensorProto]) -> str:
    """Why ``node``'s bias cannot be corrected ("" if it can): no bias input, or not one per channel."""
    if node.op_type not in BIASED_OPS:
        return f"{node.op_type} has no bias input"
    if len(node.input) < 3 or not node.input[2]:
        return "the layer has no bias"
    bias = initializers.get(node.input[2])
    if bias is None:
        return f"the bias {node.input[2]!r} is not a constant initializer"
    if bias.data_type != TensorProto.FLOAT:
        return f"the bias {bias.name!r} is not float32"
    dims = [int(d) for d in bias.dims]
    if not (len(dims) == 1 or (len(dims) == 2 and dims[0] == 1)):
        return f"the bias {bias.name!r} has shape {dims}, not one value per output channel"
    return ""


def _is_quantized(node: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto]) -> bool:
    return any(name in producers and producers[name].op_type == "DequantizeLinear" for name in node.input[:2])


class _ChannelMeans:
    """Running per-channel sums of tensors whose channels are on axis 1."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, values: np.ndarray) -> None:
        moved = np.moveaxis(np.asarray(values, dtype=np.float64), 1, 0).reshape(values.shape[1], -1)
        self.sums[name] = self.sums.get(name, 0.0) + moved.sum(axis=1)
        self.counts[name] = self.counts.get(name, 0) + moved.shape[1]

    def mean(self, name: str) -> np.ndarray:
        return np.asarray(self.sums[name] / self.counts[name])


def _channel_means(
    model: onnx.ModelProto, tensors: Sequence[str], batches: BatchSource, *, precision: str, threads: int
) -> tuple[_ChannelMeans, int]:
    means = _ChannelMeans()

    def accumulate(feeds: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray]) -> None:
        for name in tensors:
            means.add(name, values[name])

    # Q/DQ models run unoptimised: simulated quantization is what TensorRT computes.
    samples = probe(
        model,
        tensors,
        batches(),
        accumulate,
        precision=precision,
        optimize=precision == "fp32",
        threads=threads,
    )
    return means, samples


def correct_biases(
    fp32: onnx.ModelProto,
    quantized: onnx.ModelProto,
    layers: Iterable[str],
    batches: BatchSource,
    *,
    threads: int = 0,
) -> tuple[onnx.ModelProto, BiasCorrectionReport]:
    """A copy of the Q/DQ model ``quantized`` with the bias of each of ``layers`` corrected.

    ``fp32`` is the model ``quantized`` was made from (same node and tensor names); ``batches`` yields
    calibration feeds and is called once per pass. Layers that cannot be corrected (no bias, not
    quantized in ``quantized``) are listed in the report's ``skipped`` with the reason.
    """
    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    graph = model.graph
    wanted = set(layers)
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output if out}
    targets: list[onnx.NodeProto] = []
    skipped: dict[str, str] = {}
    for node in graph.node:
        if node.name not in wanted:
            continue
        problem = correction_problem(node, initializers)
        if not problem and not _is_quantized(node, producers):
            problem = "the layer is not quantized in this model"
        if problem:
            skipped[node.name] = problem
        else:
            targets.append(node)
    missing = wanted - {node.name for node in graph.node}
    skipped.update(dict.fromkeys(sorted(missing), "no node of this name in the quantized model"))
    if not targets:
        return model, BiasCorrectionReport(layers=(), skipped=skipped)

    outputs = [node.output[0] for node in targets]
    reference, samples = _channel_means(fp32, outputs, batches, precision="fp32", threads=threads)
    _own_biases(graph, targets)
    initializers = {init.name: init for init in graph.initializer}
    before: dict[str, float] = {}
    corrections: dict[str, float] = {}
    for node, output in zip(targets, outputs, strict=True):
        current, _ = _channel_means(model, [output], batches, precision="int8", threads=threads)
        error = current.mean(output) - reference.mean(output)
        before[node.name] = float(np.mean(np.abs(error)))
        bias = initializers[node.input[2]]
        values = numpy_helper.to_array(bias)
        corrected = (values.astype(np.float64) - error.reshape(values.shape)).astype(values.dtype)
        corrections[node.name] = float(np.max(np.abs(corrected.astype(np.float64) - values)))
        bias.CopyFrom(numpy_helper.from_array(corrected, bias.name))
    final, _ = _channel_means(model, outputs, batches, precision="int8", threads=threads)
    report = BiasCorrectionReport(
        layers=tuple(
            LayerBiasCorrection(
                layer=node.name,
                bias=node.input[2],
                channels=int(reference.mean(output).shape[0]),
                mean_error_before=before[node.name],
                mean_error_after=float(np.mean(np.abs(final.mean(output) - reference.mean(output)))),
                max_correction=corrections[node.name],
            )
            for node, output in zip(targets, outputs, strict=True)
        ),
        skipped=skipped,
        samples=samples,
    )
    return model, report


def _own_biases(graph: onnx.GraphProto, targets: Sequence[onnx.NodeProto]) -> None:
    """Give each target a bias initializer of its own: a corrected bias must not change another node."""
    readers = graph_consumers(graph)
    taken = {init.name for init in graph.initializer} | {t for n in graph.node for t in (*n.input, *n.output)}
    initializers = {init.name: init for init in graph.initializer}
    for node in targets:
        name = node.input[2]
        if len(readers.get(name, [])) == 1 and name not in {vi.name for vi in graph.output}:
            continue
        fresh, suffix = f"{name}_bias_corrected", 1
        while fresh in taken:
            fresh = f"{name}_bias_corrected_{suffix}"
            suffix += 1
        taken.add(fresh)
        copy = onnx.TensorProto()
        copy.CopyFrom(initializers[name])
        copy.name = fresh
        graph.initializer.append(copy)
        node.input[2] = fresh
