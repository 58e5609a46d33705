"""Simulated INT8 made cheaper (backends/simulated.py): folded weights equal ONNX Runtime's own
DequantizeLinear bit for bit, and the engine's outputs equal the Q/DQ model's with every ONNX Runtime
optimisation disabled within the stated tolerance on the example models and a residual CNN (a ResNet-style
net at 224 px and the PP-OCRv4 detector: benchmarks/bench_speed.py)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from example_files import CALIB, DIGITS, EVAL, OUTLIER
from onnx import TensorProto, helper, numpy_helper
from qdq_models import ort_static

from pytest_int8gate.backends.onnxruntime import OPTIMIZATION_LEVELS, OrtBackend
from pytest_int8gate.backends.simulated import (
    DIFFERENCE_TOLERANCE,
    ERROR_TOLERANCE,
    SIMULATED_OPTIMIZATION,
    SIMULATED_SESSION_CONFIG,
    dequantize_like_onnxruntime,
    fold_weight_dequantize,
)
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


def _case(case: str, tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The model, calibration inputs and held-out evaluation inputs of a test case."""
    if case.startswith("residual"):
        path = tmp_path / "residual.onnx"
        onnx.save(residual_cnn(), path)
        inputs = np.random.default_rng(5).standard_normal((192, 3, 16, 16)).astype(np.float32)
        return path, inputs[:64], inputs[64:]
    with np.load(CALIB) as archive:
        calib = archive[archive.files[0]][:256]
    with np.load(EVAL) as archive:
        held_out = archive[archive.files[0]][:256]
    return (DIGITS if case.startswith("digits") else OUTLIER), calib, held_out


@pytest.mark.parametrize("case", ["digits-entropy", "outlier-max", "residual-percentile"])
def test_simulated_engine_equals_the_unoptimised_qdq_model_within_the_stated_tolerance(
    case: str, tmp_path: Path
) -> None:
    """Per output: INT8's RMS error against FP32 within ERROR_TOLERANCE of the unoptimised Q/DQ model's,
    and the outputs within DIFFERENCE_TOLERANCE of that error (RMS) from the unoptimised model's."""
    path, calib, held_out = _case(case, tmp_path)
    qdq, name = _qdq_and_inputs(path, calib, case.rsplit("-", 1)[1])
    folded, count = fold_weight_dequantize(qdq)
    assert count > 0 and not any(
        n.op_type == "DequantizeLinear" and n.input[0] in {i.name for i in folded.graph.initializer}
        for n in folded.graph.node
    )
    backend = OrtBackend(mode="simulated")
    engine = backend.int8_runner(qdq)
    fp32 = backend.fp32_runner(load_model(path).proto)
    assert engine.describe().options["graph_optimization"] == "all, Q/DQ transformers off"
    names = engine.output_names
    moved = dict.fromkeys(names, 0.0)  # sum of squares: engine - unoptimised
    error = dict.fromkeys(names, 0.0)  # unoptimised - FP32
    engine_error = dict.fromkeys(names, 0.0)  # engine - FP32
    for start in range(0, len(held_out), 64):
        feeds = {name: held_out[start : start + 64]}
        reference = dict(zip(names, _ort_outputs(qdq, feeds), strict=True))
        outputs, float_outputs = engine.run(feeds), fp32.run(feeds)
        for output in names:
            got, want = outputs[output].astype(np.float64), reference[output].astype(np.float64)
            moved[output] += float(np.sum((got - want) ** 2))
            error[output] += float(np.sum((want - float_outputs[output]) ** 2))
            engine_error[output] += float(np.sum((got - float_outputs[output]) ** 2))
    for output in names:
        assert error[output] > 0, output  # INT8 differs from FP32: the tolerance has a unit
        assert abs(math.sqrt(engine_error[output] / error[output]) - 1.0) <= ERROR_TOLERANCE, output
        assert math.sqrt(moved[output] / error[output]) <= DIFFERENCE_TOLERANCE, output


def test_simulated_engine_with_nothing_quantized_equals_the_fp32_engine_bit_for_bit(tmp_path: Path) -> None:
    """Both engines run the same float kernels: what differs between them is quantization alone."""
    path, calib, held_out = _case("residual", tmp_path)
    loaded = load_model(path)
    table, _ = calibrate(
        loaded.proto, activation_tensors(loaded), [{"input": calib}], model_hash="m", data_fingerprint="d"
    )
    nothing = QuantPlan(exclude=frozenset(layer.name for layer in loaded.info.layers))
    some = QuantPlan(exclude=frozenset(layer.name for layer in loaded.info.layers[1:]))
    backend = OrtBackend(mode="simulated")
    fp32 = backend.fp32_runner(loaded.proto).run({"input": held_out})["logits"]
    unquantized = backend.int8_runner(quantize_model(loaded, table, nothing).proto)
    assert np.array_equal(_bits(unquantized.run({"input": held_out})["logits"]), _bits(fp32))
    one_layer = backend.int8_runner(quantize_model(loaded, table, some).proto)
    # its twin with one layer quantized differs: the comparison can fail
    assert not np.array_equal(one_layer.run({"input": held_out})["logits"], fp32)


# ---- every Q/DQ pair survives the simulated engine's optimisation -------------------------------------


def _qdq_pairs(model: onnx.ModelProto) -> Counter[tuple[str, bytes, bytes, int | None]]:
    """The QuantizeLinear / DequantizeLinear nodes of ``model`` that act on a computed tensor, by what
    they compute: (op, scale, zero point, axis when per channel). Nodes whose input derives from constants
    alone are left out: constant folding computes them (exactly, with the same kernels)."""
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    derived = set(constants)
    pairs: Counter[tuple[str, bytes, bytes, int | None]] = Counter()
    for node in model.graph.node:  # topological order: a constant-derived input is known before its use
        if node.input and all(not name or name in derived for name in node.input):
            derived.update(node.output)
            continue
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = constants[node.input[1]].astype(np.float32)
        zero = constants[node.input[2]].tobytes() if len(node.input) > 2 and node.input[2] else b""
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if scale.size > 1 else None
        pairs[(node.op_type, scale.tobytes(), zero, axis)] += 1
    return pairs


def _optimized_as_simulated(model: onnx.ModelProto, path: Path, config: dict[str, str]) -> onnx.ModelProto:
    """The graph ONNX Runtime runs for the simulated INT8 engine (weights folded, its level and config)."""
    folded, _ = fold_weight_dequantize(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[SIMULATED_OPTIMIZATION]
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    options.optimized_model_filepath = str(path)
    options.log_severity_level = 3
    ort.InferenceSession(folded.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


def _example_qdq(path: Path, *, half: bool = False, placement: str = "minimal") -> onnx.ModelProto:
    with np.load(CALIB) as archive:
        calib = archive[archive.files[0]][:32]
    loaded = load_model(path)
    name = loaded.info.inputs[0].name
    tensors = activation_tensors(loaded, placement)
    table, _ = calibrate(loaded.proto, tensors, [{name: calib}], model_hash="m", data_fingerprint="d")
    layers = [layer.name for layer in loaded.info.layers]
    plan = QuantPlan(calibrator="max", exclude=frozenset(layers[::2] if half else ()), placement=placement)
    return quantize_model(loaded, table, plan).proto


@pytest.mark.parametrize(
    "case",
    [
        "digits_cnn",
        "digits_mobilenet",
        "digits_vit",
        "digits_mobilenet-half",
        "digits_mobilenet-tensorrt",
        "digits_vit-tensorrt",
        "ort_static",
    ],
)
def test_the_simulated_engine_keeps_every_qdq_pair_of_the_model(case: str, tmp_path: Path) -> None:
    """A pair ONNX Runtime dropped or merged would make that tensor FP32 in INT8: a false pass. The graph
    it runs (saved by ONNX Runtime) holds every pair on a computed tensor, with its scale and zero point:
    the example models (all quantized, every other layer as a search probes, and the tensorrt placement's
    pairs on residual Adds and pooling), and a Q/DQ model from ONNX Runtime's quantize_static (per-channel
    weights)."""
    if case == "ort_static":
        model = onnx.load(str(ort_static(tmp_path / "static.onnx")))
    else:
        name, _, variant = case.partition("-")
        model = _example_qdq(
            DIGITS.with_name(f"{name}.onnx"),
            half=variant == "half",
            placement="tensorrt" if variant == "tensorrt" else "minimal",
        )
    before = _qdq_pairs(model)
    assert sum(before.values()) >= 4
    after = _qdq_pairs(_optimized_as_simulated(model, tmp_path / "optimized.onnx", SIMULATED_SESSION_CONFIG))
    assert before - after == Counter()
    # the twin with ONNX Runtime's Q/DQ transformers on fuses pairs into int8 kernels: the check sees it
    fused = _qdq_pairs(_optimized_as_simulated(model, tmp_path / "fused.onnx", {}))
    assert before - fused != Counter()
