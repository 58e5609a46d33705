"""Tests for pytest_int8gate.backends.tensorrt.

The pure helpers (cache keys, profile shapes, parser messages) and the "TensorRT is missing" paths run
everywhere; so does the whole build-and-run path with ``tests/fake_tensorrt.py`` standing in for TensorRT
and cuda-python (see tests/test_backend_tensorrt_fake.py). Tests that build real engines need TensorRT,
cuda-python and a GPU and skip without them: this project's CI has none, so they have never run there.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.backends import get_backend
from pytest_int8gate.backends.onnxruntime import OrtBackend, OrtRunner
from pytest_int8gate.backends.tensorrt import (
    DEFAULT_BATCH_SIZES,
    MAX_PARSER_ERRORS_SHOWN,
    TensorRTBackend,
    build_profile_shapes,
    count_qdq_nodes,
    cuda_check,
    cuda_unavailable_reason,
    engine_cache_key,
    format_parser_errors,
    onnx_input_dims,
    timing_cache_filename,
    unavailable_reason,
)
from pytest_int8gate.errors import BackendError

UNAVAILABLE = unavailable_reason()
requires_tensorrt = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"TensorRT backend unavailable: {UNAVAILABLE}"
)
requires_no_tensorrt = pytest.mark.skipif(UNAVAILABLE is None, reason="TensorRT and a GPU are present")

SETTINGS: dict[str, object] = {"workspace_bytes": 1 << 30, "batch_sizes": [1, 32, 32], "tf32": "default"}


def key_with(
    model_bytes: bytes = b"model",
    *,
    precision: str = "int8",
    trt_version: str = "10.13.0.35",
    gpu_name: str = "NVIDIA A10",
    compute_capability: str = "86",
    settings: Mapping[str, object] = SETTINGS,
) -> str:
    return engine_cache_key(
        model_bytes,
        precision=precision,
        trt_version=trt_version,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        settings=settings,
    )


# --- engine cache key --------------------------------------------------------------------------------------


def test_cache_key_is_stable_and_names_the_precision() -> None:
    key = key_with()
    assert key == key_with()
    assert key.startswith("int8-")
    assert len(key) == len("int8-") + 40
    assert all(c in "0123456789abcdef" for c in key.removeprefix("int8-"))


@pytest.mark.parametrize(
    "change",
    [
        {"precision": "fp32"},
        {"trt_version": "11.0.0.1"},
        {"gpu_name": "NVIDIA L4"},
        {"compute_capability": "89"},
        {"settings": {"workspace_bytes": 1 << 29, "batch_sizes": [1, 32, 32], "tf32": "default"}},
        {"settings": {"workspace_bytes": 1 << 30, "batch_sizes": [1, 8, 64], "tf32": "default"}},
        {"settings": {"workspace_bytes": 1 << 30, "batch_sizes": [1, 32, 32], "tf32": "cleared"}},
        {"settings": {**SETTINGS, "extra": 1}},
    ],
)
def test_cache_key_changes_with_every_field(change: dict[str, Any]) -> None:
    assert key_with(**change) != key_with()


def test_cache_key_changes_with_the_model_bytes() -> None:
    assert key_with(b"model") != key_with(b"model2")
    assert key_with(b"") != key_with(b"\x00")


def test_cache_key_ignores_the_order_of_settings() -> None:
    reordered = dict(reversed(list(SETTINGS.items())))
    assert list(reordered) != list(SETTINGS)
    assert key_with(settings=reordered) == key_with()


def test_cache_key_refuses_an_unknown_precision() -> None:
    with pytest.raises(BackendError, match=r"unknown engine precision 'fp16'; choose one of fp32, int8\."):
        key_with(precision="fp16")


def test_timing_cache_file_is_per_tensorrt_version_and_gpu() -> None:
    base = timing_cache_filename("10.13.0.35", "NVIDIA A10", "86")
    assert base == timing_cache_filename("10.13.0.35", "NVIDIA A10", "86")
    assert base.startswith("timing-") and base.endswith(".cache")
    others = {
        timing_cache_filename("11.0.0.1", "NVIDIA A10", "86"),
        timing_cache_filename("10.13.0.35", "NVIDIA L4", "86"),
        timing_cache_filename("10.13.0.35", "NVIDIA A10", "89"),
    }
    assert len(others) == 3 and base not in others


# --- optimisation profile shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch_dim", ["N", None, -1])
def test_profile_gives_a_dynamic_batch_axis_the_batch_range(batch_dim: int | str | None) -> None:
    profiles = build_profile_shapes({"image": (batch_dim, 3, 32, 32)}, 1, 8, 64)
    assert profiles == {"image": ((1, 3, 32, 32), (8, 3, 32, 32), (64, 3, 32, 32))}


def test_profile_keeps_static_and_scalar_inputs_unchanged() -> None:
    profiles = build_profile_shapes({"x": (4, 16), "scale": (), "ids": ("batch", 7)}, *DEFAULT_BATCH_SIZES)
    assert profiles["x"] == ((4, 16), (4, 16), (4, 16))
    assert profiles["scale"] == ((), (), ())
    assert profiles["ids"] == ((1, 7), (32, 7), (32, 7))


def test_profile_refuses_a_dynamic_axis_other_than_the_batch() -> None:
    with pytest.raises(BackendError) as raised:
        build_profile_shapes({"tokens": ("batch", "seq_len", 64)}, 1, 8, 8)
    message = str(raised.value)
    assert "input 'tokens' has a dynamic axis 1 (symbolic size 'seq_len')" in message
    assert "fixed size for axis 1" in message


def test_profile_names_an_unnamed_dynamic_axis() -> None:
    with pytest.raises(BackendError, match=r"input 'x' has a dynamic axis 2 \(unknown size\)"):
        build_profile_shapes({"x": (1, 3, None)}, 1, 1, 1)


@pytest.mark.parametrize("batches", [(0, 1, 1), (2, 1, 4), (1, 8, 4)])
def test_profile_refuses_batch_sizes_out_of_order(batches: tuple[int, int, int]) -> None:
    with pytest.raises(BackendError, match=r"1 <= min <= opt <= max"):
        build_profile_shapes({"x": ("N", 4)}, *batches)


# --- parser errors -----------------------------------------------------------------------------------------


def test_parser_errors_name_each_node_and_collapse_whitespace() -> None:
    message = format_parser_errors(
        [("conv2", "Unsupported  ONNX data type:\n UINT64."), ("", "Network has dynamic inputs.")]
    )
    assert message == "node 'conv2': Unsupported ONNX data type: UINT64; Network has dynamic inputs"


def test_parser_errors_are_truncated_with_a_count() -> None:
    errors = [(f"n{i}", f"error {i}") for i in range(MAX_PARSER_ERRORS_SHOWN + 3)]
    message = format_parser_errors(errors)
    assert message.count("node '") == MAX_PARSER_ERRORS_SHOWN
    assert f"node 'n{MAX_PARSER_ERRORS_SHOWN - 1}'" in message
    assert f"'n{MAX_PARSER_ERRORS_SHOWN}'" not in message
    assert message.endswith("and 3 more errors")
    one_more = format_parser_errors([*errors[:MAX_PARSER_ERRORS_SHOWN], ("x", "y")])
    assert one_more.endswith("and 1 more error")


def test_parser_without_errors_still_gives_a_message() -> None:
    assert format_parser_errors([]) == "the parser rejected the model without reporting an error"
    assert format_parser_errors([("relu", "  ")]) == "node 'relu': no description"


# --- model inspection --------------------------------------------------------------------------------------


def linear_model(batch: int | str = "N", *, qdq: bool = False) -> onnx.ModelProto:
    """x[batch, 4] @ W[4, 3] + b -> y; with ``qdq`` the input and weight pass through int8 Q/DQ."""
    rng = np.random.default_rng(7)
    weight = rng.uniform(-1, 1, (4, 3)).astype(np.float32)
    initializers = [numpy_helper.from_array(rng.uniform(-0.5, 0.5, 3).astype(np.float32), "b")]
    if qdq:
        w_scale = np.float32(np.abs(weight).max() / 127)
        initializers += [
            numpy_helper.from_array(np.clip(np.round(weight / w_scale), -127, 127).astype(np.int8), "W_q"),
            numpy_helper.from_array(np.array(w_scale, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(2.0 / 127, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "zero"),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "zero"], ["x_q"], name="x_quant"),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "zero"], ["x_dq"], name="x_dequant"),
            helper.make_node("DequantizeLinear", ["W_q", "w_scale", "zero"], ["W"], name="w_dequant"),
            helper.make_node("MatMul", ["x_dq", "W"], ["xw"], name="matmul"),
        ]
    else:
        initializers.append(numpy_helper.from_array(weight, "W"))
        nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"], name="matmul")]
    nodes.append(helper.make_node("Add", ["xw", "b"], ["y"], name="bias"))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_onnx_input_dims_skip_initializers_and_keep_symbolic_names() -> None:
    model = linear_model()
    model.graph.input.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [3]))
    model.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [None, 4]))
    assert onnx_input_dims(model) == {"x": ("N", 4), "mask": (None, 4)}
    assert onnx_input_dims(linear_model(batch=2)) == {"x": (2, 4)}


def test_count_qdq_nodes() -> None:
    assert count_qdq_nodes(linear_model()) == 0
    assert count_qdq_nodes(linear_model(qdq=True)) == 3


# --- without TensorRT --------------------------------------------------------------------------------------


@requires_no_tensorrt
def test_unavailable_reason_is_a_clear_clause() -> None:
    reason = unavailable_reason()
    assert reason is not None
    assert reason == UNAVAILABLE
    assert not reason.endswith(".")
    assert "tensorrt" in reason.lower() or "cuda" in reason.lower()
    if "'tensorrt' Python package is not installed" in reason:
        assert "pip install 'pytest-int8gate[tensorrt]'" in reason


def test_missing_tensorrt_package_is_reported_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry makes `import tensorrt` fail as if the package were absent, whatever is installed.
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    expected = "the 'tensorrt' Python package is not installed (pip install 'pytest-int8gate[tensorrt]')"
    assert unavailable_reason() == expected
    with pytest.raises(BackendError) as raised:
        get_backend("tensorrt")
    assert str(raised.value) == f"--int8-backend=tensorrt was requested but {expected}."
    assert isinstance(get_backend("auto"), OrtBackend)


@requires_no_tensorrt
def test_get_backend_tensorrt_is_an_error_without_tensorrt() -> None:
    with pytest.raises(BackendError) as raised:
        get_backend("tensorrt")
    assert str(raised.value) == f"--int8-backend=tensorrt was requested but {UNAVAILABLE}."


@requires_no_tensorrt
def test_get_backend_auto_falls_back_to_onnxruntime() -> None:
    backend = get_backend("auto")
    assert isinstance(backend, OrtBackend)
    assert backend.describe().backend == "onnxruntime"


@requires_no_tensorrt
def test_constructing_the_backend_without_tensorrt_is_an_error() -> None:
    with pytest.raises(BackendError, match=r"^the TensorRT backend cannot be used because "):
        TensorRTBackend()


def test_cuda_check_raises_with_the_call_name() -> None:
    runtime = pytest.importorskip("cuda.bindings.runtime")
    result = runtime.cudaGetDeviceCount()
    if result[0] == runtime.cudaError_t.cudaSuccess:
        assert cuda_check(runtime, result, "cudaGetDeviceCount") == result[1]
    else:
        with pytest.raises(BackendError, match=r"^CUDA call cudaGetDeviceCount failed with cudaError"):
            cuda_check(runtime, result, "cudaGetDeviceCount")


def test_cuda_unavailable_reason_agrees_with_cuda_python() -> None:
    runtime = pytest.importorskip("cuda.bindings.runtime")
    error, count = runtime.cudaGetDeviceCount()
    reason = cuda_unavailable_reason()
    if error == runtime.cudaError_t.cudaSuccess and count > 0:
        assert reason is None
    else:
        assert reason is not None and reason.startswith("no CUDA GPU is visible")
        if error != runtime.cudaError_t.cudaSuccess:
            assert f"cudaGetDeviceCount returned {error.name}" in reason


# --- with TensorRT and a GPU (never run in this project's CI) ----------------------------------------------


def ort_outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return OrtRunner(model, precision="fp32", optimize=False).run({"x": x})["y"]


@requires_tensorrt
def test_fp32_engine_matches_onnxruntime_across_batch_sizes(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    model = linear_model()
    backend = TensorRTBackend(cache_dir=str(tmp_path), batch_sizes=(1, 4, 8))
    runner = backend.fp32_runner(model)
    assert runner.output_names == ("y",)
    assert runner.describe().precision == "fp32"
    assert runner.describe().options["tf32"] == "off"
    for batch in (1, 5, 8):
        x = np.random.default_rng(batch).normal(size=(batch, 4)).astype(np.float32)
        y = runner.run({"x": x})["y"]
        assert y.shape == (batch, 3) and y.dtype == np.float32
        np.testing.assert_allclose(y, ort_outputs(model, x), rtol=1e-5, atol=1e-5)
    x = np.random.default_rng(9).normal(size=(19, 4)).astype(np.float32)  # above the profile: split 8+8+3
    np.testing.assert_allclose(runner.run({"x": x})["y"], ort_outputs(model, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(BackendError, match=r"rejected shape \[2, 5\] for input 'x'"):
        runner.run({"x": np.zeros((2, 5), np.float32)})
    runner.close()
    runner.close()


@requires_tensorrt
def test_int8_engine_follows_the_qdq_model(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    model = linear_model(qdq=True)
    runner = TensorRTBackend(cache_dir=str(tmp_path), batch_sizes=(1, 4, 8)).int8_runner(model)
    assert runner.describe().options["qdq_nodes"] == "3"
    assert runner.describe().options["tf32"] == "off"
    x = np.random.default_rng(0).uniform(-2, 2, (8, 4)).astype(np.float32)
    np.testing.assert_allclose(runner.run({"x": x})["y"], ort_outputs(model, x), rtol=1e-3, atol=1e-3)


@requires_tensorrt
def test_engines_are_reused_from_the_cache_directory(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    model = linear_model()
    first = TensorRTBackend(cache_dir=str(tmp_path)).fp32_runner(model)
    second = TensorRTBackend(cache_dir=str(tmp_path)).fp32_runner(model)
    other_precision = TensorRTBackend(cache_dir=str(tmp_path)).int8_runner(model)
    assert first.describe().options["engine"] == "built"
    assert second.describe().options["engine"] == "cached"
    assert other_precision.describe().options["engine"] == "built"
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(first.run({"x": x})["y"], second.run({"x": x})["y"])


@requires_tensorrt
def test_unparseable_model_names_the_node() -> None:
    pytest.importorskip("tensorrt")
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery", domain="example.custom")],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]
    )
    with pytest.raises(BackendError, match=r"TensorRT could not parse the fp32 model: .*mystery"):
        TensorRTBackend().fp32_runner(model)


EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"


def example_spec(tmp_path: Path, backend: str) -> Any:
    from pytest_int8gate.gate import Budget
    from pytest_int8gate.pipeline import GateSpec

    return GateSpec(
        model=EXAMPLE / "models" / "digits_cnn.onnx",
        calib_data=str(EXAMPLE / "data" / "calib.npz"),
        eval_data=str(EXAMPLE / "data" / "eval.npz"),
        labels=str(EXAMPLE / "data" / "eval_labels.npy"),
        budget=Budget({"top1_drop": 0.01, "cosine": 0.98}),
        backend=backend,
        cache_dir=tmp_path,
        bisect=False,
    )


@requires_tensorrt
def test_example_fp32_engine_matches_onnxruntime_fp32(tmp_path: Path) -> None:
    from pytest_int8gate.pipeline import GatePipeline

    trt_pipeline = GatePipeline(example_spec(tmp_path, "tensorrt"))
    ort_pipeline = GatePipeline(example_spec(tmp_path, "onnxruntime"))
    batch = next(trt_pipeline.eval_data.batches(32))
    got = trt_pipeline.fp32_runner.run(batch)["logits"]
    want = ort_pipeline.fp32_runner.run(batch)["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@requires_tensorrt
def test_example_int8_engine_meets_the_example_budget(tmp_path: Path) -> None:
    from pytest_int8gate.pipeline import GatePipeline

    verdict = GatePipeline(example_spec(tmp_path, "tensorrt")).run()
    assert verdict.backend["backend"] == "tensorrt"
    assert verdict.passed, verdict.results
