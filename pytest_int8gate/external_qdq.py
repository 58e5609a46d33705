"""A Q/DQ model made elsewhere (ModelOpt, ONNX Runtime's ``quantize_static``, a QAT export), as plain
functions on ONNX protos: check its format and its inputs and outputs against the FP32 model, read which
layers it runs in INT8, derive its FP32 model by removing the Q/DQ pairs, and keep the given Q/DQ on
chosen layers only.

A *layer* is a Conv, ConvTranspose, Gemm or MatMul node with an activation input (what this tool's plans
name and its search walks); it is INT8 in the given model when its activation input and its weight (its
first two inputs) each arrive through a DequantizeLinear. A layer is kept in float by removing its pairs:
each of its inputs that arrives through a DequantizeLinear reads the float tensor instead (the Q's input,
or the FP32 or dequantized weight), and a pair on its output is bypassed for readers that are not INT8
layers. Other Q/DQ pairs (on Relu, pooling, residual Adds) stay as given in every plan. A pair whose
lowest level is 0 clamps like the Relu ONNX Runtime removed before it, so removing it puts a Relu back.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .coverage import Coverage, NotCovered
from .errors import CoverageError, ModelError
from .graph import COMPUTE_OPS, Layer, LoadedModel, ModelInfo, TensorInfo, model_hash, prepare_model
from .placement import model_macs

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: Quantized operators of ONNX's QOperator format (and ONNX Runtime's contrib ops of that format): the int8
#: arithmetic is inside the op, so there is no float graph to compare with and no pair to remove.
QOPERATOR_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearLeakyRelu",
        "QLinearSigmoid",
        "QLinearSoftmax",
        "QLinearReduceMean",
        "QLinearWhere",
        "QLinearConvTranspose",
        "QAttention",
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "DynamicQuantizeLSTM",
        "QEmbedLayerNormalization",
    }
)
#: How a coverage made from a given model names its placement ("... % of MACs, given Q/DQ placement").
GIVEN_PLACEMENT = "given Q/DQ"
DERIVED_REFERENCE_NOTE = "FP32 reference derived from the Q/DQ model: it carries the dequantized weights"


def _all_nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in (*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])):
                yield from _all_nodes(sub)


def _bodies(node: onnx.NodeProto) -> onnx.GraphProto:
    """The nodes of every If/Loop/Scan body of ``node``, as one graph to walk."""
    bodies = onnx.GraphProto()
    for attribute in node.attribute:
        for sub in (*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])):
            bodies.node.extend(sub.node)
    return bodies


def contains_qdq(model: onnx.ModelProto) -> bool:
    """True when any node (subgraphs included) is a QuantizeLinear/DequantizeLinear or a QOperator op."""
    return any(n.op_type in QDQ_OPS or n.op_type in QOPERATOR_OPS for n in _all_nodes(model.graph))


def check_qdq_format(model: onnx.ModelProto, source: str) -> int:
    """Raise for what this module cannot read (QOperator ops, Q/DQ inside subgraphs, blocked scales, no Q/DQ
    at all); return the number of Q/DQ nodes."""
    for node in _all_nodes(model.graph):
        if node.op_type in QOPERATOR_OPS:
            raise ModelError(
                f"{source}: node {node.name or '(unnamed)'!r} is {node.op_type}, a QOperator-format "
                "quantized "
                "op; only QDQ-format models (QuantizeLinear/DequantizeLinear around float ops, e.g. ONNX "
                "Runtime's QuantFormat.QDQ or NVIDIA ModelOpt's output) are supported."
            )
    nested = [inner for node in model.graph.node for inner in _all_nodes(_bodies(node))]
    for node in nested:
        if node.op_type in QDQ_OPS:
            raise ModelError(
                f"{source}: {node.op_type} {node.name or '(unnamed)'!r} lies inside an If/Loop/Scan body; "
                "Q/DQ in control-flow bodies is not supported."
            )
    for node in model.graph.node:
        if node.op_type in QDQ_OPS and any(a.name == "block_size" and a.i for a in node.attribute):
            raise ModelError(
                f"{source}: {node.op_type} {node.name!r} uses blocked scales (block_size); only per-tensor "
                "and per-axis Q/DQ are supported."
            )
    count = sum(node.op_type in QDQ_OPS for node in model.graph.node)
    if count == 0:
        raise CoverageError(
            f"{source}: the given Q/DQ model holds no QuantizeLinear/DequantizeLinear node: it runs entirely "
            "in float, and gating it against its FP32 model would measure nothing."
        )
    return count


# ---- values of DequantizeLinear on initializers -----------------------------------------------------------


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default


def dequantized_value(
    node: onnx.NodeProto, initializers: Mapping[str, onnx.TensorProto], source: str
) -> np.ndarray:
    """The float value a DequantizeLinear computes from initializers: ``(x - zero_point) * scale``."""
    names = [name for name in node.input if name]
    missing = [name for name in names if name not in initializers]
    if missing:
        raise ModelError(
            f"{source}: DequantizeLinear {node.name!r} reads {missing[0]!r}, which is not an initializer; "
            "its dequantized value cannot be computed."
        )
    values = numpy_helper.to_array(initializers[node.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(initializers[node.input[1]])
    zero = (
        numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64)
        if len(node.input) > 2 and node.input[2]
        else np.zeros((), np.float64)
    )
    out_dtype = scale.dtype
    if scale.size > 1:  # per axis (a one-element scale broadcasts like a scalar, as ONNX Runtime reads it)
        axis = _attribute(node, "axis", 1)
        axis = axis + values.ndim if axis < 0 else axis
        if not 0 <= axis < values.ndim or values.shape[axis] != scale.size:
            raise ModelError(
                f"{source}: DequantizeLinear {node.name!r} has {scale.size} scales, which do not match axis "
                f"{axis} of {node.input[0]!r} (shape {list(values.shape)})."
            )
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale64 = scale.astype(np.float64).reshape(shape)
        zero = zero.reshape(shape) if zero.size > 1 else zero.reshape(())
    else:
        scale64 = scale.astype(np.float64).reshape(())
        zero = zero.reshape(())
    return ((values - zero) * scale64).astype(out_dtype)


# ---- deriving the FP32 model ---------------------------------------------------------------------------


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _rename_inputs(graph: onnx.GraphProto, resolve: Mapping[str, str]) -> None:
    """Point every read of a replaced tensor (subgraph bodies included) at its replacement."""
    for node in _all_nodes(graph):
        for index, name in enumerate(node.input):
            if name in resolve:
                node.input[index] = resolve[name]


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove dead Q/DQ nodes (repeatedly), then initializers and value infos no node reads any more."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for node in _all_nodes(graph) for name in node.input} | outputs
        kept = [n for n in graph.node if n.op_type not in QDQ_OPS or any(o in read for o in n.output)]
        if len(kept) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(kept)
    read = {name for node in _all_nodes(graph) for name in node.input} | outputs
    removed_inits = {init.name for init in graph.initializer if init.name not in read}
    initializers = [init for init in graph.initializer if init.name in read]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    produced = {o for node in graph.node for o in node.output}
    infos = [vi for vi in graph.value_info if vi.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    # an old-style model lists its initializers among its inputs: drop those whose initializer is gone
    kept_inits = {init.name for init in graph.initializer}
    kept_inputs = [vi for vi in graph.input if vi.name in kept_inits or vi.name not in removed_inits]
    del graph.input[:]
    graph.input.extend(kept_inputs)


def _clamps_at_zero(quantize: onnx.NodeProto, initializers: Mapping[str, onnx.TensorProto]) -> bool:
    """True when a QuantizeLinear's lowest level is 0 (e.g. uint8 with zero point 0): it clamps like a
    Relu."""
    if len(quantize.input) < 3 or quantize.input[2] not in initializers:
        return False  # no zero point: uint8 0 by default, but ONNX Runtime always writes it
    zero = numpy_helper.to_array(initializers[quantize.input[2]])
    if zero.size != 1 or zero.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        return False
    return int(zero.reshape(())) == int(np.iinfo(zero.dtype).min)


def derive_fp32(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """The FP32 model of a QDQ-format model: every QuantizeLinear -> DequantizeLinear pair becomes the
    identity, and every DequantizeLinear of an initializer becomes a float initializer of the
    dequantized values.

    Node names and the graph's inputs and outputs are kept (an output a DequantizeLinear produced is
    produced by an Identity of the float tensor)."""
    derived = onnx.ModelProto()
    derived.CopyFrom(model)
    graph = derived.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = _producers(graph)
    outputs = {o.name for o in graph.output}
    replaced: dict[str, str] = {}
    dequantized: list[onnx.TensorProto] = []
    taken = {name for node in graph.node for name in (*node.input, *node.output)} | set(initializers)
    relus: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            if node.output[0] in outputs:
                raise ModelError(
                    f"{source}: graph output {node.output[0]!r} is quantized (QuantizeLinear {node.name!r}); "
                    "the given model's outputs must be float, like the FP32 model's."
                )
            continue
        if node.op_type != "DequantizeLinear":
            continue
        read = node.input[0]
        producer = producers.get(read)
        if read in initializers:
            # a name of its own: a graph holding both this model's tensors and the Q/DQ model's (the search's
            # sensitivity probe) must not define the DequantizeLinear's output twice
            name, suffix = f"{node.output[0]}_float", 1
            while name in taken:
                name, suffix = f"{node.output[0]}_float_{suffix}", suffix + 1
            taken.add(name)
            dequantized.append(numpy_helper.from_array(dequantized_value(node, initializers, source), name))
            replaced[node.output[0]] = name
        elif producer is not None and producer.op_type == "QuantizeLinear":
            if _clamps_at_zero(producer, initializers):
                # ONNX Runtime drops a Relu before a pair whose zero point is the lowest level (uint8 0): the
                # pair clamps at 0, so the FP32 model needs the Relu back
                name, suffix = f"{node.output[0]}_relu", 1
                while name in taken:
                    name, suffix = f"{node.output[0]}_relu_{suffix}", suffix + 1
                taken.add(name)
                relus.append(helper.make_node("Relu", [producer.input[0]], [name], name=f"{node.name}_relu"))
                replaced[node.output[0]] = name
            else:
                replaced[node.output[0]] = producer.input[0]
        else:
            raise ModelError(
                f"{source}: DequantizeLinear {node.name!r} reads {read!r}, which is neither an "
                "initializer nor the output of a QuantizeLinear; the model's FP32 form cannot be derived."
            )
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            readers = [n for n in graph.node if node.output[0] in n.input and n.op_type != "DequantizeLinear"]
            if readers:
                raise ModelError(
                    f"{source}: QuantizeLinear {node.name!r} feeds {readers[0].op_type} {readers[0].name!r}, "
                    "which reads int8 values; only QDQ-format models (every Q followed by a DQ) are "
                    "supported."
                )

    def resolve(name: str) -> str:
        seen = 0
        while name in replaced and seen <= len(replaced):
            name, seen = replaced[name], seen + 1
        return name

    resolved = {name: resolve(name) for name in replaced}
    kept: list[onnx.NodeProto] = []
    relu_of = {relu.input[0]: relu for relu in relus}
    for name in (vi.name for vi in graph.input):  # a clamped graph input: its Relu comes first
        if name in relu_of:
            kept.append(relu_of.pop(name))
    for node in graph.node:
        if node.op_type not in QDQ_OPS:
            kept.append(node)
            kept.extend(relu_of.pop(out) for out in node.output if out in relu_of)
    kept.extend(relu_of.values())  # clamped initializers (no producer)
    del graph.node[:]
    graph.node.extend(kept)
    _rename_inputs(graph, resolved)
    for output in graph.output:
        if output.name in resolved:  # keep the output's name: an Identity of the float tensor
            graph.node.append(
                helper.make_node(
                    "Identity", [resolved[output.name]], [output.name], name=f"{output.name}_float_identity"
                )
            )
    graph.initializer.extend(dequantized)
    _drop_unused(graph)
    return derived


# ---- layers of the given model -------------------------------------------------------------------------


@dataclass(frozen=True)
class GivenLayer:
    """A layer of the given Q/DQ model: INT8 when ``reason`` is empty, else why it runs in float."""

    name: str
    op_type: str
    reason: str = ""

    @property
    def int8(self) -> bool:
        return not self.reason


def read_layers(given: onnx.GraphProto, layers: Sequence[Layer]) -> tuple[GivenLayer, ...]:
    """Which of ``layers`` (the derived model's, same node names) the given graph runs in INT8."""
    producers = _producers(given)
    nodes = {node.name: node for node in given.node}
    found: list[GivenLayer] = []
    for layer in layers:
        node = nodes.get(layer.name)
        if node is None:  # folded away in the derived model (e.g. a BatchNormalization)
            continue
        reason = ""
        for position, tensor in enumerate(node.input[:2]):
            producer = producers.get(tensor)
            if tensor and (producer is None or producer.op_type != "DequantizeLinear"):
                what = (
                    "activation input" if position == 0 else "weight" if _constant(given, tensor) else "input"
                )
                reason = (
                    f"its {what} {tensor!r} does not arrive through a DequantizeLinear in the given model"
                )
                break
        found.append(GivenLayer(layer.name, layer.op_type, reason))
    return tuple(found)


def layer_regions(graph: onnx.GraphProto, layers: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Layer -> the other nodes with an input through a DequantizeLinear that it owns: those whose first
    traced input (through Q/DQ and other nodes) comes from it, before the next layer.

    ONNX Runtime's default op set quantizes the inputs of Relu, pooling, Add, Mul and more; keeping a layer
    in float also removes the pairs in its region (the ops TensorRT would run in its precision), so that a
    search over the layers can reach every pair after the first layer.
    """
    producers = _producers(graph)
    names = set(layers)
    owner: dict[str, str] = {}
    regions: dict[str, list[str]] = {name: [] for name in layers}

    def source(tensor: str) -> onnx.NodeProto | None:
        node = producers.get(tensor)
        while node is not None and node.op_type in QDQ_OPS:
            node = producers.get(node.input[0])
        return node

    for node in graph.node:
        if node.op_type in QDQ_OPS:
            continue
        if node.name in names:
            owner[node.name] = node.name
            continue
        for tensor in node.input:
            found = source(tensor) if tensor else None
            if found is not None and found.name in owner:
                owner[node.name] = owner[found.name]
                break
        dequantized = any(
            (p := producers.get(t)) is not None and p.op_type == "DequantizeLinear" for t in node.input
        )
        if node.name in owner and dequantized:
            regions[owner[node.name]].append(node.name)
    return {name: tuple(nodes) for name, nodes in regions.items() if nodes}


def _constant(graph: onnx.GraphProto, tensor: str) -> bool:
    return any(init.name == tensor for init in graph.initializer)


def layers_kept_in_float(
    given: onnx.ModelProto,
    layers: Collection[str],
    source: str,
    *,
    int8: Collection[str] = (),
    reference: onnx.GraphProto | None = None,
    regions: Mapping[str, Collection[str]] | None = None,
) -> onnx.ModelProto:
    """A copy of ``given`` with ``layers`` in float: each of their inputs that arrives through a
    DequantizeLinear reads the Q's float input (activations) or a float initializer (weights, biases)
    instead: the FP32 ``reference``'s weight of the same node when it has one of that shape (a re-
    quantization that excludes the node deploys those; a corrupted weight scale does not survive), else
    the dequantized values; and a Q/DQ pair on one of their outputs is bypassed for every reader that is
    not one of the ``int8`` layers (ONNX Runtime quantizes a node's output too; the next INT8 layer
    keeps its input pair). The nodes of a floated layer's ``regions`` (the other nodes it owns, see
    :func:`layer_regions`) read float inputs too. Q/DQ nodes left without readers are removed."""
    model = onnx.ModelProto()
    model.CopyFrom(given)
    graph = model.graph
    floated = set(layers)
    staying = set(int8) - floated
    wanted = floated | {node for layer in floated for node in (regions or {}).get(layer, ())}
    initializers = {init.name: init for init in graph.initializer}
    producers = _producers(graph)
    taken = {name for node in graph.node for name in (*node.input, *node.output)} | set(initializers)
    float_weights = _reference_weights(graph, reference) if reference is not None else {}
    bypass: dict[str, str] = {}  # DQ output of a floated layer's output pair -> the float output
    relus: dict[str, onnx.NodeProto] = {}  # by the QuantizeLinear whose clamp at 0 they keep

    def float_input(quantize: onnx.NodeProto) -> str:
        """What a reader of the pair reads instead: the Q's input, through a Relu when the pair clamps at 0
        (ONNX Runtime drops the Relu a uint8 pair with zero point 0 makes redundant)."""
        if not _clamps_at_zero(quantize, initializers):
            return str(quantize.input[0])
        if quantize.name not in relus:
            name, suffix = f"{quantize.input[0]}_relu", 1
            while name in taken:
                name, suffix = f"{quantize.input[0]}_relu_{suffix}", suffix + 1
            taken.add(name)
            relus[quantize.name] = helper.make_node(
                "Relu", [quantize.input[0]], [name], name=f"{quantize.name}_relu"
            )
        return str(relus[quantize.name].output[0])

    quantizers: dict[str, list[onnx.NodeProto]] = {}  # tensor -> the QuantizeLinears reading it
    dequantizers: dict[str, list[onnx.NodeProto]] = {}  # Q output -> the DequantizeLinears reading it
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            quantizers.setdefault(node.input[0], []).append(node)
        elif node.op_type == "DequantizeLinear":
            dequantizers.setdefault(node.input[0], []).append(node)
    for node in graph.node:
        if node.name not in wanted:
            continue
        for index, tensor in enumerate(node.input):
            dq = producers.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            read = dq.input[0]
            quantize = producers.get(read)
            if read in initializers:
                value = dequantized_value(dq, initializers, source)
                original = float_weights.get((node.name, index))
                if original is not None and original.shape == value.shape and original.dtype == value.dtype:
                    value = original
                name, suffix = f"{tensor}_float", 1
                while name in taken:
                    name, suffix = f"{tensor}_float_{suffix}", suffix + 1
                taken.add(name)
                graph.initializer.append(numpy_helper.from_array(value, name))
                node.input[index] = name
            elif quantize is not None and quantize.op_type == "QuantizeLinear":
                node.input[index] = float_input(quantize)
        if node.name not in floated:
            continue
        for output in node.output:
            for quantize in quantizers.get(output, ()):
                for dq in dequantizers.get(quantize.output[0], ()):
                    bypass[dq.output[0]] = float_input(quantize)
    if bypass:
        for node in graph.node:
            if node.name in staying or node.op_type in QDQ_OPS:
                continue
            for index, tensor in enumerate(node.input):
                if tensor in bypass:
                    node.input[index] = bypass[tensor]
        outputs = {o.name for o in graph.output}
        for index, node in enumerate(graph.node):
            if node.op_type == "DequantizeLinear" and node.output[0] in bypass and node.output[0] in outputs:
                identity = helper.make_node(
                    "Identity", [bypass[node.output[0]]], [node.output[0]], name=node.name
                )
                graph.node[index].CopyFrom(identity)
    if relus:  # each just before its QuantizeLinear, whose input is ready there
        ordered: list[onnx.NodeProto] = []
        for node in graph.node:
            if node.op_type == "QuantizeLinear" and node.name in relus:
                ordered.append(relus[node.name])
            ordered.append(node)
        del graph.node[:]
        graph.node.extend(ordered)
    _drop_unused(graph)
    return model


def _reference_weights(
    given: onnx.GraphProto, reference: onnx.GraphProto
) -> dict[tuple[str, int], np.ndarray]:
    """(node name, input index) -> the FP32 reference's initializer there, for nodes of the same name and op.

    A node whose output the given model normalises with a BatchNormalization is left out: the reference was
    prepared with its BatchNormalizations folded into the weights, which the given model's node lacks.
    """
    initializers = {init.name: init for init in reference.initializer}
    ours = {node.name: node for node in given.node}
    producers = _producers(given)
    normalised: set[str] = set()  # nodes whose output a BatchNormalization reads (through Q/DQ or not)
    for node in given.node:
        if node.op_type == "BatchNormalization":
            source = producers.get(node.input[0])
            while source is not None and source.op_type in QDQ_OPS:
                source = producers.get(source.input[0])
            if source is not None:
                normalised.add(source.name)
    weights: dict[tuple[str, int], np.ndarray] = {}
    for node in reference.node:
        mine = ours.get(node.name)
        if mine is None or mine.op_type != node.op_type or node.name in normalised:
            continue
        for index, tensor in enumerate(node.input):
            if index > 0 and tensor in initializers:
                weights[(node.name, index)] = numpy_helper.to_array(initializers[tensor])
    return weights


# ---- the given model as the gate uses it ---------------------------------------------------------------


def check_same_io(given: ModelInfo, fp32: ModelInfo) -> None:
    """Raise naming the first input or output whose name, dtype or shape differs between the two models."""
    for role, ours, theirs in (("input", given.inputs, fp32.inputs), ("output", given.outputs, fp32.outputs)):
        by_name = {t.name: t for t in theirs}
        for tensor in ours:
            other = by_name.get(tensor.name)
            if other is None:
                raise ModelError(
                    f"{given.source}: {role} {tensor.name!r} of the Q/DQ model is not an {role} of the FP32 "
                    f"model {fp32.source} (its {role}s: {', '.join(repr(t.name) for t in theirs)})."
                )
            problem = _difference(tensor, other)
            if problem:
                raise ModelError(
                    f"{given.source}: {role} {tensor.name!r} is {problem} in the Q/DQ model but "
                    f"{_describe(other)} in the FP32 model {fp32.source}."
                )
        names = {t.name for t in ours}
        extra = [t.name for t in theirs if t.name not in names]
        if extra:
            raise ModelError(
                f"{fp32.source}: {role} {extra[0]!r} of the FP32 model is not an {role} of the Q/DQ model "
                f"{given.source}."
            )


def _describe(tensor: TensorInfo) -> str:
    return f"{tensor.dtype} {tensor.shape_text()}"


def _difference(ours: TensorInfo, theirs: TensorInfo) -> str:
    if ours.dtype != theirs.dtype:
        return _describe(ours)
    if ours.shape is None or theirs.shape is None:
        return ""
    if len(ours.shape) != len(theirs.shape):
        return _describe(ours)
    for a, b in zip(ours.shape, theirs.shape, strict=True):
        if isinstance(a, int) and isinstance(b, int) and a != b:
            return _describe(ours)
    return ""


@dataclass(frozen=True)
class GivenQdq:
    """A Q/DQ model made elsewhere, ready to gate.

    ``fp32`` is its derived FP32 model (same node names; its ``info.layers`` are the layers plans name), and
    ``reference`` the model the FP32 engine runs: the FP32 model given beside it, else ``fp32`` itself.
    """

    qdq: LoadedModel
    fp32: LoadedModel
    reference: LoadedModel
    layers: tuple[GivenLayer, ...]
    qdq_nodes: int
    macs: Mapping[str, int] = field(default_factory=dict)
    #: Layer -> the other nodes with Q/DQ'd inputs it owns (see :func:`layer_regions`).
    regions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: float16 initializers of the given model (a float16 model with INT8 layers, e.g. ModelOpt's default).
    float16_initializers: int = 0

    @property
    def derived_reference(self) -> bool:
        return self.reference is self.fp32

    @property
    def int8_layers(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers if layer.int8)

    def notes(self) -> tuple[str, ...]:
        notes = [
            f"INT8 model: the given Q/DQ model {self.qdq.info.source} ({self.qdq_nodes} Q/DQ nodes), "
            "not calibrated or quantized by this tool"
        ]
        if self.derived_reference:
            notes.append(DERIVED_REFERENCE_NOTE)
        elif self.float16_initializers:
            notes.append(
                f"the given Q/DQ model holds {self.float16_initializers} float16 initializers (float16 "
                "between its INT8 layers, as ModelOpt writes by default): the gate measures INT8 and float16 "
                "together against the FP32 model"
            )
        return tuple(notes)

    def header(self) -> str:
        """What the report header shows where a calibrator would be."""
        text = "given Q/DQ model, no calibration"
        return f"{text}; {DERIVED_REFERENCE_NOTE}" if self.derived_reference else text

    def keeping(self, kept: Collection[str]) -> tuple[onnx.ModelProto, tuple[str, ...], dict[str, str]]:
        """The given model with the Q/DQ of the INT8 layers not in ``kept`` removed: (model, INT8 layers
        kept, layer -> why it was floated)."""
        floated = [name for name in self.int8_layers if name not in kept]
        proto = (
            layers_kept_in_float(
                self.qdq.proto,
                floated,
                self.qdq.info.source,
                int8=self.int8_layers,
                reference=None if self.derived_reference else self.reference.proto.graph,
                regions=self.regions,
            )
            if floated
            else self.qdq.proto
        )
        quantized = tuple(name for name in self.int8_layers if name in kept)
        return proto, quantized, dict.fromkeys(floated, "its Q/DQ removed by the plan")

    def fix_note(self, layers: Sequence[str]) -> str:
        """How to apply a fix that keeps ``layers`` in float to the given model: the exact nodes whose Q/DQ
        the fix removed (each layer and the nodes of its region)."""
        return fix_note([node for layer in layers for node in (layer, *self.regions.get(layer, ()))])

    def coverage(self, quantized: Collection[str], floated: Mapping[str, str]) -> Coverage:
        kept = set(quantized)
        not_covered = [
            NotCovered(layer.name, layer.op_type, layer.reason) for layer in self.layers if not layer.int8
        ]
        not_covered += [
            NotCovered(layer.name, layer.op_type, floated[layer.name])
            for layer in self.layers
            if layer.name in floated
        ]
        return Coverage.of(
            placement=GIVEN_PLACEMENT,
            quantized=len(kept),
            int8_macs=sum(self.macs.get(name, 0) for name in kept),
            total_macs=sum(self.macs.values()),
            not_covered=tuple(not_covered),
        )

    def activation_scales(
        self, proto: onnx.ModelProto, layers: Collection[str]
    ) -> dict[str, dict[str, float]]:
        """Layer -> float activation tensor -> scale, for the symmetric per-tensor int8 pairs (zero point 0)
        on the activation inputs of ``layers`` (what the range diagnostics compare with)."""
        graph = proto.graph
        producers = _producers(graph)
        initializers = {init.name: init for init in graph.initializer}
        fp32_tensors = {o for node in self.fp32.proto.graph.node for o in node.output}
        fp32_tensors |= {vi.name for vi in self.fp32.proto.graph.input}
        wanted = set(layers)
        scales: dict[str, dict[str, float]] = {}
        for node in graph.node:
            if node.name not in wanted:
                continue
            for tensor in node.input[:2]:
                dq = producers.get(tensor)
                quantize = (
                    producers.get(dq.input[0])
                    if dq is not None and dq.op_type == "DequantizeLinear"
                    else None
                )
                if quantize is None or quantize.op_type != "QuantizeLinear":
                    continue
                scale = _initializer_value(initializers, quantize.input[1] if len(quantize.input) > 1 else "")
                zero = _initializer_value(initializers, quantize.input[2] if len(quantize.input) > 2 else "")
                if scale is None or scale.size != 1 or not float(scale.reshape(())) > 0:
                    continue
                if zero is not None and (zero.dtype != np.int8 or np.any(zero != 0)):
                    continue  # asymmetric or unsigned: not the amax = 127 * scale scheme the checks assume
                if quantize.input[0] in fp32_tensors:
                    scales.setdefault(node.name, {})[quantize.input[0]] = float(scale.reshape(()))
        return scales


def _initializer_value(initializers: Mapping[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    return numpy_helper.to_array(initializers[name]) if name in initializers else None


def read_given_qdq(qdq: LoadedModel, fp32: LoadedModel | None) -> GivenQdq:
    """Check ``qdq`` (and its IO against ``fp32`` when given), derive its FP32 model and read its layers."""
    source = qdq.info.source
    count = check_qdq_format(qdq.proto, source)
    if fp32 is not None and contains_qdq(fp32.proto):
        raise ModelError(
            f"{fp32.info.source}: the FP32 model given beside the Q/DQ model {source} holds Q/DQ or "
            "quantized "
            "nodes itself; give the float model it was quantized from."
        )
    derived_proto = derive_fp32(qdq.proto, source)
    # BatchNormalization stays: the search's probes mix this graph with the Q/DQ model's tensors
    derived = prepare_model(
        derived_proto,
        source=f"{source} (FP32, Q/DQ removed)",
        content_hash=model_hash(derived_proto),
        fold_batchnorm=False,
    )
    compute = tuple(layer for layer in derived.info.layers if layer.op_type in COMPUTE_OPS)
    layers = read_layers(qdq.proto.graph, compute)
    plan_layers = tuple(
        Layer(index=i, name=layer.name, op_type=layer.op_type, inputs=layer.inputs, outputs=layer.outputs)
        for i, layer in enumerate(la for la in compute if any(g.name == la.name for g in layers))
    )
    fp32_model = LoadedModel(
        proto=derived.proto, info=_with_layers(derived.info, plan_layers, qdq.info.notes)
    )
    if fp32 is not None:
        check_same_io(qdq.info, fp32.info)
    macs = model_macs(derived.proto.graph)
    return GivenQdq(
        qdq=qdq,
        fp32=fp32_model,
        reference=fp32 if fp32 is not None else fp32_model,
        layers=layers,
        qdq_nodes=count,
        macs={layer.name: macs.get(layer.name, 0) for layer in plan_layers},
        regions=layer_regions(qdq.proto.graph, [layer.name for layer in plan_layers]),
        float16_initializers=sum(
            init.data_type == onnx.TensorProto.FLOAT16 for init in qdq.proto.graph.initializer
        ),
    )


def _with_layers(info: ModelInfo, layers: tuple[Layer, ...], notes: tuple[str, ...]) -> ModelInfo:
    from dataclasses import replace

    return replace(info, layers=layers, notes=notes)


# ---- the fix, written for the tools that made the model ------------------------------------------------


def anchored_pattern(name: str) -> str:
    """A regular expression that matches exactly ``name`` (ModelOpt matches ``nodes_to_exclude`` as regular
    expressions: ``p2o.MatMul.2`` alone also matches ``p2o.MatMul.20``)."""
    return f"^{re.escape(name)}$"


def nodes_to_exclude_argument(names: Sequence[str]) -> str:
    """The ``--nodes_to_exclude`` value of NVIDIA ModelOpt's ONNX quantizer that excludes exactly ``names``,
    quoted for a POSIX shell."""
    return " ".join(shlex.quote(anchored_pattern(name)) for name in names)


def fix_note(names: Sequence[str]) -> str:
    """How to apply a fix that keeps ``names`` in float to the tool that made the given Q/DQ model."""
    listed = ", ".join(names)
    return (
        "to apply the fix to the given Q/DQ model, remove the Q/DQ on the inputs of these nodes (and on "
        f"their outputs, where the tool quantized those too): {listed}; "
        f"with NVIDIA ModelOpt, quantize again with --nodes_to_exclude {nodes_to_exclude_argument(names)} "
        "(each name anchored, so that no other node matches)"
    )
