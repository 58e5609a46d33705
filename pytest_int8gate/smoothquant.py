"""SmoothQuant (Xiao et al. 2023) for MatMul/Gemm layers whose input activation has per-channel outliers:
a per-input-channel scale moves the outliers from the activation (quantized per tensor) into the weight
(quantized per output channel), with the FP32 function unchanged.

For input channel c, ``s_c = max|X_c| ** alpha / max|W_c| ** (1 - alpha)``; ``X`` is divided by ``s`` and
the weight's input rows are multiplied by it. The division is folded into the layer producing ``X`` when
that layer is a LayerNormalization over the last axis (its gamma and beta) or a MatMul/Gemm with constant
weights (its output columns and bias), and ``X`` feeds nothing else; otherwise a ``Mul`` by ``1/s`` is
inserted before the layer (it runs in float; the smoothed activation is what gets quantized).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import numpy_helper

from .choices import SMOOTHQUANT_ALPHAS
from .errors import ModelError
from .graph import LoadedModel, model_hash

ALPHAS = SMOOTHQUANT_ALPHAS
DEFAULT_ALPHA = 0.5
#: Scales are kept within this range of 1: a channel that is all zeros must not blow up its weight row.
_SCALE_LIMIT = 1e4
SMOOTHABLE_OPS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class SmoothTarget:
    """A layer SmoothQuant can apply to, and where the division by ``s`` goes."""

    layer: str
    activation: str  # the input tensor X whose channels (its last axis) are smoothed
    weight: str  # the constant weight's initializer
    weight_axis: int  # the weight's axis that indexes the input channels
    channels: int
    #: "layernorm" / "matmul": folded into ``producer``; "mul": a Mul inserted before the layer
    fold: str
    producer: str | None = None

    def describe(self) -> str:
        if self.fold == "mul":
            return f"a Mul by 1/s inserted before {self.layer} (runs in float)"
        kind = "gamma and beta" if self.fold == "layernorm" else "output columns"
        return f"1/s folded into {self.producer}'s {kind}"


@dataclass(frozen=True)
class SmoothRefusal:
    """A layer SmoothQuant cannot apply to, and why."""

    layer: str
    reason: str


@dataclass(frozen=True)
class SmoothedLayer:
    """What smoothing did to one layer."""

    target: SmoothTarget
    alpha: float
    scale_min: float
    scale_max: float
    #: the activation's largest channel max over its median channel max, before and after
    spread_before: float
    spread_after: float

    def describe(self) -> str:
        return (
            f"{self.target.layer} (alpha {self.alpha:g}): scales {self.scale_min:.3g}..{self.scale_max:.3g}, "
            f"activation channel spread {self.spread_before:.3g} -> {self.spread_after:.3g}; "
            f"{self.target.describe()}"
        )


@dataclass(frozen=True)
class SmoothQuantReport:
    layers: tuple[SmoothedLayer, ...]


class _Graph:
    """Lookups over one graph: initializers, producers and consumers of each tensor."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for output in node.output:
                self.producer[output] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name])

    def only_consumer(self, tensor: str, node: onnx.NodeProto) -> bool:
        users = self.consumers.get(tensor, [])
        return tensor not in self.outputs and len(users) == 1 and users[0] is node


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(onnx.helper.get_attribute_value(attribute))
    return default


def smoothquant_targets(loaded: LoadedModel) -> dict[str, SmoothTarget | SmoothRefusal]:
    """Every MatMul/Gemm layer of ``loaded``: its target, or why SmoothQuant cannot apply to it."""
    context = _Graph(loaded.proto.graph)
    entries: dict[str, SmoothTarget | SmoothRefusal] = {}
    for node in loaded.proto.graph.node:
        if node.op_type in SMOOTHABLE_OPS:
            entries[node.name] = _target(node, context)
    return entries


def _target(node: onnx.NodeProto, context: _Graph) -> SmoothTarget | SmoothRefusal:
    if node.op_type == "Gemm" and _attr(node, "transA", 0):
        return SmoothRefusal(node.name, "Gemm with transA: its input channels are not its last axis")
    if len(node.input) < 2 or node.input[1] not in context.initializers:
        return SmoothRefusal(node.name, "its second input is not a constant weight (activation x activation)")
    activation, weight_name = node.input[0], node.input[1]
    if activation in context.initializers:
        return SmoothRefusal(node.name, "its first input is a constant, not an activation")
    weight = context.initializers[weight_name]
    if len(weight.dims) != 2:
        return SmoothRefusal(node.name, f"its weight has rank {len(weight.dims)}, not 2")
    if len(context.consumers.get(weight_name, [])) != 1:
        return SmoothRefusal(node.name, f"its weight {weight_name!r} is shared with another node")
    weight_axis = 1 if node.op_type == "Gemm" and _attr(node, "transB", 0) else 0
    channels = int(weight.dims[weight_axis])
    producer = context.producer.get(activation)
    fold = "mul"
    if producer is not None and context.only_consumer(activation, node):
        fold = _fold_kind(producer, context, channels)
    return SmoothTarget(
        layer=node.name,
        activation=activation,
        weight=weight_name,
        weight_axis=weight_axis,
        channels=channels,
        fold=fold,
        producer=producer.name if fold != "mul" and producer is not None else None,
    )


def _fold_kind(producer: onnx.NodeProto, context: _Graph, channels: int) -> str:
    """Whether ``producer``'s output channels can absorb ``1/s``: "layernorm", "matmul" or "mul" (no)."""

    def private_constant(name: str, shape: tuple[int, ...]) -> bool:
        return (
            name in context.initializers
            and tuple(context.initializers[name].dims) == shape
            and len(context.consumers.get(name, [])) == 1
        )

    if producer.op_type == "LayerNormalization" and _attr(producer, "axis", -1) == -1:
        inputs = list(producer.input) + [""] * 3
        if private_constant(inputs[1], (channels,)) and (
            not inputs[2] or private_constant(inputs[2], (channels,))
        ):
            return "layernorm"
    if producer.op_type in SMOOTHABLE_OPS and len(producer.input) >= 2:
        if producer.op_type == "Gemm" and _attr(producer, "transA", 0):
            return "mul"
        weight = producer.input[1]
        if weight not in context.initializers or len(context.initializers[weight].dims) != 2:
            return "mul"
        out_axis = 0 if producer.op_type == "Gemm" and _attr(producer, "transB", 0) else 1
        if context.initializers[weight].dims[out_axis] != channels or len(context.consumers[weight]) != 1:
            return "mul"
        bias = producer.input[2] if len(producer.input) > 2 else ""
        if bias and not private_constant(bias, (channels,)):
            return "mul"
        return "matmul"
    return "mul"


def select_targets(
    loaded: LoadedModel, layers: Iterable[str] | None = None
) -> tuple[list[SmoothTarget], list[SmoothRefusal]]:
    """The targets of ``layers`` (every MatMul/Gemm when None) and the refusals among them; a name that
    is not a MatMul/Gemm layer of the model is a :class:`ModelError`."""
    entries = smoothquant_targets(loaded)
    names = list(entries) if layers is None else list(dict.fromkeys(layers))
    targets: list[SmoothTarget] = []
    refusals: list[SmoothRefusal] = []
    for name in names:
        entry = entries.get(name)
        if entry is None:
            raise ModelError(
                f"{loaded.info.source}: SmoothQuant layer {name!r} is not a MatMul or Gemm layer of the "
                "model."
            )
        if isinstance(entry, SmoothTarget):
            targets.append(entry)
        else:
            refusals.append(entry)
    return targets, refusals


def activation_channel_max(
    model: onnx.ModelProto,
    targets: Sequence[SmoothTarget],
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    threads: int = 0,
) -> dict[str, np.ndarray]:
    """Activation tensor -> max |x| per channel (its last axis), from one FP32 pass over ``batches``."""
    from .probe import probe  # runs a model: loaded when a measurement is asked for

    channels = {t.activation: t.channels for t in targets}
    maxima = {name: np.zeros(count) for name, count in channels.items()}

    def accumulate(feeds: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray]) -> None:
        for name, count in channels.items():
            value = np.abs(np.asarray(values[name], dtype=np.float64))
            if value.ndim == 0 or value.shape[-1] != count:
                raise ModelError(
                    f"activation {name!r} has shape {list(value.shape)}; SmoothQuant needs {count} channels "
                    "on its last axis."
                )
            maxima[name] = np.maximum(maxima[name], value.reshape(-1, count).max(axis=0))

    probe(model, list(channels), batches, accumulate, threads=threads)
    return maxima


def smoothing_scales(activation_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """``s_c = max|X_c| ** alpha / max|W_c| ** (1 - alpha)``; 1 where a channel is all zeros, and bounded."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), not {alpha}")
    usable = (activation_max > 0) & (weight_max > 0)
    safe_x = np.where(usable, activation_max, 1.0)
    safe_w = np.where(usable, weight_max, 1.0)
    scales = np.where(usable, safe_x**alpha / safe_w ** (1.0 - alpha), 1.0)
    return np.clip(scales, 1.0 / _SCALE_LIMIT, _SCALE_LIMIT)


def _spread(channel_max: np.ndarray) -> float:
    median = float(np.median(channel_max))
    return float(channel_max.max()) / median if median > 0 else float("inf")


def smooth(
    model: onnx.ModelProto,
    targets: Sequence[SmoothTarget],
    alphas: Mapping[str, float],
    activation_max: Mapping[str, np.ndarray],
) -> tuple[onnx.ModelProto, SmoothQuantReport]:
    """A copy of ``model`` with each target smoothed at its layer's alpha; names of existing nodes and
    tensors are kept (an inserted Mul and its output are named after the layer)."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    context = _Graph(graph)
    arrays: dict[str, np.ndarray] = {}
    done = []
    for target in targets:
        alpha = alphas.get(target.layer, DEFAULT_ALPHA)
        weight = arrays.get(target.weight, context.array(target.weight)).astype(np.float64)
        weight_max = np.abs(np.moveaxis(weight, target.weight_axis, 0)).max(axis=1)
        act_max = np.asarray(activation_max[target.activation], dtype=np.float64)
        scales = smoothing_scales(act_max, weight_max, alpha)
        shape = [1, 1]
        shape[target.weight_axis] = target.channels
        arrays[target.weight] = weight * scales.reshape(shape)
        _divide_producer(target, scales, context, arrays, graph)
        done.append(
            SmoothedLayer(
                target=target,
                alpha=alpha,
                scale_min=float(scales.min()),
                scale_max=float(scales.max()),
                spread_before=_spread(act_max),
                spread_after=_spread(act_max / scales),
            )
        )
    for init in graph.initializer:
        if init.name in arrays:
            original = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(arrays[init.name].astype(original.dtype), init.name))
    return rewritten, SmoothQuantReport(tuple(done))


def _divide_producer(
    target: SmoothTarget,
    scales: np.ndarray,
    context: _Graph,
    arrays: dict[str, np.ndarray],
    graph: onnx.GraphProto,
) -> None:
    def divide(name: str, axis: int) -> None:
        values = arrays.get(name, context.array(name)).astype(np.float64)
        shape = [1] * values.ndim
        shape[axis] = target.channels
        arrays[name] = values / scales.reshape(shape)

    if target.fold == "layernorm":
        producer = context.producer[target.activation]
        divide(producer.input[1], 0)
        if len(producer.input) > 2 and producer.input[2]:
            divide(producer.input[2], 0)
        return
    if target.fold == "matmul":
        producer = context.producer[target.activation]
        divide(producer.input[1], 0 if producer.op_type == "Gemm" and _attr(producer, "transB", 0) else 1)
        if len(producer.input) > 2 and producer.input[2]:
            divide(producer.input[2], 0)
        return
    # a Mul by 1/s before the layer: its output replaces the activation as the layer's input
    layer = next(node for node in graph.node if node.name == target.layer)
    inverse = f"{target.layer}/smoothquant/inverse_scale"
    smoothed = f"{target.layer}/smoothquant/output"
    dtype = np.float32
    graph.initializer.append(numpy_helper.from_array((1.0 / scales).astype(dtype), inverse))
    mul = onnx.helper.make_node(
        "Mul", [target.activation, inverse], [smoothed], name=f"{target.layer}/smoothquant/Mul"
    )
    position = list(graph.node).index(layer)
    graph.node.insert(position, mul)
    layer.input[0] = smoothed


def smoothed_model(
    loaded: LoadedModel,
    alphas: Mapping[str, float],
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    threads: int = 0,
) -> tuple[LoadedModel, SmoothQuantReport]:
    """``loaded`` with the layers of ``alphas`` smoothed, their activations measured on ``batches``; a
    layer SmoothQuant cannot apply to is a :class:`ModelError` naming it and the reason."""
    targets, refusals = select_targets(loaded, alphas)
    if refusals:
        refusal = refusals[0]
        raise ModelError(
            f"{loaded.info.source}: SmoothQuant cannot apply to {refusal.layer!r}: {refusal.reason}."
        )
    for layer, alpha in alphas.items():
        if not 0.0 < alpha < 1.0:
            raise ModelError(f"SmoothQuant alpha of {layer!r} must be in (0, 1), not {alpha}.")
    maxima = activation_channel_max(loaded.proto, targets, batches, threads=threads)
    proto, report = smooth(loaded.proto, targets, alphas, maxima)
    info = replace(loaded.info, model_hash=model_hash(proto))
    return LoadedModel(proto=proto, info=info), report
