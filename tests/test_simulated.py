"""Simulated INT8 made cheaper (backends/simulated.py) computes bit for bit what the Q/DQ model computes with
every ONNX Runtime optimisation disabled: folded weights equal ONNX Runtime's own DequantizeLinear, and the
engine's outputs equal the unoptimised Q/DQ model's on the example models and a residual CNN."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from example_files import CALIB, DIGITS, OUTLIER
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.backends.onnxruntime import OrtBackend
from pytest_int8gate.backends.simulated import dequantize_like_onnxruntime, fold_weight_dequantize
from pytest_int8gate.calibrate import calibrate
from pytest_int8gate.graph import load_model
from pytest_int8gate.quantize import QuantPlan, activation_tensors, quantize_model


def _ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(value) for value in session.run(None, feeds)]


def _bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize(
    ("dtype", "shape", "axis", "per_axis", "with_zero_point"),
    [
        (np.int8, (6, 3, 2, 2), 0, True, True),
        (np.int8, (4, 5), 1, True, True),
        (np.int8, (4, 5), -1, True, False),
        (np.int8, (3, 4), 1, False, True),
        (np.uint8, (5, 2, 3), 0, True, True),
        (np.uint8, (7,), 0, False, False),
    ],
)
def test_folded_weights_equal_onnxruntime_dequantize_bit_for_bit(
    dtype: type, shape: tuple[int, ...], axis: int, per_axis: bool, with_zero_point: bool
) -> None:
    rng = np.random.default_rng(len(shape) * 7 + axis)
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max + 1, size=shape).astype(dtype)
    channels = shape[axis] if per_axis else 1
    # Scales over the whole float32 range: subnormal products, products that overflow to inf, plain ones.
    scale = np.array(
        [3.0e-39, 1.1754944e-38, 2.5e36, 1.0 / 127, math.pi / 127, 7.3e-5, 0.1, 1.3][:channels]
        + list(rng.uniform(1e-4, 1.0, max(channels - 8, 0))),
        dtype=np.float32,
    )
    scale = scale if per_axis else scale.reshape(())
    zero_point = (
        rng.integers(info.min, info.max + 1, size=scale.shape).astype(dtype) if with_zero_point else None
    )
    initializers = [numpy_helper.from_array(values, "w"), numpy_helper.from_array(scale, "s")]
    inputs = ["w", "s"]
    if zero_point is not None:
        initializers.append(numpy_helper.from_array(zero_point, "z"))
        inputs.append("z")
    node = helper.make_node("DequantizeLinear", inputs, ["w_dequantized"], axis=axis)
    graph = helper.make_graph(
        [node, helper.make_node("Add", ["w_dequantized", "x"], ["y"])],
        "dq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("w_dequantized", TensorProto.FLOAT, None),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _, reference = _ort_outputs(model, {"x": np.zeros((), np.float32)})
    folded = dequantize_like_onnxruntime(values, scale, zero_point, axis + len(shape) if axis < 0 else axis)
    assert folded.dtype == np.float32 and folded.shape == reference.shape
    assert np.array_equal(_bits(folded), _bits(reference))


def test_fold_replaces_constant_dequantize_and_keeps_the_rest() -> None:
    weight = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [
            numpy_helper.from_array(np.float32(0.05), "xs"),
            numpy_helper.from_array(np.int8(0), "xz"),
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.array([0.5, 0.25, 0.125, 1.5], np.float32), "ws"),
            numpy_helper.from_array(np.zeros(4, np.int8), "wz"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folded, count = fold_weight_dequantize(model)
    assert count == 1
    assert [n.op_type for n in folded.graph.node] == ["QuantizeLinear", "DequantizeLinear", "MatMul"]
    assert {i.name for i in folded.graph.initializer} == {"xs", "xz", "wd"}
    x = np.random.default_rng(3).standard_normal((5, 3)).astype(np.float32)
    assert np.array_equal(_ort_outputs(folded, {"x": x})[0], _ort_outputs(model, {"x": x})[0])
    assert len(model.graph.node) == 4  # the input model is left alone


def residual_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv stem, two residual blocks (the second strided, with a 1x1 projection), max pooling, Gemm."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []

    def conv(x: str, cin: int, cout: int, k: int, stride: int, name: str) -> str:
        w = (rng.standard_normal((cout, cin, k, k)) * math.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        weights.extend(
            [
                numpy_helper.from_array(w, f"{name}.w"),
                numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"{name}.b"),
            ]
        )
        pads = [k // 2] * 4
        nodes.append(
            helper.make_node(
                "Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name, pads=pads, strides=[stride] * 2
            )
        )
        return name

    def relu(x: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [f"{x}_relu"], name=f"{x}_relu"))
        return f"{x}_relu"

    x = relu(conv("input", 3, 8, 3, 1, "stem"))
    y = conv(relu(conv(x, 8, 8, 3, 1, "b1c1")), 8, 8, 3, 1, "b1c2")
    nodes.append(helper.make_node("Add", [x, y], ["b1add"], name="b1add"))
    x = relu("b1add")
    y = conv(relu(conv(x, 8, 16, 3, 2, "b2c1")), 16, 16, 3, 1, "b2c2")
    shortcut = conv(x, 8, 16, 1, 2, "b2proj")
    nodes.append(helper.make_node("Add", [shortcut, y], ["b2add"], name="b2add"))
    x = relu("b2add")
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flat"))
    fc = (rng.standard_normal((10, 16 * 4 * 4)) * 0.05).astype(np.float32)
    weights.extend(
        [numpy_helper.from_array(fc, "fc.w"), numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    )
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes,
        "residual_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _qdq_and_inputs(path: Path, inputs: np.ndarray, calibrator: str) -> tuple[onnx.ModelProto, str]:
    loaded = load_model(path)
    name = loaded.info.inputs[0].name
    batches = [{name: inputs[i : i + 16]} for i in range(0, len(inputs), 16)]
    table, _ = calibrate(
        loaded.proto, activation_tensors(loaded), batches, model_hash="m", data_fingerprint="d"
    )
    return quantize_model(loaded, table, QuantPlan(calibrator=calibrator)).proto, name


@pytest.mark.parametrize("case", ["digits-entropy", "outlier-max", "residual-percentile"])
def test_simulated_engine_equals_the_unoptimised_qdq_model_bit_for_bit(case: str, tmp_path: Path) -> None:
    if case == "residual-percentile":
        path = tmp_path / "residual.onnx"
        onnx.save(residual_cnn(), path)
        inputs = np.random.default_rng(5).standard_normal((64, 3, 16, 16)).astype(np.float32)
    else:
        path = DIGITS if case.startswith("digits") else OUTLIER
        with np.load(CALIB) as archive:
            inputs = archive[archive.files[0]][:256]
    qdq, name = _qdq_and_inputs(path, inputs, case.rsplit("-", 1)[1])
    folded, count = fold_weight_dequantize(qdq)
    assert count > 0 and not any(
        n.op_type == "DequantizeLinear" and n.input[0] in {i.name for i in folded.graph.initializer}
        for n in folded.graph.node
    )
    engine = OrtBackend(mode="simulated").int8_runner(qdq)
    assert engine.describe().options["graph_optimization"] == "extended, Q/DQ transformers off"
    for start in range(0, len(inputs), 64):
        feeds = {name: inputs[start : start + 64]}
        reference = _ort_outputs(qdq, feeds)
        outputs = engine.run(feeds)
        for output, expected in zip(engine.output_names, reference, strict=True):
            assert np.array_equal(_bits(outputs[output]), _bits(expected)), output
