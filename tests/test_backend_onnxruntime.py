"""Tests for pytest_int8gate.backends.onnxruntime and get_backend: descriptions, modes, Q/DQ execution."""

from __future__ import annotations

import platform

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.backends import BACKEND_NAMES, BackendInfo, get_backend
from pytest_int8gate.backends.onnxruntime import (
    OrtBackend,
    OrtRunner,
    cpu_features,
    device_text,
    has_vnni,
    int8_flags,
)
from pytest_int8gate.errors import BackendError

FLOAT = TensorProto.FLOAT
RNG = np.random.default_rng(11)
IN_CH, OUT_CH = 4, 8


def fp32_conv() -> onnx.ModelProto:
    weights = RNG.standard_normal((OUT_CH, IN_CH, 3, 3)).astype(np.float32) * 0.2
    bias = RNG.standard_normal(OUT_CH).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", FLOAT, ["N", IN_CH, 8, 8])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", OUT_CH, 8, 8])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def qdq_conv(fp32: onnx.ModelProto, input_amax: float) -> onnx.ModelProto:
    """TensorRT's scheme by hand: symmetric int8, activation per tensor, weights per output channel."""
    inits = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    weights, bias = inits["W"], inits["B"]
    w_scale = (np.abs(weights).reshape(OUT_CH, -1).max(axis=1) / 127.0).astype(np.float32)
    w_int8 = np.clip(np.round(weights / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
    x_scale = np.array(input_amax / 127.0, np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="x_quant"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="x_dequant"),
        helper.make_node("DequantizeLinear", ["W_q", "w_scale", "w_zp"], ["W_dq"], name="w_dequant", axis=0),
        helper.make_node("Conv", ["x_dq", "W_dq", "B"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_qdq",
        list(fp32.graph.input),
        list(fp32.graph.output),
        [
            numpy_helper.from_array(x_scale, "x_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
            numpy_helper.from_array(w_int8, "W_q"),
            numpy_helper.from_array(w_scale, "w_scale"),
            numpy_helper.from_array(np.zeros(OUT_CH, np.int8), "w_zp"),
            numpy_helper.from_array(bias, "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


# ---- descriptions ------------------------------------------------------------------------------------


# Abridged /proc/cpuinfo texts of real CPUs (one core each; the real files repeat the block per core).
AVX2_ONLY_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7542 32-Core Processor
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni
bugs\t\t: sysret_ss_attrs spectre_v1
"""
SAPPHIRE_RAPIDS_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx_vnni amx_bf16 amx_int8 amx_tile
"""
GRAVITON_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimdhp asimddp i8mm bf16
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize(
    ("cpuinfo", "flags", "vnni"),
    [
        (AVX2_ONLY_CPUINFO, ("avx2",), False),
        (SAPPHIRE_RAPIDS_CPUINFO, ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"), True),
        (GRAVITON_CPUINFO, ("asimddp", "i8mm"), True),
        ("", (), False),
    ],
    ids=["avx2-only", "sapphire-rapids", "graviton3", "empty"],
)
def test_int8_cpu_flags_and_vnni_are_read_from_cpuinfo_text(
    cpuinfo: str, flags: tuple[str, ...], vnni: bool
) -> None:
    assert int8_flags(cpuinfo) == flags
    assert has_vnni(flags) is vnni
    device = device_text(flags)
    assert device.startswith(f"cpu {platform.machine()} (")
    expected_flags = " ".join(flags) or "no int8 flags known"
    assert device.endswith(f"({'VNNI' if vnni else 'no VNNI'}: {expected_flags})"), device


def test_a_bugs_line_or_a_model_name_never_counts_as_a_flag() -> None:
    text = "model name\t: avx512_vnni lookalike\nbugs\t\t: avx_vnni\nflags\t\t: sse2 avx2\n"
    assert int8_flags(text) == ("avx2",)
    assert not has_vnni(int8_flags(text))


def test_backend_description_names_version_device_and_vnni() -> None:
    info = OrtBackend().describe()
    assert isinstance(info, BackendInfo)
    assert info.backend == "onnxruntime"
    assert info.version == ort.__version__
    assert info.mode == "simulated"
    assert info.device == device_text(cpu_features())  # this CPU's flags, read from its /proc/cpuinfo
    text = str(info)
    assert text.startswith(f"onnxruntime {ort.__version__} cpu ")
    assert text.endswith(" simulated")
    as_dict = info.as_dict()
    assert as_dict["version"] == ort.__version__
    assert as_dict["options"] == {"int8_graph_optimization": "all, Q/DQ transformers off", "threads": "auto"}


def test_simulated_mode_keeps_qdq_transformers_off() -> None:
    fp32 = fp32_conv()
    backend = OrtBackend(mode="simulated", threads=1)
    int8_info = backend.int8_runner(qdq_conv(fp32, 3.0)).describe()
    assert int8_info.precision == "int8"
    assert int8_info.mode == "simulated"
    assert int8_info.options == {"graph_optimization": "all, Q/DQ transformers off", "threads": "1"}
    fp32_info = backend.fp32_runner(fp32).describe()
    assert fp32_info.precision == "fp32"
    assert fp32_info.options["graph_optimization"] == "all"


def test_fused_mode_enables_graph_optimisation() -> None:
    backend = OrtBackend(mode="fused")
    info = backend.int8_runner(qdq_conv(fp32_conv(), 3.0)).describe()
    assert info.mode == "fused"
    assert info.options == {"graph_optimization": "all", "threads": "auto"}
    assert str(info).endswith(" fused")


# ---- execution ---------------------------------------------------------------------------------------


def test_simulated_qdq_conv_computes_the_fake_quantized_float_math() -> None:
    fp32 = fp32_conv()
    qdq = qdq_conv(fp32, input_amax=3.0)
    x = RNG.standard_normal((5, IN_CH, 8, 8)).astype(np.float32)

    simulated = OrtBackend(mode="simulated").int8_runner(qdq)
    assert simulated.output_names == ("y",)
    got = simulated.run({"x": x})["y"]

    # the same model with x fake-quantized by numpy and run in float: identical arithmetic
    scale = np.float32(3.0 / 127.0)
    x_fake = (np.clip(np.round(x / scale), -128, 127) * scale).astype(np.float32)
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    w_fake = inits["W_q"].astype(np.float32) * inits["w_scale"][:, None, None, None]
    float_model = fp32_conv()
    for init in float_model.graph.initializer:
        if init.name == "W":
            init.CopyFrom(numpy_helper.from_array(w_fake.astype(np.float32), "W"))
        if init.name == "B":
            init.CopyFrom(numpy_helper.from_array(inits["B"], "B"))
    expected = OrtRunner(float_model, precision="fp32", optimize=False).run({"x": x_fake})["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    reference = OrtBackend().fp32_runner(fp32).run({"x": x})["y"]
    cosine = float(np.sum(got * reference) / (np.linalg.norm(got) * np.linalg.norm(reference)))
    assert 0.995 < cosine < 1.0  # quantization changed the numbers, but only a little


def test_fused_and_simulated_qdq_conv_agree() -> None:
    qdq = qdq_conv(fp32_conv(), input_amax=3.0)
    x = RNG.standard_normal((4, IN_CH, 8, 8)).astype(np.float32)
    simulated = OrtBackend(mode="simulated").int8_runner(qdq).run({"x": x})["y"]
    fused = OrtBackend(mode="fused").int8_runner(qdq).run({"x": x})["y"]
    # int8 x int8 products accumulate exactly in int32; only the final float rescale rounds differently.
    # Without VNNI, ONNX Runtime's u8s8 kernels may saturate: allow a few output steps there.
    tolerance = 1e-4 if has_vnni() else 0.05
    np.testing.assert_allclose(fused, simulated, rtol=0, atol=tolerance * float(np.abs(simulated).max()))


def test_runner_reports_build_and_run_failures() -> None:
    broken = fp32_conv()
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(BackendError, match="ONNX Runtime could not build the int8 model"):
        OrtBackend().int8_runner(broken)
    runner = OrtBackend().fp32_runner(fp32_conv())
    with pytest.raises(BackendError, match="ONNX Runtime failed to run the fp32 model"):
        runner.run({"x": np.zeros((1, IN_CH + 1, 8, 8), np.float32)})


# ---- get_backend ---------------------------------------------------------------------------------------


def test_unknown_backend_lists_the_names() -> None:
    with pytest.raises(BackendError) as info:
        get_backend("nope")
    message = str(info.value)
    assert "'nope'" in message
    for name in BACKEND_NAMES:
        assert name in message


def test_unknown_ort_mode_lists_the_modes() -> None:
    with pytest.raises(BackendError, match=r"'exact'.*simulated, fused"):
        get_backend("onnxruntime", ort_mode="exact")


def test_onnxruntime_backend_by_name() -> None:
    backend = get_backend("onnxruntime", ort_mode="fused", threads=2)
    assert isinstance(backend, OrtBackend)
    assert backend.name == "onnxruntime"
    assert backend.describe().mode == "fused"
    assert backend.describe().options == {"int8_graph_optimization": "all", "threads": "2"}


def test_without_tensorrt_auto_falls_back_and_tensorrt_is_an_error() -> None:
    from pytest_int8gate.backends.tensorrt import unavailable_reason

    reason = unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a CUDA GPU are present here")
    assert get_backend("auto").name == "onnxruntime"
    with pytest.raises(BackendError, match="tensorrt was requested but") as info:
        get_backend("tensorrt")
    assert reason in str(info.value)


def test_a_run_failure_is_reported_once_as_one_sentence(capfd: pytest.CaptureFixture[str]) -> None:
    """ONNX Runtime logs a failing kernel on the process's stderr by itself; the runner keeps that quiet, so
    the user reads the failure once, as the BackendError's sentence."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["data", "index"], ["y"], name="lookup")],
        "gather",
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(np.arange(4, dtype=np.float32), "data")],
    )
    runner = OrtRunner(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), precision="fp32", optimize=True
    )
    with pytest.raises(BackendError, match=r"failed to run the fp32 model: .*out of data bounds"):
        runner.run({"index": np.array([7], np.int64)})
    assert "onnxruntime" not in capfd.readouterr().err
