"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm before it (a preparation
step of graph.prepare_model).

``BN(y) = gamma · (y − mean) / sqrt(var + eps) + beta`` is an affine map per output channel, so with
``s = gamma / sqrt(var + eps)`` the layer's weights scaled by ``s`` along the output-channel axis and the
bias ``b' = s · (b − mean) + beta`` compute the same function up to float rounding. TensorRT folds it at
build time anyway; folding first lets placement and cross-layer equalization see the layer that really
runs (a BatchNormalization between two layers blocks equalization, and a Conv → BN → Add is a residual
Add of a Conv only once folded). The arithmetic is done in float64 and rounded once.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Layers a following BatchNormalization folds into.
FOLDABLE = ("Conv", "ConvTranspose", "Gemm")


def fold_batchnorms(graph: onnx.GraphProto) -> list[str]:
    """Fold every foldable BatchNormalization of ``graph`` in place; return the names of those folded.

    A BatchNormalization folds when it is in inference mode with one output, its parameters are float
    initializers, and it is the only reader of its input, which a Conv (any group), a ConvTranspose
    (group 1) or a Gemm (``beta`` = 1, no ``transA``) with an unshared initializer weight produces and
    which is not a graph output. The layer takes over the BatchNormalization's output name.
    """
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output if out}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {vi.name for vi in graph.output}
    folded: list[str] = []
    removed: set[int] = set()
    for bn in graph.node:
        layer = producers.get(bn.input[0]) if bn.op_type == "BatchNormalization" and bn.input else None
        if (
            layer is None
            or bn.domain not in ("", "ai.onnx")
            or not _foldable(bn, layer, initializers, readers, outputs)
        ):
            continue
        if not _fold(bn, layer, graph, initializers):
            continue
        removed.add(id(bn))
        folded.append(bn.name)
    if removed:
        kept = [node for node in graph.node if id(node) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        _drop_unread(graph)
    return folded


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _float_initializer(name: str, initializers: dict[str, onnx.TensorProto]) -> bool:
    init = initializers.get(name)
    return init is not None and init.data_type == TensorProto.FLOAT


def _foldable(
    bn: onnx.NodeProto,
    layer: onnx.NodeProto,
    initializers: dict[str, onnx.TensorProto],
    readers: dict[str, int],
    outputs: set[str],
) -> bool:
    attrs = _attrs(bn)
    if attrs.get("training_mode", 0) or len([o for o in bn.output if o]) != 1 or len(bn.input) != 5:
        return False
    if not all(_float_initializer(name, initializers) for name in bn.input[1:]):
        return False
    if layer.op_type not in FOLDABLE or layer.domain not in ("", "ai.onnx") or len(layer.output) != 1:
        return False
    if readers.get(layer.output[0], 0) != 1 or layer.output[0] in outputs:
        return False
    if len(layer.input) < 2 or not _float_initializer(layer.input[1], initializers):
        return False
    if readers.get(layer.input[1], 0) != 1:
        return False  # a shared weight would change its other readers too
    has_bias = len(layer.input) > 2 and bool(layer.input[2])
    if has_bias and (
        not _float_initializer(layer.input[2], initializers) or readers.get(layer.input[2], 0) != 1
    ):
        return False
    layer_attrs = _attrs(layer)
    weight = initializers[layer.input[1]]
    shapes = {tuple(initializers[name].dims) for name in bn.input[1:]}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        return False  # parameters of different or non-vector shapes: leave it to the checker and runtime
    channels = int(next(iter(shapes))[0])
    if (
        len(layer.input) > 2
        and layer.input[2]
        and tuple(initializers[layer.input[2]].dims) not in ((channels,),)
    ):
        return False
    if layer.op_type == "Conv":
        return len(weight.dims) >= 3 and weight.dims[0] == channels
    if layer.op_type == "ConvTranspose":
        return layer_attrs.get("group", 1) == 1 and len(weight.dims) >= 3 and weight.dims[1] == channels
    # Gemm: BatchNormalization's channel axis 1 is the Gemm's output feature axis.
    if layer_attrs.get("transA", 0) or float(layer_attrs.get("beta", 1.0)) != 1.0:  # type: ignore[arg-type]
        return False
    axis = 0 if layer_attrs.get("transB", 0) else 1
    return len(weight.dims) == 2 and weight.dims[axis] == channels


def _fold(
    bn: onnx.NodeProto,
    layer: onnx.NodeProto,
    graph: onnx.GraphProto,
    initializers: dict[str, onnx.TensorProto],
) -> bool:
    """Fold ``bn`` into ``layer``; False (nothing changed) when the folded values would not be finite."""
    gamma, beta, mean, var = (numpy_helper.to_array(initializers[n]).astype(np.float64) for n in bn.input[1:])
    epsilon = float(_attrs(bn).get("epsilon", 1e-5))  # type: ignore[arg-type]
    weight_init = initializers[layer.input[1]]
    weight = numpy_helper.to_array(weight_init).astype(np.float64)
    if layer.op_type == "Conv":
        axis = 0
    elif layer.op_type == "ConvTranspose":
        axis = 1
    else:
        axis = 0 if _attrs(layer).get("transB", 0) else 1
    shape = [1] * weight.ndim
    shape[axis] = -1
    has_bias = len(layer.input) > 2 and bool(layer.input[2])
    bias = numpy_helper.to_array(initializers[layer.input[2]]).astype(np.float64) if has_bias else 0.0
    with np.errstate(all="ignore"):
        scale = gamma / np.sqrt(var + epsilon)
        new_weight = (weight * scale.reshape(shape)).astype(np.float32)
        new_bias = (scale * (bias - mean) + beta).astype(np.float32)
    if not (np.isfinite(new_weight).all() and np.isfinite(new_bias).all()):
        return False  # a variance below -epsilon, an overflow: the model keeps its BatchNormalization
    weight_init.CopyFrom(numpy_helper.from_array(new_weight, weight_init.name))
    if has_bias:
        initializers[layer.input[2]].CopyFrom(numpy_helper.from_array(new_bias, layer.input[2]))
    else:
        name = _unused_name(graph, f"{layer.name}_folded_bias")
        graph.initializer.append(numpy_helper.from_array(new_bias, name))
        initializers[name] = graph.initializer[-1]
        while len(layer.input) < 3:
            layer.input.append("")
        layer.input[2] = name
    layer.output[0] = bn.output[0]
    return True


def _unused_name(graph: onnx.GraphProto, wanted: str) -> str:
    taken = {init.name for init in graph.initializer} | {
        n for node in graph.node for n in (*node.input, *node.output)
    }
    name, suffix = wanted, 1
    while name in taken:
        name = f"{wanted}_{suffix}"
        suffix += 1
    return name


def _drop_unread(graph: onnx.GraphProto) -> None:
    """Remove the folded BatchNormalizations' parameters when nothing else reads them."""
    read = {name for node in graph.node for name in node.input}
    read |= {vi.name for vi in (*graph.input, *graph.output)}
    read |= _subgraph_reads(graph)
    produced = {name for node in graph.node for name in node.output}
    value_info = [vi for vi in graph.value_info if vi.name in produced]
    if len(value_info) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(value_info)
    kept = [init for init in graph.initializer if init.name in read]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in [*attr.graphs, *([attr.g] if attr.HasField("g") else [])]:
                names |= {name for inner in sub.node for name in inner.input}
                names |= _subgraph_reads(sub)
    return names
