"""Where Q/DQ pairs go: the placement profiles and their rules (each rule a small function; reasons in
docs/placement.md).

``minimal`` quantizes the inputs of weighted layers (Conv, ConvTranspose, Gemm, MatMul) and the skip
input of a residual Add after a Conv. ``tensorrt`` follows TensorRT's Q/DQ placement guidance and the
partition rules of NVIDIA ModelOpt's ONNX quantizer: it also quantizes residual Adds by the common
ancestor rule, Muls of two activations, pooling and Resize next to quantized layers, LayerNormalization
fed by a Conv, and leaves small GEMMs (K or N < 16) and masked attention in float.

A *layer* is a node whose inputs get Q/DQ; a profile lists its layers and, per layer, which inputs
(``InputSlot``) get a pair. This module only reads the graph; quantize.py builds the Q/DQ nodes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import onnx
from onnx import helper

from .choices import DEFAULT_PLACEMENT, PLACEMENTS
from .graph import COMPUTE_OPS, RESIDUAL_PRODUCERS, Layer, LoadedModel, is_residual_add

#: TensorRT's int8 tensor-core GEMMs need K and N of at least 16 (ModelOpt's ``_MIN_MATMUL_DIM``).
MIN_GEMM_DIM = 16
#: Layout-only ops a Q/DQ pair commutes with (ModelOpt's copy ops); rules look through them.
COPY_OPS = frozenset(
    (
        "Flatten",
        "Transpose",
        "Concat",
        "Split",
        "Squeeze",
        "Unsqueeze",
        "Expand",
        "Reshape",
        "Tile",
        "Gather",
        "Slice",
        "Identity",
    )
)
#: Ops TensorRT fuses into the preceding Conv/GEMM kernel as its epilogue (activations and
#: normalisation; BatchNormalization before folding). A constant-operand Add/Mul/Sub/Div (bias, scale)
#: is fused too: see :func:`is_fused_epilogue`.
EPILOGUE_OPS = frozenset(
    ("Relu", "LeakyRelu", "Clip", "BatchNormalization", "Sigmoid", "Tanh", "Elu", "Softplus", "HardSigmoid")
)
#: Ops whose output ModelOpt treats as worth quantizing when a pointwise op reads it.
OUTPUT_QUANTIZATION_CANDIDATES = frozenset(
    ("AveragePool", "BatchNormalization", "GlobalAveragePool", "MaxPool", "Mul")
)
POOLING_OPS = frozenset(("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"))
RESIZE_OPS = frozenset(("Resize", "Upsample"))
RECURRENT_OPS = frozenset(("LSTM", "GRU", "RNN"))
CONTROL_FLOW_OPS = frozenset(("If", "Loop", "Scan"))


@dataclass(frozen=True)
class InputSlot:
    """One input of a layer that gets Q/DQ: an activation (per tensor) or a weight initializer."""

    index: int
    tensor: str
    is_weight: bool
    axis: int | None = None  # per-channel axis of a weight; None: per tensor
    note: str = ""  # why a weight is per tensor


@dataclass(frozen=True)
class LayerPlacement:
    """A layer of a profile: which inputs get Q/DQ, the rule that chose them, or why it stays float."""

    layer: Layer
    slots: tuple[InputSlot, ...]
    rule: str
    #: Non-empty: the profile keeps this layer in float (it is listed so that coverage can say why).
    float_reason: str = ""


@dataclass(frozen=True)
class Placement:
    """The layers a profile places Q/DQ on, in topological order, and the ops it leaves to others."""

    profile: str
    layers: tuple[LayerPlacement, ...]
    #: (node, op, reason): quantizable-looking nodes the profile has no layer for.
    not_placed: tuple[tuple[str, str, str], ...] = ()

    def layer_names(self) -> tuple[str, ...]:
        return tuple(p.layer.name for p in self.layers)

    def get(self, name: str) -> LayerPlacement | None:
        for placed in self.layers:
            if placed.layer.name == name:
                return placed
        return None


@dataclass
class PlacementGraph:
    """Lookups the rules need: producers, consumers, initializers and inferred shapes of one graph."""

    graph: onnx.GraphProto
    producers: dict[str, onnx.NodeProto] = field(init=False)
    consumers: dict[str, list[onnx.NodeProto]] = field(init=False)
    initializers: dict[str, onnx.TensorProto] = field(init=False)
    shapes: dict[str, tuple[int | None, ...]] = field(init=False)
    order: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        graph = self.graph
        self.producers = {out: node for node in graph.node for out in node.output if out}
        self.consumers = {}
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.initializers = {init.name: init for init in graph.initializer}
        self.shapes = {}
        for value_info in (*graph.input, *graph.value_info, *graph.output):
            tensor_type = value_info.type.tensor_type
            if tensor_type.HasField("shape"):
                self.shapes[value_info.name] = tuple(
                    int(d.dim_value) if d.HasField("dim_value") else None for d in tensor_type.shape.dim
                )
        for init in graph.initializer:
            self.shapes[init.name] = tuple(int(d) for d in init.dims)
        self.order = {node.name: position for position, node in enumerate(graph.node)}

    def is_constant(self, tensor: str) -> bool:
        producer = self.producers.get(tensor)
        return tensor in self.initializers or (producer is not None and producer.op_type == "Constant")

    def activations(self, node: onnx.NodeProto) -> list[str]:
        return [name for name in node.input if name and not self.is_constant(name)]

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return self.producers.get(tensor)


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    value = _attrs(node).get(name, default)
    return int(value) if isinstance(value, int) else default


# ---- rules shared by both profiles -------------------------------------------------------------------


def weight_axis(node: onnx.NodeProto, index: int, rank: int) -> tuple[int | None, str]:
    """Output-channel axis of a weight input, or None and the reason it is quantized per tensor.

    Conv ``[Cout, Cin/g, k...]``: axis 0. ConvTranspose ``[Cin, Cout/g, k...]``: axis 1 when group is 1.
    Gemm: B is ``[N, K]`` with ``transB`` (axis 0), else ``[K, N]`` (axis 1). MatMul ``[K, N]``: axis 1.
    """
    if index == 0:
        return None, f"constant first input of {node.op_type}: per-tensor weight scale"
    if rank == 0:
        return None, "scalar weight: per-tensor weight scale"
    if node.op_type == "Conv":
        return 0, ""
    if node.op_type == "ConvTranspose":
        group = _int_attr(node, "group", 1)
        if group == 1:
            return 1, ""
        return None, (
            f"ConvTranspose with group={group}: its output channels do not lie on one weight axis, "
            "so the weight uses a per-tensor scale"
        )
    if node.op_type == "Gemm":
        return (0 if _int_attr(node, "transB", 0) else 1), ""
    if rank == 2:  # MatMul: (K, N) weight, N output channels
        return 1, ""
    return None, f"MatMul weight of rank {rank}: per-tensor weight scale"


def weighted_layer_slots(node: onnx.NodeProto, g: PlacementGraph) -> tuple[InputSlot, ...]:
    """Conv/ConvTranspose/Gemm/MatMul: both data inputs, activations per tensor, weights per channel.

    Why: TensorRT fuses ``DQ → op → Q`` into one int8 kernel only when every data input is dequantized
    int8; a float input keeps the op in float. The bias stays float (TensorRT quantizes it itself).
    """
    slots = []
    for index in (0, 1):
        if index >= len(node.input) or not node.input[index]:
            continue
        tensor = node.input[index]
        if tensor not in g.initializers:
            slots.append(InputSlot(index, tensor, is_weight=False))
            continue
        axis, note = weight_axis(node, index, len(g.initializers[tensor].dims))
        slots.append(InputSlot(index, tensor, is_weight=True, axis=axis, note=note))
    return tuple(slots)


def skip_input_slots(node: onnx.NodeProto, g: PlacementGraph) -> tuple[InputSlot, ...]:
    """``minimal``'s residual Add: a pair on the input not produced by a Conv (the skip path).

    Why: TensorRT fuses a Conv with the Add that follows it when the other operand is int8.
    """
    first, second = node.input[0], node.input[1]
    from_conv = [
        (g.producer(t) is not None and g.producers[t].op_type in RESIDUAL_PRODUCERS) for t in (first, second)
    ]
    index = 0 if not from_conv[0] and from_conv[1] else 1
    return (InputSlot(index, node.input[index], is_weight=False),)


# ---- tensorrt rules ----------------------------------------------------------------------------------


def gemm_dims(node: onnx.NodeProto, g: PlacementGraph) -> tuple[int | None, int | None]:
    """(K, N) of a MatMul/Gemm from inferred shapes; None where unknown. Gemm honours transA/transB."""
    if len(node.input) < 2:
        return None, None
    b_shape = g.shapes.get(node.input[1])
    out_shape = g.shapes.get(node.output[0])
    trans_b = node.op_type == "Gemm" and _int_attr(node, "transB", 0) == 1
    k = n = None
    if b_shape is not None and len(b_shape) >= 2:
        k = b_shape[-1] if trans_b else b_shape[-2]
        n = b_shape[-2] if trans_b else b_shape[-1]
    elif b_shape is not None and len(b_shape) == 1 and node.op_type == "MatMul":
        k, n = b_shape[0], 1
    if out_shape is not None and len(out_shape) >= 1 and out_shape[-1] is not None:
        n = out_shape[-1]
    return k, n


def small_gemm_reason(node: onnx.NodeProto, g: PlacementGraph) -> str:
    """Why a MatMul/Gemm with K or N below 16 stays in float ('' when it does not apply).

    Why: TensorRT's int8 (and fp8) tensor-core GEMMs need K and N of at least 16; below that a Q/DQ pair
    costs more than it saves, so ModelOpt's ``find_nodes_from_matmul_to_exclude`` leaves them in float.
    """
    if node.op_type not in ("MatMul", "Gemm"):
        return ""
    k, n = gemm_dims(node, g)
    small = [f"{name}={value}" for name, value in (("K", k), ("N", n)) if value and value < MIN_GEMM_DIM]
    if not small:
        return ""
    return (
        f"{' and '.join(small)} below {MIN_GEMM_DIM}: TensorRT's int8 GEMM kernels need K and N >= "
        f"{MIN_GEMM_DIM}, so the tensorrt placement (like ModelOpt) keeps this {node.op_type} in float"
    )


def _follows(
    node: onnx.NodeProto | None, g: PlacementGraph, ops: tuple[str, ...], skip: frozenset[str]
) -> bool:
    """Whether ``node`` is, or is reached backwards from through ``skip`` ops (input 0), one of ``ops``."""
    seen = 0
    while node is not None and seen < 64:
        if node.op_type in ops:
            return True
        if node.op_type not in skip or not node.input:
            return False
        node = g.producer(node.input[0])
        seen += 1
    return False


def masked_attention_reason(node: onnx.NodeProto, g: PlacementGraph) -> str:
    """Why a MatMul of masked attention (MatMul → Add(activation mask) → Softmax → MatMul) stays float.

    Why: ModelOpt's ``find_mha_partitions`` leaves this pattern unquantized (TensorRT's fused attention
    with an activation mask is not matched from Q/DQ); unmasked attention is quantized.
    """
    if node.op_type != "MatMul":
        return ""
    for consumer in g.consumers.get(node.output[0], []):  # node as Q·Kᵀ
        if consumer.op_type == "Add" and len(g.activations(consumer)) == 2:
            for softmax in g.consumers.get(consumer.output[0], []):
                if softmax.op_type == "Softmax" and any(
                    c.op_type == "MatMul" for c in g.consumers.get(softmax.output[0], [])
                ):
                    return _MASKED_ATTENTION
    for tensor in node.input[:1]:  # node as ·V
        normalised = g.producer(tensor)
        if normalised is not None and normalised.op_type == "Softmax":
            add = g.producer(normalised.input[0])
            if (
                add is not None
                and add.op_type == "Add"
                and len(g.activations(add)) == 2
                and any(_follows(g.producer(t), g, ("MatMul",), frozenset()) for t in add.input)
            ):
                return _MASKED_ATTENTION
    return ""


_MASKED_ATTENTION = (
    "masked attention (MatMul → Add of an activation mask → Softmax → MatMul): ModelOpt leaves this "
    "pattern in float, and so does the tensorrt placement"
)


def is_fused_epilogue(node: onnx.NodeProto, g: PlacementGraph) -> bool:
    """An op TensorRT runs inside the preceding Conv/GEMM kernel: an activation, BatchNormalization, or
    an Add/Mul/Sub/Div/Min/Max with one constant operand (bias, scale, an equalized ReLU6's bound)."""
    if node.op_type in EPILOGUE_OPS:
        return True
    return node.op_type in ("Add", "Mul", "Sub", "Div", "Min", "Max") and len(g.activations(node)) == 1


def follows_weighted_layer(tensor: str, g: PlacementGraph, layers: frozenset[str]) -> bool:
    """Whether ``tensor`` is the output of one of ``layers`` (weighted layers placed in INT8), possibly
    through its fused epilogue and layout-only ops: ModelOpt's "follows a CASK partition"."""
    node = g.producer(tensor)
    for _ in range(64):
        if node is None:
            return False
        if node.op_type in COMPUTE_OPS:
            return node.name in layers
        if not (node.op_type in COPY_OPS or is_fused_epilogue(node, g)):
            return False
        inputs = g.activations(node)
        if not inputs:
            return False
        node = g.producer(inputs[0])
    return False


def fusible_backbone(node: onnx.NodeProto | None, g: PlacementGraph) -> onnx.NodeProto | None:
    """The Conv/ConvTranspose whose kernel ``node`` is fused into (ModelOpt's ``get_fusible_backbone``):
    the node itself, or the Conv behind a chain of bias Add / constant Mul / BatchNormalization / Relu /
    Clip, looking through layout-only ops."""
    for _ in range(64):
        if node is None:
            return None
        if node.op_type in RESIDUAL_PRODUCERS:
            return node
        fused = node.op_type in ("BatchNormalization", "Relu", "Clip") or (
            node.op_type in ("Add", "Mul", "Min", "Max") and len(g.activations(node)) == 1
        )
        if not (fused or node.op_type in COPY_OPS):
            return None
        inputs = g.activations(node)
        if not inputs:
            return None
        node = g.producer(inputs[0])
    return None


def _ancestor_depths(node: onnx.NodeProto, g: PlacementGraph, limit: int = 4096) -> dict[str, int]:
    """Shortest distance (in nodes) from ``node`` back to each of its ancestors, itself at 0."""
    depths = {node.name: 0}
    queue = deque([node])
    while queue and len(depths) < limit:
        current = queue.popleft()
        for tensor in g.activations(current):
            parent = g.producer(tensor)
            if parent is not None and parent.name not in depths:
                depths[parent.name] = depths[current.name] + 1
                queue.append(parent)
    return depths


def lowest_common_ancestor(
    first: onnx.NodeProto, second: onnx.NodeProto, g: PlacementGraph
) -> tuple[str | None, int, int]:
    """The common ancestor nearest to both nodes and its distance from each (ModelOpt's rule to tell the
    residual input of an Add: the input on the longer path from the ancestor is the non-residual one)."""
    one, two = _ancestor_depths(first, g), _ancestor_depths(second, g)
    common = [name for name in one if name in two]
    if not common:
        return None, -1, -1
    best = min(common, key=lambda name: (one[name] + two[name], -g.order.get(name, 0)))
    return best, one[best], two[best]


def residual_add_slots(
    node: onnx.NodeProto, g: PlacementGraph, weighted: frozenset[str]
) -> tuple[InputSlot, ...]:
    """``tensorrt``'s Add of two activations (ModelOpt's ``build_non_residual_input_map``).

    * Both inputs from different Conv backbones: the one farther from their common ancestor is the
      non-residual input, fused into its Conv; the other (the residual) gets the pair.
    * One input from a Conv backbone: if that Conv is the common ancestor (``Conv → … → Add`` and
      ``Conv → Add``, ConvNeXt), nothing fuses and both inputs get pairs; otherwise the other input does.
    * Both from the same backbone: both inputs.
    * No Conv backbone (transformer residuals): the inputs that come from an INT8 weighted layer get a
      pair (its output runs in int8); an Add feeding Softmax → MatMul (an attention mask) gets none.
    """
    if len(node.input) != 2 or len(g.activations(node)) != 2:
        return ()
    producers = [g.producer(t) for t in node.input]
    if producers[0] is None or producers[1] is None:
        return ()
    first, second = producers[0], producers[1]
    backbones = [fusible_backbone(first, g), fusible_backbone(second, g)]
    both = tuple(InputSlot(i, node.input[i], is_weight=False) for i in (0, 1))
    if backbones[0] is not None or backbones[1] is not None:
        lca, d1, d2 = lowest_common_ancestor(first, second, g)
        if backbones[0] is not None and backbones[1] is not None:
            if backbones[0].name == backbones[1].name:
                return both
            residual = 1 if d1 > d2 else 0
        else:
            with_backbone = 0 if backbones[0] is not None else 1
            backbone = backbones[with_backbone]
            assert backbone is not None
            if lca == backbone.name:
                return both
            residual = 1 - with_backbone
        return (InputSlot(residual, node.input[residual], is_weight=False),)
    if _feeds_attention_softmax(node, g):
        return ()
    return tuple(
        InputSlot(i, node.input[i], is_weight=False)
        for i in (0, 1)
        if follows_weighted_layer(node.input[i], g, weighted)
    )


def _feeds_attention_softmax(node: onnx.NodeProto, g: PlacementGraph) -> bool:
    for consumer in g.consumers.get(node.output[0], []):
        if _follows_forward(consumer, g, ("Softmax",), frozenset(("Reshape", "Flatten"))):
            return True
    return False


def _follows_forward(
    node: onnx.NodeProto, g: PlacementGraph, ops: tuple[str, ...], skip: frozenset[str]
) -> bool:
    if node.op_type in ops:
        return True
    if node.op_type not in skip:
        return False
    return any(_follows_forward(c, g, ops, skip) for c in g.consumers.get(node.output[0], []))


def erf_gelu_nodes(g: PlacementGraph) -> frozenset[str]:
    """Nodes of erf-GELU patterns (``Div → Erf → Add → Mul → Mul``, ModelOpt's hardcoded pattern).

    Why: TensorRT fuses the whole GELU into one pointwise kernel in float; a Q/DQ pair on its inner Mul
    would split it, so these nodes are never layers.
    """
    found: set[str] = set()
    for node in g.graph.node:
        if node.op_type != "Erf":
            continue
        div = g.producer(node.input[0])
        adds = [c for c in g.consumers.get(node.output[0], []) if c.op_type == "Add"]
        for add in adds:
            for mul in (c for c in g.consumers.get(add.output[0], []) if c.op_type == "Mul"):
                found |= {node.name, add.name, mul.name}
                if div is not None and div.op_type in ("Div", "Mul"):
                    found.add(div.name)
                found |= {c.name for c in g.consumers.get(mul.output[0], []) if c.op_type == "Mul"}
    return frozenset(found)


def is_fused_swish(node: onnx.NodeProto, g: PlacementGraph) -> bool:
    """``x · Sigmoid(x)`` with ``x`` from a Conv (or BatchNormalization after one, or an Add): TensorRT
    fuses it into the Conv as its activation (ModelOpt's fusible Mul patterns), so no pair goes there."""
    for index in (0, 1):
        sigmoid = g.producer(node.input[index])
        other = node.input[1 - index]
        if sigmoid is None or sigmoid.op_type != "Sigmoid" or sigmoid.input[0] != other:
            continue
        source = g.producer(other)
        if source is not None and (
            source.op_type in ("Conv", "Add")
            or (
                source.op_type == "BatchNormalization"
                and _follows(g.producer(source.input[0]), g, ("Conv",), frozenset())
            )
        ):
            return True
    return False


def two_activation_mul_slots(
    node: onnx.NodeProto, g: PlacementGraph, weighted: frozenset[str], gelu: frozenset[str]
) -> tuple[InputSlot, ...]:
    """``tensorrt``'s Mul of two activations (squeeze-excite gating, hard-swish, VoVNet's eSE): both
    inputs, when one of them comes from an INT8 weighted layer or a pooling/BatchNormalization/Mul output.

    Why: ModelOpt quantizes such a Mul as the head of a pointwise partition that reads a quantized
    layer's output, so that TensorRT runs it in int8; a GELU's inner Mul and a Conv's swish are fused
    elsewhere and get nothing.
    """
    if node.name in gelu or len(node.input) != 2 or len(g.activations(node)) != 2:
        return ()
    if is_fused_swish(node, g):
        return ()
    reads_quantized = any(
        follows_weighted_layer(t, g, weighted)
        or ((p := g.producer(t)) is not None and p.op_type in OUTPUT_QUANTIZATION_CANDIDATES)
        for t in node.input
    )
    if not reads_quantized:
        return ()
    return tuple(InputSlot(i, node.input[i], is_weight=False) for i in (0, 1))


def _next_to(node: onnx.NodeProto, g: PlacementGraph, layers: frozenset[str]) -> bool:
    """Whether a node's producer or a consumer (looking through layout-only ops) is a quantized layer."""
    producer = g.producer(node.input[0]) if node.input else None
    while producer is not None and producer.op_type in (*COPY_OPS, "Cast") and producer.name not in layers:
        producer = g.producer(producer.input[0]) if producer.input else None
    if producer is not None and producer.name in layers:
        return True
    pending = list(g.consumers.get(node.output[0], []))
    seen: set[str] = set()
    while pending:
        consumer = pending.pop()
        if consumer.name in seen:
            continue
        seen.add(consumer.name)
        if consumer.name in layers:
            return True
        if consumer.op_type in COPY_OPS:
            pending.extend(c for out in consumer.output for c in g.consumers.get(out, []))
    return False


def pooling_slots(node: onnx.NodeProto, g: PlacementGraph, layers: frozenset[str]) -> tuple[InputSlot, ...]:
    """``tensorrt``'s pooling (MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool): its input, when its
    producer or a consumer is a quantized layer (ModelOpt's second pass over pooling ops).

    Why: TensorRT runs pooling in int8 when its input is int8; between two int8 layers a float pool would
    force a dequantize and a requantize.
    """
    if node.op_type not in POOLING_OPS or not node.input or g.is_constant(node.input[0]):
        return ()
    if _next_to(node, g, layers):
        return (InputSlot(0, node.input[0], is_weight=False),)
    return ()


def resize_slots(
    node: onnx.NodeProto,
    g: PlacementGraph,
    weighted: frozenset[str],
    fused_adds: frozenset[str] = frozenset(),
) -> tuple[InputSlot, ...]:
    """``tensorrt``'s Resize/Upsample reading a quantized Conv's output: its data input. The output of a
    residual Add fused into its Conv (``fused_adds``) counts as that Conv's output.

    Why: ModelOpt prefers quantized input for Resize after a Conv partition (int8 upsampling in FPN/UNet
    decoders) — ``_find_quantizable_kgen_partitions``.
    """
    if node.op_type not in RESIZE_OPS or not node.input or g.is_constant(node.input[0]):
        return ()
    producer = g.producer(node.input[0])
    if follows_weighted_layer(node.input[0], g, weighted) or (
        producer is not None and producer.name in fused_adds
    ):
        return (InputSlot(0, node.input[0], is_weight=False),)
    return ()


def conv_layernorm_slots(
    node: onnx.NodeProto, g: PlacementGraph, weighted: frozenset[str]
) -> tuple[InputSlot, ...]:
    """``tensorrt``'s LayerNormalization fed by a quantized Conv (through layout ops): its input.

    Why: ModelOpt's ``find_conv_to_layernorm_nodes``: TensorRT has int8-input LayerNorm kernels after a
    Conv. Any other LayerNormalization stays in float (TensorRT runs normalisations in float).
    """
    if node.op_type != "LayerNormalization" or g.is_constant(node.input[0]):
        return ()
    producer = g.producer(node.input[0])
    while producer is not None and producer.op_type in COPY_OPS:
        producer = g.producer(producer.input[0]) if producer.input else None
    if producer is not None and producer.op_type in RESIDUAL_PRODUCERS and producer.name in weighted:
        return (InputSlot(0, node.input[0], is_weight=False),)
    return ()


# ---- profiles ----------------------------------------------------------------------------------------


def _layer(node: onnx.NodeProto) -> Layer:
    return Layer(
        index=0, name=node.name, op_type=node.op_type, inputs=tuple(node.input), outputs=tuple(node.output)
    )


def _is_weighted_candidate(node: onnx.NodeProto, g: PlacementGraph) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type not in COMPUTE_OPS:
        return False
    data_inputs = [i for i in node.input[:2] if i]
    return any(i not in g.initializers for i in data_inputs)


def _minimal(g: PlacementGraph) -> list[LayerPlacement]:
    initializers = set(g.initializers)
    placed = []
    for node in g.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if _is_weighted_candidate(node, g):
            placed.append(LayerPlacement(_layer(node), weighted_layer_slots(node, g), "weighted layer"))
        elif node.op_type == "Add" and is_residual_add(node, g.producers, initializers):
            placed.append(
                LayerPlacement(_layer(node), skip_input_slots(node, g), "residual Add (skip input)")
            )
    return placed


_ADD_RULE = "Add (common ancestor rule)"


def _has_backbone(placed: LayerPlacement, g: PlacementGraph) -> bool:
    """Whether an Add's unquantized input comes from a Conv backbone (the Add is fused into that Conv)."""
    quantized = {slot.index for slot in placed.slots}
    return any(
        fusible_backbone(g.producer(tensor), g) is not None
        for index, tensor in enumerate(placed.layer.inputs)
        if index not in quantized
    )


def _tensorrt(g: PlacementGraph) -> list[LayerPlacement]:
    nodes = [n for n in g.graph.node if n.domain in ("", "ai.onnx")]
    placed: dict[str, LayerPlacement] = {}
    for node in nodes:
        if not _is_weighted_candidate(node, g):
            continue
        reason = small_gemm_reason(node, g) or masked_attention_reason(node, g)
        placed[node.name] = LayerPlacement(
            _layer(node), weighted_layer_slots(node, g), "weighted layer", reason
        )
    weighted = frozenset(name for name, p in placed.items() if not p.float_reason)
    gelu = erf_gelu_nodes(g)
    for node in nodes:
        slots: tuple[InputSlot, ...] = ()
        if node.op_type == "Add":
            slots, rule = residual_add_slots(node, g, weighted), _ADD_RULE
        elif node.op_type == "Mul":
            slots, rule = two_activation_mul_slots(node, g, weighted, gelu), "Mul of two activations"
        elif node.op_type in RESIZE_OPS:
            fused_adds = frozenset(
                name
                for name, p in placed.items()
                if p.rule == _ADD_RULE and len(p.slots) == 1 and _has_backbone(p, g)
            )
            slots, rule = resize_slots(node, g, weighted, fused_adds), "Resize after a quantized Conv"
        elif node.op_type == "LayerNormalization":
            slots, rule = conv_layernorm_slots(node, g, weighted), "LayerNormalization after a quantized Conv"
        if slots:
            placed[node.name] = LayerPlacement(_layer(node), slots, rule)
    # Pooling last: whether it is next to a quantized layer depends on the layers placed above.
    quantized = frozenset(name for name, p in placed.items() if not p.float_reason)
    for node in nodes:
        slots = pooling_slots(node, g, quantized)
        if slots:
            placed[node.name] = LayerPlacement(_layer(node), slots, "pooling next to a quantized layer")
    return [placed[n.name] for n in nodes if n.name in placed]


def _not_placed(g: PlacementGraph, profile: str, placed: frozenset[str]) -> list[tuple[str, str, str]]:
    """Quantizable-looking nodes with no layer in ``profile``, and why."""
    entries: list[tuple[str, str, str]] = []
    other: dict[str, LayerPlacement] = {}
    if profile == "minimal":
        other = {p.layer.name: p for p in _tensorrt(g) if not p.float_reason}
    for node in g.graph.node:
        if node.op_type in RECURRENT_OPS:
            entries.append((node.name, node.op_type, RECURRENT_REASON))
        elif node.op_type in CONTROL_FLOW_OPS:
            entries.extend(_subgraph_entries(node))
        elif node.name in other and node.name not in placed:
            entries.append(
                (
                    node.name,
                    node.op_type,
                    f"the minimal placement does not quantize this {node.op_type}; the tensorrt placement "
                    f"does ({other[node.name].rule})",
                )
            )
    return entries


RECURRENT_REASON = (
    "recurrent layer: TensorRT builds LSTM/GRU/RNN from the ONNX op as a loop of matrix multiplies with no "
    "place for Q/DQ inside, so it runs in FP32/FP16 whatever the placement; it is left in float"
)


def _subgraph_entries(node: onnx.NodeProto, prefix: str = "") -> list[tuple[str, str, str]]:
    entries: list[tuple[str, str, str]] = []
    for attr in node.attribute:
        subgraphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for subgraph in subgraphs:
            where = f"{prefix}{node.name}/{attr.name}"
            for inner in subgraph.node:
                if inner.op_type in (*COMPUTE_OPS, *RECURRENT_OPS):
                    entries.append(
                        (
                            f"{where}/{inner.name}",
                            inner.op_type,
                            f"inside the {attr.name} subgraph of {node.op_type} {node.name!r}: Q/DQ is "
                            "placed in the main graph only, so this layer runs in float",
                        )
                    )
                if inner.op_type in CONTROL_FLOW_OPS:
                    entries.extend(_subgraph_entries(inner, f"{where}/"))
    return entries


def place(graph: onnx.GraphProto, profile: str = DEFAULT_PLACEMENT) -> Placement:
    """The layers of ``profile`` on ``graph`` (a prepared, shape-inferred graph), in topological order."""
    if profile not in PLACEMENTS:
        raise ValueError(f"unknown placement {profile!r}; choose one of {', '.join(PLACEMENTS)}.")
    g = PlacementGraph(graph)
    layers = _minimal(g) if profile == "minimal" else _tensorrt(g)
    numbered = tuple(replace(p, layer=replace(p.layer, index=index)) for index, p in enumerate(layers))
    names = frozenset(p.layer.name for p in numbered)
    return Placement(profile=profile, layers=numbered, not_placed=tuple(_not_placed(g, profile, names)))


def with_placement(loaded: LoadedModel, profile: str) -> LoadedModel:
    """``loaded`` whose ``info.layers`` are the layers of ``profile`` (what plans name and searches walk)."""
    layers = tuple(p.layer for p in place(loaded.proto.graph, profile).layers)
    if layers == loaded.info.layers:
        return loaded
    return LoadedModel(proto=loaded.proto, info=replace(loaded.info, layers=layers))


def node_macs(node: onnx.NodeProto, g: PlacementGraph) -> int:
    """Multiply-accumulates of one Conv/ConvTranspose/Gemm/MatMul/LSTM/GRU/RNN per run, from inferred
    shapes; unknown (symbolic) dimensions count as 1, an unknown shape gives 0."""

    def known(shape: tuple[int | None, ...] | None) -> tuple[int, ...] | None:
        # a dynamic axis can arrive as None, 0 or -1 (exports differ): each counts as 1
        return None if shape is None else tuple(d if d is not None and d > 0 else 1 for d in shape)

    def product(values: tuple[int, ...]) -> int:
        result = 1
        for value in values:
            result *= value
        return result

    out = known(g.shapes.get(node.output[0])) if node.output else None
    weight = known(g.shapes.get(node.input[1])) if len(node.input) > 1 else None
    if node.op_type == "Conv" and out is not None and weight is not None and len(weight) >= 2:
        return product(out) * product(weight[1:])  # each output: Cin/group · kernel MACs
    if node.op_type == "ConvTranspose" and weight is not None and len(weight) >= 2:
        data = known(g.shapes.get(node.input[0]))
        return 0 if data is None else product(data) * product(weight[1:])  # each input: Cout/g · kernel
    if node.op_type in ("Gemm", "MatMul") and out is not None:
        k, _ = gemm_dims(node, g)
        if k is None:
            first = known(g.shapes.get(node.input[0]))
            trans_a = node.op_type == "Gemm" and _int_attr(node, "transA", 0) == 1
            k = None if first is None or not first else (first[0] if trans_a else first[-1])
        return product(out) * (k or 1)
    if node.op_type in RECURRENT_OPS and weight is not None and len(weight) == 3:
        data = known(g.shapes.get(node.input[0]))
        hidden = _int_attr(node, "hidden_size", 0) or weight[1]
        if data is None or len(data) != 3:
            return 0
        steps_and_batch = data[0] * data[1]
        recurrence = known(g.shapes.get(node.input[2])) if len(node.input) > 2 else None
        inner = weight[2] + (recurrence[2] if recurrence is not None and len(recurrence) == 3 else hidden)
        return steps_and_batch * weight[0] * weight[1] * inner  # directions · gates·hidden · (input+hidden)
    return 0


def model_macs(graph: onnx.GraphProto) -> dict[str, int]:
    """Node name -> MACs for every MAC-carrying node of the main graph."""
    g = PlacementGraph(graph)
    return {
        node.name: node_macs(node, g) for node in graph.node if node.op_type in (*COMPUTE_OPS, *RECURRENT_OPS)
    }


def placement_counts(placement: Placement) -> Mapping[str, int]:
    """How many layers each rule placed (for reports and benchmarks)."""
    counts: dict[str, int] = {}
    for placed in placement.layers:
        counts[placed.rule] = counts.get(placed.rule, 0) + 1
    return counts
