"""Tests for pytest_int8gate.quantize: Q/DQ placement, TensorRT's numerics, plans, purity."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.errors import CalibrationError, ModelError
from pytest_int8gate.graph import LoadedModel, prepare_model
from pytest_int8gate.quantize import QuantizedModel, QuantPlan, activation_tensors, quantize_model

FLOAT = TensorProto.FLOAT


@dataclass
class Table:
    """The slice of a calibration table quantize_model reads: tensor -> calibrator -> amax."""

    amax: dict[str, dict[str, float]]
    skipped: dict[str, str] = field(default_factory=dict)

    def amax_for(self, tensor: str, method: str) -> float:
        try:
            return self.amax[tensor][method]
        except KeyError:
            raise CalibrationError(f"no {method} amax for tensor {tensor!r}") from None


def uniform_table(tensors: Sequence[str], amax: float = 1.0) -> Table:
    return Table({t: {"entropy": amax, "max": amax} for t in tensors})


def build(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, Sequence[int]],
    outputs: Sequence[str],
    initializers: Mapping[str, np.ndarray] = {},
    opset: int = 17,
) -> LoadedModel:
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info(name, FLOAT, list(shape)) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, FLOAT, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in initializers.items()],
    )
    return prepare_inferred(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def prepare_inferred(model: onnx.ModelProto) -> LoadedModel:
    # The checker wants graph outputs with a shape; shape inference fills in the ones the test left open.
    return prepare_model(onnx.shape_inference.infer_shapes(model))


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, dict(feeds))]


def assert_well_formed(result: QuantizedModel, loaded: LoadedModel) -> None:
    """Checker passes, graph I/O and original node names kept, nodes topologically sorted."""
    model = result.proto
    onnx.checker.check_model(model)
    assert [vi.name for vi in model.graph.input] == [vi.name for vi in loaded.proto.graph.input]
    assert [vi.name for vi in model.graph.output] == [vi.name for vi in loaded.proto.graph.output]
    new_names = {node.name for node in model.graph.node}
    assert {node.name for node in loaded.proto.graph.node} <= new_names
    assert len(new_names) == len(model.graph.node)
    available = {vi.name for vi in model.graph.input} | {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        missing = [name for name in node.input if name and name not in available]
        assert not missing, f"{node.name} reads {missing} before they are produced"
        available.update(node.output)


def node_named(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(node for node in model.graph.node if node.name == name)


def producer_of(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(node for node in model.graph.node if tensor in node.output)


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return np.asarray(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name)))


def ops(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type == op_type]


def axis_of(node: onnx.NodeProto) -> int | None:
    for attr in node.attribute:
        if attr.name == "axis":
            return int(attr.i)
    return None


rng = np.random.default_rng(7)


def weights(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# --- per-channel axes -------------------------------------------------------------------------------


AXIS_CASES = {
    "conv": (
        helper.make_node("Conv", ["x", "w"], ["y"], name="layer"),
        (1, 2, 4, 4),
        (3, 2, 3, 3),
        0,
    ),
    "conv_transpose": (
        helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="layer"),
        (1, 2, 3, 3),
        (2, 4, 3, 3),
        1,
    ),
    "gemm_transB_0": (helper.make_node("Gemm", ["x", "w"], ["y"], name="layer"), (2, 3), (3, 5), 1),
    "gemm_transB_1": (
        helper.make_node("Gemm", ["x", "w"], ["y"], name="layer", transB=1),
        (2, 3),
        (5, 3),
        0,
    ),
    "matmul": (helper.make_node("MatMul", ["x", "w"], ["y"], name="layer"), (2, 3), (3, 5), 1),
}


@pytest.mark.parametrize("case", list(AXIS_CASES))
def test_weight_is_quantized_per_output_channel_on_the_op_specific_axis(case: str) -> None:
    node, x_shape, w_shape, axis = AXIS_CASES[case]
    w = weights(*w_shape)
    loaded = build([node], {"x": x_shape}, ["y"], {"w": w})
    result = quantize_model(loaded, uniform_table(["x"]), QuantPlan())

    assert_well_formed(result, loaded)
    layer = node_named(result.proto, "layer")
    assert layer.input[0] == "x_dequantized"
    dq = producer_of(result.proto, layer.input[1])
    assert dq.op_type == "DequantizeLinear"
    assert axis_of(dq) == axis
    scale = initializer(result.proto, dq.input[1])
    assert scale.dtype == np.float32
    assert scale.shape == (w_shape[axis],)
    reduce_axes = tuple(a for a in range(w.ndim) if a != axis)
    np.testing.assert_array_equal(scale, (np.abs(w).max(axis=reduce_axes) / 127).astype(np.float32))
    zero_point = initializer(result.proto, dq.input[2])
    assert zero_point.dtype == np.int8 and zero_point.shape == scale.shape and not zero_point.any()
    assert initializer(result.proto, dq.input[0]).dtype == np.int8
    assert "w" not in {init.name for init in result.proto.graph.initializer}  # no float copy left
    assert result.quantized_layers == ("layer",)
    run(result.proto, {"x": rng.standard_normal(x_shape).astype(np.float32)})


@pytest.mark.parametrize(
    ("node", "x_shape", "w_shape", "note"),
    [
        (
            helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="layer", group=2),
            (1, 4, 3, 3),
            (4, 3, 3, 3),
            "group=2",
        ),
        (helper.make_node("MatMul", ["x", "w"], ["y"], name="layer"), (2, 3), (4, 3, 5), "rank 3"),
    ],
    ids=["grouped_conv_transpose", "matmul_rank3"],
)
def test_weights_without_a_single_channel_axis_get_a_per_tensor_scale_and_a_note(
    node: onnx.NodeProto, x_shape: tuple[int, ...], w_shape: tuple[int, ...], note: str
) -> None:
    w = weights(*w_shape)
    loaded = build([node], {"x": x_shape}, ["y"], {"w": w})
    result = quantize_model(loaded, uniform_table(["x"]), QuantPlan())

    assert_well_formed(result, loaded)
    dq = producer_of(result.proto, node_named(result.proto, "layer").input[1])
    assert axis_of(dq) is None
    scale = initializer(result.proto, dq.input[1])
    assert scale.shape == ()
    assert scale == np.float32(np.abs(w).max() / 127)
    assert note in result.notes["layer"]
    run(result.proto, {"x": rng.standard_normal(x_shape).astype(np.float32)})


def test_two_activation_inputs_get_one_per_tensor_pair_each() -> None:
    loaded = build(
        [helper.make_node("MatMul", ["q", "k"], ["y"], name="attn")], {"q": (2, 3), "k": (3, 4)}, ["y"]
    )
    result = quantize_model(loaded, Table({"q": {"entropy": 2.0}, "k": {"entropy": 4.0}}), QuantPlan())

    assert_well_formed(result, loaded)
    assert list(node_named(result.proto, "attn").input) == ["q_dequantized", "k_dequantized"]
    assert result.activation_scales == {"q": pytest.approx(2 / 127), "k": pytest.approx(4 / 127)}
    assert all(axis_of(node) is None for node in ops(result.proto, "DequantizeLinear"))


# --- numerics ----------------------------------------------------------------------------------------


def fake_quant(values: np.ndarray, scale: np.ndarray, lowest: int = -128) -> np.ndarray:
    # QuantizeLinear saturates int8 at [-128, 127] (ONNX Runtime and TensorRT alike); weights use [-127, 127].
    return (np.clip(np.rint(values / scale), lowest, 127) * scale).astype(np.float32)


def fake_quant_weight(w: np.ndarray, axis: int) -> np.ndarray:
    reduce_axes = tuple(a for a in range(w.ndim) if a != axis)
    scale = (np.abs(w).max(axis=reduce_axes) / 127).astype(np.float32)
    return fake_quant(w, np.expand_dims(scale, reduce_axes), lowest=-127)


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]


def test_qdq_model_matches_a_numpy_fake_quant_reference() -> None:
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    w1, b1 = weights(3, 2, 3, 3), weights(3)
    w2, b2 = weights(4, 27), weights(4)
    loaded = build(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1),
        ],
        {"x": (2, 2, 5, 5)},
        ["y"],
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2},
    )
    fp32_flat = np.maximum(conv2d(x, w1, b1), 0).reshape(2, -1)
    # amax below the observed maximum so that clipping is exercised too.
    amax_x, amax_f = 0.8 * float(np.abs(x).max()), 0.7 * float(fp32_flat.max())
    table = Table({"x": {"entropy": amax_x}, "f": {"entropy": amax_f}})
    result = quantize_model(loaded, table, QuantPlan())
    assert_well_formed(result, loaded)
    assert result.quantized_layers == ("conv", "fc")
    assert activation_tensors(loaded) == ("x", "f")

    scale_x, scale_f = np.float32(amax_x / 127), np.float32(amax_f / 127)
    flat = np.maximum(conv2d(fake_quant(x, scale_x), fake_quant_weight(w1, 0), b1), 0).reshape(2, -1)
    expected = fake_quant(flat.astype(np.float32), scale_f) @ fake_quant_weight(w2, 0).T + b2

    (int8_out,) = run(result.proto, {"x": x})
    np.testing.assert_allclose(int8_out, expected, rtol=1e-5, atol=1e-5)
    (fp32_out,) = run(loaded.proto, {"x": x})
    assert np.abs(int8_out - fp32_out).max() > 1e-3  # the reference is not just the float model


def test_weight_rounding_is_half_to_even_and_a_zero_channel_gets_scale_one() -> None:
    w = np.array([[127.0, 0.0], [2.5, 0.0], [-3.5, 0.0], [0.5, 0.0]], dtype=np.float32)
    loaded = build([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], {"x": (1, 4)}, ["y"], {"w": w})
    result = quantize_model(loaded, uniform_table(["x"]), QuantPlan())

    np.testing.assert_array_equal(initializer(result.proto, "w_scale"), [1.0, 1.0])
    np.testing.assert_array_equal(initializer(result.proto, "w_int8"), [[127, 0], [2, 0], [-4, 0], [0, 0]])
    (out,) = run(result.proto, {"x": np.array([[0.0, 1.0, 0.0, 0.0]], dtype=np.float32)})
    np.testing.assert_array_equal(out, [[2.0, 0.0]])


# --- plans: exclude, include, overrides ---------------------------------------------------------------


def two_convs_on_one_input() -> LoadedModel:
    return build(
        [
            helper.make_node("Conv", ["x", "wa"], ["ya"], name="conv_a"),
            helper.make_node("Conv", ["x", "wb"], ["yb"], name="conv_b"),
        ],
        {"x": (1, 2, 3, 3)},
        ["ya", "yb"],
        {"wa": weights(2, 2, 1, 1), "wb": weights(3, 2, 1, 1)},
    )


def test_excluding_a_layer_removes_qdq_from_its_inputs_only() -> None:
    loaded = two_convs_on_one_input()
    result = quantize_model(loaded, uniform_table(["x"]), QuantPlan(exclude=frozenset({"conv_a"})))

    assert_well_formed(result, loaded)
    assert list(node_named(result.proto, "conv_a").input) == ["x", "wa"]
    assert list(node_named(result.proto, "conv_b").input) == ["x_dequantized", "wb_dequantized"]
    assert [node.input[0] for node in ops(result.proto, "QuantizeLinear")] == ["x"]
    assert result.quantized_layers == ("conv_b",)
    assert result.skipped == {"conv_a": "excluded by the plan"}
    feeds = {"x": rng.standard_normal((1, 2, 3, 3)).astype(np.float32)}
    np.testing.assert_array_equal(run(result.proto, feeds)[0], run(loaded.proto, feeds)[0])


def test_a_shared_weight_stays_float_for_the_excluded_consumer() -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y1"], name="mm1"),
        helper.make_node("MatMul", ["x", "w"], ["y2"], name="mm2"),
    ]
    loaded = build(nodes, {"x": (2, 3)}, ["y1", "y2"], {"w": weights(3, 4)})

    partial = quantize_model(loaded, uniform_table(["x"]), QuantPlan(exclude=frozenset({"mm2"})))
    assert_well_formed(partial, loaded)
    assert list(node_named(partial.proto, "mm1").input) == ["x_dequantized", "w_dequantized"]
    assert list(node_named(partial.proto, "mm2").input) == ["x", "w"]
    assert {"w", "w_int8"} <= {init.name for init in partial.proto.graph.initializer}

    full = quantize_model(loaded, uniform_table(["x"]), QuantPlan())
    assert len(ops(full.proto, "DequantizeLinear")) == 2  # one for x, one shared for w
    assert node_named(full.proto, "mm2").input[1] == "w_dequantized"
    assert "w" not in {init.name for init in full.proto.graph.initializer}


def test_empty_include_quantizes_nothing() -> None:
    loaded = two_convs_on_one_input()
    result = quantize_model(loaded, uniform_table(["x"]), QuantPlan(include=frozenset()))

    assert_well_formed(result, loaded)
    assert result.quantized_layers == ()
    assert not ops(result.proto, "QuantizeLinear") and not ops(result.proto, "DequantizeLinear")
    assert set(result.skipped) == {"conv_a", "conv_b"}
    assert all("include" in reason for reason in result.skipped.values())
    feeds = {"x": rng.standard_normal((1, 2, 3, 3)).astype(np.float32)}
    np.testing.assert_array_equal(run(result.proto, feeds)[0], run(loaded.proto, feeds)[0])


def test_include_limits_quantization_to_the_listed_layers() -> None:
    loaded = two_convs_on_one_input()
    result = quantize_model(loaded, uniform_table(["x"]), QuantPlan(include=frozenset({"conv_a"})))
    assert result.quantized_layers == ("conv_a",)
    assert node_named(result.proto, "conv_b").input[0] == "x"


def test_an_override_changes_the_scale_of_that_layer_only() -> None:
    loaded = two_convs_on_one_input()
    table = Table({"x": {"entropy": 1.0, "max": 2.0}})
    result = quantize_model(loaded, table, QuantPlan(overrides={"conv_b": "max"}))

    assert_well_formed(result, loaded)
    conv_a, conv_b = node_named(result.proto, "conv_a"), node_named(result.proto, "conv_b")
    assert conv_a.input[0] == "x_dequantized"
    assert conv_b.input[0] == "x_max_dequantized"
    scale_a = initializer(result.proto, producer_of(result.proto, conv_a.input[0]).input[1])
    scale_b = initializer(result.proto, producer_of(result.proto, conv_b.input[0]).input[1])
    assert scale_a == np.float32(1.0 / 127)
    assert scale_b == np.float32(2.0 / 127)
    assert result.layer_scales["conv_a"]["x"] == pytest.approx(1.0 / 127)
    assert result.layer_scales["conv_b"]["x"] == pytest.approx(2.0 / 127)
    assert len(ops(result.proto, "QuantizeLinear")) == 2


def test_consumers_with_the_same_scale_share_one_pair() -> None:
    loaded = two_convs_on_one_input()
    result = quantize_model(
        loaded, Table({"x": {"entropy": 1.5, "max": 1.5}}), QuantPlan(overrides={"conv_b": "max"})
    )
    assert len(ops(result.proto, "QuantizeLinear")) == 1
    assert node_named(result.proto, "conv_a").input[0] == node_named(result.proto, "conv_b").input[0]


# --- tensors calibration rejected --------------------------------------------------------------------


@pytest.mark.parametrize("amax", [0.0, -1.0, math.nan, math.inf])
def test_a_tensor_with_unusable_amax_is_not_quantized_and_says_why(amax: float) -> None:
    loaded = two_convs_on_one_input()
    result = quantize_model(loaded, Table({"x": {"entropy": amax}}), QuantPlan())

    assert_well_formed(result, loaded)
    assert result.quantized_layers == ()
    assert set(result.skipped) == {"conv_a", "conv_b"}
    assert "'x'" in result.skipped["conv_a"] and f"amax {amax!r}" in result.skipped["conv_a"]
    assert not ops(result.proto, "DequantizeLinear")  # all or nothing: weights stay float too


def test_a_tensor_the_table_skipped_is_not_quantized_and_the_reason_is_kept() -> None:
    loaded = two_convs_on_one_input()
    table = Table({}, skipped={"x": "all calibration values were zero"})
    result = quantize_model(loaded, table, QuantPlan())
    assert result.quantized_layers == ()
    assert "all calibration values were zero" in result.skipped["conv_b"]


def test_a_missing_amax_is_an_error_not_a_silent_float_layer() -> None:
    with pytest.raises(CalibrationError, match="'x'"):
        quantize_model(two_convs_on_one_input(), Table({}), QuantPlan())


# --- graph shapes ------------------------------------------------------------------------------------


def test_residual_add_gets_qdq_on_the_skip_input_only() -> None:
    loaded = build(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("Conv", ["r", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["c", "r"], ["y"], name="add"),
        ],
        {"x": (1, 2, 3, 3)},
        ["y"],
        {"w": weights(2, 2, 3, 3)},
    )
    assert activation_tensors(loaded) == ("r",)
    result = quantize_model(loaded, uniform_table(["r"]), QuantPlan())

    assert_well_formed(result, loaded)
    assert list(node_named(result.proto, "add").input) == ["c", "r_dequantized"]
    assert [node.input[0] for node in ops(result.proto, "QuantizeLinear")] == ["r"]  # shared with the conv
    assert result.quantized_layers == ("conv", "add")


def test_residual_add_of_two_convs_quantizes_the_second_input() -> None:
    loaded = build(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
            helper.make_node("Conv", ["x", "w2"], ["b"], name="conv2"),
            helper.make_node("Add", ["a", "b"], ["y"], name="add"),
        ],
        {"x": (1, 2, 3, 3)},
        ["y"],
        {"w1": weights(2, 2, 1, 1), "w2": weights(2, 2, 1, 1)},
    )
    assert activation_tensors(loaded) == ("x", "b")
    result = quantize_model(loaded, uniform_table(["x", "b"]), QuantPlan(include=frozenset({"add"})))
    assert_well_formed(result, loaded)
    assert list(node_named(result.proto, "add").input) == ["a", "b_dequantized"]


def test_constant_node_weights_at_opset_11_are_quantized_per_channel() -> None:
    w = weights(4, 2, 3, 3)
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
            helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        ],
        "constant_weights",
        [helper.make_tensor_value_info("x", FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", FLOAT, None)],
    )
    loaded = prepare_inferred(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]))
    result = quantize_model(loaded, uniform_table(["x"]), QuantPlan())

    assert_well_formed(result, loaded)
    dq = producer_of(result.proto, node_named(result.proto, "conv").input[1])
    assert dq.op_type == "DequantizeLinear"
    assert axis_of(dq) == 0
    assert initializer(result.proto, dq.input[1]).shape == (4,)
    assert "conv" not in result.notes
    run(result.proto, {"x": rng.standard_normal((1, 2, 4, 4)).astype(np.float32)})


def test_the_input_model_is_not_mutated() -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y1"], name="mm1"),
        helper.make_node("MatMul", ["x", "w"], ["y2"], name="mm2"),
    ]
    loaded = build(nodes, {"x": (2, 3)}, ["y1", "y2"], {"w": weights(3, 4)})
    before = loaded.proto.SerializeToString()
    quantize_model(loaded, Table({"x": {"entropy": 1.0, "max": 3.0}}), QuantPlan(overrides={"mm2": "max"}))
    quantize_model(loaded, uniform_table(["x"]), QuantPlan(exclude=frozenset({"mm1"})))
    assert loaded.proto.SerializeToString() == before


def test_a_model_that_already_has_qdq_nodes_is_refused() -> None:
    loaded = two_convs_on_one_input()
    once = quantize_model(loaded, uniform_table(["x"]), QuantPlan())
    again = prepare_model(once.proto)
    with pytest.raises(ModelError, match="already contains Q/DQ"):
        quantize_model(again, uniform_table(["x"]), QuantPlan())


# --- QuantPlan ---------------------------------------------------------------------------------------


def test_validate_names_a_misspelt_layer_and_suggests_the_close_one() -> None:
    info = two_convs_on_one_input().info
    with pytest.raises(ModelError, match=r"'conv_c'.*'conv_a'"):
        QuantPlan(exclude=frozenset({"conv_c"})).validate(info)
    with pytest.raises(ModelError, match=r"overrides.*'convb'.*'conv_b'"):
        QuantPlan(overrides={"convb": "max"}).validate(info)
    with pytest.raises(ModelError, match="'conv_zz'"):
        quantize_model(
            two_convs_on_one_input(), uniform_table(["x"]), QuantPlan(include=frozenset({"conv_zz"}))
        )


def test_validate_lists_the_calibrators_for_an_unknown_one() -> None:
    info = two_convs_on_one_input().info
    with pytest.raises(CalibrationError, match=r"'kl'.*entropy, max, mse, percentile"):
        QuantPlan(calibrator="kl").validate(info)
    with pytest.raises(CalibrationError, match="'conv_a'"):
        QuantPlan(overrides={"conv_a": "minmax"}).validate(info)
    QuantPlan(calibrator="percentile", overrides={"conv_a": "mse"}).validate(info)


def test_key_is_stable_and_independent_of_order() -> None:
    plan = QuantPlan(exclude=frozenset(["b", "a"]), overrides={"y": "mse", "x": "max"})
    same = QuantPlan(exclude=frozenset(["a", "b"]), overrides={"x": "max", "y": "mse"})
    assert plan == same and hash(plan) == hash(same)
    assert plan.key() == same.key() == "3c1558d63234a5cf"
    assert QuantPlan().key() != QuantPlan(include=frozenset()).key()
    assert QuantPlan().key() != QuantPlan(calibrator="max").key()
    assert plan.to_dict() == {
        "calibrator": "entropy",
        "exclude": ["a", "b"],
        "overrides": {"x": "max", "y": "mse"},
        "include": None,
    }


def test_quantized_layers_of_a_plan_honour_include_and_exclude() -> None:
    info = two_convs_on_one_input().info
    assert [layer.name for layer in QuantPlan().quantized_layers(info)] == ["conv_a", "conv_b"]
    plan = QuantPlan(include=frozenset({"conv_a", "conv_b"}), exclude=frozenset({"conv_b"}))
    assert [layer.name for layer in plan.quantized_layers(info)] == ["conv_a"]


@pytest.mark.parametrize(("opset", "quantized"), [(17, False), (19, True)])
def test_float16_is_quantized_only_where_qdq_supports_it(opset: int, quantized: bool) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 4])],
        [numpy_helper.from_array(weights(3, 4).astype(np.float16), "w")],
    )
    loaded = prepare_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    result = quantize_model(loaded, uniform_table(["x"]), QuantPlan())

    assert_well_formed(result, loaded)
    assert result.quantized_layers == (("mm",) if quantized else ())
    if quantized:
        assert initializer(result.proto, "x_scale").dtype == np.float16
    else:
        assert "float16" in result.skipped["mm"]
    run(result.proto, {"x": np.ones((2, 3), dtype=np.float16)})


def test_a_plan_refuses_a_bare_string_as_a_set_of_layer_names() -> None:
    with pytest.raises(TypeError, match="'conv1'"):
        QuantPlan(exclude="conv1")  # type: ignore[arg-type]
