"""The TensorRT backend's build and run logic, with tests/fake_tensorrt.py standing in for TensorRT and CUDA.

The fake follows the TensorRT and cuda-python behaviour the backend relies on, keeps device memory at real
addresses and computes with ONNX Runtime, so these tests check the backend's own logic: optimisation
profiles, TF32, feed dtypes and 0-d feeds, batch splitting, host and data-dependent outputs, error
sentences and freeing. They say nothing about real TensorRT, on which the backend is unverified.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fake_tensorrt import CudaErrorT, FakeCudaRuntime, FakeState, fake_tensorrt
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.backends import tensorrt as tensorrt_backend
from pytest_int8gate.backends.base import Runner
from pytest_int8gate.backends.onnxruntime import OrtRunner
from pytest_int8gate.backends.tensorrt import (
    TensorRTBackend,
    TensorRTRunner,
    cuda_pairing_reason,
    cuda_unavailable_reason,
    network_profile_shapes,
    prepare_feed,
    split_feeds,
)
from pytest_int8gate.errors import BackendError


class Fake:
    """A fake GPU with a fake TensorRT over it."""

    def __init__(self, *, version: str = "11.1.0.106", host_outputs: tuple[str, ...] = ()) -> None:
        self.cuda = FakeCudaRuntime()
        self.tensorrt, self.state = fake_tensorrt(self.cuda, version=version, host_outputs=host_outputs)

    def backend(
        self, batch_sizes: tuple[int, int, int] = (1, 4, 4), cache_dir: Path | None = None
    ) -> TensorRTBackend:
        return TensorRTBackend(
            cache_dir=cache_dir, batch_sizes=batch_sizes, tensorrt=self.tensorrt, cuda=self.cuda.calls()
        )

    @property
    def recorded(self) -> FakeState:
        return self.state


@pytest.fixture
def fake() -> Fake:
    return Fake()


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def linear_model(batch: int | str = "N") -> onnx.ModelProto:
    """y[batch, 3] = x[batch, 4] @ W + b."""
    rng = np.random.default_rng(7)
    return make_model(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [
            numpy_helper.from_array(rng.uniform(-1, 1, (4, 3)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.uniform(-1, 1, 3).astype(np.float32), "b"),
        ],
    )


def reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    runner = OrtRunner(model, precision="fp32", optimize=False)
    return dict(
        zip(runner.output_names, [runner.run(feeds)[name] for name in runner.output_names], strict=True)
    )


# --- optimisation profile --------------------------------------------------------------------------------


def test_profile_covers_every_dynamic_input_and_skips_static_ones() -> None:
    profiles = network_profile_shapes(
        {"image": (-1, 3, 8, 8), "mask": (2, 8), "ids": (-1,)}, {"image": ("N", 3, 8, 8)}, (1, 1, 1)
    )
    assert profiles == {"image": ((1, 3, 8, 8),) * 3, "ids": ((1,),) * 3}


def test_profile_names_the_onnx_size_of_a_dynamic_non_batch_axis() -> None:
    with pytest.raises(BackendError, match=r"input 'tokens' has a dynamic axis 1 \(symbolic size 'seq'\)"):
        network_profile_shapes({"tokens": (-1, -1)}, {"tokens": ("batch", "seq")}, (1, 8, 8))


def test_batch_size_one_builds_a_dynamic_model_with_a_profile(fake: Fake) -> None:
    # TensorRT refuses a dynamic input without a profile even when min = opt = max.
    model = linear_model()
    runner = fake.backend(batch_sizes=(1, 1, 1)).fp32_runner(model)
    assert fake.state.builds[-1]["profile"] == {"x": ((1, 4), (1, 4), (1, 4))}
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_allclose(runner.run({"x": x})["y"], reference(model, {"x": x})["y"], rtol=1e-6)


def test_static_model_builds_without_a_profile(fake: Fake) -> None:
    runner = fake.backend().fp32_runner(linear_model(batch=2))
    assert fake.state.builds[-1]["profile"] == {}
    assert runner.max_batch is None


def test_a_dynamic_input_without_a_profile_fails_the_build_with_tensorrts_words(fake: Fake) -> None:
    # What the backend would meet if it skipped the profile: the fake refuses as TensorRT does.
    backend = fake.backend()
    backend._add_profile = lambda *args: None  # type: ignore[method-assign]
    with pytest.raises(
        BackendError, match=r"could not build the fp32 engine: Network has dynamic or shape inputs"
    ):
        backend.fp32_runner(linear_model())


def test_profile_refused_by_tensorrt_is_one_sentence_naming_the_input(fake: Fake) -> None:
    fake.state.reject_profile = True
    with pytest.raises(BackendError) as raised:
        fake.backend().fp32_runner(linear_model())
    assert str(raised.value) == (
        "TensorRT rejected the optimisation profile of input 'x' (min [1, 4], opt [4, 4], max [4, 4]): "
        "Shape provided for min is inconsistent with other shapes."
    )


# --- builder settings ------------------------------------------------------------------------------------


def test_tf32_is_cleared_in_the_fp32_and_the_int8_engine(fake: Fake) -> None:
    backend = fake.backend()
    fp32 = backend.fp32_runner(linear_model())
    int8 = backend.int8_runner(linear_model())
    assert [build["tf32"] for build in fake.state.builds] == [False, False]
    assert fp32.describe().options["tf32"] == int8.describe().options["tf32"] == "off"
    assert backend._settings("fp32")["tf32"] == backend._settings("int8")["tf32"] == "cleared"


@pytest.mark.parametrize(("version", "flags"), [("10.16.0.72", 1 << 1), ("11.1.0.106", 0)])
def test_strongly_typed_flag_only_on_tensorrt_10(version: str, flags: int) -> None:
    fake = Fake(version=version)
    fake.backend().int8_runner(linear_model())
    assert fake.state.builds[-1]["flags"] == flags


def test_engines_are_cached_and_reused_from_the_cache_directory(fake: Fake, tmp_path: Path) -> None:
    first = fake.backend(cache_dir=tmp_path).fp32_runner(linear_model())
    second = fake.backend(cache_dir=tmp_path).fp32_runner(linear_model())
    assert (first.describe().options["engine"], second.describe().options["engine"]) == ("built", "cached")
    assert len(fake.state.builds) == 1
    assert len(list((tmp_path / "tensorrt").glob("timing-*.cache"))) == 1


def test_a_damaged_cached_engine_is_rebuilt(fake: Fake, tmp_path: Path) -> None:
    fake.backend(cache_dir=tmp_path).fp32_runner(linear_model())
    (engine,) = (tmp_path / "tensorrt").glob("fp32-*.engine")
    engine.write_bytes(b"not an engine")
    runner = fake.backend(cache_dir=tmp_path).fp32_runner(linear_model())
    assert runner.describe().options["engine"] == "built"
    assert len(fake.state.builds) == 2


def test_parser_errors_name_the_node(fake: Fake) -> None:
    model = linear_model()
    model.graph.node[0].domain = "example.custom"
    with pytest.raises(BackendError, match=r"could not parse the fp32 model: node '.*': No importer"):
        fake.backend().fp32_runner(model)


# --- feeds: dtype and 0-d --------------------------------------------------------------------------------


def test_prepare_feed_keeps_a_0d_shape_and_makes_arrays_contiguous() -> None:
    scalar = prepare_feed("s", np.float32(2.5), np.dtype(np.float32), what="engine")
    assert scalar.shape == () and scalar.dtype == np.float32 and float(scalar) == 2.5
    strided = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    prepared = prepare_feed("x", strided, np.dtype(np.float32), what="engine")
    assert prepared.flags.c_contiguous and np.array_equal(prepared, strided)


@pytest.mark.parametrize(
    ("source", "target"),
    [(np.float64, np.float32), (np.int64, np.int32), (np.int32, np.float32), (np.bool_, np.float32)],
)
def test_prepare_feed_converts_within_or_up_a_kind(source: Any, target: Any) -> None:
    value = np.array([[1, 0, 3]], dtype=source)
    prepared = prepare_feed("x", value, np.dtype(target), what="engine")
    assert prepared.dtype == target and np.array_equal(prepared, value.astype(target))


@pytest.mark.parametrize(
    ("source", "target"),
    [(np.float32, np.int64), (np.float64, np.int32), (np.float32, np.bool_), (np.int64, np.bool_)],
)
def test_prepare_feed_refuses_a_cast_that_truncates(source: Any, target: Any) -> None:
    with pytest.raises(BackendError) as raised:
        prepare_feed("ids", np.array([1.5], dtype=source), np.dtype(target), what="TensorRT fp32 engine")
    assert str(raised.value) == (
        f"input 'ids' has dtype {np.dtype(source)}, which the TensorRT fp32 engine cannot take as "
        f"{np.dtype(target)} without changing its values' kind; pass {np.dtype(target)} data."
    )


def scaled_model() -> onnx.ModelProto:
    """y[N, 4] = x[N, 4] * s, with s a 0-d input."""
    return make_model(
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )


def test_a_0d_feed_reaches_the_engine_as_0d(fake: Fake) -> None:
    runner = fake.backend().fp32_runner(scaled_model())
    x = np.ones((2, 4), np.float32)
    y = runner.run({"x": x, "s": np.float64(3.0)})["y"]
    np.testing.assert_array_equal(y, np.full((2, 4), 3.0, np.float32))
    assert fake.state.executions[-1] == {"x": (2, 4), "s": ()}


def ids_model() -> onnx.ModelProto:
    """y[N, 3] = float(ids[N, 3]) * 2 with int64 ids."""
    return make_model(
        [
            helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["f", "f"], ["y"]),
        ],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )


def test_float_feed_for_an_int64_input_is_refused_not_truncated(fake: Fake) -> None:
    runner = fake.backend().fp32_runner(ids_model())
    np.testing.assert_array_equal(runner.run({"ids": np.array([[1, 2, 3]], np.int32)})["y"], [[2, 4, 6]])
    with pytest.raises(BackendError, match=r"^input 'ids' has dtype float32, which the TensorRT fp32 engine"):
        runner.run({"ids": np.array([[1.7, 2, 3]], np.float32)})
    assert len(fake.state.executions) == 1


# --- shapes the engine refuses ---------------------------------------------------------------------------


def test_a_shape_outside_the_profile_is_one_sentence(fake: Fake) -> None:
    runner = fake.backend().fp32_runner(linear_model())
    with pytest.raises(BackendError) as raised:
        runner.run({"x": np.zeros((2, 5), np.float32)})
    assert str(raised.value) == (
        "TensorRT rejected shape [2, 5] for input 'x'; the TensorRT fp32 engine takes shapes from [1, 4] to "
        "[4, 4] (TensorRTBackend(batch_sizes=...) sets the batch range)."
    )


def test_set_input_shape_raising_becomes_the_backend_error(fake: Fake) -> None:
    runner = fake.backend().fp32_runner(linear_model(batch=2))
    context = runner._context
    assert context is not None

    def raising(name: str, shape: Any) -> bool:
        raise RuntimeError("invalid shape\nsecond line")

    context.set_input_shape = raising  # type: ignore[method-assign]
    with pytest.raises(BackendError) as raised:
        runner.run({"x": np.zeros((2, 4), np.float32)})
    assert str(raised.value) == (
        "TensorRT rejected shape [2, 4] for input 'x' (invalid shape); the TensorRT fp32 engine takes shape "
        "[2, 4] (TensorRTBackend(batch_sizes=...) sets the batch range)."
    )


def test_missing_and_unknown_feeds_are_named(fake: Fake) -> None:
    runner = fake.backend().fp32_runner(scaled_model())
    with pytest.raises(BackendError, match=r"^the TensorRT fp32 engine needs input\(s\) s\.$"):
        runner.run({"x": np.ones((1, 4), np.float32)})
    with pytest.raises(BackendError, match=r"^z are not inputs of the TensorRT fp32 engine\.$"):
        runner.run({"x": np.ones((1, 4), np.float32), "s": np.float32(1), "z": np.ones(1)})


# --- batches above the profile ---------------------------------------------------------------------------


def test_feeds_above_the_profile_run_in_pieces_and_join(fake: Fake) -> None:
    model = scaled_model()
    runner = fake.backend(batch_sizes=(1, 4, 4)).fp32_runner(model)
    assert runner.max_batch == 4
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    y = runner.run({"x": x, "s": np.float32(-2.0)})["y"]
    np.testing.assert_array_equal(y, x * np.float32(-2.0))
    assert [shapes["x"] for shapes in fake.state.executions] == [(4, 4), (4, 4), (2, 4)]
    assert all(shapes["s"] == () for shapes in fake.state.executions)


def test_split_feeds_refuses_batched_inputs_of_different_sizes() -> None:
    feeds = {"a": np.zeros((5, 2)), "b": np.zeros((6, 2))}
    with pytest.raises(BackendError) as raised:
        split_feeds(feeds, {"a": 4, "b": 4}, what="TensorRT fp32 engine")
    assert str(raised.value) == (
        "the TensorRT fp32 engine takes at most 4 samples at a time and cannot split these feeds into "
        "batches, "
        "because their batch sizes differ ('a' has 5, 'b' has 6)."
    )
    assert split_feeds({"a": np.zeros((4, 2))}, {"a": 4}, what="engine")[0]["a"].shape == (4, 2)


def test_an_output_without_a_batch_axis_refuses_to_be_split(fake: Fake) -> None:
    model = make_model(
        [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.array([0], np.int64), "axes")],
    )
    runner = fake.backend(batch_sizes=(1, 4, 4)).fp32_runner(model)
    np.testing.assert_array_equal(runner.run({"x": np.ones((3, 4), np.float32)})["total"], [3, 3, 3, 3])
    with pytest.raises(BackendError) as raised:
        runner.run({"x": np.ones((5, 4), np.float32)})
    assert str(raised.value) == (
        "the TensorRT fp32 engine takes at most 4 samples at a time, and its output(s) 'total' have no batch "
        "axis to join pieces on; pass at most 4 samples at a time."
    )


def test_the_engine_fixtures_runner_splits_what_a_user_test_passes(fake: Fake) -> None:
    # The fixtures hand out the backend's runner as is: a user batch of 70 on a 1/32/32 profile is split.
    model = linear_model()
    runner: Runner = fake.backend(batch_sizes=(1, 32, 32)).fp32_runner(model)
    x = np.random.default_rng(1).normal(size=(70, 4)).astype(np.float32)
    np.testing.assert_allclose(runner.run({"x": x})["y"], reference(model, {"x": x})["y"], rtol=1e-6)
    assert [shapes["x"][0] for shapes in fake.state.executions] == [32, 32, 6]


# --- outputs on the host and of data-dependent shape -----------------------------------------------------


def test_host_located_output_is_written_to_host_memory() -> None:
    fake = Fake(host_outputs=("dims",))
    model = make_model(
        [helper.make_node("Shape", ["x"], ["dims"]), helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("dims", TensorProto.INT64, [2]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
        ],
    )
    runner = fake.backend().fp32_runner(model)
    outputs = runner.run({"x": -np.ones((3, 4), np.float32)})
    assert len(fake.state.executions) == 1  # one execution gives every output
    np.testing.assert_array_equal(outputs["dims"], [3, 4])
    np.testing.assert_array_equal(outputs["y"], np.zeros((3, 4), np.float32))
    assert "dims" not in runner._buffers  # no device buffer for it


def nonzero_model() -> onnx.ModelProto:
    return make_model(
        [helper.make_node("NonZero", ["x"], ["where"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("where", TensorProto.INT64, [2, "nonzero"])],
    )


def test_data_dependent_output_comes_back_through_the_output_allocator(fake: Fake) -> None:
    runner = fake.backend().fp32_runner(nonzero_model())
    for x in (np.eye(4, dtype=np.float32)[:3], np.ones((4, 4), np.float32), np.zeros((2, 4), np.float32)):
        got = runner.run({"x": x})["where"]
        np.testing.assert_array_equal(got, np.array(np.nonzero(x), dtype=np.int64))
    assert "where" in runner._buffers
    runner.close()
    assert fake.cuda.allocations == {}


def test_a_data_dependent_output_refuses_to_be_split(fake: Fake) -> None:
    model = make_model(
        [helper.make_node("NonZero", ["x"], ["where"]), helper.make_node("Transpose", ["where"], ["pairs"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("pairs", TensorProto.INT64, ["nonzero", 2])],
    )
    runner = fake.backend(batch_sizes=(1, 4, 4)).fp32_runner(model)
    x = np.eye(4, dtype=np.float32)
    np.testing.assert_array_equal(runner.run({"x": x})["pairs"], np.argwhere(x))
    with pytest.raises(BackendError) as raised:
        runner.run({"x": np.ones((6, 4), np.float32)})
    assert str(raised.value) == (
        "the TensorRT fp32 engine takes at most 4 samples at a time, and the shape of its output(s) 'pairs' "
        "depends on the data, so pieces cannot be joined; pass at most 4 samples at a time."
    )


def test_output_allocator_failure_is_reported(fake: Fake) -> None:
    runner = fake.backend(batch_sizes=(1, 4, 64)).fp32_runner(nonzero_model())
    runner.run({"x": np.ones((1, 4), np.float32)})
    real_malloc = fake.cuda.cudaMalloc
    # Enough memory for the input (1 KiB) but not for the 4 KiB of indices the output allocator is asked for.
    fake.cuda.cudaMalloc = lambda size: (  # type: ignore[method-assign]
        real_malloc(size) if size <= 2048 else (CudaErrorT.cudaErrorMemoryAllocation, 0)
    )
    with pytest.raises(BackendError) as raised:
        runner.run({"x": np.ones((64, 4), np.float32)})
    assert str(raised.value) == (
        "TensorRT failed to run the TensorRT fp32 engine: allocating output 'where' failed: CUDA call "
        "cudaMalloc "
        "failed with cudaErrorMemoryAllocation (description of cudaErrorMemoryAllocation); the output "
        "allocator gave no valid memory for where."
    )


# --- streams and freeing ---------------------------------------------------------------------------------


def test_the_stream_reaches_tensorrt_as_its_native_handle_never_int(fake: Fake) -> None:
    runner = fake.backend().fp32_runner(linear_model())
    runner.run({"x": np.ones((1, 4), np.float32)})
    (handle,) = fake.state.stream_handles
    assert type(handle) is int and handle in fake.cuda.streams


def test_close_frees_every_buffer_even_when_one_free_fails(fake: Fake) -> None:
    runner = fake.backend().fp32_runner(scaled_model())
    runner.run({"x": np.ones((2, 4), np.float32), "s": np.float32(1)})
    pointers = {name: pointer for name, (pointer, _) in runner._buffers.items()}
    assert set(pointers) == {"x", "s", "y"} and set(fake.cuda.allocations) == set(pointers.values())
    fake.cuda.fail_free.add(pointers["s"])
    fake.cuda.fail_stream_destroy = True
    with pytest.raises(BackendError) as raised:
        runner.close()
    assert str(raised.value) == (
        "closing the TensorRT fp32 runner: CUDA call cudaFree (tensor 's') failed with cudaErrorInvalidValue "
        "(description of cudaErrorInvalidValue); CUDA call cudaStreamDestroy failed with "
        "cudaErrorInvalidResourceHandle (description of cudaErrorInvalidResourceHandle)."
    )
    assert set(fake.cuda.allocations) == {pointers["s"]}  # every other buffer was freed
    runner.close()  # idempotent: nothing left to free, nothing raised
    with pytest.raises(BackendError, match=r"^the TensorRT fp32 runner was closed\.$"):
        runner.run({"x": np.ones((2, 4), np.float32), "s": np.float32(1)})


def test_runner_is_a_context_manager_that_frees_everything(fake: Fake) -> None:
    with fake.backend().fp32_runner(linear_model()) as runner:
        assert isinstance(runner, TensorRTRunner)
        runner.run({"x": np.ones((3, 4), np.float32)})
        assert fake.cuda.allocations and fake.cuda.streams
    assert fake.cuda.allocations == {} and fake.cuda.streams == {}


def test_buffers_grow_and_are_reused(fake: Fake) -> None:
    runner = fake.backend(batch_sizes=(1, 4, 64)).fp32_runner(linear_model())
    runner.run({"x": np.ones((1, 4), np.float32)})
    first = dict(runner._buffers)
    runner.run({"x": np.ones((2, 4), np.float32)})  # 32 bytes still fit the 256-byte minimum
    assert runner._buffers == first
    runner.run({"x": np.ones((64, 4), np.float32)})
    assert runner._buffers["x"][1] == 64 * 4 * 4
    assert len(fake.cuda.allocations) == 2  # the smaller buffers were freed


# --- CUDA availability -----------------------------------------------------------------------------------


def test_an_old_driver_is_named_as_too_old_for_cuda_python() -> None:
    cuda = FakeCudaRuntime(count_error=CudaErrorT.cudaErrorInsufficientDriver)
    assert cuda_unavailable_reason(cuda.calls("13.0.1")) == (
        "the NVIDIA driver is too old for cuda-python 13 (cudaGetDeviceCount returned "
        "cudaErrorInsufficientDriver (description of cudaErrorInsufficientDriver)); update the driver, or "
        "install the CUDA 12 builds: pip install 'pytest-int8gate[tensorrt-cu12]'"
    )
    assert cuda_unavailable_reason(cuda.calls("12.9.4")) == (
        "the NVIDIA driver is too old for cuda-python 12 (cudaGetDeviceCount returned "
        "cudaErrorInsufficientDriver (description of cudaErrorInsufficientDriver)); update the driver"
    )


def test_cuda_availability_reasons() -> None:
    assert cuda_unavailable_reason(FakeCudaRuntime().calls()) is None
    assert cuda_unavailable_reason(FakeCudaRuntime(device_count=0).calls()) == "no CUDA GPU is visible"
    no_device = FakeCudaRuntime(count_error=CudaErrorT.cudaErrorNoDevice).calls()
    assert cuda_unavailable_reason(no_device) == (
        "no CUDA GPU is visible (cudaGetDeviceCount returned cudaErrorNoDevice "
        "(description of cudaErrorNoDevice))"
    )
    assert cuda_unavailable_reason(FakeCudaRuntime().calls("12.6.0")) == (
        "cuda-python 12.6.0 is installed but this backend needs 12.9.1 or newer "
        "(pip install 'pytest-int8gate[tensorrt]')"
    )


def test_tensorrt_and_cuda_python_must_share_a_cuda_major() -> None:
    assert cuda_pairing_reason(12, "13.0.1") == (
        "TensorRT is built for CUDA 12 (tensorrt-cu12) but cuda-python 13.0.1 is built for CUDA 13; "
        "install a "
        "matching pair (pip install 'pytest-int8gate[tensorrt-cu12]')"
    )
    assert cuda_pairing_reason(13, "13.2.0") is None
    assert cuda_pairing_reason(None, "13.2.0") is None  # TensorRT not from a pip wheel: nothing to compare
    assert cuda_pairing_reason(12, "unknown") is None


# --- the gate and the plugin on the fake -----------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"


def use_fake_for_tensorrt(monkeypatch: pytest.MonkeyPatch, fake: Fake) -> None:
    """``--int8-backend tensorrt`` and ``get_backend("tensorrt")`` build their backend over ``fake``."""
    monkeypatch.setattr(tensorrt_backend, "unavailable_reason", lambda: None)
    monkeypatch.setattr(
        tensorrt_backend,
        "TensorRTBackend",
        functools.partial(TensorRTBackend, tensorrt=fake.tensorrt, cuda=fake.cuda.calls()),
    )


@pytest.mark.slow
def test_the_example_gate_passes_on_the_tensorrt_backend_over_the_fake(
    fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pytest_int8gate.budget import Budget
    from pytest_int8gate.pipeline import GatePipeline, GateSpec

    use_fake_for_tensorrt(monkeypatch, fake)
    spec = GateSpec(
        model=EXAMPLE / "models" / "digits_cnn.onnx",
        calib_data=str(EXAMPLE / "data" / "calib.npz"),
        eval_data=str(EXAMPLE / "data" / "eval.npz"),
        labels=str(EXAMPLE / "data" / "eval_labels.npy"),
        budget=Budget({"top1_drop": 0.01, "cosine": 0.98}),
        backend="tensorrt",
        cache_dir=tmp_path,
        bisect=False,
    )
    with GatePipeline(spec) as pipeline:
        verdict = pipeline.run()
        assert verdict.backend["backend"] == "tensorrt"
        assert verdict.passed, verdict.results
        assert [build["tf32"] for build in fake.state.builds] == [False, False]
    assert fake.cuda.allocations == {} and fake.cuda.streams == {}


@pytest.mark.slow
def test_engine_fixtures_hand_user_tests_a_runner_that_splits_large_batches(
    project: pytest.Pytester, fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_for_tensorrt(monkeypatch, fake)
    project.makepyfile(
        test_engines="""
        import numpy as np

        from pytest_int8gate.backends.onnxruntime import OrtRunner


        def test_seventy_samples_at_once(fp32_engine, int8_engine, int8_model):
            import onnx

            x = np.load("eval.npz")["input"][:70]
            assert fp32_engine.describe().backend == "tensorrt"
            assert fp32_engine.max_batch == 16
            reference = OrtRunner(onnx.load(int8_model), precision="fp32", optimize=False).run({"input": x})
            got = fp32_engine.run({"input": x})["logits"]
            assert got.shape == (70, 10)
            np.testing.assert_allclose(got, reference["logits"], rtol=1e-5, atol=1e-5)
            assert int8_engine.run({"input": x})["logits"].shape == (70, 10)
        """
    )
    result = project.runpytest_inprocess(
        "test_engines.py",
        "--int8-model",
        "digits_cnn.onnx",
        "--int8-calib-data",
        "calib.npz",
        "--int8-backend",
        "tensorrt",
        "--int8-batch-size",
        "16",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)  # the user test, and the --int8-model gate itself
    batches = [shapes["input"][0] for shapes in fake.state.executions]
    assert max(batches) == 16
    assert batches.count(6) == 2  # 70 = 16 * 4 + 6, on each engine; the gate's batches of 600 end in 8


@pytest.mark.parametrize(
    ("installed", "major"),
    [
        (["numpy", "tensorrt", "tensorrt-cu12", "tensorrt_cu12_libs", "tensorrt-cu12-bindings"], 12),
        (["tensorrt_cu13", "tensorrt_cu13_bindings"], 13),
        (["tensorrt-cu12", "tensorrt-cu13"], None),  # two builds side by side: nothing to compare with
        (["tensorrt", "tensorrt-lean-cu12"], None),
    ],
)
def test_the_tensorrt_wheels_cuda_major(
    monkeypatch: pytest.MonkeyPatch, installed: list[str], major: int | None
) -> None:
    import importlib.metadata
    from types import SimpleNamespace

    distributions = [SimpleNamespace(name=name) for name in installed]
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter(distributions))
    assert tensorrt_backend.tensorrt_wheel_cuda_major() == major
