"""Simulated INT8 on ONNX Runtime: every Q/DQ pair computed in float, at the speed of the FP32 engine.

The Q/DQ model computes every Q/DQ pair in float. Two things make that cheaper:

* **Weight DequantizeLinear folded into float constants** (exact). A DequantizeLinear whose inputs are
  all initializers produces a constant; it is computed here exactly as ONNX Runtime computes it (int32
  difference to the zero point, converted to float32, times the float32 scale: one IEEE multiply per
  value) and stored under the node's output name. Tests compare the folded constants bit for bit with
  ONNX Runtime's own DequantizeLinear.
* **The FP32 engine's graph optimisations, with every Q/DQ pair kept.** ONNX Runtime's QDQ transformers
  (QuantizeLinear / DequantizeLinear fused into int8 kernels such as QLinearConv, Q/DQ propagation and
  removal) are switched off with ``session.disable_quant_qdq``; everything else of level "all" runs, as
  for the FP32 engine: constant folding, Conv+activation fusion, and the NCHWc convolution layout (ONNX
  Runtime reorders around each QuantizeLinear / DequantizeLinear, which stay in the graph).

The NCHWc kernels sum a convolution in another order than the plain ones, so a float result can differ in
its last bit, a QuantizeLinear can round it to the neighbouring step, and the step travels on. Outputs
therefore equal those of the Q/DQ model run with every optimisation off within this tolerance, per output
(``tests/test_simulated.py`` checks it on the example models and a residual CNN; ``benchmarks/bench_speed.py``
measures it on a ResNet-style net and on real models):

* the outputs differ by at most :data:`DIFFERENCE_TOLERANCE` (0.6) times INT8's own error (RMS of the
  unoptimised model's INT8 - FP32), RMS. That is the size of float-rounding noise re-rounded by the
  quantizers: a one-ulp change of the *input* moves the unoptimised model's outputs by 0.25-0.37x its INT8
  error on a ResNet-style net at 224 px, where this engine differs by 0.44-0.47x; on the PP-OCRv4
  detector 0.27x and 0.27x; the PP-OCRv4 recognizer (percentile) 0.20x, the text-direction classifier
  0.01x; the example digits CNNs are bit-identical;
* INT8's own error is the same within :data:`ERROR_TOLERANCE` (10 %): measured 0.99-1.07x the unoptimised
  model's, where a one-ulp change of the input alone moves it by up to 6 % on the detector.

In exchange the FP32 and INT8 engines run the same float kernels: with nothing quantized INT8 equals FP32
bit for bit, and what differs between them is quantization alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

#: ONNX Runtime graph optimisation level of simulated INT8 (see the module docstring): the FP32 engine's.
SIMULATED_OPTIMIZATION = "all"
#: Session configuration of simulated INT8: no QDQ transformer may touch the Q/DQ pairs.
SIMULATED_SESSION_CONFIG = {"session.disable_quant_qdq": "1"}
#: Largest relative change of INT8's RMS error against FP32 from the unoptimised Q/DQ model's, per output.
ERROR_TOLERANCE = 0.10
#: Largest RMS difference from the unoptimised Q/DQ model's outputs, in units of its RMS INT8 error.
DIFFERENCE_TOLERANCE = 0.6

#: Quantized types whose DequantizeLinear is folded (the types this project and TensorRT use).
_FOLDED_TYPES = (TensorProto.INT8, TensorProto.UINT8)


def dequantize_like_onnxruntime(
    values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int
) -> np.ndarray:
    """DequantizeLinear of an int8/uint8 array with a float32 scale, bit-identical to ONNX Runtime's CPU
    kernel: ``float32(int32(x) - int32(zero_point)) * scale``; per tensor when ``scale`` has one element,
    else per ``axis``."""
    shift = np.zeros((), np.int32) if zero_point is None else zero_point.astype(np.int32)
    factor = scale.astype(np.float32, copy=False)
    if factor.size != 1:
        shape = [1] * values.ndim
        shape[axis] = -1
        factor = factor.reshape(shape)
        shift = shift.reshape(shape) if shift.size != 1 else shift.reshape(())
    else:
        factor = factor.reshape(())
        shift = shift.reshape(())
    difference = (values.astype(np.int32) - shift).astype(np.float32)
    with np.errstate(over="ignore", under="ignore"):  # inf and subnormals, as ONNX Runtime's kernel gives
        result: np.ndarray = np.multiply(difference, factor, dtype=np.float32)
    return result


def fold_weight_dequantize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with each DequantizeLinear of constant int8/uint8 values and a float32 scale
    replaced by the float constant it produces; returns the copy and how many nodes were folded.

    Nodes it cannot fold exactly are kept as they are: other types, a float16 scale, block-wise
    quantization, an output that is also a graph output. Initializers no node reads any more are dropped.
    """
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    initializers = {init.name: init for init in graph.initializer}
    graph_outputs = {output.name for output in graph.output}
    opset = next((o.version for o in folded.opset_import if o.domain in ("", "ai.onnx")), 13)
    kept: list[onnx.NodeProto] = []
    constants: list[onnx.TensorProto] = []
    for node in graph.node:
        value = _folded_value(node, initializers, graph_outputs, opset)
        if value is None:
            kept.append(node)
        else:
            constants.append(numpy_helper.from_array(value, node.output[0]))
    if not constants:
        return folded, 0
    del graph.node[:]
    graph.node.extend(kept)
    read = {name for node in graph.node for name in node.input} | graph_outputs
    read |= _subgraph_inputs(graph.node)
    remaining = [init for init in graph.initializer if init.name in read]
    dropped = {init.name for init in graph.initializer} - {init.name for init in remaining}
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    graph.initializer.extend(constants)
    # Models of IR version < 4 list initializers as graph inputs too: a dropped one must not stay an input.
    inputs = [value for value in graph.input if value.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)
    return folded, len(constants)


def _folded_value(
    node: onnx.NodeProto,
    initializers: dict[str, onnx.TensorProto],
    graph_outputs: set[str],
    opset: int,
) -> np.ndarray | None:
    if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    inputs = list(node.input)
    if len(inputs) < 2 or not all(name and name in initializers for name in inputs):
        return None
    if len(node.output) != 1 or node.output[0] in graph_outputs:
        return None
    attributes = {attribute.name: attribute for attribute in node.attribute}
    if attributes.get("block_size") is not None and attributes["block_size"].i != 0:
        return None
    if "output_dtype" in attributes and attributes["output_dtype"].i not in (0, TensorProto.FLOAT):
        return None
    quantized, scale = initializers[inputs[0]], initializers[inputs[1]]
    if quantized.data_type not in _FOLDED_TYPES or scale.data_type != TensorProto.FLOAT:
        return None
    zero_point = initializers[inputs[2]] if len(inputs) > 2 else None
    if zero_point is not None and zero_point.data_type != quantized.data_type:
        return None
    values = numpy_helper.to_array(quantized)
    scales = numpy_helper.to_array(scale)
    zeros = None if zero_point is None else numpy_helper.to_array(zero_point)
    axis = attributes["axis"].i if "axis" in attributes else 1
    if scales.size != 1:
        if opset < 13 or scales.ndim != 1 or values.ndim == 0:
            return None
        axis = axis + values.ndim if axis < 0 else axis
        if not 0 <= axis < values.ndim or values.shape[axis] != scales.size:
            return None
        if zeros is not None and zeros.size not in (1, scales.size):
            return None
    elif zeros is not None and zeros.size != 1:
        return None
    return dequantize_like_onnxruntime(values, scales, zeros, axis)


def _subgraph_inputs(nodes: list[onnx.NodeProto]) -> set[str]:
    """Names read inside subgraphs (If/Loop/Scan bodies), which may refer to outer initializers."""
    names: set[str] = set()
    for node in nodes:
        for attribute in node.attribute:
            graphs = list(attribute.graphs)
            if attribute.HasField("g"):
                graphs.append(attribute.g)
            for subgraph in graphs:
                names |= {name for inner in subgraph.node for name in inner.input}
                names |= _subgraph_inputs(list(subgraph.node))
    return names
