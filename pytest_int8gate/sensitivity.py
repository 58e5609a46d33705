"""Per-layer sensitivity: each quantized layer's own-output SQNR when only its inputs and weights are
quantized, measured in one FP32 pass of a probe model (the FP32 graph plus a quantized twin of each layer).
The search reports it beside the offenders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .evaluate import ReferenceOutputs, sqnr_db
from .graph import Layer, add_graph_outputs
from .results import LayerSensitivity

if TYPE_CHECKING:
    from .context import GateContext


def layer_sensitivity(
    context: GateContext, reference: ReferenceOutputs, layers: Sequence[Layer]
) -> tuple[LayerSensitivity, ...]:
    """Each layer's own-output SQNR with only its inputs and weights quantized, from one FP32 pass.

    The probe model is the FP32 graph plus, for every quantized layer, a copy of the layer that reads
    the Q/DQ'd version of the same FP32 inputs; both outputs are exposed and compared.
    """
    plan = replace(context.plan, include=frozenset(layer.name for layer in layers))
    quantized = context.quantized(plan).proto
    source = context.fp32_model(plan.equalize).proto
    probe, pairs = isolated_layer_model(source, quantized, [layer.name for layer in layers])
    if not pairs:
        return ()
    signal = dict.fromkeys(pairs, 0.0)
    noise = dict.fromkeys(pairs, 0.0)
    # on the gate's backend (the layers' arithmetic is the backend's), closed after the one pass
    with context.backend.fp32_runner(probe) as runner:
        for feeds, _ in reference.batches:
            outputs = runner.run(feeds)
            for name, (ref_name, q_name) in pairs.items():
                ref = outputs[ref_name].astype(np.float64)
                diff = ref - outputs[q_name].astype(np.float64)
                signal[name] += float(np.sum(ref * ref))
                noise[name] += float(np.sum(diff * diff))

    by_name = {layer.name: layer for layer in layers}
    table = [
        LayerSensitivity(name, by_name[name].op_type, sqnr_db(signal[name], noise[name]), by_name[name].index)
        for name in pairs
    ]
    return tuple(sorted(table, key=lambda s: s.sqnr_db))


def isolated_layer_model(
    fp32: onnx.ModelProto, quantized: onnx.ModelProto, layer_names: Sequence[str]
) -> tuple[onnx.ModelProto, dict[str, tuple[str, str]]]:
    """FP32 graph + a quantized twin of each named layer fed from the FP32 tensors.

    Returns the model and, per layer, (FP32 output name, twin output name).
    """
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    graph = model.graph
    fp32_names = {n.name for n in graph.node}
    known_tensors = {i.name for i in graph.initializer}
    wanted = set(layer_names)
    pairs: dict[str, tuple[str, str]] = {}
    for init in quantized.graph.initializer:
        if init.name not in known_tensors:
            graph.initializer.append(init)
    for node in quantized.graph.node:
        if node.name in wanted:
            twin = onnx.NodeProto()
            twin.CopyFrom(node)
            twin.name = f"{node.name}__int8_twin"
            del twin.output[:]
            twin.output.extend(f"{o}__int8_twin" for o in node.output)
            graph.node.append(twin)
            pairs[node.name] = (node.output[0], twin.output[0])
        elif node.name not in fp32_names:  # Q/DQ nodes reading FP32 tensors
            graph.node.append(node)
    exposed = add_graph_outputs(model, [name for pair in pairs.values() for name in pair])
    sorted_model = _topologically_sorted(exposed)
    return sorted_model, pairs


def _topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("the sensitivity probe graph has a cycle or a dangling input")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)
    return model
