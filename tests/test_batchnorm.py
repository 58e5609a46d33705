"""Tests for pytest_int8gate.batchnorm: BatchNormalization folded into the layer before it, exactly (up to
float rounding), during model preparation; the cases that must not fold stay as they are."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from example_files import EVAL, EXAMPLE
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.graph import prepare_model

FLOAT = TensorProto.FLOAT
RNG = np.random.default_rng(1)


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, dict(feeds))[0])


def bn_params(prefix: str, channels: int) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_gamma": RNG.uniform(0.2, 3.0, channels).astype(np.float32),
        f"{prefix}_beta": RNG.normal(size=channels).astype(np.float32),
        f"{prefix}_mean": RNG.normal(size=channels).astype(np.float32),
        f"{prefix}_var": RNG.uniform(0.01, 4.0, channels).astype(np.float32),
    }


def bn(x: str, y: str, prefix: str = "bn", **attrs: object) -> onnx.NodeProto:
    inputs = [x, f"{prefix}_gamma", f"{prefix}_beta", f"{prefix}_mean", f"{prefix}_var"]
    return helper.make_node("BatchNormalization", inputs, [y], name=prefix, epsilon=1e-3, **attrs)


def model(
    nodes: Sequence[onnx.NodeProto],
    shape: Sequence[int],
    initializers: Mapping[str, np.ndarray],
    outputs: Sequence[str] = ("y",),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes),
        "bn",
        [helper.make_tensor_value_info("x", FLOAT, list(shape))],
        [helper.make_tensor_value_info(name, FLOAT, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in initializers.items()],
    )
    return onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )


CASES = {
    "conv_with_bias": (
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="layer", pads=[1, 1, 1, 1]), bn("c", "y")],
        (2, 3, 5, 5),
        {"W": RNG.normal(size=(4, 3, 3, 3)), "B": RNG.normal(size=4), **bn_params("bn", 4)},
    ),
    "conv_without_bias": (
        [helper.make_node("Conv", ["x", "W"], ["c"], name="layer"), bn("c", "y")],
        (2, 3, 5, 5),
        {"W": RNG.normal(size=(4, 3, 3, 3)), **bn_params("bn", 4)},
    ),
    "depthwise_conv": (
        [helper.make_node("Conv", ["x", "W"], ["c"], name="layer", group=6, pads=[1, 1, 1, 1]), bn("c", "y")],
        (2, 6, 5, 5),
        {"W": RNG.normal(size=(6, 1, 3, 3)), **bn_params("bn", 6)},
    ),
    "conv_transpose": (
        [
            helper.make_node("ConvTranspose", ["x", "W", "B"], ["c"], name="layer", strides=[2, 2]),
            bn("c", "y"),
        ],
        (2, 3, 4, 4),
        {"W": RNG.normal(size=(3, 5, 2, 2)), "B": RNG.normal(size=5), **bn_params("bn", 5)},
    ),
    "gemm_transB": (
        [helper.make_node("Gemm", ["x", "W", "B"], ["c"], name="layer", transB=1, alpha=0.5), bn("c", "y")],
        (3, 8),
        {"W": RNG.normal(size=(6, 8)), "B": RNG.normal(size=6), **bn_params("bn", 6)},
    ),
    "gemm": (
        [helper.make_node("Gemm", ["x", "W"], ["c"], name="layer"), bn("c", "y")],
        (3, 8),
        {"W": RNG.normal(size=(8, 6)), **bn_params("bn", 6)},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_batchnorm_folds_into_the_layer_before_it_exactly(case: str) -> None:
    nodes, shape, inits = CASES[case]
    original = model(nodes, shape, {k: np.asarray(v, dtype=np.float32) for k, v in inits.items()})
    prepared = prepare_model(original)
    assert [n.op_type for n in prepared.proto.graph.node] == [nodes[0].op_type]
    assert prepared.proto.graph.node[0].output[0] == "y"  # the layer takes over the BN's output name
    assert "folded 1 BatchNormalization node(s) into the preceding layer" in prepared.info.notes
    assert not {i.name for i in prepared.proto.graph.initializer} & {
        "bn_gamma",
        "bn_beta",
        "bn_mean",
        "bn_var",
    }
    x = RNG.normal(size=shape).astype(np.float32)
    expected, actual = run(original, {"x": x}), run(prepared.proto, {"x": x})
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))


def test_batchnorm_that_must_not_fold_is_left_alone() -> None:
    weights = {"W": RNG.normal(size=(4, 3, 1, 1)).astype(np.float32), **bn_params("bn", 4)}
    read_twice = [helper.make_node("Conv", ["x", "W"], ["c"], name="layer"), bn("c", "y")]
    prepared = prepare_model(model(read_twice, (1, 3, 4, 4), weights, outputs=("y", "c")))  # c is an output
    assert [n.op_type for n in prepared.proto.graph.node] == ["Conv", "BatchNormalization"]
    after_relu = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="layer"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        bn("r", "y"),
    ]
    prepared = prepare_model(model(after_relu, (1, 3, 4, 4), weights))
    assert "BatchNormalization" in [n.op_type for n in prepared.proto.graph.node]
    gemm_beta = [helper.make_node("Gemm", ["x", "Wg", "B"], ["c"], name="layer", beta=2.0), bn("c", "y")]
    gemm_weights = {
        "Wg": RNG.normal(size=(3, 4)).astype(np.float32),
        "B": np.ones(4, np.float32),
        **bn_params("bn", 4),
    }
    prepared = prepare_model(model(gemm_beta, (2, 3), gemm_weights))
    assert "BatchNormalization" in [n.op_type for n in prepared.proto.graph.node]


def test_the_mobilenet_example_folds_every_batchnorm_and_keeps_its_function() -> None:
    original = onnx.load(str(EXAMPLE / "models" / "digits_mobilenet.onnx"))
    assert sum(n.op_type == "BatchNormalization" for n in original.graph.node) == 8
    prepared = prepare_model(original)
    assert not [n for n in prepared.proto.graph.node if n.op_type == "BatchNormalization"]
    x = np.load(EVAL)["input"][:200]
    expected, actual = run(original, {"input": x}), run(prepared.proto, {"input": x})
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
    assert (actual.argmax(1) == expected.argmax(1)).all()


def test_batchnorm_with_a_negative_variance_is_left_to_the_runtime_not_folded_into_nan() -> None:
    weights = {"W": RNG.normal(size=(4, 3, 1, 1)).astype(np.float32), **bn_params("bn", 4)}
    weights["bn_var"] = np.array([1.0, -5.0, 1.0, 1.0], np.float32)  # sqrt of a negative number
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="layer"), bn("c", "y")]
    prepared = prepare_model(model(nodes, (1, 3, 4, 4), weights))
    assert [n.op_type for n in prepared.proto.graph.node] == ["Conv", "BatchNormalization"]
    assert np.isfinite(numpy_helper.to_array(prepared.proto.graph.initializer[0])).all()
