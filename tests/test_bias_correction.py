"""Tests for pytest_int8gate.bias_correction: empirical bias correction of a Q/DQ model.

The case built for it: a Gemm whose rows each hold one weight of magnitude 1 and 63 small positive
weights below half a quantization step (1/127 / 2). Per-channel weight quantization rounds every small
weight to 0, so each output loses ``sum(small weights) * E[x]``, about 0.07, with inputs in [0, 1]:
a systematic shift that correction removes, and noise that it cannot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from planted import positive_inputs, rounded_away

from pytest_int8gate.backends.onnxruntime import OrtRunner
from pytest_int8gate.bias_correction import correct_biases
from pytest_int8gate.bisect import BisectionReport
from pytest_int8gate.calibrate import calibrate
from pytest_int8gate.errors import ModelError
from pytest_int8gate.gate import Budget
from pytest_int8gate.graph import LoadedModel, prepare_model
from pytest_int8gate.pipeline import GatePipeline, GateSpec
from pytest_int8gate.quantize import QuantizedModel, QuantPlan, activation_tensors, quantize_model

FLOAT = TensorProto.FLOAT
FEATURES, OUTPUTS = 64, 16


def model_of(
    nodes: Sequence[onnx.NodeProto], initializers: Mapping[str, np.ndarray], output: str
) -> LoadedModel:
    graph = helper.make_graph(
        list(nodes),
        "bias_test",
        [helper.make_tensor_value_info("x", FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info(output, FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in initializers.items()],
    )
    return prepare_model(
        onnx.shape_inference.infer_shapes(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        )
    )


def single_gemm(seed: int = 0) -> LoadedModel:
    dense = rounded_away(OUTPUTS, FEATURES, seed=seed)
    init = {"w": dense.weight, "b": dense.bias}
    return model_of([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)], init, "y")


def uniform_feeds(samples: int, seed: int) -> dict[str, np.ndarray]:
    return positive_inputs(samples, FEATURES, seed=seed)


def quantized(loaded: LoadedModel, feeds: dict[str, np.ndarray], plan: QuantPlan) -> QuantizedModel:
    table, _ = calibrate(
        loaded.proto, activation_tensors(loaded), [feeds], model_hash="m", data_fingerprint="d"
    )
    return quantize_model(loaded, table, plan)


def output_error(
    fp32: onnx.ModelProto, int8: onnx.ModelProto, feeds: dict[str, np.ndarray]
) -> tuple[float, float]:
    """(mean over channels of |mean error|, RMS error) of the first output, INT8 simulated."""
    reference = OrtRunner(fp32, precision="fp32", optimize=True).run(feeds)
    name = next(iter(reference))
    error = OrtRunner(int8, precision="int8", optimize=False).run(feeds)[name] - reference[name]
    return float(np.abs(error.mean(axis=0)).mean()), float(np.sqrt(np.mean(error**2)))


def test_bias_correction_removes_the_mean_output_error_it_was_built_for() -> None:
    loaded = single_gemm()
    calib, held_out = uniform_feeds(512, seed=1), uniform_feeds(512, seed=2)
    plain = quantized(loaded, calib, QuantPlan(calibrator="max")).proto
    corrected, report = correct_biases(loaded.proto, plain, ["fc"], lambda: [calib])

    (layer,) = report.layers
    assert (layer.layer, layer.bias, layer.channels, report.samples) == ("fc", "b", OUTPUTS, 512)
    assert layer.mean_error_before == pytest.approx(0.069, abs=0.005)  # measured 0.0694
    assert layer.mean_error_after < 1e-6  # on the calibration data itself: exact up to float rounding
    assert layer.max_correction == pytest.approx(0.075, abs=0.01)
    assert report.skipped == {}

    mean_before, rms_before = output_error(loaded.proto, plain, held_out)
    mean_after, rms_after = output_error(loaded.proto, corrected, held_out)
    print(
        f"held out: mean error {mean_before:.4g} -> {mean_after:.4g}, RMS {rms_before:.4g} -> {rms_after:.4g}"
    )
    assert mean_before > 0.06
    assert mean_after < mean_before / 100  # measured 0.0694 -> 0.0002
    assert rms_after < rms_before / 5  # measured 0.0697 -> 0.0058: what remains is noise, not bias

    # pure: the input model is untouched, and only the bias changed
    assert plain == quantized(loaded, calib, QuantPlan(calibrator="max")).proto
    changed = [
        a.name
        for a, b in zip(plain.graph.initializer, corrected.graph.initializer, strict=True)
        if a.SerializeToString() != b.SerializeToString()
    ]
    assert changed == ["b"]


def two_layers(seed: int = 3) -> LoadedModel:
    first = rounded_away(FEATURES, FEATURES, seed=seed)
    second = rounded_away(OUTPUTS, FEATURES, seed=seed + 1)
    # + 0.5: the ReLU between keeps most of fc1's outputs, with a positive mean
    init = {"w1": first.weight, "b1": first.bias + 0.5, "w2": second.weight, "b2": second.bias}
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    return model_of(nodes, init, "y")


def test_layers_are_corrected_in_order_so_a_passed_on_shift_is_not_corrected_twice() -> None:
    loaded = two_layers()
    calib = uniform_feeds(512, seed=4)
    plain = quantized(loaded, calib, QuantPlan(calibrator="max")).proto
    corrected, report = correct_biases(loaded.proto, plain, ["fc2", "fc1"], lambda: [calib])
    assert [layer.layer for layer in report.layers] == ["fc1", "fc2"]  # topological, not the given order
    assert all(layer.mean_error_after < 1e-5 for layer in report.layers)
    fc2 = report.layers[1]
    assert fc2.mean_error_before < report.layers[0].mean_error_before * 2  # fc1's shift no longer reaches fc2
    # correcting each layer against the uncorrected model double-counts fc1's shift at fc2
    independent = plain
    for name in ("fc1", "fc2"):
        single, _ = correct_biases(loaded.proto, plain, [name], lambda: [calib])
        bias = next(i for i in single.graph.initializer if i.name == ("b1" if name == "fc1" else "b2"))
        independent = _with_initializer(independent, bias)
    mean_sequential, _ = output_error(loaded.proto, corrected, calib)
    mean_independent, _ = output_error(loaded.proto, independent, calib)
    assert mean_sequential < 1e-5 < mean_independent


def _with_initializer(model: onnx.ModelProto, tensor: onnx.TensorProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        if init.name == tensor.name:
            init.CopyFrom(tensor)
    return copy


def test_layers_that_cannot_be_corrected_are_skipped_with_the_reason() -> None:
    rng = np.random.default_rng(5)
    init = {
        "w1": rounded_away(FEATURES, FEATURES, seed=5).weight,
        "w2": rounded_away(FEATURES, FEATURES, seed=6).weight,
        "shared": 0.1 * rng.standard_normal(FEATURES),
        "m": rng.standard_normal((FEATURES, OUTPUTS)),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "shared"], ["h1"], name="fc1", transB=1),
        helper.make_node("Gemm", ["h1", "w2", "shared"], ["h2"], name="fc2", transB=1),
        helper.make_node("MatMul", ["h2", "m"], ["y"], name="matmul"),
    ]
    loaded = model_of(nodes, init, "y")
    calib = uniform_feeds(256, seed=6)
    plain = quantized(loaded, calib, QuantPlan(calibrator="max", exclude=frozenset({"fc2"}))).proto
    corrected, report = correct_biases(loaded.proto, plain, ["fc1", "fc2", "matmul", "nope"], lambda: [calib])
    assert report.skipped == {
        "fc2": "the layer is not quantized in this model",
        "matmul": "MatMul has no bias input",
        "nope": "no node of this name in the quantized model",
    }
    (layer,) = report.layers
    assert layer.layer == "fc1" and layer.bias == "shared_bias_corrected"  # its own copy of the shared bias
    nodes_by_name = {n.name: n for n in corrected.graph.node}
    assert nodes_by_name["fc1"].input[2] == "shared_bias_corrected"
    assert nodes_by_name["fc2"].input[2] == "shared"  # the float layer keeps the original bias
    values = {i.name: numpy_helper.to_array(i) for i in corrected.graph.initializer}
    np.testing.assert_array_equal(values["shared"], init["shared"].astype(np.float32))
    assert not np.array_equal(values["shared_bias_corrected"], values["shared"])
    untouched, nothing = correct_biases(loaded.proto, plain, ["matmul"], lambda: [calib])
    assert nothing.layers == () and untouched == plain


def single_gemm_gate(tmp_path: Path, **spec: Any) -> GateSpec:
    """The single Gemm saved under ``tmp_path``, gated at cosine >= 0.999 with the ``max`` calibrator: its
    small weights round to zero in int8, a shift of the output mean (bias correction's case)."""
    path = tmp_path / "gemm.onnx"
    onnx.save_model(single_gemm().proto, str(path))
    return GateSpec(
        model=path,
        calib_data=uniform_feeds(512, seed=1),
        eval_data=uniform_feeds(512, seed=2),
        budget=Budget({"cosine": 0.999}),
        calibrator="max",
        threads=1,
        **spec,
    )


def test_the_pipeline_applies_bias_correction_from_the_plan(tmp_path: Path) -> None:
    spec = single_gemm_gate(tmp_path, bisect=False)
    plain = GatePipeline(spec).run()
    pipeline = GatePipeline(GateSpec(**{**spec.__dict__, "bias_correction": frozenset({"fc"})}))
    corrected = pipeline.run()
    print(f"cosine {plain.int8['cosine']:.5f} -> {corrected.int8['cosine']:.5f}")
    assert not plain.passed and plain.int8["cosine"] < 0.995  # measured 0.9930
    assert corrected.passed and corrected.int8["cosine"] > 0.9995  # measured 0.99995
    assert corrected.plan["bias_correction"] == ["fc"]
    assert "bias corrected: mean output error 0.069" in pipeline.default_quantized.notes["fc"]
    no_bias = single_gemm()
    del no_bias.proto.graph.node[0].input[2]
    onnx.save_model(no_bias.proto, str(tmp_path / "no_bias.onnx"))
    asked = GateSpec(
        **{**spec.__dict__, "model": tmp_path / "no_bias.onnx", "bias_correction": frozenset({"fc"})}
    )
    with pytest.raises(ModelError, match="cannot correct the bias of 'fc': the layer has no bias"):
        GatePipeline(asked).run()


def test_the_repair_ladder_keeps_the_layer_int8_via_bias_correction(tmp_path: Path) -> None:
    spec = single_gemm_gate(tmp_path, bisect_subset=128)
    verdict = GatePipeline(spec).run()
    report = verdict.bisection
    assert isinstance(report, BisectionReport)
    (offender,) = report.offenders
    assert (offender.name, offender.action, offender.calibrator) == ("fc", "bias_correction", None)
    no_producer = "its input 'x' is a graph input: there is no producer layer to balance with"
    # own SQNR shows no other calibrator changes the layer's output (a mean shift is not a range
    # problem): none is worth an evaluation; equalization is refused; bias correction is the one tried
    *calibrators, equalization = offender.attempts
    assert [a.split(" (")[0] for a in calibrators] == [
        "percentile not tried",
        "mse not tried",
        "entropy not tried",
    ]
    assert all("own SQNR" in a for a in calibrators)
    assert equalization == f"equalization not possible ({no_producer})"
    assert report.repair_evaluations == 1
    fix = report.fix
    assert fix is not None and fix.passed
    assert (fix.exclude, fix.overrides, fix.equalize, fix.bias_correction) == ((), {}, (), ("fc",))
    assert fix.manifest_snippet().splitlines() == ["bias_correction:", '  - "fc"']
    assert fix.fp32_model is None  # the FP32 model is not rewritten by bias correction
    (cosine,) = fix.results
    assert cosine.int8 > 0.9995
