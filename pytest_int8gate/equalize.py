"""Cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019): function-preserving rescaling of producer -> consumer layer pairs.

For a producer ``y = W1 x + b1``, an op ``f`` between that is positively homogeneous per channel
(``f(S z) = S f(z)`` for a diagonal ``S > 0``) and a consumer ``W2 f(y) + b2``::

    W2 f(W1 x + b1) = (W2 S) f(S^-1 W1 x + S^-1 b1)

so output channel ``c`` of the producer (weights and bias) may be divided by ``s_c`` and the matching
input channel of the consumer multiplied by ``s_c`` without changing the FP32 function. The paper's
rule picks ``s_c = sqrt(r1_c / r2_c)`` (its ``s_i = (1 / r2_i) sqrt(r1_i r2_i)``), with ``r1_c`` the
range of the producer's output channel ``c`` and ``r2_c`` that of the consumer's input channel ``c``:
both become ``sqrt(r1_c r2_c)``, which maximises the product of the two layers' per-channel precisions.
``weights`` takes ``r1_c`` from the producer's weights (the paper, data-free; ranges are ``max |w|``,
the symmetric scheme's). ``activations`` takes it from the measured range of the consumer's input
channel (SmoothQuant's migration with alpha = 0.5, Xiao et al. 2023): the tensor this project quantizes
per tensor. Pairs that share a layer are re-balanced in sweeps until the scales settle (the paper's
iteration). The pipeline and the bisection's repair use ``weights``: data-free and deterministic.

Under TensorRT's scheme (weights per output channel) the producer's own weight precision does not change;
what changes is the per-tensor scale of the activation between the layers (channel ``c``'s range is
divided by ``s_c``) and the consumer's per-row weight scales. A channel whose activations are ``F`` times
wider than the rest usually comes from a producer row ``F`` times larger, so ``s_c`` grows with ``F`` and
the weight rule brings that channel back among the others (tests/planted.py plants exactly that).

Ops accepted between the two layers, because ``op(s z) = s op(z)`` holds channel by channel for s > 0:
Relu, LeakyRelu, PRelu (any slope), Identity; for channels on axis 1 (a Conv producer) also MaxPool,
AveragePool, GlobalMaxPool, GlobalAveragePool (they pool inside a channel); and one Flatten(axis=1), from
a Conv producer into a Gemm/MatMul consumer (channel ``c`` becomes a block of ``K / C`` consecutive
features) or after a Gemm (a 2-D output, which it leaves as is).

Depthwise-separable networks (MobileNets): a depthwise Conv (``group`` = channels, one input channel per
group) is a consumer whose input channel ``c`` is its weight row ``c``, and a producer like any Conv, so
``conv → depthwise → conv`` gives two pairs that share the depthwise layer, re-balanced in sweeps (the
paper's setting). ReLU6 (``Clip(0, 6)``) is not homogeneous: ``clip(s z, 0, 6) = s clip(z, 0, 6 / s)``.
Nagel et al. replace ReLU6 by ReLU, which changes the FP32 function a little; here the bound is rescaled
instead: the Clip becomes ``Relu`` (or ``Max`` with a per-channel lower bound) then ``Min`` with the
per-channel upper bound ``6 / s_c``, so the FP32 function stays exact. BatchNormalization is folded into
its layer when the model is prepared (batchnorm.py), so it no longer stands between the layers.

Anything else is refused with the reason: a saturating op (Sigmoid, Tanh, ...), a squeeze-excite Mul or a
residual Add (a second operand that is not rescaled), a tensor that other nodes also read or that is a
graph output, a shared or non-float32 weight, a grouped consumer that is not depthwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .choices import EQUALIZATION_RULES as RULES
from .errors import ModelError
from .graph import LoadedModel, graph_consumers, model_hash

#: Ops with op(s·z) = s·op(z) elementwise for s > 0: any channel layout.
ELEMENTWISE_HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu", "Identity")
#: Bounded ops accepted between two layers by rescaling their bounds per channel (a ReLU6 is a Clip).
CLIPPING = ("Clip",)
#: Ops that work inside each channel of an NC... tensor: homogeneous when channels are on axis 1.
POOLING_HOMOGENEOUS = ("MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Why common ops between two layers break the rescaling.
NOT_HOMOGENEOUS = {
    "Sigmoid": "saturates: sigmoid(s·x) != s·sigmoid(x)",
    "HardSigmoid": "saturates: hard_sigmoid(s·x) != s·hard_sigmoid(x)",
    "Tanh": "saturates: tanh(s·x) != s·tanh(x)",
    "HardSwish": "is not positively homogeneous (x·relu6(x + 3) / 6)",
    "Gelu": "is not positively homogeneous",
    "Elu": "is not positively homogeneous (exp for negative inputs)",
    "Selu": "is not positively homogeneous (exp for negative inputs)",
    "Softplus": "is not positively homogeneous (log(1 + exp(x)))",
    "Softmax": "normalises across channels",
    "LayerNormalization": "normalises across channels",
    "BatchNormalization": "adds a per-channel offset; fold it into the preceding layer first",
    "Add": "adds a second operand that is not rescaled",
    "Sub": "subtracts a second operand that is not rescaled",
    "Mul": "multiplies by a second operand (not known to be per-channel)",
    "Div": "divides by a second operand (not known to be per-channel)",
    "Concat": "mixes the channels of several tensors",
    "Reshape": "may move channels (only Flatten(axis=1) is followed)",
    "Transpose": "moves the channel axis",
}
#: Equalization stops when no scale of a sweep differs from 1 by more than this (relative).
CONVERGED = 1e-6
MAX_SWEEPS = 200


@dataclass(frozen=True)
class EqualizationPair:
    """A producer -> consumer pair that can be rescaled, and where its channels live in the weights."""

    producer: str
    consumer: str
    between: tuple[str, ...]  # op types between the two layers, in order
    tensor: str  # the consumer's activation input: the tensor whose range equalization balances
    channels: int
    producer_weight: str
    producer_axis: int  # output-channel axis of the producer's weight
    producer_bias: str | None
    consumer_weight: str
    consumer_axis: int  # input-channel axis of the consumer's weight
    block: int = 1  # consecutive consumer features per channel (Flatten: H*W)
    activation_axis: int = 1  # the channel axis of ``tensor``: 1 (NC...) or -1 (features last)
    #: Clip nodes between the layers whose bounds are rescaled per channel: (node name, activation rank).
    clips: tuple[tuple[str, int], ...] = ()

    def describe(self) -> str:
        middle = "".join(f" -> {op}" for op in self.between)
        return f"{self.producer}{middle} -> {self.consumer}"


@dataclass(frozen=True)
class EqualizationRefusal:
    """A consumer that cannot be equalized with its producer, and why."""

    consumer: str
    reason: str
    producer: str | None = None


EqualizationCandidate = EqualizationPair | EqualizationRefusal


@dataclass(frozen=True)
class EqualizedPair:
    """What equalization did to one pair: the channel scales and the range spreads before and after."""

    pair: EqualizationPair
    scales: tuple[float, ...]  # s_c: producer channel c divided by it, consumer channel c multiplied
    producer_spread: tuple[float, float]  # max/min of the producer's per-channel ranges, before and after
    consumer_spread: tuple[float, float]  # the same for the consumer's input channels

    def as_dict(self) -> dict[str, object]:
        return {
            "producer": self.pair.producer,
            "consumer": self.pair.consumer,
            "between": list(self.pair.between),
            "scale_min": min(self.scales),
            "scale_max": max(self.scales),
            "producer_spread": list(self.producer_spread),
            "consumer_spread": list(self.consumer_spread),
        }


@dataclass(frozen=True)
class EqualizationReport:
    """The equalized pairs, the rule used and how many sweeps it took to settle."""

    rule: str
    pairs: tuple[EqualizedPair, ...]
    sweeps: int
    refusals: tuple[EqualizationRefusal, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "sweeps": self.sweeps,
            "pairs": [p.as_dict() for p in self.pairs],
            "refusals": [
                {"consumer": r.consumer, "producer": r.producer, "reason": r.reason} for r in self.refusals
            ],
        }


# ---- finding the pairs ------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, reason: str, producer: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.producer = producer


def equalization_pairs(loaded: LoadedModel) -> list[EqualizationCandidate]:
    """Each Conv/ConvTranspose/Gemm/MatMul layer: its pair with the layer producing its input, or why not.

    One entry per weighted quantizable layer, in topological order.
    """
    graph = loaded.proto.graph
    context = _GraphContext(graph)
    entries: list[EqualizationCandidate] = []
    for layer in loaded.info.layers:
        if layer.op_type not in WEIGHTED_OPS:
            continue
        node = context.nodes[layer.name]
        try:
            entries.append(_pair_for(node, context))
        except _Refused as refused:
            entries.append(EqualizationRefusal(layer.name, refused.reason, refused.producer))
    return entries


def select_pairs(
    loaded: LoadedModel, consumers: Iterable[str] | None = None
) -> tuple[list[EqualizationPair], list[EqualizationRefusal]]:
    """The pairs of ``consumers`` (every equalizable pair when None) and the refusals among the rest.

    Naming a consumer that cannot be equalized is an error that gives the reason.
    """
    entries = equalization_pairs(loaded)
    by_consumer = {entry.consumer: entry for entry in entries}
    if consumers is None:
        pairs = [e for e in entries if isinstance(e, EqualizationPair)]
        return pairs, [e for e in entries if isinstance(e, EqualizationRefusal)]
    order = {name: position for position, name in enumerate(by_consumer)}
    pairs = []
    for name in sorted(set(consumers), key=lambda n: order.get(n, -1)):  # unknown names first
        entry = by_consumer.get(name)
        if entry is None:
            raise ModelError(
                f"{loaded.info.source}: cannot equalize {name!r}: it is not a Conv, ConvTranspose, Gemm or "
                "MatMul layer of the model."
            )
        if isinstance(entry, EqualizationRefusal):
            raise ModelError(f"{loaded.info.source}: cannot equalize {name!r}: {entry.reason}.")
        pairs.append(entry)
    return pairs, []


@dataclass
class _GraphContext:
    graph: onnx.GraphProto
    nodes: dict[str, onnx.NodeProto] = field(init=False)
    producers: dict[str, onnx.NodeProto] = field(init=False)
    consumers: dict[str, list[onnx.NodeProto]] = field(init=False)
    initializers: dict[str, onnx.TensorProto] = field(init=False)
    graph_outputs: set[str] = field(init=False)

    def __post_init__(self) -> None:
        graph = self.graph
        self.nodes = {node.name: node for node in graph.node}
        self.producers = {out: node for node in graph.node for out in node.output if out}
        self.consumers = graph_consumers(graph)
        self.initializers = {init.name: init for init in graph.initializer}
        self.graph_outputs = {vi.name for vi in graph.output}

    def weight(self, node: onnx.NodeProto, index: int, what: str) -> onnx.TensorProto:
        name = node.input[index] if index < len(node.input) else ""
        init = self.initializers.get(name)
        if init is None:
            raise _Refused(f"the {what} of {node.name!r} is not a constant initializer")
        if init.data_type != TensorProto.FLOAT:
            type_name = TensorProto.DataType.Name(init.data_type).lower()
            raise _Refused(f"the {what} {name!r} of {node.name!r} is {type_name}, not float32")
        readers = [n.name for n in self.consumers.get(name, []) if n.name != node.name]
        if readers or sum(1 for i in node.input if i == name) > 1:
            raise _Refused(
                f"the {what} {name!r} of {node.name!r} is shared with {', '.join(readers) or 'itself'}"
            )
        return init

    def only_reader(self, tensor: str, reader: onnx.NodeProto) -> None:
        others = [n.name for n in self.consumers.get(tensor, []) if n.name != reader.name]
        if others:
            raise _Refused(f"tensor {tensor!r} also feeds {', '.join(others)}")
        if tensor in self.graph_outputs:
            raise _Refused(f"tensor {tensor!r} is a graph output, which rescaling would change")


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pair_for(consumer: onnx.NodeProto, context: _GraphContext) -> EqualizationPair:
    consumer_weight, consumer_axis, consumer_reads = _consumer_layout(consumer, context)
    producer, chain = _walk_to_producer(consumer, context)
    name = producer.name
    try:
        producer_weight, producer_axis, producer_bias, layout = _producer_layout(producer, context)
    except _Refused as refused:
        raise _Refused(refused.reason, producer=name) from None
    channels = int(context.initializers[producer_weight].dims[producer_axis])
    rank = len(context.initializers[producer_weight].dims) if layout == "channel" else 0
    clips: list[tuple[str, int]] = []
    # Follow the channel axis from the producer to the consumer, in graph order.
    for node in chain:
        if node.op_type in CLIPPING:
            if layout == "flat":
                raise _Refused(
                    f"Clip {node.name!r} after a Flatten: its bounds cannot be set per channel", name
                )
            clips.append((node.name, rank))
        if node.op_type in POOLING_HOMOGENEOUS and layout != "channel":
            raise _Refused(f"{node.op_type} {node.name!r} would pool across {name!r}'s channels", name)
        if node.op_type == "Flatten":
            if layout == "flat" or (layout == "last" and producer.op_type != "Gemm"):
                raise _Refused(f"Flatten {node.name!r} mixes {name!r}'s channels with other axes", name)
            layout = "flat" if layout == "channel" else "last"  # a Gemm output is 2-D: Flatten keeps it
    features = int(context.initializers[consumer_weight].dims[consumer_axis])
    if consumer_reads == "channel" and layout != "channel":
        raise _Refused(
            f"{name!r} does not put its channels on axis 1, where {consumer.name!r} reads them", name
        )
    if consumer_reads == "last" and layout == "channel":
        raise _Refused(
            f"{name!r} puts channels on axis 1 but {consumer.name!r} reads the last axis "
            "(no Flatten between)",
            name,
        )
    if layout == "flat":
        if features % channels:
            raise _Refused(
                f"{consumer.name!r} reads {features} features, not a multiple of {name!r}'s {channels} "
                "channels",
                name,
            )
        block = features // channels
    elif features != channels:
        raise _Refused(
            f"{name!r} has {channels} output channels but {consumer.name!r} reads {features}", name
        )
    else:
        block = 1
    return EqualizationPair(
        producer=name,
        consumer=consumer.name,
        between=tuple(node.op_type for node in chain),
        tensor=consumer.input[0],
        channels=channels,
        producer_weight=producer_weight,
        producer_axis=producer_axis,
        producer_bias=producer_bias,
        consumer_weight=consumer_weight,
        consumer_axis=consumer_axis,
        block=block,
        activation_axis=1 if consumer_reads == "channel" else -1,
        clips=tuple(clips),
    )


def _walk_to_producer(
    consumer: onnx.NodeProto, context: _GraphContext
) -> tuple[onnx.NodeProto, list[onnx.NodeProto]]:
    """The weighted layer that produces ``consumer``'s input, and the ops between them in graph order.

    Every op on the way must be one that rescaling passes through, and every tensor on the way must be
    read by the next op only.
    """
    chain: list[onnx.NodeProto] = []
    reader = consumer
    current = consumer.input[0]
    while True:
        if current not in context.producers:
            raise _Refused(
                f"its input {current!r} is a graph input: there is no producer layer to balance with"
            )
        context.only_reader(current, reader)
        node = context.producers[current]
        if node.op_type in WEIGHTED_OPS and node.domain in ("", "ai.onnx"):
            chain.reverse()
            return node, chain
        if node.domain not in ("", "ai.onnx"):
            raise _Refused(
                f"{node.op_type} {node.name!r} (domain {node.domain}) between the layers is not known"
            )
        used = [o for o in node.output if o and (o in context.consumers or o in context.graph_outputs)]
        if used != [current]:
            raise _Refused(f"{node.op_type} {node.name!r} has other outputs in use")
        if node.op_type == "Flatten":
            if int(_attrs(node).get("axis", 1)) != 1:  # type: ignore[call-overload]
                raise _Refused(f"Flatten {node.name!r} with axis != 1 moves channels")
        elif node.op_type in CLIPPING:
            bounds = [b for b in node.input[1:] if b]
            initializers = context.initializers
            if any(b not in initializers or math.prod(initializers[b].dims) != 1 for b in bounds):
                raise _Refused(
                    f"Clip {node.name!r} between the layers has bounds that are not constant scalars"
                )
        elif node.op_type not in (*ELEMENTWISE_HOMOGENEOUS, *POOLING_HOMOGENEOUS):
            raise _Refused(_barrier_reason(node, context))
        chain.append(node)
        reader = node
        current = node.input[0]


def _barrier_reason(node: onnx.NodeProto, context: _GraphContext) -> str:
    """Why ``node`` between two layers stops equalization, naming squeeze-excite and residual patterns."""
    if node.op_type == "Mul" and _is_squeeze_excite(node, context):
        return (
            f"squeeze-excite Mul {node.name!r} between the layers gates each channel by a value computed "
            "from the same activation (GlobalAveragePool → … → Sigmoid); rescaling channel c would change "
            "the gate's input, so the pair is not equalized"
        )
    if node.op_type == "Add" and not any(i in context.initializers for i in node.input):
        return (
            f"residual Add {node.name!r} between the layers adds a second operand (the skip path) that is "
            "not rescaled: channel c of the sum would mix scaled and unscaled values"
        )
    reason = NOT_HOMOGENEOUS.get(node.op_type, "is not known to be positively homogeneous per channel")
    return f"{node.op_type} {node.name!r} between the layers {reason}"


def _is_squeeze_excite(node: onnx.NodeProto, context: _GraphContext) -> bool:
    """A Mul whose operand comes from Sigmoid/HardSigmoid behind a global pool (within a few nodes)."""
    for tensor in node.input:
        current = context.producers.get(tensor)
        for _ in range(8):
            if current is None:
                break
            if current.op_type in ("GlobalAveragePool", "ReduceMean"):
                return True
            current = context.producers.get(current.input[0]) if current.input else None
    return False


def _consumer_layout(node: onnx.NodeProto, context: _GraphContext) -> tuple[str, int, str]:
    """(weight, its input-channel axis, where the activation's channels are: 'channel' or 'last')."""
    attrs = _attrs(node)
    if node.input[0] in context.initializers:
        raise _Refused(f"the first input of {node.name!r} is a constant, not an activation")
    if node.op_type in ("Conv", "ConvTranspose"):
        group = int(attrs.get("group", 1))  # type: ignore[call-overload]
        weight = context.weight(node, 1, "weight")
        if group != 1 and node.op_type == "Conv" and weight.dims[0] == group and weight.dims[1] == 1:
            return weight.name, 0, "channel"  # depthwise: input channel c is weight row c
        if group != 1:
            raise _Refused(
                f"{node.op_type} {node.name!r} has group={group} and is not depthwise (one input and output "
                "channel per group): its input channels are split"
            )
        return weight.name, 1 if node.op_type == "Conv" else 0, "channel"
    if node.op_type == "Gemm":
        if int(attrs.get("transA", 0)):  # type: ignore[call-overload]
            raise _Refused(f"Gemm {node.name!r} has transA=1: its input features are on axis 0")
        weight = context.weight(node, 1, "weight")
        return weight.name, 1 if int(attrs.get("transB", 0)) else 0, "last"  # type: ignore[call-overload]
    weight = context.weight(node, 1, "weight")
    if len(weight.dims) != 2:
        raise _Refused(f"MatMul {node.name!r} has a weight of rank {len(weight.dims)}, not 2")
    return weight.name, 0, "last"


def _producer_layout(node: onnx.NodeProto, context: _GraphContext) -> tuple[str, int, str | None, str]:
    """(weight, output-channel axis, bias or None, where the output's channels are: 'channel' or 'last')."""
    attrs = _attrs(node)
    if node.input[0] in context.initializers:
        raise _Refused(f"the first input of {node.name!r} is a constant, not an activation")
    weight = context.weight(node, 1, "weight")
    if node.op_type == "Conv":
        axis, where = 0, "channel"
    elif node.op_type == "ConvTranspose":
        group = int(attrs.get("group", 1))  # type: ignore[call-overload]
        if group != 1:
            raise _Refused(f"ConvTranspose {node.name!r} has group={group}: its output channels are split")
        axis, where = 1, "channel"
    elif node.op_type == "Gemm":
        axis, where = (0 if int(attrs.get("transB", 0)) else 1), "last"  # type: ignore[call-overload]
    else:
        if len(weight.dims) != 2:
            raise _Refused(f"MatMul {node.name!r} has a weight of rank {len(weight.dims)}, not 2")
        axis, where = 1, "last"
    channels = int(weight.dims[axis])
    bias: str | None = None
    if node.op_type != "MatMul" and len(node.input) > 2 and node.input[2]:
        bias_init = context.weight(node, 2, "bias")
        shape = tuple(int(d) for d in bias_init.dims)
        if shape not in ((channels,), (1, channels)):
            raise _Refused(
                f"the bias {bias_init.name!r} of {node.name!r} has shape {list(shape)}, not per channel"
            )
        bias = bias_init.name
    return weight.name, axis, bias, where


# ---- rescaling --------------------------------------------------------------------------------------


def paper_scales(producer_ranges: np.ndarray, consumer_ranges: np.ndarray) -> np.ndarray:
    """``s_c = sqrt(r1_c / r2_c)``; 1 where either range is 0 or not finite (a dead channel stays as is)."""
    r1 = np.asarray(producer_ranges, dtype=np.float64)
    r2 = np.asarray(consumer_ranges, dtype=np.float64)
    usable = np.isfinite(r1) & np.isfinite(r2) & (r1 > 0) & (r2 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.sqrt(r1 / r2)
    return np.where(usable, scales, 1.0)


def _channel_ranges(weight: np.ndarray, axis: int, channels: int) -> np.ndarray:
    """max |w| per channel, the channel spanning ``weight.shape[axis] / channels`` indices on ``axis``."""
    moved = np.moveaxis(np.abs(weight), axis, 0)
    return np.asarray(moved.reshape(channels, -1).max(axis=1), dtype=np.float64)


def _broadcast(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def _spread(ranges: np.ndarray) -> float:
    alive = ranges[ranges > 0]
    return float(alive.max() / alive.min()) if alive.size else 1.0


def equalize(
    model: onnx.ModelProto,
    pairs: Sequence[EqualizationPair],
    *,
    rule: str = "weights",
    activation_ranges: Mapping[str, np.ndarray] | None = None,
) -> tuple[onnx.ModelProto, EqualizationReport]:
    """A copy of ``model`` with every pair rescaled by the paper's rule; ``model`` is left untouched.

    ``rule="activations"`` needs ``activation_ranges``: consumer name -> per-channel max |x| of its input,
    measured on the original model (:func:`activation_channel_ranges`).
    """
    if rule not in RULES:
        raise ValueError(f"unknown equalization rule {rule!r}; choose one of {', '.join(RULES)}.")
    if rule == "activations":
        missing = [
            p.consumer for p in pairs if activation_ranges is None or p.consumer not in activation_ranges
        ]
        if missing:
            raise ValueError(f"the activations rule needs measured ranges for {', '.join(missing)}")
    initializers = {init.name: init for init in model.graph.initializer}
    arrays: dict[str, np.ndarray] = {}
    for pair in pairs:
        for name in (pair.producer_weight, pair.producer_bias, pair.consumer_weight):
            if name is not None and name not in arrays:
                if name not in initializers:
                    raise ModelError(f"equalization of {pair.describe()}: initializer {name!r} is missing.")
                arrays[name] = numpy_helper.to_array(initializers[name]).astype(np.float64)
    before = {p.consumer: (_producer_ranges(p, arrays), _consumer_ranges(p, arrays)) for p in pairs}
    totals = {p.consumer: np.ones(p.channels) for p in pairs}
    sweeps = 0
    while pairs and sweeps < MAX_SWEEPS:
        sweeps += 1
        largest_step = 0.0
        for pair in pairs:
            if rule == "activations":
                assert activation_ranges is not None
                measured = np.asarray(activation_ranges[pair.consumer], dtype=np.float64)
                producer_ranges = measured / totals[pair.consumer]
            else:
                producer_ranges = _producer_ranges(pair, arrays)
            scales = paper_scales(producer_ranges, _consumer_ranges(pair, arrays))
            _apply(pair, scales, arrays)
            totals[pair.consumer] *= scales
            largest_step = max(largest_step, float(np.max(np.abs(scales - 1.0))))
        if largest_step <= CONVERGED:
            break
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    originals = {name: numpy_helper.to_array(initializers[name]) for name in arrays}
    replaced = {name: _rescaled(originals[name], pairs, totals, name) for name in arrays}
    for init in rewritten.graph.initializer:
        if init.name in replaced:
            init.CopyFrom(numpy_helper.from_array(replaced[init.name], init.name))
    for pair in pairs:
        for clip, rank in pair.clips:
            _rescale_clip(rewritten.graph, clip, totals[pair.consumer], rank)
    equalized = []
    for pair in pairs:
        producer_before, consumer_before = before[pair.consumer]
        equalized.append(
            EqualizedPair(
                pair=pair,
                scales=tuple(float(s) for s in totals[pair.consumer]),
                producer_spread=(_spread(producer_before), _spread(_producer_ranges(pair, arrays))),
                consumer_spread=(_spread(consumer_before), _spread(_consumer_ranges(pair, arrays))),
            )
        )
    return rewritten, EqualizationReport(rule=rule, pairs=tuple(equalized), sweeps=sweeps)


def _producer_ranges(pair: EqualizationPair, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    return _channel_ranges(arrays[pair.producer_weight], pair.producer_axis, pair.channels)


def _consumer_ranges(pair: EqualizationPair, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    return _channel_ranges(arrays[pair.consumer_weight], pair.consumer_axis, pair.channels)


def _apply(pair: EqualizationPair, scales: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
    weight = arrays[pair.producer_weight]
    arrays[pair.producer_weight] = weight / _broadcast(scales, pair.producer_axis, weight.ndim)
    if pair.producer_bias is not None:
        bias = arrays[pair.producer_bias]
        arrays[pair.producer_bias] = bias / scales.reshape(bias.shape)
    consumer = arrays[pair.consumer_weight]
    arrays[pair.consumer_weight] = consumer * _broadcast(
        np.repeat(scales, pair.block), pair.consumer_axis, consumer.ndim
    )


def _rescaled(
    original: np.ndarray, pairs: Sequence[EqualizationPair], totals: Mapping[str, np.ndarray], name: str
) -> np.ndarray:
    """``original`` with every pair's total scale applied once, in float64, rounded to its dtype once."""
    values = original.astype(np.float64)
    for pair in pairs:
        total = totals[pair.consumer]
        if name == pair.producer_weight:
            values = values / _broadcast(total, pair.producer_axis, values.ndim)
        if name == pair.producer_bias:
            values = values / total.reshape(values.shape)
        if name == pair.consumer_weight:
            values = values * _broadcast(np.repeat(total, pair.block), pair.consumer_axis, values.ndim)
    return values.astype(original.dtype)


def _rescale_clip(graph: onnx.GraphProto, name: str, scales: np.ndarray, rank: int) -> None:
    """Replace Clip ``name`` by Relu/Max then Min with per-channel bounds divided by ``scales``.

    ``clip(s·z, lo, hi) = s·clip(z, lo / s, hi / s)`` per channel; Clip takes scalar bounds only, so the
    per-channel bounds need Max and Min (broadcast on axis 1 for rank > 0, on the last axis otherwise).
    """
    position = next(i for i, node in enumerate(graph.node) if node.name == name)
    clip = graph.node[position]
    initializers = {init.name: init for init in graph.initializer}
    names = [clip.input[i] if len(clip.input) > i else "" for i in (1, 2)]
    bounds = [float(numpy_helper.to_array(initializers[b]).reshape(())) if b else None for b in names]
    shape = [1, -1] + [1] * (rank - 2) if rank >= 2 else [-1]
    taken = {init.name for init in graph.initializer} | {n.name for n in graph.node}
    taken |= {t for n in graph.node for t in (*n.input, *n.output)}

    def fresh(wanted: str) -> str:
        candidate, suffix = wanted, 1
        while candidate in taken:
            candidate = f"{wanted}_{suffix}"
            suffix += 1
        taken.add(candidate)
        return candidate

    nodes: list[onnx.NodeProto] = []
    current = clip.input[0]
    low, high = bounds
    if low is not None:
        lowered = fresh(f"{name}/lower_output")
        if low == 0.0:
            nodes.append(helper.make_node("Relu", [current], [lowered], name=fresh(f"{name}/Relu")))
        else:
            bound = fresh(f"{name}/lower_bound")
            graph.initializer.append(
                numpy_helper.from_array((low / scales).reshape(shape).astype(np.float32), bound)
            )
            nodes.append(helper.make_node("Max", [current, bound], [lowered], name=fresh(f"{name}/Max")))
        current = lowered
    if high is not None:
        bound = fresh(f"{name}/upper_bound")
        graph.initializer.append(
            numpy_helper.from_array((high / scales).reshape(shape).astype(np.float32), bound)
        )
        nodes.append(helper.make_node("Min", [current, bound], [clip.output[0]], name=name))
    elif nodes:
        nodes[-1].output[0] = clip.output[0]
    else:
        nodes.append(helper.make_node("Identity", [current], [clip.output[0]], name=name))
    del graph.node[position]
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)


def equalized_model(
    loaded: LoadedModel,
    consumers: Iterable[str] | None = None,
    *,
    rule: str = "weights",
    activation_ranges: Mapping[str, np.ndarray] | None = None,
) -> tuple[LoadedModel, EqualizationReport]:
    """``loaded`` with the pairs of ``consumers`` (all equalizable pairs when None) equalized.

    The result keeps every node and tensor name; its hash is that of the rewritten proto.
    """
    pairs, refusals = select_pairs(loaded, consumers)
    proto, report = equalize(loaded.proto, pairs, rule=rule, activation_ranges=activation_ranges)
    info = replace(loaded.info, model_hash=model_hash(proto))
    return LoadedModel(proto=proto, info=info), replace(report, refusals=tuple(refusals))


# ---- measurements on data ---------------------------------------------------------------------------


def activation_channel_ranges(
    model: onnx.ModelProto,
    pairs: Sequence[EqualizationPair],
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    threads: int = 0,
) -> dict[str, np.ndarray]:
    """Consumer name -> max |x| per channel of its activation input, from one FP32 pass over ``batches``."""
    from .probe import probe  # runs a model: loaded when a measurement is asked for

    ranges = {p.consumer: np.zeros(p.channels) for p in pairs}

    def accumulate(feeds: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray]) -> None:
        for pair in pairs:
            moved = np.moveaxis(np.abs(values[pair.tensor]), pair.activation_axis, -1)
            channel_max = moved.reshape(-1, pair.channels, pair.block).max(axis=(0, 2)).astype(np.float64)
            ranges[pair.consumer] = np.maximum(ranges[pair.consumer], channel_max)

    probe(model, [p.tensor for p in pairs], batches, accumulate, threads=threads)
    return ranges


@dataclass(frozen=True)
class Fp32Difference:
    """How far two FP32 models' outputs are apart on the same data."""

    max_abs: float
    reference_max_abs: float  # the largest |output| of the first model: the scale of the difference
    samples: int

    @property
    def relative(self) -> float:
        return self.max_abs / self.reference_max_abs if self.reference_max_abs > 0 else math.inf


def fp32_difference(
    reference: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    threads: int = 0,
) -> Fp32Difference:
    """Max |reference - rewritten| over every output and sample (both run in FP32 by ONNX Runtime)."""
    from .probe import ExposedModel, probe  # runs models: loaded when a measurement is asked for

    outputs = [o.name for o in reference.graph.output]
    largest = [0.0, 0.0]  # max |difference|, max |reference output|
    with ExposedModel(rewritten, outputs, threads=threads) as second:

        def accumulate(feeds: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> None:
            actual = second.run(feeds)
            for name, values in expected.items():
                reference_values = values.astype(np.float64)
                difference = float(np.max(np.abs(reference_values - actual[name]), initial=0.0))
                largest[0] = max(largest[0], difference)
                largest[1] = max(largest[1], float(np.max(np.abs(reference_values), initial=0.0)))

        samples = probe(reference, outputs, batches, accumulate, threads=threads)
    return Fp32Difference(max_abs=largest[0], reference_max_abs=largest[1], samples=samples)
