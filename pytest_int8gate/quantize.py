"""Turn a :class:`QuantPlan` and a calibration table into an explicit Q/DQ ONNX model (a pure function).

The scheme is TensorRT's explicit quantization, matched exactly so that ONNX Runtime on the CPU predicts
what TensorRT 10/11 (which has no implicit INT8 any more) will compute from the very same model:
int8, symmetric, zero point 0, ``scale = amax / 127``; activations per tensor, weights per output
channel with ``amax = max |w|`` over the channel (TensorRT uses max for weights, calibrators for
activations only). Weights are stored pre-quantized in [-127, 127] (round half to even); activations are
quantized at run time by QuantizeLinear, which both ONNX Runtime and TensorRT's IQuantizeLayer define
as round-half-to-even clamped to [-128, 127], so a value below -amax reaches -128·scale.

Placement follows TensorRT's guide to Q/DQ networks:

* **Quantizable ops** (Conv, ConvTranspose, Gemm, MatMul): a QuantizeLinear → DequantizeLinear pair on
  each activation input, so that TensorRT fuses ``DQ → op → Q`` into one int8 kernel. Bias stays float.
* **Weights**: stored as an int8 initializer read by a DequantizeLinear with a per-output-channel scale
  (``axis`` attribute): Conv axis 0, ConvTranspose axis 1 (group 1 only; grouped deconvolutions mix the
  channels of several groups on that axis, so they get one per-tensor scale), Gemm axis 0 when
  ``transB`` else 1, MatMul the last axis of a rank-2 weight (other ranks per tensor).
* **Residual Add** after a Conv: a Q/DQ pair on the skip input only (the one not produced by a Conv),
  so TensorRT can fuse the Add into the preceding Conv's int8 kernel.

A layer is quantized all or nothing: if one of its activations cannot be (excluded by the plan, skipped
by calibration, amax 0 or non-finite), the layer keeps float inputs and the reason is recorded. One Q/DQ
pair serves every quantized consumer of a tensor that uses the same scale; consumers kept in float keep
reading the float tensor (and the float initializer, for a shared weight).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .choices import CALIBRATORS as CALIBRATORS  # the names a plan may ask for; this path stays importable
from .errors import CalibrationError, ModelError
from .graph import RESIDUAL_PRODUCERS, Layer, LoadedModel, ModelInfo

INT8_MAX = 127
#: First opset with per-axis DequantizeLinear; float16 Q/DQ needs 19.
MIN_QDQ_OPSET = 13
MIN_FLOAT16_QDQ_OPSET = 19


class AmaxSource(Protocol):
    """What quantization needs from a calibration table."""

    @property
    def skipped(self) -> Mapping[str, str]:
        """Activation tensor -> why it must not be quantized."""
        ...

    def amax_for(self, tensor: str, method: str) -> float:
        """The amax that calibrator ``method`` chose for ``tensor``; raises CalibrationError if absent."""
        ...


@dataclass(frozen=True)
class QuantPlan:
    """Which layers get Q/DQ, and which calibrator's amax each layer's activations use.

    ``equalize`` and ``bias_correction`` name the layers whose FP32 model is rewritten before calibration
    (cross-layer equalization with their producer, equalize.py) and whose bias is corrected after
    quantization (bias_correction.py). They are part of the plan because they decide the deployed
    artefact, but :func:`quantize_model` only places Q/DQ: the pipeline applies the two rewrites.
    """

    calibrator: str = "entropy"
    exclude: frozenset[str] = frozenset()
    overrides: Mapping[str, str] = field(default_factory=dict)
    include: frozenset[str] | None = None
    equalize: frozenset[str] = frozenset()
    bias_correction: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # Normalise so that equal content gives equal plans whatever container the caller passed.
        for name in ("exclude", "include", "equalize", "bias_correction"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(
                    f"QuantPlan.{name} must be a collection of layer names, not the string {value!r}."
                )
        object.__setattr__(self, "exclude", frozenset(self.exclude))
        object.__setattr__(self, "equalize", frozenset(self.equalize))
        object.__setattr__(self, "bias_correction", frozenset(self.bias_correction))
        if self.include is not None:
            object.__setattr__(self, "include", frozenset(self.include))
        object.__setattr__(self, "overrides", dict(sorted(self.overrides.items())))

    def __hash__(self) -> int:
        return hash(self.key())

    def to_dict(self) -> dict[str, object]:
        document: dict[str, object] = {
            "calibrator": self.calibrator,
            "exclude": sorted(self.exclude),
            "overrides": dict(sorted(self.overrides.items())),
            "include": None if self.include is None else sorted(self.include),
        }
        # Only when used: a plan without rewrites keeps its key, and so its cached artefacts.
        if self.equalize:
            document["equalize"] = sorted(self.equalize)
        if self.bias_correction:
            document["bias_correction"] = sorted(self.bias_correction)
        return document

    def key(self) -> str:
        """Stable short hash of the plan's content, independent of set and dict ordering."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def quantized_layers(self, info: ModelInfo) -> tuple[Layer, ...]:
        """The layers this plan allows to be quantized (calibration may still skip some)."""
        return tuple(
            layer
            for layer in info.layers
            if layer.name not in self.exclude and (self.include is None or layer.name in self.include)
        )

    def calibrator_for(self, layer_name: str) -> str:
        return self.overrides.get(layer_name, self.calibrator)

    def validate(self, info: ModelInfo) -> None:
        """Raise ModelError for a layer name the model lacks, CalibrationError for an unknown calibrator."""
        known = [layer.name for layer in info.layers]
        known_set = set(known)
        for what, names in (
            ("exclude", sorted(self.exclude)),
            ("overrides", list(self.overrides)),
            ("include", sorted(self.include or ())),
            ("equalize", sorted(self.equalize)),
            ("bias_correction", sorted(self.bias_correction)),
        ):
            for name in names:
                if name not in known_set:
                    raise ModelError(_unknown_layer_message(name, what, known, info.source))
        for layer_name, method in [("", self.calibrator), *self.overrides.items()]:
            if method not in CALIBRATORS:
                where = f" for layer {layer_name!r}" if layer_name else ""
                raise CalibrationError(
                    f"Unknown calibrator {method!r}{where}; known calibrators: {', '.join(CALIBRATORS)}."
                )


def _unknown_layer_message(name: str, what: str, known: list[str], source: str) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "."
    return f"{source}: plan {what} names layer {name!r}, which is not a quantizable layer of the model{hint}"


@dataclass(frozen=True)
class QuantizedModel:
    """The Q/DQ model and what happened to each layer."""

    proto: onnx.ModelProto
    quantized_layers: tuple[str, ...]
    skipped: Mapping[str, str]
    #: Q/DQ'd activation tensor -> scale of its first quantized consumer (per-layer: ``layer_scales``).
    activation_scales: Mapping[str, float]
    #: Quantized layer -> its activation input tensors -> the scale that layer uses.
    layer_scales: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: Quantized layer -> remark on how it was quantized (per-tensor weight fallback and why).
    notes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _InputSlot:
    """One input of a layer that gets Q/DQ: an activation (per tensor) or a weight initializer."""

    index: int
    tensor: str
    is_weight: bool
    axis: int | None = None  # per-channel axis of a weight; None: per tensor
    note: str = ""  # why a weight is per tensor


def _input_slots(
    node: onnx.NodeProto,
    producers: Mapping[str, onnx.NodeProto],
    initializers: Mapping[str, onnx.TensorProto],
) -> tuple[_InputSlot, ...]:
    if node.op_type == "Add":
        first, second = node.input[0], node.input[1]
        from_conv = [
            producers[t].op_type in RESIDUAL_PRODUCERS if t in producers else False for t in (first, second)
        ]
        index = 0 if not from_conv[0] and from_conv[1] else 1
        return (_InputSlot(index, node.input[index], is_weight=False),)
    slots = []
    for index in (0, 1):
        if index >= len(node.input) or not node.input[index]:
            continue
        tensor = node.input[index]
        if tensor not in initializers:
            slots.append(_InputSlot(index, tensor, is_weight=False))
            continue
        axis, note = _weight_axis(node, index, len(initializers[tensor].dims))
        slots.append(_InputSlot(index, tensor, is_weight=True, axis=axis, note=note))
    return tuple(slots)


def _weight_axis(node: onnx.NodeProto, index: int, rank: int) -> tuple[int | None, str]:
    """Output-channel axis of a weight input, or None and the reason it is quantized per tensor."""
    if index == 0:
        return None, f"constant first input of {node.op_type}: per-tensor weight scale"
    if rank == 0:
        return None, "scalar weight: per-tensor weight scale"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return 0, ""
    if node.op_type == "ConvTranspose":
        group = int(attrs.get("group", 1))
        if group == 1:
            return 1, ""
        return None, (
            f"ConvTranspose with group={group}: its output channels do not lie on one weight axis, "
            "so the weight uses a per-tensor scale"
        )
    if node.op_type == "Gemm":
        return (0 if attrs.get("transB", 0) else 1), ""
    if rank == 2:  # MatMul: (K, N) weight, N output channels
        return 1, ""
    return None, f"MatMul weight of rank {rank}: per-tensor weight scale"


def activation_tensors(loaded: LoadedModel) -> tuple[str, ...]:
    """Every activation some plan could put Q/DQ on: what calibration must measure, in layer order."""
    graph = loaded.proto.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    nodes = {node.name: node for node in graph.node}
    tensors: dict[str, None] = {}
    for layer in loaded.info.layers:
        node = _layer_node(nodes, layer, loaded.info)
        for slot in _input_slots(node, producers, initializers):
            if not slot.is_weight:
                tensors.setdefault(slot.tensor)
    return tuple(tensors)


def _layer_node(nodes: Mapping[str, onnx.NodeProto], layer: Layer, info: ModelInfo) -> onnx.NodeProto:
    node = nodes.get(layer.name)
    if node is None or tuple(node.input) != layer.inputs:
        raise ModelError(
            f"{info.source}: layer {layer.name!r} of the model description does not match the model proto; "
            "prepare the model with graph.prepare_model and use its LoadedModel unchanged."
        )
    return node


@dataclass
class _Insertion:
    """Q/DQ (activation) or DQ (weight) nodes and their initializers; ``output`` replaces the float input."""

    output: str
    nodes: tuple[onnx.NodeProto, ...]
    initializers: tuple[onnx.TensorProto, ...]
    emitted: bool = False


@dataclass
class _LayerDecision:
    activations: list[tuple[_InputSlot, np.ndarray, str]]  # slot, scale, calibrator
    weights: list[_InputSlot]
    note: str


def quantize_model(loaded: LoadedModel, table: AmaxSource, plan: QuantPlan) -> QuantizedModel:
    """A new model with Q/DQ on the layers ``plan`` quantizes; ``loaded.proto`` is left untouched."""
    info = loaded.info
    plan.validate(info)
    source = loaded.proto.graph
    opset = _default_opset(loaded.proto)
    if opset < MIN_QDQ_OPSET:
        raise ModelError(
            f"{info.source}: opset {opset} is below {MIN_QDQ_OPSET}, which per-channel Q/DQ needs; "
            "prepare the model with graph.prepare_model first."
        )
    existing_qdq = [n.name for n in source.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if existing_qdq:
        raise ModelError(
            f"{info.source}: the model already contains Q/DQ nodes (e.g. {existing_qdq[0]!r}); "
            "give the FP32 model, quantization is this tool's job."
        )

    initializers = {init.name: init for init in source.initializer}
    producers = {out: node for node in source.node for out in node.output}
    nodes = {node.name: node for node in source.node}
    elem_types = _elem_types(source)
    allowed = {layer.name for layer in plan.quantized_layers(info)}

    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    decisions: dict[str, _LayerDecision] = {}
    for layer in info.layers:
        if layer.name in plan.exclude:
            skipped[layer.name] = "excluded by the plan"
            continue
        if layer.name not in allowed:
            skipped[layer.name] = "not in the plan's include list"
            continue
        node = _layer_node(nodes, layer, info)
        decision = _decide_layer(
            node, _input_slots(node, producers, initializers), table, plan, initializers, elem_types, opset
        )
        if isinstance(decision, str):
            skipped[layer.name] = decision
            continue
        decisions[layer.name] = decision
        if decision.note:
            notes[layer.name] = decision.note

    names = _NameAllocator(source)
    pairs: dict[tuple[str, bytes], _Insertion] = {}
    variants: dict[tuple[str, int | None], _Insertion] = {}
    rewires: dict[str, dict[int, _Insertion]] = {}
    activation_scales: dict[str, float] = {}
    layer_scales: dict[str, dict[str, float]] = {}
    for layer_name, decision in decisions.items():
        node_rewires = rewires.setdefault(layer_name, {})
        scales_of_layer = layer_scales.setdefault(layer_name, {})
        for slot, scale, method in decision.activations:
            pair_key = (slot.tensor, scale.dtype.str.encode() + scale.tobytes())
            pair = pairs.get(pair_key)
            if pair is None:
                pair = _build_activation_pair(slot.tensor, method, scale, plan.calibrator, names)
                pairs[pair_key] = pair
            node_rewires[slot.index] = pair
            activation_scales.setdefault(slot.tensor, float(scale))
            scales_of_layer[slot.tensor] = float(scale)
        for slot in decision.weights:
            variant_key = (slot.tensor, slot.axis)
            variant = variants.get(variant_key)
            if variant is None:
                int8_values, weight_scale = quantize_weight(
                    numpy_helper.to_array(initializers[slot.tensor]), slot.axis
                )
                variant = _build_weight_dequantize(slot.tensor, slot.axis, int8_values, weight_scale, names)
                variants[variant_key] = variant
            node_rewires[slot.index] = variant

    model = onnx.ModelProto()
    model.CopyFrom(loaded.proto)
    graph = model.graph
    new_nodes: list[onnx.NodeProto] = []
    new_initializers: list[onnx.TensorProto] = []
    for original in graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        for index, target in sorted(rewires.get(node.name, {}).items()):
            if not target.emitted:
                # Just before its first consumer: the producer precedes it, so the order stays topological.
                new_nodes.extend(target.nodes)
                new_initializers.extend(target.initializers)
                target.emitted = True
            node.input[index] = target.output
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused_float_weights(graph, {w for w, _ in variants})
    graph.initializer.extend(new_initializers)

    return QuantizedModel(
        proto=model,
        quantized_layers=tuple(decisions),
        skipped=skipped,
        activation_scales=activation_scales,
        layer_scales=layer_scales,
        notes=notes,
    )


def _decide_layer(
    node: onnx.NodeProto,
    slots: tuple[_InputSlot, ...],
    table: AmaxSource,
    plan: QuantPlan,
    initializers: Mapping[str, onnx.TensorProto],
    elem_types: Mapping[str, int],
    opset: int,
) -> _LayerDecision | str:
    """The scales of a layer's inputs, or the reason the layer stays in float."""
    method = plan.calibrator_for(node.name)
    activations: list[tuple[_InputSlot, np.ndarray, str]] = []
    weights: list[_InputSlot] = []
    notes: list[str] = []
    for slot in slots:
        if slot.is_weight:
            init = initializers[slot.tensor]
            problem = _dtype_problem("weight", slot.tensor, init.data_type, opset)
            if problem:
                return problem
            if not np.isfinite(numpy_helper.to_array(init)).all():
                return f"weight {slot.tensor!r} has NaN or Inf values"
            weights.append(slot)
            if slot.note:
                notes.append(slot.note)
            continue
        if slot.tensor in table.skipped:
            return f"activation {slot.tensor!r} not quantized: {table.skipped[slot.tensor]}"
        elem_type = elem_types.get(slot.tensor, TensorProto.FLOAT)
        problem = _dtype_problem("activation", slot.tensor, elem_type, opset)
        if problem:
            return problem
        amax = float(table.amax_for(slot.tensor, method))
        if not math.isfinite(amax) or amax <= 0.0:
            return f"activation {slot.tensor!r} has amax {amax!r} from the {method} calibrator (needs > 0)"
        with np.errstate(over="ignore", under="ignore"):
            scale = np.asarray(amax / INT8_MAX, dtype=helper.tensor_dtype_to_np_dtype(elem_type))
        if not (np.isfinite(scale) and scale > 0):
            return f"activation {slot.tensor!r}: amax {amax!r} gives a scale that {scale.dtype} cannot hold"
        activations.append((slot, scale, method))
    return _LayerDecision(activations=activations, weights=weights, note="; ".join(notes))


def _dtype_problem(what: str, tensor: str, elem_type: int, opset: int) -> str:
    if elem_type == TensorProto.FLOAT:
        return ""
    if elem_type == TensorProto.FLOAT16 and opset >= MIN_FLOAT16_QDQ_OPSET:
        return ""
    type_name = TensorProto.DataType.Name(elem_type).lower()
    return (
        f"{what} {tensor!r} is {type_name}; Q/DQ needs float32 (float16 from opset {MIN_FLOAT16_QDQ_OPSET})"
    )


def quantize_weight(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 values and scale (per ``axis``, or 0-d per tensor) with ``amax = max |w|``.

    An all-zero channel gets scale 1.0: its values quantize to 0 exactly and no division by zero occurs.
    """
    values = np.asarray(weight)
    if axis is None:
        amax = np.asarray(np.max(np.abs(values)) if values.size else 0.0, dtype=np.float64)
    else:
        reduce_axes = tuple(a for a in range(values.ndim) if a != axis)
        amax = np.max(np.abs(values), axis=reduce_axes).astype(np.float64)
    scale = (amax / INT8_MAX).astype(values.dtype)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, np.ones_like(scale)).astype(values.dtype)
    broadcast = scale if axis is None else np.expand_dims(scale, reduce_axes)
    int8_values = np.clip(np.rint(values / broadcast), -INT8_MAX, INT8_MAX).astype(np.int8)
    return int8_values, scale


def _build_activation_pair(
    tensor: str, method: str, scale: np.ndarray, default_method: str, names: _NameAllocator
) -> _Insertion:
    # The plan's default calibrator gets the plain names; an override's pair says which calibrator it is.
    base = tensor if method == default_method else f"{tensor}_{re.sub(r'[^0-9A-Za-z_.]+', '_', method)}"
    scale_name = names.tensor(f"{base}_scale")
    zero_name = names.tensor(f"{base}_zero_point")
    quantized = names.tensor(f"{base}_quantized")
    dequantized = names.tensor(f"{base}_dequantized")
    nodes = (
        helper.make_node(
            "QuantizeLinear",
            [tensor, scale_name, zero_name],
            [quantized],
            name=names.node(f"{base}_QuantizeLinear"),
        ),
        helper.make_node(
            "DequantizeLinear",
            [quantized, scale_name, zero_name],
            [dequantized],
            name=names.node(f"{base}_DequantizeLinear"),
        ),
    )
    initializers = (
        numpy_helper.from_array(scale, scale_name),
        numpy_helper.from_array(np.zeros((), dtype=np.int8), zero_name),
    )
    return _Insertion(dequantized, nodes, initializers)


def _build_weight_dequantize(
    weight: str, axis: int | None, int8_values: np.ndarray, scale: np.ndarray, names: _NameAllocator
) -> _Insertion:
    int8_name = names.tensor(f"{weight}_int8")
    scale_name = names.tensor(f"{weight}_scale")
    zero_name = names.tensor(f"{weight}_zero_point")
    dequantized = names.tensor(f"{weight}_dequantized")
    node = helper.make_node(
        "DequantizeLinear",
        [int8_name, scale_name, zero_name],
        [dequantized],
        name=names.node(f"{weight}_DequantizeLinear"),
    )
    if axis is not None:
        node.attribute.append(helper.make_attribute("axis", axis))
    initializers = (
        numpy_helper.from_array(int8_values, int8_name),
        numpy_helper.from_array(scale, scale_name),
        numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), zero_name),
    )
    return _Insertion(dequantized, (node,), initializers)


def _drop_unused_float_weights(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove float weights that no node reads any more (a float-kept consumer keeps its weight)."""
    still_used = {name for node in graph.node for name in node.input}
    still_used |= _subgraph_references(graph.node)
    still_used |= {vi.name for vi in graph.input} | {vi.name for vi in graph.output}
    unused = candidates - still_used
    if not unused:
        return
    kept = [init for init in graph.initializer if init.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _subgraph_references(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    """Names read inside If/Loop/Scan bodies (they may read outer-scope initializers)."""
    names: set[str] = set()
    for node in nodes:
        for attr in node.attribute:
            subgraphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
            for subgraph in subgraphs:
                names |= {name for inner in subgraph.node for name in inner.input}
                names |= _subgraph_references(subgraph.node)
    return names


class _NameAllocator:
    """Deterministic names that collide with nothing already in the graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._tensors = {name for node in graph.node for name in (*node.input, *node.output)}
        self._tensors |= {init.name for init in graph.initializer}
        self._tensors |= {vi.name for vi in (*graph.input, *graph.output, *graph.value_info)}
        self._tensors |= _subgraph_references(graph.node)
        self._nodes = {node.name for node in graph.node}

    def tensor(self, wanted: str) -> str:
        return self._claim(wanted, self._tensors)

    def node(self, wanted: str) -> str:
        return self._claim(wanted, self._nodes)

    @staticmethod
    def _claim(wanted: str, taken: set[str]) -> str:
        name, suffix = wanted, 1
        while name in taken:
            name = f"{wanted}_{suffix}"
            suffix += 1
        taken.add(name)
        return name


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {}
    for value_info in (*graph.input, *graph.output, *graph.value_info):
        elem_type = value_info.type.tensor_type.elem_type
        if elem_type:
            types[value_info.name] = int(elem_type)
    return types


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1
