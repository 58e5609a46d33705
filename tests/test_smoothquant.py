"""SmoothQuant: the rewrite keeps the FP32 function (folded into a LayerNorm, into a producing MatMul, or
as an inserted Mul), refuses what it cannot do with a reason, repairs a planted activation-outlier MatMul
as a rung of the repair ladder while the layer stays INT8 (and its benign twin passes untouched), and is
reachable from the manifest and ``int8gate smoothquant``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from outlier_matmuls import outlier_data, outlier_model

from pytest_int8gate.cli import main
from pytest_int8gate.data import load_dataset
from pytest_int8gate.equalize import fp32_difference
from pytest_int8gate.errors import ModelError
from pytest_int8gate.graph import load_model, prepare_model
from pytest_int8gate.pipeline import GatePipeline, GateSpec
from pytest_int8gate.report.codec import encode_fix
from pytest_int8gate.report.decode import decode_fix
from pytest_int8gate.results import RepairAction
from pytest_int8gate.smoothquant import (
    SmoothRefusal,
    SmoothTarget,
    smoothed_model,
    smoothing_scales,
    smoothquant_targets,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sq")
    for producer in ("layernorm", "matmul", "input"):
        outlier_model(root / f"{producer}.onnx", producer=producer)
    outlier_model(root / "benign.onnx", producer="layernorm", outlier=1.0)
    outlier_data(root / "calib.npz", 256, seed=1)
    outlier_data(root / "eval.npz", 256, seed=2)
    return root


def test_scales_follow_the_paper_and_leave_empty_channels_alone() -> None:
    act, weight = np.array([4.0, 100.0, 0.0]), np.array([1.0, 0.25, 2.0])
    scales = smoothing_scales(act, weight, 0.5)
    np.testing.assert_allclose(scales, [2.0, np.sqrt(100.0) / np.sqrt(0.25), 1.0])
    np.testing.assert_allclose(smoothing_scales(act, weight, 0.75)[:2], act[:2] ** 0.75 / weight[:2] ** 0.25)


@pytest.mark.parametrize(
    ("producer", "fold"), [("layernorm", "layernorm"), ("matmul", "matmul"), ("input", "mul")]
)
@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75])
def test_the_fp32_function_is_kept_wherever_1_over_s_goes(
    files: Path, producer: str, fold: str, alpha: float
) -> None:
    loaded = load_model(files / f"{producer}.onnx")
    data = load_dataset(files / "calib.npz", loaded.info)

    smoothed, report = smoothed_model(loaded, {"/fc1/MatMul": alpha}, data.batches(64))
    difference = fp32_difference(loaded.proto, smoothed.proto, data.batches(64))

    (layer,) = report.layers
    assert layer.target.fold == fold and layer.alpha == alpha
    assert layer.spread_before > 50 and layer.spread_after < 2  # the outlier channels are gone
    assert difference.relative < 1e-5, difference
    onnx.checker.check_model(smoothed.proto)
    ops = [node.op_type for node in smoothed.proto.graph.node]
    assert ops.count("Mul") == (2 if fold == "mul" else ops.count("Mul"))  # the inserted Mul, only then


def _one_node_model(
    node: onnx.NodeProto, inits: list[onnx.TensorProto], inputs: list[str]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4]) for name in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "M"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("node", "inputs", "reason"),
    [
        (helper.make_node("MatMul", ["a", "b"], ["y"], name="qk"), ["a", "b"], "activation x activation"),
        (
            helper.make_node("Gemm", ["a", "w"], ["y"], name="g", transA=1),
            ["a"],
            "Gemm with transA",
        ),
    ],
)
def test_what_it_cannot_smooth_is_refused_with_a_reason(
    node: onnx.NodeProto, inputs: list[str], reason: str
) -> None:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    loaded = prepare_model(_one_node_model(node, [w], inputs))
    entry = smoothquant_targets(loaded)[node.name]
    assert isinstance(entry, SmoothRefusal) and reason in entry.reason
    with pytest.raises(ModelError, match=reason):
        smoothed_model(loaded, {node.name: 0.5}, [])


def test_gemm_with_trans_b_smooths_the_weights_columns() -> None:
    node = helper.make_node("Gemm", ["a", "w"], ["y"], name="g", transB=1)
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "w")
    entry = smoothquant_targets(prepare_model(_one_node_model(node, [w], ["a"])))["g"]
    assert isinstance(entry, SmoothTarget) and entry.weight_axis == 1 and entry.channels == 4


def _gate(files: Path, model: str, **fields: object):  # type: ignore[no-untyped-def]
    spec = GateSpec(
        model=files / model,
        calib_data=str(files / "calib.npz"),
        eval_data=str(files / "eval.npz"),
        min_calib_samples=0,
        **fields,  # type: ignore[arg-type]
    )
    with GatePipeline(spec) as pipeline:
        return pipeline.run()


def test_the_ladder_repairs_a_planted_outlier_matmul_and_keeps_it_int8(files: Path) -> None:
    verdict = _gate(files, "layernorm.onnx", repairs=("smoothquant",))

    assert not verdict.passed  # the gate's own plan fails; the search finds the repair
    assert verdict.bisection is not None and verdict.bisection.fix is not None
    (offender,) = verdict.bisection.offenders
    fix = verdict.bisection.fix
    assert offender.name == "/fc1/MatMul" and offender.action is RepairAction.SMOOTHQUANT
    assert fix.passed and fix.exclude == () and set(fix.smoothquant) == {"/fc1/MatMul"}
    assert f'smoothquant:\n  "/fc1/MatMul": {fix.smoothquant["/fc1/MatMul"]:g}' in fix.manifest_snippet()
    before = {r.name: r.observed for r in verdict.results}
    after = {r.name: r.observed for r in fix.results}
    assert after["top1_agreement"] > before["top1_agreement"] + 0.1 and after["cosine"] > before["cosine"]
    assert decode_fix(encode_fix(fix)).smoothquant == fix.smoothquant

    # the snippet applied: the layer stays INT8 and the gate passes; the verdict says what to deploy
    applied = _gate(files, "layernorm.onnx", smoothquant=dict(fix.smoothquant))
    assert applied.passed and applied.quantized_layers == verdict.quantized_layers == 2
    assert any(note.startswith("FP32 model smoothed (SmoothQuant: /fc1/MatMul") for note in applied.notes)


def test_an_outlier_no_layer_produces_stays_int8_behind_an_inserted_mul(files: Path) -> None:
    """The outlier arrives in the model's input: nothing to fold into or equalize with; the default ladder
    climbs past the calibrators, equalization and bias correction to SmoothQuant."""
    verdict = _gate(files, "input.onnx")

    assert verdict.bisection is not None and verdict.bisection.fix is not None
    (offender,) = verdict.bisection.offenders
    assert offender.action is RepairAction.SMOOTHQUANT and verdict.bisection.fix.passed
    assert any("equalization not possible" in attempt for attempt in offender.attempts)


def test_the_benign_twin_passes_without_a_search(files: Path) -> None:
    verdict = _gate(files, "benign.onnx", repairs=("smoothquant",))
    assert verdict.passed and verdict.bisection is None


def test_a_smoothquant_layer_the_model_lacks_is_one_sentence(files: Path) -> None:
    with pytest.raises(ModelError, match=r"plan smoothquant names layer '/fc9/MatMul'"):
        _gate(files, "layernorm.onnx", smoothquant={"/fc9/MatMul": 0.5})


def test_the_command_line_writes_the_best_alpha(
    files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sq.onnx"
    argv = [
        "smoothquant",
        str(files / "layernorm.onnx"),
        "--data",
        str(files / "calib.npz"),
        "--out",
        str(out),
    ]
    assert main([*argv, "--eval-data", str(files / "eval.npz"), "--layers", "/fc1/MatMul"]) == 0
    text = capsys.readouterr().out
    assert "without SmoothQuant  top1_agreement" in text and "FAIL" in text.splitlines()[1]
    assert "1/s folded into /ln/LayerNorm's gamma and beta" in text and out.is_file()
    assert main([*argv, "--alpha", "1.5"]) == 2
    assert main([*argv, "--layers", "/fc9/MatMul"]) == 2
    assert "'/fc9/MatMul' is not a MatMul or Gemm layer" in capsys.readouterr().err
