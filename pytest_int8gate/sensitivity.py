"""Per-layer sensitivity: each quantized layer's own-output SQNR when only its inputs and weights are
quantized, measured in one FP32 pass of a probe model (the FP32 graph plus a quantized twin of each layer,
one twin per calibrator). The search orders its candidates by it, picks the calibrator it tries first on a
layer from it, and reports it beside the offenders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .evaluate import ReferenceOutputs, sqnr_db
from .graph import Layer, add_graph_outputs
from .results import LayerSensitivity

if TYPE_CHECKING:
    from .context import GateContext


@dataclass(frozen=True)
class SensitivityTable:
    """Own-output SQNR (dB) of each layer under the spec's plan and under each calibrator alone."""

    #: Under the spec's plan, worst first (what the report shows).
    layers: tuple[LayerSensitivity, ...]
    #: layer name -> calibrator -> SQNR with that calibrator's amax for the layer's activation inputs.
    by_calibrator: Mapping[str, Mapping[str, float]]

    def sqnr(self, name: str, calibrator: str) -> float:
        """The layer's own SQNR under ``calibrator`` (-inf when not measured)."""
        return self.by_calibrator.get(name, {}).get(calibrator, -np.inf)

    def best_calibrator(self, name: str, current: str) -> tuple[str, float] | None:
        """The calibrator that gives the layer the highest own SQNR and the gain over ``current`` (dB);
        None when no other calibrator was measured."""
        others = {c: v for c, v in self.by_calibrator.get(name, {}).items() if c != current}
        if not others:
            return None
        best = max(others, key=lambda c: others[c])
        return best, others[best] - self.sqnr(name, current)


def layer_sensitivity(
    context: GateContext, reference: ReferenceOutputs, layers: Sequence[Layer]
) -> tuple[LayerSensitivity, ...]:
    """Each layer's own-output SQNR with only its inputs and weights quantized, from one FP32 pass."""
    return sensitivity_table(context, reference, layers, ()).layers


def sensitivity_table(
    context: GateContext,
    reference: ReferenceOutputs,
    layers: Sequence[Layer],
    calibrators: Sequence[str],
) -> SensitivityTable:
    """Each layer's own-output SQNR under the spec's plan and under each of ``calibrators``, from one FP32
    pass of one probe model.

    The probe model is the FP32 graph plus, for every quantized layer and every plan, a copy of the layer
    that reads the Q/DQ'd version of the same FP32 inputs; all outputs are exposed and compared.
    """
    names = frozenset(layer.name for layer in layers)
    spec_plan = replace(context.plan, include=names)
    plans = {"": spec_plan}
    for calibrator in calibrators:
        plans[calibrator] = replace(spec_plan, calibrator=calibrator, overrides={})
    source = context.fp32_model(spec_plan.equalize).proto
    quantized = {key: context.quantized(plan).proto for key, plan in plans.items()}
    probe, twins = isolated_layers_model(source, quantized, [layer.name for layer in layers])
    pairs = [
        (key, name, ref, twin) for key, by_layer in twins.items() for name, (ref, twin) in by_layer.items()
    ]
    if not pairs:
        return SensitivityTable((), {})
    signal: dict[str, float] = {}
    noise: dict[tuple[str, str], float] = {}
    # on the gate's backend (the layers' arithmetic is the backend's), closed after the one pass
    with context.backend.fp32_runner(probe) as runner:
        for feeds, _ in reference.batches:
            outputs = runner.run(feeds)
            for key, name, ref_name, q_name in pairs:
                ref = outputs[ref_name].astype(np.float64)
                diff = ref - outputs[q_name].astype(np.float64)
                if key == "":
                    signal[name] = signal.get(name, 0.0) + float(np.sum(ref * ref))
                noise[key, name] = noise.get((key, name), 0.0) + float(np.sum(diff * diff))

    by_name = {layer.name: layer for layer in layers}
    table = [
        LayerSensitivity(
            name, by_name[name].op_type, sqnr_db(signal[name], noise["", name]), by_name[name].index
        )
        for name in twins.get("", {})
    ]
    by_calibrator: dict[str, dict[str, float]] = {}
    for key, name, _, _ in pairs:
        if key:
            by_calibrator.setdefault(name, {})[key] = sqnr_db(signal[name], noise[key, name])
    return SensitivityTable(tuple(sorted(table, key=lambda s: s.sqnr_db)), by_calibrator)


def isolated_layer_model(
    fp32: onnx.ModelProto, quantized: onnx.ModelProto, layer_names: Sequence[str]
) -> tuple[onnx.ModelProto, dict[str, tuple[str, str]]]:
    """FP32 graph + a quantized twin of each named layer fed from the FP32 tensors.

    Returns the model and, per layer, (FP32 output name, twin output name).
    """
    model, twins = isolated_layers_model(fp32, {"": quantized}, layer_names)
    return model, twins.get("", {})


def isolated_layers_model(
    fp32: onnx.ModelProto, quantized: Mapping[str, onnx.ModelProto], layer_names: Sequence[str]
) -> tuple[onnx.ModelProto, dict[str, dict[str, tuple[str, str]]]]:
    """FP32 graph + a quantized twin of each named layer from each Q/DQ model of ``quantized`` (keyed by a
    short name; "" keeps the model's tensor names), all fed from the FP32 tensors.

    Tensors and nodes a Q/DQ model adds are renamed with ``__<key>`` so that twins of different Q/DQ
    models (whose scales differ under the same names) do not collide. Returns the model and, per key and
    layer, (FP32 output name, twin output name).
    """
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    graph = model.graph
    fp32_names = {n.name for n in graph.node}
    known_tensors = {i.name for i in graph.initializer}
    wanted = set(layer_names)
    twins: dict[str, dict[str, tuple[str, str]]] = {}
    for key, qdq in quantized.items():
        suffix = f"__{key}" if key else ""
        added = {i.name for i in qdq.graph.initializer if i.name not in known_tensors}
        added |= {o for n in qdq.graph.node if n.name not in fp32_names for o in n.output}

        def renamed(tensor: str, suffix: str = suffix, added: set[str] = added) -> str:
            return tensor + suffix if tensor in added else tensor

        for init in qdq.graph.initializer:
            if init.name in added:
                copy = onnx.TensorProto()
                copy.CopyFrom(init)
                copy.name = renamed(init.name)
                graph.initializer.append(copy)
        # only the Q/DQ nodes the twins read (a given Q/DQ model also has pairs elsewhere, e.g. on its
        # outputs, whose tensors the FP32 graph defines itself)
        producers = {o: n for n in qdq.graph.node if n.name not in fp32_names for o in n.output}
        pending = [i for n in qdq.graph.node if n.name in wanted for i in n.input]
        needed: set[str] = set()
        while pending:
            producer = producers.get(pending.pop())
            if producer is not None and producer.name not in needed:
                needed.add(producer.name)
                pending.extend(producer.input)
        pairs: dict[str, tuple[str, str]] = {}
        for node in qdq.graph.node:
            if node.name in wanted:
                twin = onnx.NodeProto()
                twin.CopyFrom(node)
                twin.name = f"{node.name}__int8_twin{suffix}"
                twin.input[:] = [renamed(i) for i in node.input]
                del twin.output[:]
                twin.output.extend(f"{o}__int8_twin{suffix}" for o in node.output)
                graph.node.append(twin)
                pairs[node.name] = (node.output[0], twin.output[0])
            elif node.name in needed:  # Q/DQ nodes reading FP32 tensors
                copy = onnx.NodeProto()
                copy.CopyFrom(node)
                copy.name = node.name + suffix
                copy.input[:] = [renamed(i) for i in node.input]
                copy.output[:] = [renamed(o) for o in node.output]
                graph.node.append(copy)
        twins[key] = pairs
    exposed = add_graph_outputs(
        model,
        list(dict.fromkeys(name for pairs in twins.values() for pair in pairs.values() for name in pair)),
    )
    return _topologically_sorted(exposed), twins


def _topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes in an order where every input is produced before it is read (Kahn's algorithm)."""
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    waiting: dict[str, list[int]] = {}
    missing = []
    for index, node in enumerate(nodes):
        needed = {i for i in node.input if i not in available}
        missing.append(len(needed))
        for tensor in needed:
            waiting.setdefault(tensor, []).append(index)
    ready = [index for index, count in enumerate(missing) if count == 0]
    ordered: list[onnx.NodeProto] = []
    while ready:
        index = ready.pop(0)
        ordered.append(nodes[index])
        for tensor in nodes[index].output:
            if tensor in available:
                continue
            available.add(tensor)
            for reader in waiting.pop(tensor, []):
                missing[reader] -= 1
                if missing[reader] == 0:
                    ready.append(reader)
    if len(ordered) != len(nodes):
        raise ValueError("the sensitivity probe graph has a cycle or a dangling input")
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
    return model
