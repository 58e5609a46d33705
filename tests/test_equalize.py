"""Tests for pytest_int8gate.equalize: which pairs can be rescaled, that rescaling keeps the FP32 function,
that it balances what the paper says it balances, and that it repairs a planted wide channel in INT8.

Tolerance for "FP32 outputs unchanged": max |original - equalized| <= 1e-5 x the largest |output|. Rescaling
is exact in real arithmetic; float32 rounds each rescaled weight once (relative 6e-8) and the layers add
those up: measured 2e-7 to 8e-7 relative on these chains, 1.7e-7 on the example CNN (7.6e-6 on logits of 45).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from planted import INPUT, chain_model, chain_weights, forward, inputs, layer_name, plant

from pytest_int8gate.equalize import (
    EqualizationPair,
    EqualizationRefusal,
    activation_channel_ranges,
    equalization_pairs,
    equalize,
    equalized_model,
    fp32_difference,
    paper_scales,
    select_pairs,
)
from pytest_int8gate.errors import ModelError
from pytest_int8gate.gate import Budget
from pytest_int8gate.graph import LoadedModel, prepare_model
from pytest_int8gate.pipeline import GatePipeline, GateSpec

FLOAT = TensorProto.FLOAT
RELATIVE_TOLERANCE = 1e-5
EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"


def build(
    nodes: Sequence[onnx.NodeProto],
    inputs_: Mapping[str, Sequence[int | str]],
    outputs: Sequence[str],
    initializers: Mapping[str, np.ndarray],
) -> LoadedModel:
    graph = helper.make_graph(
        list(nodes),
        "equalize_test",
        [helper.make_tensor_value_info(name, FLOAT, list(shape)) for name, shape in inputs_.items()],
        [helper.make_tensor_value_info(name, FLOAT, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return prepare_model(onnx.shape_inference.infer_shapes(model))


def uneven(rng: np.random.Generator, shape: Sequence[int], axis: int) -> np.ndarray:
    """Random weights whose channels on ``axis`` differ in range by up to ~100x (what CLE evens out)."""
    values = rng.standard_normal(shape)
    factors = np.exp(rng.uniform(-2.3, 2.3, shape[axis]))
    view = [1] * len(shape)
    view[axis] = -1
    return values * factors.reshape(view)


def conv_chain(seed: int) -> LoadedModel:
    """Conv -> Relu -> ConvTranspose -> PRelu -> Conv -> Relu -> MaxPool -> Conv -> LeakyRelu -> AveragePool
    -> Flatten -> Gemm -> Relu -> Gemm: every op the equalizer follows, and weights with uneven channels."""
    rng = np.random.default_rng(seed)
    init = {
        "w1": uneven(rng, (8, 3, 3, 3), 0),
        "b1": rng.standard_normal(8),
        "wt": uneven(rng, (8, 6, 3, 3), 1),  # ConvTranspose: [in, out, k, k]
        "bt": rng.standard_normal(6),
        "slope": rng.uniform(-0.5, 0.5, (6, 1, 1)),
        "w2": uneven(rng, (12, 6, 3, 3), 0),
        "b2": rng.standard_normal(12),
        "w3": uneven(rng, (4, 12, 3, 3), 0),
        "b3": rng.standard_normal(4),
        "g1": uneven(rng, (16, 4 * 2 * 2), 0),  # transB=1: [out, in]
        "c1": rng.standard_normal(16),
        "g2": uneven(rng, (16, 5), 1),  # transB=0: [in, out]
        "c2": rng.standard_normal((1, 5)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y1"], ["r1"], name="relu1"),
        helper.make_node("ConvTranspose", ["r1", "wt", "bt"], ["yt"], name="deconv", pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["yt", "slope"], ["rt"], name="prelu"),
        helper.make_node("Conv", ["rt", "w2", "b2"], ["y2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p2", "w3", "b3"], ["y3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["y3"], ["r3"], name="leaky", alpha=0.1),
        helper.make_node("AveragePool", ["r3"], ["a3"], name="avg", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["a3"], ["f3"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f3", "g1", "c1"], ["z1"], name="fc1", transB=1),
        helper.make_node("Relu", ["z1"], ["s1"], name="relu4"),
        helper.make_node("Gemm", ["s1", "g2", "c2"], ["out"], name="fc2"),
    ]
    return build(nodes, {"x": ["N", 3, 8, 8]}, ["out"], init)


def dense_chain(seed: int) -> LoadedModel:
    """Gemm -> Relu -> Gemm -> Relu -> MatMul -> Identity -> MatMul (features last, rank 3 for MatMul)."""
    rng = np.random.default_rng(seed)
    init = {
        "a": uneven(rng, (24, 10), 0),
        "ab": rng.standard_normal(24),
        "b": uneven(rng, (24, 16), 1),
        "bb": rng.standard_normal(16),
        "m1": uneven(rng, (16, 8), 1),
        "m2": uneven(rng, (8, 3), 0),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "a", "ab"], ["h1"], name="fc_a", transB=1),
        helper.make_node("Relu", ["h1"], ["q1"], name="relu_a"),
        helper.make_node("Gemm", ["q1", "b", "bb"], ["h2"], name="fc_b"),
        helper.make_node("Relu", ["h2"], ["q2"], name="relu_b"),
        helper.make_node("Unsqueeze", ["q2", "axes"], ["u2"], name="unsqueeze"),
        helper.make_node("MatMul", ["u2", "m1"], ["h3"], name="mm1"),
        helper.make_node("Identity", ["h3"], ["q3"], name="identity"),
        helper.make_node("MatMul", ["q3", "m2"], ["out"], name="mm2"),
    ]
    graph_init = {**init, "axes": np.array([1])}
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("x", FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("out", FLOAT, None)],
        [
            numpy_helper.from_array(
                np.asarray(v, dtype=np.int64 if k == "axes" else np.float32),
                k,
            )
            for k, v in graph_init.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return prepare_model(onnx.shape_inference.infer_shapes(model))


def pairs_of(loaded: LoadedModel) -> list[EqualizationPair]:
    return [e for e in equalization_pairs(loaded) if isinstance(e, EqualizationPair)]


def refusals_of(loaded: LoadedModel) -> dict[str, str]:
    return {e.consumer: e.reason for e in equalization_pairs(loaded) if isinstance(e, EqualizationRefusal)}


def assert_same_function(
    original: LoadedModel, rewritten: onnx.ModelProto, feeds: dict[str, np.ndarray]
) -> float:
    difference = fp32_difference(original.proto, rewritten, [feeds])
    assert difference.reference_max_abs > 1.0  # outputs of a real size, not a comparison of zeros
    assert difference.max_abs <= RELATIVE_TOLERANCE * difference.reference_max_abs, difference
    return difference.relative


# ---- finding pairs ----------------------------------------------------------------------------------


def test_conv_chain_pairs_follow_homogeneous_ops_pooling_and_flatten() -> None:
    loaded = conv_chain(0)
    pairs = {p.consumer: p for p in pairs_of(loaded)}
    assert list(pairs) == ["deconv", "conv2", "conv3", "fc1", "fc2"]
    assert pairs["deconv"].producer == "conv1" and pairs["deconv"].consumer_axis == 0  # ConvTranspose input
    assert pairs["conv2"].producer == "deconv" and pairs["conv2"].producer_axis == 1  # ConvTranspose output
    assert pairs["conv2"].between == ("PRelu",)
    assert pairs["conv3"].between == ("Relu", "MaxPool")
    fc1 = pairs["fc1"]
    assert (fc1.producer, fc1.channels, fc1.block) == ("conv3", 4, 4)
    assert fc1.between == ("LeakyRelu", "AveragePool", "Flatten")
    assert (fc1.consumer_axis, fc1.activation_axis) == (1, -1)
    assert pairs["fc2"].producer_axis == 0 and pairs["fc2"].consumer_axis == 0  # transB=1 then transB=0
    assert "graph input" in refusals_of(loaded)["conv1"]


def test_dense_chain_pairs_and_the_ops_they_refuse() -> None:
    loaded = dense_chain(0)
    pairs = {p.consumer: p for p in pairs_of(loaded)}
    assert list(pairs) == ["fc_b", "mm2"]
    assert pairs["fc_b"].producer_axis == 0 and pairs["fc_b"].consumer_axis == 0
    assert pairs["mm2"].producer == "mm1" and pairs["mm2"].between == ("Identity",)
    refusals = refusals_of(loaded)
    assert (
        "Unsqueeze 'unsqueeze'" in refusals["mm1"]
        and "not known to be positively homogeneous" in refusals["mm1"]
    )


def clip_chain(op: str) -> LoadedModel:
    rng = np.random.default_rng(0)
    bounds = [np.float32(0.0), np.float32(6.0)]
    extra_init = {"lo": bounds[0], "hi": bounds[1]} if op == "Clip" else {}
    between = (
        helper.make_node("Clip", ["y1", "lo", "hi"], ["r1"], name="relu6")
        if op == "Clip"
        else helper.make_node(op, ["y1"], ["r1"], name="act")
    )
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], name="conv1"),
        between,
        helper.make_node("Conv", ["r1", "w2", "b2"], ["out"], name="conv2"),
    ]
    init = {
        "w1": rng.standard_normal((4, 2, 1, 1)),
        "b1": rng.standard_normal(4),
        "w2": rng.standard_normal((3, 4, 1, 1)),
        "b2": rng.standard_normal(3),
        **extra_init,
    }
    return build(nodes, {"x": ["N", 2, 3, 3]}, ["out"], init)


def test_relu6_between_the_layers_is_paired_with_its_bounds_rescaled_and_sigmoid_is_refused() -> None:
    loaded = clip_chain("Clip")
    (pair,) = pairs_of(loaded)
    assert (pair.producer, pair.consumer, pair.clips) == ("conv1", "conv2", (("relu6", 4),))
    assert "saturates" in refusals_of(clip_chain("Sigmoid"))["conv2"]
    with pytest.raises(ModelError, match=r"cannot equalize 'conv2': Sigmoid 'act' .* saturates"):
        select_pairs(clip_chain("Sigmoid"), ["conv2"])


def test_a_tensor_read_elsewhere_a_graph_output_or_a_shared_weight_is_refused() -> None:
    rng = np.random.default_rng(1)
    init = {
        "w1": rng.standard_normal((4, 2, 1, 1)),
        "w2": rng.standard_normal((3, 4, 1, 1)),
        "w3": rng.standard_normal((3, 4, 1, 1)),
        "wg": rng.standard_normal((3, 4, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["y1"], name="conv1"),
        helper.make_node("Relu", ["y1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["a"], name="left"),
        helper.make_node("Conv", ["r1", "w3"], ["b"], name="right"),
        helper.make_node("Conv", ["a", "wg"], ["c"], name="after_left"),
    ]
    loaded = build(nodes, {"x": ["N", 2, 3, 3]}, ["a", "b", "c"], init)
    refusals = refusals_of(loaded)
    assert refusals["left"] == "tensor 'r1' also feeds right"
    assert refusals["right"] == "tensor 'r1' also feeds left"
    assert refusals["after_left"] == "tensor 'a' is a graph output, which rescaling would change"

    shared = [
        helper.make_node("Conv", ["x", "w1"], ["y1"], name="conv1"),
        helper.make_node("Relu", ["y1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y2"], name="conv2"),
        helper.make_node("Conv", ["y2", "w2"], ["out"], name="conv3", group=1),
    ]
    init_shared = {"w1": rng.standard_normal((4, 2, 1, 1)), "w2": rng.standard_normal((4, 4, 1, 1))}
    reasons = refusals_of(build(shared, {"x": ["N", 2, 3, 3]}, ["out"], init_shared))
    assert reasons["conv2"] == "the weight 'w2' of 'conv2' is shared with conv3"


def test_a_grouped_consumer_and_mismatched_channel_axes_are_refused() -> None:
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["y1"], name="conv1"),
        helper.make_node("Relu", ["y1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y2"], name="grouped", group=2),
        helper.make_node("Relu", ["y2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "m"], ["out"], name="matmul"),
    ]
    init = {
        "w1": rng.standard_normal((4, 2, 1, 1)),
        "w2": rng.standard_normal((4, 2, 1, 1)),
        "m": rng.standard_normal((3, 5)),
    }
    refusals = refusals_of(build(nodes, {"x": ["N", 2, 3, 3]}, ["out"], init))
    assert refusals["grouped"] == (
        "Conv 'grouped' has group=2 and is not depthwise (one input and output channel per group): its input "
        "channels are split"
    )
    assert "reads the last axis (no Flatten between)" in refusals["matmul"]


def test_flatten_is_followed_only_where_it_keeps_channels_in_blocks() -> None:
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Gemm", ["x2", "a"], ["h"], name="gemm", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu_g"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten_g"),  # 2-D: Flatten changes nothing
        helper.make_node("Gemm", ["f", "b"], ["out2"], name="after_gemm", transB=1),
        helper.make_node("MatMul", ["x3", "m"], ["t"], name="matmul"),
        helper.make_node("Relu", ["t"], ["u"], name="relu_m"),
        helper.make_node("Flatten", ["u"], ["v"], name="flatten_m"),  # [B, T, K] -> [B, T*K]: mixes
        helper.make_node("Gemm", ["v", "c"], ["out3"], name="after_matmul", transB=1),
    ]
    init = {
        "a": rng.standard_normal((6, 5)),
        "b": rng.standard_normal((2, 6)),
        "m": rng.standard_normal((5, 6)),
        "c": rng.standard_normal((2, 18)),
    }
    loaded = build(nodes, {"x2": ["N", 5], "x3": ["N", 3, 5]}, ["out2", "out3"], init)
    pairs = {p.consumer: p for p in pairs_of(loaded)}
    assert pairs["after_gemm"].producer == "gemm" and pairs["after_gemm"].block == 1
    assert (
        refusals_of(loaded)["after_matmul"] == "Flatten 'flatten_m' mixes 'matmul''s channels with other axes"
    )
    feeds = {
        "x2": np.random.default_rng(4).standard_normal((32, 5)).astype(np.float32),
        "x3": np.random.default_rng(5).standard_normal((32, 3, 5)).astype(np.float32),
    }
    rewritten, _ = equalize(loaded.proto, list(pairs.values()))
    assert_same_function(loaded, rewritten, feeds)


# ---- the rescaling ----------------------------------------------------------------------------------


def test_paper_scales_balance_the_two_ranges_and_leave_dead_channels() -> None:
    r1 = np.array([4.0, 1.0, 0.0, 9.0])
    r2 = np.array([1.0, 4.0, 2.0, 0.0])
    scales = paper_scales(r1, r2)
    np.testing.assert_allclose(scales, [2.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose((r1 / scales)[:2], (r2 * scales)[:2])  # both become sqrt(r1 r2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equalizing_a_conv_chain_keeps_the_fp32_outputs(seed: int) -> None:
    loaded = conv_chain(seed)
    feeds = {"x": np.random.default_rng(10 + seed).standard_normal((64, 3, 8, 8)).astype(np.float32)}
    rewritten, report = equalize(loaded.proto, pairs_of(loaded))
    assert len(report.pairs) == 5 and report.sweeps > 2  # shared layers: the paper's iteration ran
    relative = assert_same_function(loaded, rewritten, feeds)
    print(f"conv chain seed {seed}: relative FP32 difference {relative:.2e} after {report.sweeps} sweeps")
    for pair in report.pairs:
        assert pair.producer_spread[1] < pair.producer_spread[0]  # uneven channels evened out
    changed = {init.name for init in rewritten.graph.initializer} & {"w1", "wt", "w2", "w3", "g1", "g2"}
    assert changed == {"w1", "wt", "w2", "w3", "g1", "g2"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equalizing_a_gemm_and_matmul_chain_keeps_the_fp32_outputs(seed: int) -> None:
    loaded = dense_chain(seed)
    feeds = {"x": np.random.default_rng(20 + seed).standard_normal((256, 10)).astype(np.float32)}
    rewritten, report = equalize(loaded.proto, pairs_of(loaded))
    assert [p.pair.consumer for p in report.pairs] == ["fc_b", "mm2"]
    assert_same_function(loaded, rewritten, feeds)


def test_one_pair_ends_with_equal_producer_and_consumer_ranges_per_channel() -> None:
    loaded = dense_chain(3)
    (pair,) = [p for p in pairs_of(loaded) if p.consumer == "fc_b"]
    rewritten, report = equalize(loaded.proto, [pair])
    weights = {i.name: numpy_helper.to_array(i) for i in rewritten.graph.initializer}
    producer = np.abs(weights["a"]).max(axis=1)  # fc_a rows (transB=1)
    consumer = np.abs(weights["b"]).max(axis=1)  # fc_b input rows (transB=0)
    np.testing.assert_allclose(producer, consumer, rtol=1e-6)
    assert report.sweeps == 2 and report.pairs[0].producer_spread[0] > 10
    np.testing.assert_allclose(report.pairs[0].producer_spread[1], report.pairs[0].consumer_spread[1])
    original = {i.name: numpy_helper.to_array(i) for i in loaded.proto.graph.initializer}
    expected = np.sqrt(np.abs(original["a"]).max(axis=1) * np.abs(original["b"]).max(axis=1))
    np.testing.assert_allclose(producer, expected, rtol=1e-6)  # sqrt(r1 r2), the paper's optimum


def test_the_activations_rule_balances_measured_ranges_against_the_consumer() -> None:
    loaded = conv_chain(4)
    feeds = {"x": np.random.default_rng(5).standard_normal((128, 3, 8, 8)).astype(np.float32)}
    pairs = pairs_of(loaded)
    measured = activation_channel_ranges(loaded.proto, pairs, [feeds])
    rewritten, report = equalize(loaded.proto, pairs, rule="activations", activation_ranges=measured)
    assert_same_function(loaded, rewritten, feeds)
    after = activation_channel_ranges(rewritten, pairs, [feeds])
    weights = {i.name: numpy_helper.to_array(i) for i in rewritten.graph.initializer}
    fc1 = next(p for p in pairs if p.consumer == "fc1")
    consumer = np.abs(weights["g1"]).reshape(16, 4, 4).max(axis=(0, 2))  # per channel: block of 4 features
    np.testing.assert_allclose(after["fc1"], consumer, rtol=1e-4)
    assert fc1.block == 4 and report.rule == "activations"
    with pytest.raises(ValueError, match="measured ranges"):
        equalize(loaded.proto, pairs, rule="activations")


def test_equalize_leaves_its_input_untouched_and_keeps_names() -> None:
    loaded = conv_chain(5)
    before = loaded.proto.SerializeToString(deterministic=True)
    rewritten, _ = equalized_model(loaded, ["conv2"])
    assert loaded.proto.SerializeToString(deterministic=True) == before
    assert [n.name for n in rewritten.proto.graph.node] == [n.name for n in loaded.proto.graph.node]
    assert rewritten.info.layers == loaded.info.layers
    assert rewritten.info.model_hash != loaded.info.model_hash
    untouched = {"w1", "b1", "w3", "g1"}
    new = {i.name: i for i in rewritten.proto.graph.initializer}
    old = {i.name: i for i in loaded.proto.graph.initializer}
    assert all(new[n] == old[n] for n in untouched)
    assert new["wt"] != old["wt"] and new["bt"] != old["bt"] and new["w2"] != old["w2"]


# ---- a planted wide channel, repaired in INT8 --------------------------------------------------------

N_LAYERS = 12
PLANTED = 6


def test_equalization_undoes_a_planted_wide_channel(tmp_path: Path) -> None:
    weights = plant(chain_weights(N_LAYERS), PLANTED, factor=1e4)
    loaded = prepare_model(chain_model(weights))
    x = inputs(256)[INPUT]
    rewritten, report = equalized_model(loaded, [layer_name(PLANTED)])
    (pair,) = report.pairs
    assert (pair.pair.producer, pair.pair.between) == (layer_name(PLANTED - 1), ("Relu",))
    assert max(pair.scales) > 1e3 and pair.scales.index(max(pair.scales)) == 0  # the planted channel
    assert_same_function(loaded, rewritten.proto, {INPUT: x})
    planted_input = forward(weights, x)[PLANTED]
    ranges = activation_channel_ranges(rewritten.proto, [pair.pair], [{INPUT: x}])[layer_name(PLANTED)]
    assert planted_input[:, 0].max() > 1e3 * planted_input[:, 1:].max()  # before: one channel 10^4 wider
    assert ranges.max() < 10 * np.median(ranges)  # after: channel 0 is an ordinary channel again


def test_gate_passes_with_every_layer_int8_once_the_planted_pair_is_equalized(tmp_path: Path) -> None:
    path = tmp_path / "planted.onnx"
    onnx.save_model(chain_model(plant(chain_weights(N_LAYERS), PLANTED, factor=1e4)), str(path))
    spec = GateSpec(
        model=path,
        calib_data=inputs(256, seed=1),
        eval_data=inputs(256, seed=2),
        budget=Budget({"cosine": 0.99}),
        bisect=False,
        threads=1,
    )
    failing = GatePipeline(spec).run()
    assert not failing.passed and failing.int8["cosine"] < 0.5
    for equalize_spec in (frozenset({layer_name(PLANTED)}), True):
        pipeline = GatePipeline(GateSpec(**{**spec.__dict__, "equalize": equalize_spec}))
        verdict = pipeline.run()
        assert verdict.passed, verdict.int8
        assert verdict.int8["cosine"] > 0.995
        assert verdict.quantized_layers == verdict.total_layers == N_LAYERS  # nothing kept in float
        assert layer_name(PLANTED) in pipeline.plan.equalize
    assert GatePipeline(GateSpec(**{**spec.__dict__, "equalize": True})).plan.equalize == frozenset(
        layer_name(i) for i in range(1, N_LAYERS)
    )


def test_example_outlier_model_equalized_keeps_fp32_and_passes_int8() -> None:
    model = EXAMPLE / "models" / "digits_cnn_outlier.onnx"
    spec = GateSpec(
        model=model,
        calib_data=str(EXAMPLE / "data" / "calib.npz"),
        eval_data=str(EXAMPLE / "data" / "eval.npz"),
        labels=str(EXAMPLE / "data" / "eval_labels.npy"),
        budget=Budget({"top1_drop": 0.01, "cosine": 0.98}),
        calibrator="max",  # the calibrator that ruins the unequalized model (top-1 10 %)
        equalize=frozenset({"/conv2/Conv"}),
        bisect=False,
    )
    pipeline = GatePipeline(spec)
    verdict = pipeline.run()
    assert verdict.passed and verdict.quantized_layers == 5
    assert verdict.int8["top1"] == pytest.approx(verdict.fp32["top1"], abs=0.004)
    rewritten = pipeline.rewritten(frozenset({"/conv2/Conv"}))
    (pair,) = rewritten.report.pairs
    assert pair.pair.producer == "/conv1/Conv"
    feeds = dict(np.load(EXAMPLE / "data" / "eval.npz"))
    assert_same_function(pipeline.model, rewritten.model.proto, feeds)
    amax = pipeline.table_for(rewritten.model).amax_for("/relu1/Relu_output_0", "max")
    assert pipeline.table.amax_for("/relu1/Relu_output_0", "max") > 500  # the planted channel: ~719
    assert amax < 10  # equalized: no channel stands out


# ---- the command line -------------------------------------------------------------------------------


def test_cli_equalize_prints_pairs_refusals_and_the_fp32_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_int8gate.cli import main

    model = str(EXAMPLE / "models" / "digits_cnn_outlier.onnx")
    data = str(EXAMPLE / "data" / "eval.npz")
    out = tmp_path / "all.eq.onnx"
    assert main(["equalize", model, "--out", str(out), "--data", data]) == 0
    text = capsys.readouterr().out
    assert "equalized 4 of 5 weighted layer(s) of digits_cnn_outlier.onnx" in text
    assert "  /conv1/Conv -> Relu -> /conv2/Conv: scales " in text
    assert "  /conv2/Conv -> Relu -> MaxPool -> /conv3/Conv: scales " in text
    assert "  /conv3/Conv -> Relu -> Flatten -> /fc1/Gemm: scales " in text
    assert "  refused /conv1/Conv: its input 'input' is a graph input" in text
    assert "FP32 outputs on 500 samples of " in text and "(largest output 44.8)" in text
    difference = float(text.split("max abs difference ")[1].split()[0])
    assert 0 < difference < 1e-5 * 44.8
    written = out.read_bytes()
    assert f"sha256 {hashlib.sha256(written).hexdigest()}" in text
    reloaded = prepare_model(onnx.load_model_from_string(written))
    assert_same_function(prepare_model(onnx.load(model)), reloaded.proto, dict(np.load(data)))

    assert main(["equalize", model, "--out", str(tmp_path / "x.onnx"), "--layers", "/conv1/Conv"]) == 2
    assert "cannot equalize '/conv1/Conv': its input 'input' is a graph input" in capsys.readouterr().err
    assert main(["equalize", model, "--out", str(tmp_path / "y.onnx"), "--rule", "activations"]) == 2
    assert "--rule activations measures the activation ranges on --data" in capsys.readouterr().err
    rc = main(["equalize", model, "--out", str(tmp_path / "z.onnx"), "--rule", "activations", "--data", data])
    assert rc == 0 and "(activations rule" in capsys.readouterr().out
