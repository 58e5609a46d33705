"""Turn a :class:`QuantPlan` and a calibration table into an explicit Q/DQ ONNX model (a pure function).

The scheme is TensorRT's explicit quantization, matched exactly so that ONNX Runtime on the CPU predicts
what TensorRT 10/11 (which has no implicit INT8 any more) will compute from the very same model:
int8, symmetric, zero point 0, ``scale = amax / 127``; activations per tensor, weights per output
channel with ``amax = max |w|`` over the channel (TensorRT uses max for weights, calibrators for
activations only). Weights are stored pre-quantized in [-127, 127] (round half to even); activations are
quantized at run time by QuantizeLinear, which both ONNX Runtime and TensorRT's IQuantizeLayer define
as round-half-to-even clamped to [-128, 127], so a value below -amax reaches -128·scale.

Placement (which inputs of which layers get a pair) is a profile of placement.py: ``minimal`` (weighted
layers' inputs and the skip input of a residual Add after a Conv) or ``tensorrt`` (TensorRT's fusion-aware
rules, as NVIDIA ModelOpt places them); the plan names the profile.

* **Activations**: a QuantizeLinear → DequantizeLinear pair per tensor, so that TensorRT fuses
  ``DQ → op → Q`` into one int8 kernel. Bias stays float.
* **Weights**: stored as an int8 initializer read by a DequantizeLinear with a per-output-channel scale
  (``axis`` attribute, chosen by :func:`placement.weight_axis`).

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
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .choices import CALIBRATORS as CALIBRATORS  # the names a plan may ask for; this path stays importable
from .choices import DEFAULT_PLACEMENT, PLACEMENTS
from .coverage import Coverage, NotCovered
from .errors import CalibrationError, ModelError
from .graph import COMPUTE_OPS, Layer, LoadedModel, ModelInfo
from .placement import (
    InputSlot,
    Placement,
    model_macs,
    place,
)

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
    #: Layers smoothed (smoothquant.py) before calibration: layer -> migration strength alpha.
    smoothquant: Mapping[str, float] = field(default_factory=dict)
    #: The placement profile (placement.py): which layers and inputs get Q/DQ.
    placement: str = DEFAULT_PLACEMENT

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
        object.__setattr__(self, "smoothquant", {k: float(v) for k, v in sorted(self.smoothquant.items())})

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
        if self.smoothquant:
            document["smoothquant"] = dict(self.smoothquant)
        if self.placement != "minimal":
            document["placement"] = self.placement
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
        """Raise ModelError for a layer name the model lacks or an unknown placement, CalibrationError for an
        unknown calibrator."""
        if self.placement not in PLACEMENTS:
            raise ModelError(
                f"Unknown placement {self.placement!r}; known placements: {', '.join(PLACEMENTS)}."
            )
        known = [layer.name for layer in info.layers]
        known_set = set(known)
        for what, names in (
            ("exclude", sorted(self.exclude)),
            ("overrides", list(self.overrides)),
            ("include", sorted(self.include or ())),
            ("equalize", sorted(self.equalize)),
            ("bias_correction", sorted(self.bias_correction)),
            ("smoothquant", list(self.smoothquant)),
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
    #: What runs in INT8: layers, share of MACs, and every quantizable-looking layer left in float.
    coverage: Coverage = field(default_factory=lambda: Coverage.of(DEFAULT_PLACEMENT, 0, 0, 0, ()))


def activation_tensors(loaded: LoadedModel, placement: str = DEFAULT_PLACEMENT) -> tuple[str, ...]:
    """Every activation a plan with ``placement`` could put Q/DQ on: what calibration must measure, in
    layer order."""
    tensors: dict[str, None] = {}
    for placed in place(loaded.proto.graph, placement).layers:
        for slot in placed.slots:
            if not slot.is_weight:
                tensors.setdefault(slot.tensor)
    return tuple(tensors)


@dataclass
class _Insertion:
    """Q/DQ (activation) or DQ (weight) nodes and their initializers; ``output`` replaces the float input."""

    output: str
    nodes: tuple[onnx.NodeProto, ...]
    initializers: tuple[onnx.TensorProto, ...]
    emitted: bool = False


@dataclass
class _LayerDecision:
    activations: list[tuple[InputSlot, np.ndarray, str]]  # slot, scale, calibrator
    weights: list[InputSlot]
    note: str


def quantize_model(loaded: LoadedModel, table: AmaxSource, plan: QuantPlan) -> QuantizedModel:
    """A new model with Q/DQ on the layers ``plan`` quantizes; ``loaded.proto`` is left untouched."""
    source = loaded.proto.graph
    placement = place(source, plan.placement) if plan.placement in PLACEMENTS else None
    if placement is None:
        plan.validate(loaded.info)  # raises: unknown placement
        raise AssertionError("unreachable")
    info = replace(loaded.info, layers=tuple(p.layer for p in placement.layers))
    plan.validate(info)
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
            "to gate a Q/DQ model made elsewhere, give it with --int8-qdq-model (qdq_model:) beside its FP32 "
            "model, or alone as the model."
        )

    initializers = {init.name: init for init in source.initializer}
    nodes = {node.name: node for node in source.node}
    elem_types = _elem_types(source)
    allowed = {layer.name for layer in plan.quantized_layers(info)}

    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    decisions: dict[str, _LayerDecision] = {}
    for placed in placement.layers:
        layer = placed.layer
        if placed.float_reason:
            skipped[layer.name] = placed.float_reason
            continue
        if layer.name in plan.exclude:
            skipped[layer.name] = "excluded by the plan"
            continue
        if layer.name not in allowed:
            skipped[layer.name] = "not in the plan's include list"
            continue
        decision = _decide_layer(
            nodes[layer.name], placed.slots, table, plan, initializers, elem_types, opset
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
    if placement.profile == "tensorrt":
        _share_pairs_with_other_readers(source, placement, pairs, rewires)

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
        coverage=coverage_of(loaded, placement, tuple(decisions), skipped),
    )


def _share_pairs_with_other_readers(
    graph: onnx.GraphProto,
    placement: Placement,
    pairs: Mapping[tuple[str, bytes], _Insertion],
    rewires: dict[str, dict[int, _Insertion]],
) -> None:
    """``tensorrt``: every reader of a quantized tensor that is not a layer reads its dequantized value.

    ModelOpt quantizes through ONNX Runtime with one pair per tensor that all readers share
    (``DedicatedQDQPair: False``), so that TensorRT produces the tensor once, in int8, for every reader;
    a layer's own inputs are its rule's choice (a residual Add's fused input, an excluded layer stay float).
    """
    shared: dict[str, _Insertion] = {}
    for (tensor, _), pair in pairs.items():
        shared.setdefault(tensor, pair)
    layers = set(placement.layer_names())
    for node in graph.node:
        if node.name in layers:
            continue
        for index, tensor in enumerate(node.input):
            if tensor in shared:
                rewires.setdefault(node.name, {})[index] = shared[tensor]


def coverage_of(
    loaded: LoadedModel, placement: Placement, quantized: tuple[str, ...], skipped: Mapping[str, str]
) -> Coverage:
    """The coverage facts of a Q/DQ model: its layers in INT8, its MACs in INT8, and what stays float."""
    ops = {p.layer.name: p.layer.op_type for p in placement.layers}
    not_covered = [NotCovered(name, ops[name], reason) for name, reason in skipped.items()]
    not_covered += [NotCovered(name, op, reason) for name, op, reason in placement.not_placed]
    macs = model_macs(loaded.proto.graph)
    int8_macs = sum(macs.get(name, 0) for name in quantized if ops.get(name) in COMPUTE_OPS)
    return Coverage.of(
        placement=placement.profile,
        quantized=len(quantized),
        int8_macs=int8_macs,
        total_macs=sum(macs.values()),
        not_covered=tuple(not_covered),
    )


def _decide_layer(
    node: onnx.NodeProto,
    slots: tuple[InputSlot, ...],
    table: AmaxSource,
    plan: QuantPlan,
    initializers: Mapping[str, onnx.TensorProto],
    elem_types: Mapping[str, int],
    opset: int,
) -> _LayerDecision | str:
    """The scales of a layer's inputs, or the reason the layer stays in float."""
    method = plan.calibrator_for(node.name)
    activations: list[tuple[InputSlot, np.ndarray, str]] = []
    weights: list[InputSlot] = []
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
