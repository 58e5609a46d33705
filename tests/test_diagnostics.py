"""The INT8 debugging checks: each one triggered by data built for it, and all of them quiet on the clean
example (the example project's real model and data, ONNX Runtime, no mocks)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from example_files import CALIB, DIGITS, EVAL, LABELS
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.backends import Runner
from pytest_int8gate.backends.onnxruntime import OrtRunner, has_vnni
from pytest_int8gate.diagnostics import (
    ActivationRange,
    Finding,
    NonFiniteTensorError,
    bits_lost,
    channel_stats,
    check_calibration_size,
    check_cpu_fidelity,
    check_distribution_shape,
    check_preprocessing,
    measure_fidelity,
    model_diagnostics,
)
from pytest_int8gate.diagnostics.datasets import ChannelMoments
from pytest_int8gate.errors import DataError
from pytest_int8gate.gate import Budget, GateVerdict
from pytest_int8gate.pipeline import GatePipeline, GateSpec


def example_spec(**changes: object) -> GateSpec:
    base = GateSpec(
        model=DIGITS,
        calib_data=str(CALIB),
        eval_data=str(EVAL),
        labels=str(LABELS),
        budget=Budget({"top1_drop": 0.01, "cosine": 0.98}),
        bisect=False,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def images(path: Path) -> np.ndarray:
    with np.load(path) as archive:
        return np.asarray(archive["input"])


def codes(verdict: GateVerdict) -> dict[str, Finding]:
    return {finding.code: finding for finding in verdict.diagnostics}


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_weight(name: str, value: float = 1.0) -> onnx.TensorProto:
    return numpy_helper.from_array(np.full((1, 1, 1, 1), value, np.float32), name)


def image_model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    shape: list[object],
    output_shape: list[object],
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# ---- all quiet on the clean example ---------------------------------------------------------------


def test_the_clean_example_raises_no_warning_and_no_failure() -> None:
    verdict = GatePipeline(example_spec()).run()

    assert verdict.passed
    assert [f.severity for f in verdict.diagnostics] == ["info"], verdict.diagnostics
    # ReLU networks are one-sided everywhere: that is information, not a problem
    assert set(codes(verdict)) == {"distribution-shape"}
    assert [r.ci95 is not None for r in verdict.results] == [True, False]


# ---- 1. FP32 parity -------------------------------------------------------------------------------


def test_fp32_parity_fails_the_gate_against_a_reference_that_does_not_match(tmp_path: Path) -> None:
    fp32 = OrtRunner(onnx.load(str(DIGITS)), precision="fp32", optimize=True)
    logits = fp32.run({"input": images(EVAL)[:100]})["logits"]
    np.savez(tmp_path / "good.npz", logits=logits)
    np.savez(tmp_path / "bad.npz", logits=logits * 1.05)  # e.g. made from another model version

    bad = GatePipeline(example_spec(fp32_reference=tmp_path / "bad.npz")).run()
    good = GatePipeline(example_spec(fp32_reference=tmp_path / "good.npz")).run()

    assert all(r.passed for r in bad.results)  # the budget alone would pass
    assert not bad.passed  # fail closed: INT8 against a wrong FP32 means nothing
    (finding,) = bad.failed_diagnostics
    assert finding.code == "fp32-parity" and finding.severity == "failure"
    assert finding.message.startswith("FP32 parity failed: output 'logits'")
    assert "bad.npz" in finding.message and "on 100 samples" in finding.message
    assert finding.details["outputs"]["logits"]["max_relative_error"] == pytest.approx(0.05 / 1.05, rel=1e-3)  # type: ignore[index]
    assert good.passed and "fp32-parity" not in codes(good)


def test_a_reference_naming_no_model_output_is_a_data_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "ref.npz", probabilities=np.zeros((10, 10), np.float32))
    with pytest.raises(
        DataError, match=r"ref.npz: FP32 reference array\(s\) \['probabilities'\].*\['logits'\]"
    ):
        GatePipeline(example_spec(fp32_reference=tmp_path / "ref.npz")).run()


# ---- 2. calibration set size ----------------------------------------------------------------------


def test_a_small_calibration_set_is_a_warning_with_the_count() -> None:
    verdict = GatePipeline(example_spec(calib_data={"input": images(CALIB)[:120]})).run()

    finding = codes(verdict)["calibration-size"]
    assert finding.severity == "warning"
    assert "calibration used 120 samples, fewer than the 500" in finding.message
    assert finding.details == {"calibration_samples": 120, "minimum": 500}
    assert check_calibration_size(120, minimum=100) is None
    assert check_calibration_size(120, minimum=0) is None


# ---- 3. calibration data not representative: clipping ---------------------------------------------


def test_clipping_lists_the_activations_evaluation_data_overflows() -> None:
    dim = {"input": images(CALIB) * 0.5}  # calibrated on images half as bright as the evaluation data

    verdict = GatePipeline(example_spec(calib_data=dim)).run()

    finding = codes(verdict)["clipping"]
    assert finding.severity == "warning"
    rates = finding.details["tensors"]
    assert isinstance(rates, dict)
    assert "input" in rates and rates["input"]["eval_clip_rate"] > 0.1
    assert rates["input"]["calib_clip_rate"] < 0.01
    assert "the calibration data does not represent the evaluation data" in finding.message
    assert "preprocessing-mismatch" not in codes(verdict)  # a factor of 2 is not a preprocessing bug


# ---- 4. preprocessing mismatch --------------------------------------------------------------------


def test_evaluation_data_scaled_by_255_is_a_preprocessing_mismatch() -> None:
    verdict = GatePipeline(example_spec(eval_data={"input": images(EVAL) * 255.0})).run()

    finding = codes(verdict)["preprocessing-mismatch"]
    assert finding.severity == "failure" and not verdict.passed  # fails closed, whatever INT8 measured
    assert "inputs 'input' are not preprocessed the same way" in finding.message
    assert (
        "x larger (0-255 pixels against 0-1): calibration spans [0, 1], evaluation [0, 255]"
        in finding.message
    )
    # the two subsets hold different images: their spreads differ by a few percent besides the factor 255
    assert finding.details["std_ratio"] == pytest.approx(255.0, rel=0.03)
    assert "clipping" in codes(verdict)  # and every pixel overflows the calibrated input range


def test_permuted_channels_are_named_as_such() -> None:
    rng = np.random.default_rng(0)
    rgb = (rng.normal(size=(64, 3, 8, 8)) * 0.05 + np.array([0.2, 0.5, 0.8])[None, :, None, None]).astype(
        np.float32
    )
    calib, bgr = channel_stats(rgb), channel_stats(rgb[:, ::-1])
    assert calib is not None and bgr is not None and calib.axis == 1

    finding = check_preprocessing("image", calib, bgr)

    assert finding is not None
    assert "the channel order differs (BGR against RGB?): evaluation channels [2, 1, 0]" in finding.message
    assert check_preprocessing("image", calib, calib) is None


def test_mean_subtraction_in_one_set_only_is_named() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.uniform(0.2, 0.8, size=(64, 3, 8, 8)).astype(np.float32)
    centred = pixels - pixels.mean(axis=(0, 2, 3), keepdims=True)
    calib, evaluation = channel_stats(centred), channel_stats(pixels)
    assert calib is not None and evaluation is not None

    finding = check_preprocessing("image", calib, evaluation)

    assert finding is not None
    assert "only the calibration data is mean-subtracted" in finding.message


# ---- 5. shapes ------------------------------------------------------------------------------------


def test_evaluation_shapes_calibration_never_exercised(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["y"], name="pool"),
    ]
    weight = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(4, 1, 3, 3)).astype(np.float32), "w"
    )
    path = save(
        image_model(nodes, [weight], ["N", 1, "height", "width"], ["N", 4, 1, 1]), tmp_path / "dynamic.onnx"
    )
    rng = np.random.default_rng(1)

    verdict = GatePipeline(
        GateSpec(
            model=path,
            calib_data={"x": rng.uniform(size=(64, 1, 8, 8)).astype(np.float32)},
            eval_data={"x": rng.uniform(size=(64, 1, 12, 12)).astype(np.float32)},
            min_calib_samples=0,
            bisect=False,
        )
    ).run()

    finding = codes(verdict)["shape-mismatch"]
    assert finding.severity == "warning"
    assert "input 'x' axis 2 (height) is 12 in evaluation, 8 in calibration" in finding.message
    assert "input 'x' axis 3 (width) is 12 in evaluation, 8 in calibration" in finding.message


# ---- 6. stale calibration table -------------------------------------------------------------------


def test_a_stale_cached_table_fails_the_gate_and_says_what_changed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = GatePipeline(example_spec(cache_dir=cache)).run()
    (table,) = (cache / "calibration").glob("*.json")
    document = json.loads(table.read_text())
    document["model_hash"] = "0" * 64  # a table copied from another model's cache
    table.write_text(json.dumps(document))
    sidecar = table.with_name(table.name + ".sha256")  # keep the cache's own integrity check satisfied
    if sidecar.exists():
        sidecar.write_text(f"{hashlib.sha256(table.read_bytes()).hexdigest()}  {table.name}\n")

    second = GatePipeline(example_spec(cache_dir=cache)).run()

    assert first.passed and not first.failed_diagnostics
    assert not second.passed and all(r.passed for r in second.results)
    (finding,) = second.failed_diagnostics
    assert finding.code == "stale-calibration"
    assert "the model changed (table 000000000000" in finding.message
    assert "calibration data changed" not in finding.message
    assert finding.details["model_changed"] is True and finding.details["data_changed"] is False
    assert "calibration table" not in second.cache_hits  # never reused
    assert second.int8 == first.int8  # judged with a table made now


# ---- 7. NaN / Inf ---------------------------------------------------------------------------------


def non_finite_error(model: Path, calibration: np.ndarray, evaluation: np.ndarray) -> NonFiniteTensorError:
    """The error that gating ``model`` (input ``x``) on this data must raise."""
    with pytest.raises(NonFiniteTensorError) as caught:
        GatePipeline(
            GateSpec(model=model, calib_data={"x": calibration}, eval_data={"x": evaluation}, bisect=False)
        ).run()
    return caught.value


def test_nan_in_fp32_names_the_first_tensor_where_it_appears(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h1"], name="conv1"),
        helper.make_node("Sqrt", ["h1"], ["h2"], name="sqrt"),
        helper.make_node("Conv", ["h2", "w2"], ["h3"], name="conv2"),
        helper.make_node("Flatten", ["h3"], ["y"], name="flatten"),
    ]
    path = save(
        image_model(nodes, [conv_weight("w1"), conv_weight("w2")], ["N", 1, 4, 4], ["N", 16]),
        tmp_path / "sqrt.onnx",
    )
    rng = np.random.default_rng(0)
    evaluation = rng.uniform(0.1, 1.0, size=(64, 1, 4, 4)).astype(np.float32)
    evaluation[37, 0, 2, 1] = -0.5  # sqrt of a negative number
    calibration = rng.uniform(0.1, 1.0, size=(64, 1, 4, 4)).astype(np.float32)

    error = non_finite_error(path, calibration, evaluation)

    (finding,) = error.findings
    assert finding.severity == "failure" and finding.code == "non-finite"
    assert finding.details == {
        "precision": "FP32",
        "tensor": "h2",
        "node": "sqrt",
        "op": "Sqrt",
        "kind": "NaN",
        "sample": 37,
    }
    assert "the FP32 model's output 'y' is NaN at sample 37" in str(error)
    assert "first in tensor 'h2' (output of node 'sqrt', Sqrt)" in str(error)


def test_inf_in_int8_only_names_the_tensor_quantization_broke(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h1"], name="conv1"),
        helper.make_node("Conv", ["h1", "w2"], ["h2"], name="conv2"),
        helper.make_node("Reciprocal", ["h2"], ["r"], name="recip"),
        helper.make_node("Mul", ["r", "half"], ["y"], name="scale"),
    ]
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    model = image_model(nodes, [conv_weight("w1"), conv_weight("w2"), half], ["N", 1, 4, 4], ["N", 1, 4, 4])
    path = save(model, tmp_path / "reciprocal.onnx")
    rng = np.random.default_rng(0)
    evaluation = rng.uniform(0.5, 1.0, size=(64, 1, 4, 4)).astype(np.float32)
    evaluation[3] = 1e-4  # finite in FP32 (1/1e-4), rounds to int8 zero: 1/0 in INT8
    calibration = rng.uniform(0.5, 1.0, size=(64, 1, 4, 4)).astype(np.float32)

    error = non_finite_error(path, calibration, evaluation)

    (finding,) = error.findings
    assert (finding.details["precision"], finding.details["tensor"], finding.details["node"]) == (
        "INT8",
        "r",
        "recip",
    )
    assert finding.details["kind"] == "Inf" and finding.details["sample"] == 3
    assert "Only the INT8 model produces it" in finding.fix


# ---- 8. determinism -------------------------------------------------------------------------------


def test_determinism_reports_bit_exact_and_not_bit_exact(tmp_path: Path) -> None:
    exact = GatePipeline(example_spec(check_determinism=True)).run()
    finding = codes(exact)["determinism"]
    assert finding.severity == "info" and finding.details["bit_exact"] is True
    assert "bit-exact: two runs on the same 32 samples" in finding.message

    nodes = [
        helper.make_node("RandomNormalLike", ["x"], ["noise"], name="noise", scale=0.1),
        helper.make_node("Add", ["x", "noise"], ["h"], name="add"),
        helper.make_node("Gemm", ["h", "w"], ["y"], name="fc", transB=1),
    ]
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight],
    )  # fmt: skip
    path = save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "random.onnx"
    )
    data = {"x": np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)}

    noisy = GatePipeline(
        GateSpec(
            model=path, calib_data=data, budget=Budget({"cosine": -1}), check_determinism=True, bisect=False
        )
    ).run()

    finding = codes(noisy)["determinism"]
    assert finding.severity == "warning" and finding.details["bit_exact"] is False
    assert "is not deterministic" in finding.message and "output 'y'" in finding.message


# ---- 9. distribution shape ------------------------------------------------------------------------


def test_one_sided_activations_are_info_with_the_bits_lost() -> None:
    verdict = GatePipeline(example_spec()).run()
    finding = codes(verdict)["distribution-shape"]
    lost = finding.details["tensors"]
    assert isinstance(lost, dict)
    assert lost["/relu1/Relu_output_0"]["bits_lost"] == pytest.approx(1.0, abs=0.05)
    assert lost["/relu1/Relu_output_0"]["min"] == 0.0

    assert bits_lost(0.0, 2.0, 2.0) == 1.0  # ReLU: half the levels unused
    assert bits_lost(-2.0, 2.0, 2.0) == 0.0
    assert bits_lost(-0.2, 2.0, 2.0) == pytest.approx(np.log2(4 / 2.2))
    symmetric = {"t": ActivationRange(minimum=-1.9, maximum=2.0, count=10)}
    assert check_distribution_shape(symmetric, {"t": 2.0}) is None


# ---- 10. CPU fidelity -----------------------------------------------------------------------------


def test_fused_int8_that_strays_from_simulated_is_a_warning_naming_the_cpu() -> None:
    pipeline = GatePipeline(example_spec())
    qdq = pipeline.default_quantized.proto
    simulated = OrtRunner(qdq, precision="int8", optimize=False)
    fused = OrtRunner(qdq, precision="int8", optimize=True)
    # a runner that saturates: every activation reaches its int8 kernel at a quarter of its value
    saturating = onnx.ModelProto()
    saturating.CopyFrom(qdq)
    for node in saturating.graph.node:
        if node.op_type == "QuantizeLinear":
            (scale,) = [i for i in saturating.graph.initializer if i.name == node.input[1]]
            wrong = numpy_helper.from_array(numpy_helper.to_array(scale) * 4, f"{node.name}_wrong_scale")
            saturating.graph.initializer.append(wrong)
            node.input[1] = wrong.name
    broken = OrtRunner(saturating, precision="int8", optimize=True)
    batches = list(pipeline.eval_data.head(64).batches(32))

    real = measure_fidelity(simulated, fused, pipeline.fp32_runner, batches, "logits")
    bad = measure_fidelity(simulated, broken, pipeline.fp32_runner, batches, "logits")
    finding = check_cpu_fidelity(bad, device="cpu test (no VNNI)")

    print(f"fused vs simulated here: cosine {real.cosine_mean:.6f}, ratio {real.error_ratio:.3f}")
    if has_vnni():  # fused int8 kernels are exact with VNNI: quiet here
        assert check_cpu_fidelity(real, device="this cpu") is None
        assert real.cosine_mean > 0.9999 and real.error_ratio < 0.5
    assert finding is not None and finding.severity == "warning"
    assert bad.error_ratio > 1 and bad.cosine_mean < 0.999
    assert (
        "fused int8 kernels disagree with simulated Q/DQ on this CPU (cpu test (no VNNI))" in finding.message
    )
    assert "Simulated Q/DQ computes what TensorRT computes" in finding.message


def test_destroyed_int8_does_not_count_as_a_cpu_problem() -> None:
    # fused and simulated both far from FP32 and slightly apart: rounding noise, not the CPU
    from pytest_int8gate.diagnostics import Fidelity

    noisy = Fidelity(samples=64, cosine_mean=0.99, cosine_min=0.99, top1_agreement=1.0, error_ratio=0.006)
    assert check_cpu_fidelity(noisy, device="cpu") is None


# ---- statistics: evaluation set too small ---------------------------------------------------------


def test_a_one_point_budget_on_200_samples_is_too_small_and_500_are_enough() -> None:
    small = GatePipeline(
        example_spec(eval_data={"input": images(EVAL)[:200]}, labels=np.load(LABELS)[:200])
    ).run()

    finding = codes(small)["eval-set-too-small"]
    assert finding.severity == "warning"
    assert (
        "(200 samples) is too small for the budget: top1_drop is known only to +-1.4 points"
        in finding.message
    )
    assert "Evaluate on about 27" in finding.fix  # 2.77 / (n + 2) <= 0.01 at no disagreement
    assert "eval-set-too-small" not in codes(GatePipeline(example_spec()).run())


def test_activation_ranges_are_measured_in_memory_sized_steps_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pytest_int8gate.diagnostics import ranges
    from pytest_int8gate.diagnostics.ranges import ActivationProbe
    from pytest_int8gate.graph import load_model
    from pytest_int8gate.quantize import activation_tensors

    loaded = load_model(DIGITS)
    tensors = list(activation_tensors(loaded))
    with np.load(EVAL) as archive:
        images = archive["input"][:64]
    batches = [{"input": images[:32]}, {"input": images[32:]}]

    def measured(budget: int) -> tuple[dict[str, ranges.ActivationRange], int]:
        monkeypatch.setattr(ranges, "ACTIVATION_BUDGET_BYTES", budget)
        with ActivationProbe(loaded.proto, tensors) as probe:
            runs = 0
            run = probe.run

            def counted(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                nonlocal runs
                runs += 1
                return run(feeds)

            probe.run = counted  # type: ignore[method-assign]
            whole = probe.measure(batches, {t: 1e9 for t in tensors})
            amax = {t: 0.5 * max(abs(r.minimum), abs(r.maximum)) for t, r in whole.items()}
            runs = 0
            return probe.measure(batches, amax), runs

    split, split_runs = measured(1)  # a budget below one sample: one sample per step
    whole, whole_runs = measured(1 << 40)
    assert (split_runs, whole_runs) == (64, 1 + 1 + 1)  # whole: the first sample alone, then the rest
    for name, expected in whole.items():
        got = split[name]
        assert got.count == expected.count
        assert np.isclose(got.minimum, expected.minimum, rtol=1e-5, atol=1e-6)
        assert np.isclose(got.maximum, expected.maximum, rtol=1e-5, atol=1e-6)
        assert abs(got.clipped - expected.clipped) <= max(1, expected.count // 1000)


def _engine_not_needed() -> Runner:
    raise AssertionError("the evaluation's stored outputs were not reused")


def test_cpu_fidelity_reuses_the_evaluations_stored_outputs(tmp_path: Path) -> None:
    """With the evaluation's outputs in the cache, the fused-vs-simulated check runs only the other mode's
    engine, and finds what it finds when it runs the gate's engines itself."""
    pipeline = GatePipeline(example_spec(cache_dir=tmp_path / "cache"))
    pipeline.run()
    fp32, int8 = pipeline.context.evaluation_outputs()
    assert fp32 is not None and int8 is not None and int8.samples == pipeline.eval_data.num_samples
    stored_only = replace(pipeline.context, fp32_runner=_engine_not_needed, int8_runner=_engine_not_needed)
    computed = replace(pipeline.context, evaluation_outputs=lambda: (None, None))
    reused = model_diagnostics(stored_only)
    assert [f.as_dict() for f in reused] == [f.as_dict() for f in model_diagnostics(computed)]
    # the twin without stored outputs needs the engines
    with pytest.raises(AssertionError, match="not reused"):
        model_diagnostics(replace(stored_only, evaluation_outputs=lambda: (None, None)))


def test_channel_statistics_streamed_in_chunks_equal_one_pass_over_every_sample() -> None:
    rng = np.random.default_rng(4)
    pixels = rng.uniform(0, 255, (41, 3, 96, 96)).astype(np.float32)  # more than one chunk per batch
    moments = ChannelMoments()
    for start in range(0, len(pixels), 16):
        moments.add(pixels[start : start + 16])
    streamed = moments.stats()
    values = np.moveaxis(pixels, 1, 0).reshape(3, -1).astype(np.float64)
    assert streamed is not None and streamed.axis == 1
    np.testing.assert_allclose(streamed.mean, values.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(streamed.std, values.std(axis=1), rtol=1e-12)
    assert np.array_equal(streamed.minimum, values.min(axis=1))
    assert np.array_equal(streamed.maximum, values.max(axis=1))
    moments.add(np.zeros((2, 3, 96, 96), np.int64))  # a non-float batch: no statistics, not wrong ones
    assert moments.stats() is None
