"""Q/DQ models made by other tools from the example project's digits CNN, for the tests of a given Q/DQ model:
ONNX Runtime's ``quantize_static`` (QDQ and QOperator formats), this project's own quantizer, a QAT-style
export with float weights and fake-quantize pairs, and a copy with one scale corrupted."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from example_files import CALIB, DIGITS
from onnx import helper, numpy_helper

from pytest_int8gate.budget import Budget
from pytest_int8gate.pipeline import GatePipeline, GateSpec

#: The digits CNN's second convolution: its input pair is the one the broken twins corrupt.
CONV2 = "/conv2/Conv"
#: The float tensor ONNX Runtime and this project quantize at CONV2's input.
CONV2_INPUT = "/relu1/Relu_output_0"


def _calibration(samples: int = 64) -> np.ndarray:
    with np.load(CALIB) as data:
        return np.asarray(data[next(iter(data.keys()))][:samples])


def ort_static(path: Path, *, symmetric: bool = True, qoperator: bool = False, model: Path = DIGITS) -> Path:
    """``quantize_static`` on the digits CNN, per-channel int8 weights; activations int8 symmetric, or uint8
    with a zero point (``symmetric=False``); QDQ format unless ``qoperator``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    images = _calibration()
    name = onnx.load(model).graph.input[0].name

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{name: images[i : i + 16]} for i in range(0, len(images), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    # quantize_static writes a shape-inferred copy beside its input: a private copy keeps it out of the
    # example project and apart from other workers'
    source = path.with_name(f"{path.stem}_fp32.onnx")
    shutil.copy(model, source)
    quantize_static(
        str(source),
        str(path),
        Reader(),
        quant_format=QuantFormat.QOperator if qoperator else QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": symmetric},
    )
    return path


def own(path: Path) -> Path:
    """This project's Q/DQ model of the digits CNN (entropy calibration, int8 weights read by a DQ)."""
    spec = GateSpec(model=DIGITS, calib_data=str(CALIB), budget=Budget(), bisect=False)
    with GatePipeline(spec) as pipeline:
        onnx.save(pipeline.quantized().proto, path)
    return path


def fake_quantized(source: Path, path: Path) -> Path:
    """A QAT-style export: every int8 weight read by a DequantizeLinear becomes its float value read through a
    QuantizeLinear -> DequantizeLinear pair (what PyTorch exports for a fake-quantized weight)."""
    model = onnx.load(source)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            values = numpy_helper.to_array(initializers[node.input[0]]).astype(np.float32)
            scale = numpy_helper.to_array(initializers[node.input[1]])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * values.ndim
            if scale.size > 1:
                shape[axis] = scale.size
            float_name = f"{node.input[0]}_float_weight"
            graph.initializer.append(numpy_helper.from_array(values * scale.reshape(shape), float_name))
            quantized = f"{node.input[0]}_fake_quantized"
            quantize = helper.make_node(
                "QuantizeLinear",
                [float_name, *node.input[1:]],
                [quantized],
                name=f"{node.name}_fake_QuantizeLinear",
            )
            quantize.attribute.extend(node.attribute)
            dequantize = onnx.NodeProto()
            dequantize.CopyFrom(node)
            dequantize.input[0] = quantized
            nodes.extend([quantize, dequantize])
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, path)
    return path


def with_scale_scaled(source: Path, path: Path, tensor: str, factor: float) -> Path:
    """A copy of ``source`` whose Q/DQ pair on ``tensor`` (both nodes) uses ``factor`` times its scale, in an
    initializer of its own (ONNX Runtime shares a scale across the pairs around pooling and reshapes)."""
    model = onnx.load(source)
    graph = model.graph
    quantizers = [node for node in graph.node if node.op_type == "QuantizeLinear" and node.input[0] == tensor]
    assert len(quantizers) == 1, [q.name for q in quantizers]
    (quantize,) = quantizers
    scale = next(init for init in graph.initializer if init.name == quantize.input[1])
    corrupted = f"{scale.name}_corrupted"
    graph.initializer.append(
        numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(factor), corrupted)
    )
    for node in graph.node:
        if node.name == quantize.name or (
            node.op_type == "DequantizeLinear" and node.input[0] == quantize.output[0]
        ):
            node.input[1] = corrupted
    onnx.save(model, path)
    return path
