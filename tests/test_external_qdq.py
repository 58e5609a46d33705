"""A Q/DQ model made elsewhere: reading it (external_qdq.py) and gating it through real pytest runs.

The Q/DQ models are made here from the example digits CNN by ONNX Runtime's ``quantize_static`` (symmetric
and asymmetric activations, per-channel weights), by this project's own quantizer, and as a QAT-style export
(float weights through fake-quantize pairs). Each broken model (one layer's input scale corrupted) has a
benign twin that must pass.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from example_files import CALIB, DATA_ARGS, DIGITS, EVAL, LABELS
from onnx import TensorProto, helper, numpy_helper
from qdq_models import CONV2, CONV2_INPUT, fake_quantized, ort_static, own, with_scale_scaled

from pytest_int8gate.budget import Budget
from pytest_int8gate.errors import CoverageError, ModelError
from pytest_int8gate.external_qdq import (
    anchored_pattern,
    contains_qdq,
    derive_fp32,
    nodes_to_exclude_argument,
    read_given_qdq,
)
from pytest_int8gate.graph import add_graph_outputs, load_model, prepare_model
from pytest_int8gate.pipeline import GatePipeline, GateSpec

LAYERS = ("/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/fc1/Gemm", "/fc2/Gemm")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every Q/DQ model of these tests, made once."""
    folder = tmp_path_factory.mktemp("qdq")
    models = {
        "ort_symmetric": ort_static(folder / "ort_symmetric.onnx"),
        "ort_asymmetric": ort_static(folder / "ort_asymmetric.onnx", symmetric=False),
        "own": own(folder / "own.onnx"),
    }
    models["qat"] = fake_quantized(models["own"], folder / "qat.onnx")
    for name in ("ort_symmetric", "ort_asymmetric", "own", "qat"):
        models[f"{name}_broken"] = with_scale_scaled(
            models[name], folder / f"{name}_broken.onnx", CONV2_INPUT, 0.05
        )
    return models


def _images(count: int = 64) -> np.ndarray:
    with np.load(EVAL) as data:
        return np.asarray(data[next(iter(data.keys()))][:count])


def _run(model: onnx.ModelProto) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result = session.run(None, {session.get_inputs()[0].name: _images()})[0]
    return np.asarray(result)


# ---- reading a given model ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ort_symmetric", "ort_asymmetric", "own", "qat"])
def test_every_layer_of_a_made_model_is_int8_and_its_derived_fp32_model_is_the_float_graph(
    made: dict[str, Path], kind: str
) -> None:
    given = read_given_qdq(load_model(made[kind]), load_model(DIGITS))

    assert given.int8_layers == LAYERS
    assert given.coverage(given.int8_layers, {}).int8_mac_share == 1.0
    derived = given.fp32.proto
    assert not contains_qdq(derived)
    assert tuple(n.name for n in derived.graph.node if n.op_type in ("Conv", "Gemm")) == LAYERS
    fp32, from_derived = _run(load_model(DIGITS).proto), _run(derived)
    # the derived model carries the dequantized weights: close to the FP32 model, not equal to it
    assert np.abs(fp32 - from_derived).max() < 0.05 * np.abs(fp32).max()
    assert np.abs(fp32 - from_derived).max() > 0


def test_removing_every_layers_pairs_of_this_projects_model_gives_its_fp32_model(
    made: dict[str, Path],
) -> None:
    given = read_given_qdq(load_model(made["own"]), load_model(DIGITS))

    floated, quantized, reasons = given.keeping(set())

    assert quantized == () and set(reasons) == set(LAYERS)
    assert not contains_qdq(floated)  # this project places pairs on layer inputs only
    np.testing.assert_allclose(_run(floated), _run(load_model(DIGITS).proto), rtol=1e-5, atol=1e-5)


def test_a_layer_kept_in_float_reads_the_float_tensor_and_the_others_keep_their_pairs(
    made: dict[str, Path],
) -> None:
    given = read_given_qdq(load_model(made["ort_symmetric"]), load_model(DIGITS))

    proto, quantized, reasons = given.keeping(set(LAYERS) - {CONV2})

    assert quantized == tuple(name for name in LAYERS if name != CONV2) and reasons == {
        CONV2: "its Q/DQ removed by the plan"
    }
    conv2 = next(node for node in proto.graph.node if node.name == CONV2)
    producers = {out: node for node in proto.graph.node for out in node.output}
    assert conv2.input[0] == CONV2_INPUT
    assert all(
        producers.get(name) is None or producers[name].op_type != "DequantizeLinear" for name in conv2.input
    )
    conv3 = next(node for node in proto.graph.node if node.name == "/conv3/Conv")
    assert producers[conv3.input[0]].op_type == "DequantizeLinear"


def test_a_layer_owns_the_quantized_nodes_after_it_and_floating_it_removes_their_pairs(
    made: dict[str, Path],
) -> None:
    given = read_given_qdq(load_model(made["ort_symmetric"]), load_model(DIGITS))

    proto, _, _ = given.keeping(set(LAYERS) - {CONV2})

    # ONNX Runtime quantizes the inputs of Relu and MaxPool too: conv2 owns those up to conv3
    assert given.regions[CONV2] == ("/relu2/Relu", "/pool/MaxPool")
    producers = {out: node for node in proto.graph.node for out in node.output}
    for name in ("/relu2/Relu", "/pool/MaxPool"):
        node = next(n for n in proto.graph.node if n.name == name)
        assert producers[node.input[0]].op_type != "DequantizeLinear", name
    assert given.fix_note([CONV2]).count("'^") == 3


def test_a_corrupted_pair_inside_a_layers_region_is_found_at_that_layer(
    made: dict[str, Path], tmp_path: Path
) -> None:
    broken = with_scale_scaled(made["ort_symmetric"], tmp_path / "broken.onnx", "/relu2/Relu_output_0", 0.02)
    spec = GateSpec(
        model=DIGITS,
        qdq_model=broken,
        calib_data=str(CALIB),
        eval_data=str(EVAL),
        labels=str(LABELS),
        budget=Budget.from_mapping({"top1_drop": 0.01}),
        bisect_subset=100,
    )
    benign = replace(spec, qdq_model=made["ort_symmetric"])

    with GatePipeline(spec) as pipeline:
        verdict = pipeline.run()
    with GatePipeline(benign) as pipeline:
        assert pipeline.run().passed

    assert not verdict.passed and verdict.bisection is not None
    assert [o.name for o in verdict.bisection.offenders] == [CONV2]
    assert verdict.bisection.fix is not None and verdict.bisection.fix.passed
    assert any("/pool/MaxPool" in note and "'^/conv2/Conv$'" in note for note in verdict.notes)


def test_a_batchnorm_model_keeps_its_batchnorms_in_the_derived_model_and_the_search_names_the_layer(
    tmp_path: Path,
) -> None:
    mobilenet = DIGITS.with_name("digits_mobilenet.onnx")
    qdq = ort_static(tmp_path / "mobilenet_qdq.onnx", model=mobilenet)
    given = read_given_qdq(load_model(qdq), load_model(mobilenet))
    assert any(node.op_type == "BatchNormalization" for node in given.fp32.proto.graph.node)
    producers = {out: node for node in onnx.load(qdq).graph.node for out in node.output}
    target = given.int8_layers[2]
    conv = next(node for node in onnx.load(qdq).graph.node if node.name == target)
    pair_input = producers[producers[conv.input[0]].input[0]].input[0]
    broken = with_scale_scaled(qdq, tmp_path / "mobilenet_broken.onnx", pair_input, 0.02)
    spec = GateSpec(
        model=mobilenet,
        qdq_model=broken,
        calib_data=str(CALIB),
        eval_data=str(EVAL),
        labels=str(LABELS),
        budget=Budget.from_mapping({"top1_drop": 0.02}),
        bisect_subset=100,
    )

    with GatePipeline(replace(spec, qdq_model=qdq)) as pipeline:
        assert pipeline.run().passed
    with GatePipeline(spec) as pipeline:
        verdict = pipeline.run()

    assert not verdict.passed and verdict.bisection is not None
    assert target in [o.name for o in verdict.bisection.offenders]


def test_a_qoperator_model_is_refused_in_one_sentence(tmp_path: Path) -> None:
    qoperator = load_model(ort_static(tmp_path / "qop.onnx", qoperator=True))

    with pytest.raises(
        ModelError, match=r"QLinearConv, a QOperator-format quantized op; only QDQ-format"
    ) as info:
        read_given_qdq(qoperator, None)
    assert "\n" not in str(info.value)


def test_a_float_model_given_as_the_qdq_model_fails_closed() -> None:
    with pytest.raises(CoverageError, match=r"holds no QuantizeLinear/DequantizeLinear node.*nothing"):
        read_given_qdq(load_model(DIGITS), load_model(DIGITS))


def test_inputs_and_outputs_that_differ_from_the_fp32_model_are_named(
    made: dict[str, Path], tmp_path: Path
) -> None:
    renamed = onnx.load(DIGITS)
    renamed.graph.output[0].name = "scores"
    renamed.graph.node[-1].output[0] = "scores"
    onnx.save(renamed, tmp_path / "renamed.onnx")
    wider = onnx.load(DIGITS)
    wider.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 16
    onnx.save(wider, tmp_path / "wider.onnx")

    with pytest.raises(ModelError, match=r"output 'logits' of the Q/DQ model is not an output of the FP32"):
        read_given_qdq(load_model(made["own"]), load_model(tmp_path / "renamed.onnx"))
    with pytest.raises(
        ModelError,
        match=r"input .input. is float32 \[batch, 1, 8, 8\] in the Q/DQ model but float32 "
        r"\[batch, 1, 16, 8\] in the FP32",
    ):
        read_given_qdq(load_model(made["own"]), load_model(tmp_path / "wider.onnx"))


def test_a_dequantize_reading_an_activation_without_its_quantize_is_refused() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["x", "s"], ["y"], name="orphan_dq"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT8, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    with pytest.raises(ModelError, match="DequantizeLinear 'orphan_dq' reads 'x', which is neither"):
        derive_fp32(model, "orphan.onnx")


def test_int8_weights_with_a_dequantize_become_their_dequantized_float_values() -> None:
    weights = np.array([[10, -20], [127, -127]], np.int8)
    scale = np.array([0.5, 0.25], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "xs"], ["xq"], name="q"),
            helper.make_node("DequantizeLinear", ["xq", "xs"], ["xd"], name="dq"),
            helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=1),
            helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [
            numpy_helper.from_array(np.array(0.01, np.float32), "xs"),
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(scale, "ws"),
            numpy_helper.from_array(np.zeros(2, np.int8), "wz"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    derived = derive_fp32(model, "tiny.onnx")

    assert [n.op_type for n in derived.graph.node] == ["MatMul"]
    (weight,) = [numpy_helper.to_array(i) for i in derived.graph.initializer]
    np.testing.assert_array_equal(weight, weights.astype(np.float32) * scale[None, :])
    x = np.array([[1.0, 2.0]], np.float32)
    np.testing.assert_allclose(_run_feeds(derived, {"x": x}), x @ weight, rtol=1e-6)
    given = read_given_qdq(prepare_model(model, source="tiny.onnx"), None)
    assert given.int8_layers == ("mm",) and given.derived_reference


def _run_feeds(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


def test_an_exposed_tensor_added_after_preparation_keeps_its_float16_type() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16, name="to_half"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT, name="to_float"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    exposed = add_graph_outputs(model, ["r"])  # "r" has no value info: a twin added to a prepared model

    assert [o.type.tensor_type.elem_type for o in exposed.graph.output] == [
        TensorProto.FLOAT,
        TensorProto.FLOAT16,
    ]
    x = np.array([-1.0, 2.0], np.float32)
    np.testing.assert_array_equal(_run_feeds_all(exposed, {"x": x})[1], np.array([0.0, 2.0], np.float16))


def _run_feeds_all(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(output) for output in session.run(None, feeds)]


def test_the_nodes_to_exclude_patterns_match_exactly_the_named_nodes() -> None:
    names = ["p2o.MatMul.2", "p2o.MatMul.20", "p2o.MatMul.22", "p2o.MatMul.24", "p2oXMatMul.2", "a/b[0]+(c)*"]
    chosen = ["p2o.MatMul.2", "a/b[0]+(c)*"]

    patterns = [anchored_pattern(name) for name in chosen]

    assert anchored_pattern("p2o.MatMul.2") == r"^p2o\.MatMul\.2$"
    for pattern in patterns:  # ModelOpt matches with re; search finds what match and fullmatch find
        assert [n for n in names if re.search(pattern, n)] == [chosen[patterns.index(pattern)]]
    assert [n for n in names if any(re.search(p, n) for p in patterns)] == chosen
    assert nodes_to_exclude_argument(chosen) == r"'^p2o\.MatMul\.2$' '^a/b\[0\]\+\(c\)\*$'"


# ---- gating a given model through pytest -------------------------------------------------------------------

GATE_ARGS = (*DATA_ARGS, "--int8-budget", "top1_drop=0.01", "--int8-bisect-subset", "100")


def _copy(project: pytest.Pytester, made: dict[str, Path], *names: str) -> None:
    for name in names:
        shutil.copy(made[name], project.path / f"{name}.onnx")


@pytest.mark.parametrize("kind", ["ort_symmetric", "ort_asymmetric", "own", "qat"])
def test_a_given_qdq_model_passes_and_its_corrupted_twin_fails_naming_the_exact_node(
    project: pytest.Pytester, made: dict[str, Path], kind: str
) -> None:
    _copy(project, made, kind, f"{kind}_broken")

    benign = project.runpytest(
        "--int8-model", "digits_cnn.onnx", "--int8-qdq-model", f"{kind}.onnx", *GATE_ARGS
    )
    broken = project.runpytest(
        "--int8-model", "digits_cnn.onnx", "--int8-qdq-model", f"{kind}_broken.onnx", *GATE_ARGS
    )

    benign.assert_outcomes(passed=1)
    broken.assert_outcomes(failed=1)
    broken.stdout.fnmatch_lines(
        [
            "*INT8 gate failed: digits_cnn.onnx*given Q/DQ model, no calibration*5 of 5 quantizable layers*",
            f"* 1  {CONV2} *Conv*keep in float",
            f"Verified fix*exclude ?{CONV2}?*PASS",
            f"*remove the Q/DQ on the inputs of these nodes (and on their outputs, *): {CONV2}*; "
            f"with NVIDIA ModelOpt, quantize again with --nodes_to_exclude '^{CONV2}$'*",
        ]
    )
    assert "FP32 reference derived" not in broken.stdout.str()


def test_a_qdq_model_given_alone_is_gated_against_the_fp32_model_derived_from_it(
    project: pytest.Pytester, made: dict[str, Path]
) -> None:
    _copy(project, made, "ort_symmetric", "ort_symmetric_broken")

    benign = project.runpytest("--int8-model", "ort_symmetric.onnx", *GATE_ARGS)
    broken = project.runpytest("--int8-model", "ort_symmetric_broken.onnx", *GATE_ARGS)

    benign.assert_outcomes(passed=1)
    broken.assert_outcomes(failed=1)
    broken.stdout.fnmatch_lines(
        [
            "*given Q/DQ model, no calibration; FP32 reference derived from the Q/DQ model: it carries the "
            "dequantized weights*",
            f"Verified fix*exclude ?{CONV2}?*PASS",
        ]
    )


def test_the_fixture_and_the_manifest_gate_a_given_qdq_model(
    project: pytest.Pytester, made: dict[str, Path]
) -> None:
    _copy(project, made, "own", "own_broken")
    project.makeconftest(
        """
        import pytest

        @pytest.fixture
        def int8_model():
            return "digits_cnn.onnx"
        """
    )
    project.makepyfile(
        test_given="""
        import pytest

        @pytest.mark.int8_budget(top1_drop=0.01)
        def test_shipped(int8_gate):
            int8_gate.check("digits_cnn.onnx", qdq_model="own.onnx")

        @pytest.mark.int8_budget(top1_drop=0.01)
        def test_broken(int8_gate):
            verdict = int8_gate.check("digits_cnn.onnx", qdq_model="own_broken.onnx", raise_on_failure=False)
            assert not verdict.passed
            assert [o.name for o in verdict.bisection.offenders] == ["/conv2/Conv"]
        """
    )
    project.makefile(
        ".yaml",
        int8gate="""
        models:
          - model: digits_cnn.onnx
            qdq_model: own_broken.onnx
            calib_data: calib.npz
            eval_data: eval.npz
            labels: eval_labels.npy
            budget: {top1_drop: 0.01}
            exclude: ["/conv2/Conv"]
        """,
    )

    result = project.runpytest(*DATA_ARGS)

    result.assert_outcomes(passed=3)  # the manifest's exclude removes the broken layer's pairs: it passes


def test_a_float_model_given_as_the_qdq_model_is_an_error_not_a_pass(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--int8-model", "digits_cnn.onnx", "--int8-qdq-model", "digits_cnn.onnx", *GATE_ARGS
    )

    assert result.ret != 0
    result.stdout.fnmatch_lines(["*holds no QuantizeLinear/DequantizeLinear node*measure nothing*"])
    assert "passed" not in result.stdout.lines[-1]


# ---- the README's section runs as written ------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_blocks(heading: str) -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    section = text[start : text.index("\n### ", start + 1)]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


def test_the_readme_section_on_a_qdq_model_made_elsewhere_runs(
    empty_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = empty_project.path
    for folder, files in (("models", (DIGITS,)), ("data", (CALIB, EVAL, LABELS))):
        (root / folder).mkdir()
        for source in files:
            shutil.copy(source, root / folder / source.name)
    monkeypatch.chdir(root)
    blocks = _readme_blocks("### Gating a Q/DQ model you made elsewhere")
    (python,) = [code for language, code in blocks if language == "python"]
    commands = [line for language, code in blocks if language == "bash" for line in code.splitlines() if line]

    exec(compile(python, str(README), "exec"), {"__name__": "readme"})

    assert contains_qdq(onnx.load(root / "digits_cnn.qdq.onnx"))
    assert len(commands) == 2
    for command in commands:
        program, *args = shlex.split(command)
        assert program == "pytest"
        empty_project.runpytest(*args).assert_outcomes(passed=1)
