"""Tests for pytest_int8gate.placement: each rule of the ``minimal`` and ``tensorrt`` profiles on small graphs
and on the example project's transformer and MobileNet, and the coverage facts quantization reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import pytest
from example_files import EXAMPLE
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.choices import PLACEMENTS
from pytest_int8gate.coverage import Coverage
from pytest_int8gate.errors import ModelError
from pytest_int8gate.graph import LoadedModel, load_model, prepare_model
from pytest_int8gate.placement import RECURRENT_REASON, Placement, place, with_placement
from pytest_int8gate.quantize import QuantizedModel, QuantPlan, activation_tensors, quantize_model

FLOAT = TensorProto.FLOAT
VIT = EXAMPLE / "models" / "digits_vit.onnx"
MOBILENET = EXAMPLE / "models" / "digits_mobilenet.onnx"
RNG = np.random.default_rng(0)


class UniformTable:
    """Every tensor has amax 1 under every calibrator."""

    skipped: Mapping[str, str] = {}

    def amax_for(self, tensor: str, method: str) -> float:
        return 1.0


def build(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, Sequence[int]],
    outputs: Sequence[str],
    initializers: Mapping[str, np.ndarray] | None = None,
    opset: int = 17,
    elem_type: int = FLOAT,
) -> LoadedModel:
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info(name, elem_type, list(shape)) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, elem_type, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return prepare_model(onnx.shape_inference.infer_shapes(model))


def w(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def conv(name: str, x: str, out: str, weight: str, group: int = 1) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, weight], [out], name=name, pads=[1, 1, 1, 1], group=group)


def slots(placement: Placement, layer: str) -> tuple[str, ...]:
    placed = placement.get(layer)
    assert placed is not None, f"{layer} is not a layer of the {placement.profile} placement"
    return tuple(slot.tensor for slot in placed.slots if not slot.is_weight)


def quantized_inputs(result: QuantizedModel) -> set[str]:
    """The float tensors that a QuantizeLinear reads: the activations that got a pair."""
    return {node.input[0] for node in result.proto.graph.node if node.op_type == "QuantizeLinear"}


def dq_axis(result: QuantizedModel, weight: str) -> int | None:
    for node in result.proto.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] == f"{weight}_int8":
            axes = [a.i for a in node.attribute if a.name == "axis"]
            return axes[0] if axes else None
    raise AssertionError(f"no DequantizeLinear for {weight}")


# ---- weighted layers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "attrs", "weight_shape", "axis"),
    [
        ("Gemm", {"transB": 1}, (32, 24), 0),  # B is [N, K]
        ("Gemm", {}, (24, 32), 1),  # B is [K, N]
        ("MatMul", {}, (24, 32), 1),
    ],
)
@pytest.mark.parametrize("profile", PLACEMENTS)
def test_gemm_and_matmul_weights_are_per_output_channel_on_the_right_axis(
    op: str, attrs: dict[str, int], weight_shape: tuple[int, int], axis: int, profile: str
) -> None:
    loaded = build(
        [helper.make_node(op, ["x", "W"], ["y"], name="fc", **attrs)],
        {"x": (4, 24)},
        ["y"],
        {"W": w(*weight_shape)},
    )
    result = quantize_model(loaded, UniformTable(), QuantPlan(placement=profile))
    assert result.quantized_layers == ("fc",)
    assert dq_axis(result, "W") == axis
    assert onnx.numpy_helper.to_array(
        next(i for i in result.proto.graph.initializer if i.name == "W_scale")
    ).shape == (32,)


@pytest.mark.parametrize(("k", "n", "small"), [(24, 8, "N=8"), (4, 32, "K=4"), (16, 16, "")])
def test_tensorrt_keeps_gemms_with_k_or_n_below_16_in_float(k: int, n: int, small: str) -> None:
    loaded = build(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], {"x": (4, k)}, ["y"], {"W": w(k, n)}
    )
    trt = quantize_model(loaded, UniformTable(), QuantPlan(placement="tensorrt"))
    minimal = quantize_model(loaded, UniformTable(), QuantPlan(placement="minimal"))
    assert minimal.quantized_layers == ("mm",)
    if small:
        assert trt.quantized_layers == ()
        assert small in trt.skipped["mm"] and "below 16" in trt.skipped["mm"]
        assert [(e.layer, e.op) for e in trt.coverage.not_covered] == [("mm", "MatMul")]
    else:
        assert trt.quantized_layers == ("mm",)


# ---- attention ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit() -> LoadedModel:
    return load_model(VIT)


def test_vit_attention_matmuls_get_both_inputs_quantized_and_the_softmax_output_too(vit: LoadedModel) -> None:
    placement = place(vit.proto.graph, "tensorrt")
    producers = {out: node for node in vit.proto.graph.node for out in node.output}
    for block in ("block0", "block1"):
        qk = slots(placement, f"{block}/attn/QK/MatMul")
        av = slots(placement, f"{block}/attn/AV/MatMul")
        assert len(qk) == 2 and len(av) == 2  # activation x activation: both inputs
        assert producers[av[0]].op_type == "Softmax"  # the softmax output is quantized
        assert [producers[t].op_type for t in qk] == ["Transpose", "Transpose"]


def test_vit_layernorm_and_gelu_stay_in_float(vit: LoadedModel) -> None:
    result = quantize_model(vit, UniformTable(), QuantPlan(placement="tensorrt"))
    quantized = quantized_inputs(result)
    nodes = {node.name: node for node in vit.proto.graph.node}
    for name, node in nodes.items():
        if node.op_type == "LayerNormalization" or "/gelu/" in name:
            assert not set(node.input) & quantized, f"{name} reads a quantized tensor"
            assert name not in result.quantized_layers


def test_vit_small_embedding_and_head_stay_float_with_their_reason(vit: LoadedModel) -> None:
    result = quantize_model(vit, UniformTable(), QuantPlan(placement="tensorrt"))
    assert "K=4 below 16" in result.skipped["embed/MatMul"]
    assert "N=10 below 16" in result.skipped["head/Gemm"]
    minimal = quantize_model(vit, UniformTable(), QuantPlan(placement="minimal"))
    assert {"embed/MatMul", "head/Gemm"} <= set(minimal.quantized_layers)


def test_vit_residual_adds_quantize_the_projection_output_only(vit: LoadedModel) -> None:
    placement = place(vit.proto.graph, "tensorrt")
    assert slots(placement, "block0/attn/residual/Add") == ("block0/attn/o/Add_output",)
    assert slots(placement, "block1/mlp/residual/Add") == ("block1/mlp/fc2/Add_output",)
    assert placement.get("position/Add") is None  # a constant operand: not a layer


def test_masked_attention_matmuls_stay_in_float() -> None:
    nodes = [
        helper.make_node("MatMul", ["q", "k"], ["s"], name="qk"),
        helper.make_node("Add", ["s", "mask"], ["m"], name="mask_add"),
        helper.make_node("Softmax", ["m"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"], name="av"),
    ]
    shapes = {"q": (1, 16, 16), "k": (1, 16, 16), "mask": (1, 16, 16), "v": (1, 16, 16)}
    result = quantize_model(build(nodes, shapes, ["y"]), UniformTable(), QuantPlan(placement="tensorrt"))
    assert result.quantized_layers == ()
    assert "masked attention" in result.skipped["qk"] and "masked attention" in result.skipped["av"]
    assert place(build(nodes, shapes, ["y"]).proto.graph, "tensorrt").get("mask_add") is None


# ---- residual Adds, Muls, pooling, Resize ------------------------------------------------------------


def residual_block() -> LoadedModel:
    """x -> conv_a -> relu -> conv_b -> add(relu output, conv_b output)."""
    nodes = [
        conv("conv_a", "x", "a", "Wa"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        conv("conv_b", "r", "b", "Wb"),
        helper.make_node("Add", ["r", "b"], ["y"], name="add"),
    ]
    return build(nodes, {"x": (1, 8, 6, 6)}, ["y"], {"Wa": w(8, 8, 3, 3), "Wb": w(8, 8, 3, 3)})


def test_residual_add_quantizes_the_residual_input_when_the_other_is_fused() -> None:
    placement = place(residual_block().proto.graph, "tensorrt")
    assert slots(placement, "add") == ("r",)  # conv_b's output fuses into conv_b; the skip gets the pair


def test_residual_add_whose_common_ancestor_is_the_backbone_conv_quantizes_both_inputs() -> None:
    nodes = [
        conv("conv", "x", "c", "Wc"),
        helper.make_node("LeakyRelu", ["c"], ["l"], name="leaky"),  # a path with no Conv backbone
        helper.make_node("Add", ["c", "l"], ["y"], name="add"),
    ]
    placement = place(build(nodes, {"x": (1, 8, 6, 6)}, ["y"], {"Wc": w(8, 8, 3, 3)}).proto.graph, "tensorrt")
    assert slots(placement, "add") == ("c", "l")  # ConvNeXt-style: the Add fuses into nothing


def test_residual_add_of_two_branches_quantizes_the_shorter_one() -> None:
    nodes = [
        conv("stem", "x", "s", "Ws"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
        conv("short", "r", "p", "Wp"),
        conv("long1", "r", "l1", "W1"),
        helper.make_node("Relu", ["l1"], ["l1r"], name="relu_long"),
        conv("long2", "l1r", "l2", "W2"),
        helper.make_node("Add", ["l2", "p"], ["y"], name="add"),
    ]
    weights = {name: w(8, 8, 3, 3) for name in ("Ws", "Wp", "W1", "W2")}
    placement = place(build(nodes, {"x": (1, 8, 6, 6)}, ["y"], weights).proto.graph, "tensorrt")
    assert slots(placement, "add") == ("p",)  # long2 is on the longer path: the Add fuses into it


def squeeze_excite(gate: str = "Sigmoid") -> LoadedModel:
    nodes = [
        conv("conv", "x", "c", "Wc"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="squeeze"),
        helper.make_node("Conv", ["g", "We"], ["e"], name="excite"),
        helper.make_node(gate, ["e"], ["s"], name="gate"),
        helper.make_node("Mul", ["r", "s"], ["m"], name="se_mul"),
        conv("out", "m", "y", "Wo"),
    ]
    weights = {"Wc": w(8, 8, 3, 3), "We": w(8, 8, 1, 1), "Wo": w(8, 8, 3, 3)}
    return build(nodes, {"x": (1, 8, 6, 6)}, ["y"], weights)


@pytest.mark.parametrize("gate", ["Sigmoid", "HardSigmoid"])
def test_squeeze_excite_mul_of_two_activations_quantizes_both_inputs(gate: str) -> None:
    placement = place(squeeze_excite(gate).proto.graph, "tensorrt")
    assert slots(placement, "se_mul") == ("r", "s")
    assert place(squeeze_excite(gate).proto.graph, "minimal").get("se_mul") is None


def test_gelu_and_swish_muls_are_not_layers() -> None:
    nodes = [
        conv("conv", "x", "c", "Wc"),
        helper.make_node("Sigmoid", ["c"], ["sg"], name="sigmoid"),
        helper.make_node("Mul", ["c", "sg"], ["swish"], name="swish_mul"),  # fused into conv
        helper.make_node("Div", ["swish", "sqrt2"], ["d"], name="gelu_div"),
        helper.make_node("Erf", ["d"], ["e"], name="gelu_erf"),
        helper.make_node("Add", ["e", "one"], ["e1"], name="gelu_add"),
        helper.make_node("Mul", ["swish", "e1"], ["g"], name="gelu_mul"),
        helper.make_node("Mul", ["g", "half"], ["y"], name="gelu_mul_half"),
    ]
    inits = {"Wc": w(8, 8, 3, 3), "sqrt2": np.float32(1.414), "one": np.float32(1.0), "half": np.float32(0.5)}
    placement = place(build(nodes, {"x": (1, 8, 6, 6)}, ["y"], inits).proto.graph, "tensorrt")
    assert placement.layer_names() == ("conv",)


def test_pooling_between_quantized_layers_is_quantized_and_a_pool_next_to_none_is_not() -> None:
    nodes = [
        conv("conv1", "x", "c1", "W1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        conv("conv2", "p1", "c2", "W2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["y"], name="gap"),  # feeds the graph output only
    ]
    loaded = build(nodes, {"x": (1, 8, 8, 8)}, ["y"], {"W1": w(8, 8, 3, 3), "W2": w(8, 8, 3, 3)})
    placement = place(loaded.proto.graph, "tensorrt")
    assert slots(placement, "pool1") == ("r1",)
    assert placement.get("gap") is None
    result = quantize_model(loaded, UniformTable(), QuantPlan(placement="tensorrt"))
    assert quantized_inputs(result) == {"x", "r1", "p1"}


def test_resize_after_a_quantized_conv_is_quantized() -> None:
    nodes = [
        conv("conv", "x", "c", "Wc"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Resize", ["r", "", "scales"], ["y"], name="upsample", mode="nearest"),
    ]
    inits = {"Wc": w(8, 8, 3, 3), "scales": np.array([1, 1, 2, 2], dtype=np.float32)}
    placement = place(build(nodes, {"x": (1, 8, 4, 4)}, ["y"], inits).proto.graph, "tensorrt")
    assert slots(placement, "upsample") == ("r",)


def test_a_tensor_read_by_several_quantized_layers_gets_one_shared_pair() -> None:
    result = quantize_model(residual_block(), UniformTable(), QuantPlan(placement="tensorrt"))
    reads_r = [n for n in result.proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r"]
    assert len(reads_r) == 1  # conv_b and the Add share r's pair


# ---- profiles, plans, calibration --------------------------------------------------------------------


def test_minimal_profile_is_the_graphs_quantizable_layers() -> None:
    for path in (VIT, MOBILENET, EXAMPLE / "models" / "digits_cnn.onnx"):
        loaded = load_model(path)
        assert tuple(p.layer for p in place(loaded.proto.graph, "minimal").layers) == loaded.info.layers
        assert with_placement(loaded, "minimal") is loaded


def test_a_plan_names_layers_of_its_profile_and_an_unknown_profile_is_refused() -> None:
    loaded = squeeze_excite()
    quantize_model(loaded, UniformTable(), QuantPlan(placement="tensorrt", exclude=frozenset({"se_mul"})))
    with pytest.raises(ModelError, match="se_mul"):
        quantize_model(loaded, UniformTable(), QuantPlan(placement="minimal", exclude=frozenset({"se_mul"})))
    with pytest.raises(ModelError, match="Unknown placement 'fast'"):
        quantize_model(loaded, UniformTable(), QuantPlan(placement="fast"))


def test_placement_changes_the_plan_key_only_when_not_minimal() -> None:
    assert QuantPlan().key() == QuantPlan(placement="minimal").key()
    assert QuantPlan(placement="tensorrt").key() != QuantPlan().key()


def test_calibration_measures_the_tensors_of_the_profile() -> None:
    loaded = squeeze_excite()
    assert set(activation_tensors(loaded, "tensorrt")) - set(activation_tensors(loaded, "minimal")) == {
        "r",
        "s",
    }


# ---- coverage ----------------------------------------------------------------------------------------


def test_mac_share_is_computed_from_shapes() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "Wc"], ["c"], name="conv"),  # 3x3 valid: out [1, 4, 4, 4]
        helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "Wf"], ["y"], name="fc", transB=1),  # [1, 64] x [64, 20]
    ]
    loaded = build(nodes, {"x": (1, 2, 6, 6)}, ["y"], {"Wc": w(4, 2, 3, 3), "Wf": w(20, 64)})
    conv_macs, fc_macs = 4 * 4 * 4 * (2 * 3 * 3), 20 * 64
    result = quantize_model(loaded, UniformTable(), QuantPlan(exclude=frozenset({"fc"})))
    coverage = result.coverage
    assert (coverage.int8_macs, coverage.total_macs) == (conv_macs, conv_macs + fc_macs)
    assert coverage.int8_mac_share == pytest.approx(conv_macs / (conv_macs + fc_macs))
    assert (coverage.quantized, coverage.quantizable) == (1, 2)
    assert [(e.layer, e.op, e.reason) for e in coverage.not_covered] == [
        ("fc", "Gemm", "excluded by the plan")
    ]


def test_recurrent_layers_are_reported_as_float_with_what_tensorrt_does() -> None:
    hidden, features = 16, 8
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R"], ["seq", "h"], name="lstm", hidden_size=hidden),
        helper.make_node("Squeeze", ["h", "axes"], ["hs"], name="squeeze"),
        helper.make_node("Gemm", ["hs", "Wf"], ["y"], name="fc", transB=1),
    ]
    inits = {
        "W": w(1, 4 * hidden, features),
        "R": w(1, 4 * hidden, hidden),
        "axes": np.array([0]),
        "Wf": w(16, hidden),
    }
    loaded = build(nodes, {"x": (5, 1, features)}, ["y"], inits)
    coverage = quantize_model(loaded, UniformTable(), QuantPlan()).coverage
    assert [(e.layer, e.op, e.reason) for e in coverage.not_covered] == [("lstm", "LSTM", RECURRENT_REASON)]
    assert "runs in FP32/FP16" in RECURRENT_REASON
    lstm_macs = 5 * 1 * 4 * hidden * (features + hidden)
    assert coverage.total_macs == lstm_macs + 16 * hidden
    assert coverage.quantized == 1 and coverage.quantizable == 2


def test_layers_inside_control_flow_subgraphs_are_reported() -> None:
    then_graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["t"], name="inner_mm")],
        "then",
        [],
        [helper.make_tensor_value_info("t", FLOAT, [4, 16])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"], name="inner_id")],
        "else",
        [],
        [helper.make_tensor_value_info("e", FLOAT, [4, 16])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"], name="outer_mm"),
        helper.make_node(
            "If", ["cond"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "test",
        [
            helper.make_tensor_value_info("x", FLOAT, [4, 16]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("y", FLOAT, [4, 16]),
            helper.make_tensor_value_info("m", FLOAT, [4, 16]),
        ],
        [numpy_helper.from_array(w(16, 16), "W")],
    )
    loaded = prepare_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    coverage = quantize_model(loaded, UniformTable(), QuantPlan()).coverage
    assert [(e.layer, e.op) for e in coverage.not_covered] == [("branch/then_branch/inner_mm", "MatMul")]
    assert "inside the then_branch subgraph of If 'branch'" in coverage.not_covered[0].reason


def test_float16_below_opset_19_is_reported_as_not_covered() -> None:
    loaded = build(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        {"x": (4, 16)},
        ["y"],
        {"W": w(16, 16).astype(np.float16)},
        elem_type=TensorProto.FLOAT16,
    )
    coverage = quantize_model(loaded, UniformTable(), QuantPlan()).coverage
    assert coverage.quantized == 0
    assert "float16" in coverage.not_covered[0].reason and "19" in coverage.not_covered[0].reason


def test_minimal_coverage_names_what_the_tensorrt_profile_would_quantize() -> None:
    coverage = quantize_model(squeeze_excite(), UniformTable(), QuantPlan()).coverage
    reasons = {e.layer: e.reason for e in coverage.not_covered}
    assert set(reasons) == {"se_mul", "squeeze"}  # the pool feeds the quantized excite Conv
    assert (
        "the minimal placement does not quantize this Mul; the tensorrt placement does" in reasons["se_mul"]
    )


def test_coverage_is_a_plain_frozen_record() -> None:
    coverage = Coverage.of("minimal", 3, 30, 40, ())
    assert (coverage.quantizable, coverage.int8_mac_share) == (3, 0.75)
    assert coverage.as_dict()["int8_mac_share"] == 0.75
    assert coverage.summary() == "3 of 3 layers in INT8 (75.0 % of MACs, minimal placement)"
    with pytest.raises(AttributeError):
        coverage.quantized = 4  # type: ignore[misc]


# ---- the example models end to end -------------------------------------------------------------------


@pytest.mark.parametrize("model", ["digits_vit.onnx", "digits_mobilenet.onnx"])
def test_example_models_pass_the_default_budget_with_both_placements(model: str) -> None:
    from example_files import CALIB, EVAL, LABELS

    from pytest_int8gate.backends import get_backend
    from pytest_int8gate.calibrate import calibrate
    from pytest_int8gate.data import load_dataset, load_labels
    from pytest_int8gate.evaluate import compare
    from pytest_int8gate.gate import Budget, judge
    from pytest_int8gate.pipeline import GatePipeline, GateSpec

    verdict = GatePipeline(
        GateSpec(model=EXAMPLE / "models" / model, calib_data=CALIB, eval_data=EVAL, labels=str(LABELS))
    ).run()
    assert verdict.passed, verdict
    assert verdict.quantized_layers == verdict.total_layers  # minimal: every layer in INT8

    loaded = load_model(EXAMPLE / "models" / model)
    calib = load_dataset(CALIB, loaded.info, role="calibration")
    evaluation = load_dataset(EVAL, loaded.info, role="evaluation")
    labels = load_labels(LABELS, evaluation.num_samples, classes=10)
    table, _ = calibrate(
        loaded.proto,
        activation_tensors(loaded, "tensorrt"),
        calib.batches(200),
        model_hash=loaded.info.model_hash,
        data_fingerprint=calib.fingerprint,
    )
    backend = get_backend("onnxruntime", batch_size=200)
    quantized = quantize_model(loaded, table, QuantPlan(placement="tensorrt"))
    comparison = compare(
        backend.fp32_runner(loaded.proto),
        backend.int8_runner(quantized.proto),
        evaluation,
        batch_size=200,
        labels=labels,
    )
    results = judge(Budget(), comparison)  # none configured: the defaults of each output's kind
    assert all(r.passed for r in results), results
    assert quantized.coverage.int8_mac_share > 0.95


def test_resize_after_a_residual_add_fused_into_its_conv_is_quantized() -> None:
    nodes = [
        conv("conv_a", "x", "a", "Wa"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        conv("conv_b", "r", "b", "Wb"),
        helper.make_node("Add", ["r", "b"], ["s"], name="add"),  # fused into conv_b; r gets the pair
        helper.make_node("Resize", ["s", "", "scales"], ["y"], name="upsample", mode="nearest"),
    ]
    inits = {"Wa": w(8, 8, 3, 3), "Wb": w(8, 8, 3, 3), "scales": np.array([1, 1, 2, 2], dtype=np.float32)}
    placement = place(build(nodes, {"x": (1, 8, 4, 4)}, ["y"], inits).proto.graph, "tensorrt")
    assert slots(placement, "add") == ("r",)
    assert slots(placement, "upsample") == ("s",)


def test_tensorrt_lets_every_other_reader_of_a_quantized_tensor_share_its_pair() -> None:
    # hard-swish after a Conv, as exporters write it: c * clip(c + 3, 0, 6) / 6
    nodes = [
        conv("conv", "x", "c", "Wc"),
        helper.make_node("Add", ["c", "three"], ["c3"], name="hs_add"),
        helper.make_node("Clip", ["c3", "zero", "six"], ["cl"], name="hs_clip"),
        helper.make_node("Div", ["cl", "six"], ["hs"], name="hs_div"),
        helper.make_node("Mul", ["c", "hs"], ["m"], name="hs_mul"),
        conv("out", "m", "y", "Wo"),
    ]
    scalars = {name: np.float32(v) for name, v in (("three", 3.0), ("zero", 0.0), ("six", 6.0))}
    loaded = build(nodes, {"x": (1, 8, 4, 4)}, ["y"], {"Wc": w(8, 8, 3, 3), "Wo": w(8, 8, 3, 3), **scalars})
    trt = quantize_model(loaded, UniformTable(), QuantPlan(placement="tensorrt"))
    assert set(trt.quantized_layers) == {"conv", "hs_mul", "out"}
    readers = {n.name: n.input[0] for n in trt.proto.graph.node if n.name in ("hs_add", "hs_mul")}
    assert readers["hs_add"] == readers["hs_mul"] == "c_dequantized"  # one pair, read by the Add too
    minimal = quantize_model(loaded, UniformTable(), QuantPlan(placement="minimal"))
    assert {n.name: n.input[0] for n in minimal.proto.graph.node}["hs_add"] == "c"


def qdq_edges(model: onnx.ModelProto) -> set[tuple[str, int, str]]:
    """(reader, input index, float tensor) for every activation input that reads a DequantizeLinear."""
    producers = {out: node for node in model.graph.node for out in node.output}
    edges = set()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for index, tensor in enumerate(node.input):
            dq = producers.get(tensor)
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                edges.add((node.name, index, q.input[0]))
    return edges


def test_tensorrt_placement_of_the_mobilenet_is_modelopts() -> None:
    # Recorded from NVIDIA ModelOpt 0.47.0 (modelopt.onnx.quantization.quantize, int8, max) on this model:
    # the activation inputs that read a DequantizeLinear (docs/placement.md, "Checked against ModelOpt").
    modelopt = {
        ("stem/Conv", 0, "input"),
        ("dw1/Conv", 0, "stem/Clip_output"),
        ("pw1/Conv", 0, "dw1/Clip_output"),
        ("dw2/Conv", 0, "pw1/Clip_output"),
        ("pw2/Conv", 0, "dw2/Clip_output"),
        ("expand/Conv", 0, "pw2/Clip_output"),
        ("residual/Add", 0, "pw2/Clip_output"),
        ("dw3/Conv", 0, "expand/Clip_output"),
        ("project/Conv", 0, "dw3/Clip_output"),
        ("pool/GlobalAveragePool", 0, "residual/Add_output"),
    }
    result = quantize_model(load_model(MOBILENET), UniformTable(), QuantPlan(placement="tensorrt"))
    assert qdq_edges(result.proto) == modelopt


def test_the_placement_setting_reaches_the_pipeline_and_its_verdict() -> None:
    from example_files import CALIB, EVAL, LABELS

    from pytest_int8gate.pipeline import GatePipeline, GateSpec

    spec = GateSpec(
        model=MOBILENET,
        calib_data=CALIB,
        eval_data=EVAL,
        labels=str(LABELS),
        placement="tensorrt",
        bisect=False,
    )
    pipeline = GatePipeline(spec)
    verdict = pipeline.run()
    assert verdict.passed
    assert (verdict.quantized_layers, verdict.total_layers) == (10, 11)  # + the Add and the pool; head float
    assert any(note.startswith("head/Gemm not quantized: N=10 below 16") for note in verdict.notes)
    coverage = pipeline.quantized().coverage
    assert coverage.placement == "tensorrt" and coverage.quantized == 10
